"""Per-project settings: the config defaults plus a project's stored overrides, with a history.

Admins change a project's ``strategy``, ``model`` and ``loop`` settings through the admin API or
``labelloop strategy set``. Only values that differ from the config defaults are stored
(``project_settings.overrides``); setting a field back to its default removes the override. Every
change that alters a value writes one ``project_settings_history`` row with the token name and each
field's value before and after. The cycle reads :func:`effective_settings` at its start, and the
scheduler reads :func:`loop_settings_for`, so a change takes effect in the next cycle.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from backend.settings import LoopSettings, Settings, SettingsError, with_overrides
from backend.store.db import Store
from backend.store.models import ProjectSettings, SettingsChange, utcnow

log = logging.getLogger(__name__)

#: The sections a project may override.
SECTIONS: tuple[str, ...] = ("strategy", "model", "loop")
#: Fields that belong to the process (the scheduler's own timing), not to a project.
PROCESS_WIDE: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "loop": frozenset(
            {
                "run_scheduler",
                "poll_s",
                "lease_s",
                "misfire_grace_s",
                "executor",
                "redis_url",
                "rq_queue",
                "rq_job_timeout_s",
            }
        ),
    }
)
_FIELD = re.compile(r"setting '([^']+)'")


def error_fields(exc: SettingsError) -> list[str]:
    """The dotted setting names a :class:`SettingsError` message names (``strategy.weights``)."""
    return sorted(set(_FIELD.findall(str(exc))))


def check_changes(changes: Any) -> Mapping[str, Mapping[str, Any]]:
    """``changes`` as ``{section: {field: value}}``, or SettingsError naming what is not allowed.

    Values are not checked here: :func:`with_overrides` validates the merged result.
    """
    if not isinstance(changes, Mapping):
        raise SettingsError("setting '(root)': changes must be a mapping of sections")
    problems = []
    for section, fields in changes.items():
        if section not in SECTIONS:
            problems.append(
                f"setting '{section}' cannot be set per project; allowed sections: "
                f"{', '.join(SECTIONS)}"
            )
        elif not isinstance(fields, Mapping):
            problems.append(f"setting '{section}': must be a mapping of fields")
        else:
            problems.extend(
                f"setting '{section}.{name}' applies to the whole process, not to one project"
                for name in fields
                if name in PROCESS_WIDE.get(section, ())
            )
    if problems:
        raise SettingsError("invalid settings (project overrides):\n  " + "\n  ".join(problems))
    return changes


def _sections(settings: Settings) -> dict[str, dict[str, Any]]:
    return {name: getattr(settings, name).model_dump(mode="json") for name in SECTIONS}


def load_overrides(store: Store, project_id: int) -> dict[str, Any]:
    """The project's stored overrides, ``{}`` when it has none."""
    with store.session() as session:
        row = session.get(ProjectSettings, project_id)
        return dict(row.overrides) if row is not None else {}


def effective_settings(store: Store, settings: Settings, project_id: int) -> Settings:
    """The settings a project's cycle runs with: ``settings`` with the project's overrides.

    Raises:
        SettingsError: a stored override is no longer valid (e.g. the defaults changed).
    """
    overrides = load_overrides(store, project_id)
    return with_overrides(settings, overrides) if overrides else settings


def propose(store: Store, settings: Settings, project_id: int, changes: Any) -> Settings:
    """The effective settings ``changes`` would give the project, validated, stored nowhere."""
    return with_overrides(effective_settings(store, settings, project_id), check_changes(changes))


def diff(before: Settings, after: Settings) -> list[dict[str, Any]]:
    """``[{"field": "section.name", "before": ..., "after": ...}]`` for every changed field."""
    old, new = _sections(before), _sections(after)
    return [
        {"field": f"{section}.{name}", "before": old[section][name], "after": value}
        for section in SECTIONS
        for name, value in new[section].items()
        if old[section][name] != value
    ]


def overrides_of(settings: Settings, effective: Settings) -> dict[str, dict[str, Any]]:
    """The minimal overrides: fields of ``effective`` that differ from the defaults."""
    overrides: dict[str, dict[str, Any]] = {}
    for change in diff(settings, effective):
        section, name = change["field"].split(".", 1)
        overrides.setdefault(section, {})[name] = change["after"]
    return overrides


def _lock_settings(session: Session) -> None:
    """Serialize settings writers from the first read on, so two admins' changes both survive.

    SQLite: ``BEGIN IMMEDIATE`` takes the write lock before the read (a second writer waits up to
    the busy timeout, then reads the first one's result). PostgreSQL: a table lock that only
    settings writers take (readers are not blocked); the row lock of ``FOR UPDATE`` alone would
    not cover a project's first override, whose row does not exist yet.
    """
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        session.execute(text("BEGIN IMMEDIATE"))
    elif dialect == "postgresql":
        session.execute(text("LOCK TABLE project_settings IN SHARE ROW EXCLUSIVE MODE"))


def set_project_settings(
    store: Store, settings: Settings, project_id: int, changes: Any, *, token_name: str
) -> Settings:
    """Validate and store ``changes`` (nested, e.g. ``{"strategy": {"batch_size": 50}}``).

    Args:
        settings: the config defaults.
        changes: ``{section: {field: value}}`` over ``strategy``, ``model`` and ``loop``; dict
            fields (``strategy.weights``) are merged key by key.
        token_name: who made the change (an admin token's name, or ``cli:<user>``).

    Returns:
        the project's new effective settings.

    Raises:
        SettingsError: an unknown section or field, or a value that is not allowed; the message
            names the setting (``setting 'strategy.weights': ...``).
    """
    check_changes(changes)
    with store.session() as session:
        _lock_settings(session)
        row = session.scalars(
            select(ProjectSettings)
            .where(ProjectSettings.project_id == project_id)
            .with_for_update()
        ).one_or_none()
        before = with_overrides(settings, row.overrides) if row is not None else settings
        after = with_overrides(before, changes)
        changed = diff(before, after)
        if not changed:
            return after
        if row is None:
            row = ProjectSettings(project_id=project_id)
            session.add(row)
        row.overrides = overrides_of(settings, after)
        row.updated_at, row.updated_by = utcnow(), token_name
        session.add(SettingsChange(project_id=project_id, token_name=token_name, changes=changed))
    log.info("project %d: %d setting(s) changed by %s", project_id, len(changed), token_name)
    return after


def project_history(store: Store, project_id: int, *, limit: int = 50) -> list[dict[str, Any]]:
    """The project's settings changes, newest first."""
    with store.session() as session:
        rows = session.scalars(
            select(SettingsChange)
            .where(SettingsChange.project_id == project_id)
            .order_by(SettingsChange.id.desc())
            .limit(limit)
        )
        return [
            {
                "id": row.id,
                "changed_at": row.changed_at.isoformat(),
                "token_name": row.token_name,
                "changes": list(row.changes),
            }
            for row in rows
        ]


def describe(store: Store, settings: Settings, project_id: int) -> dict[str, Any]:
    """What ``GET /api/projects/<id>/settings`` and ``labelloop strategy show`` print."""
    overrides = load_overrides(store, project_id)
    return {
        "project": project_id,
        "effective": _sections(effective_settings(store, settings, project_id)),
        "overrides": overrides,
        "defaults": _sections(settings),
    }


def loop_settings_for(store: Store, settings: Settings) -> Callable[[int], LoopSettings]:
    """Per-project loop settings for :class:`backend.runtime.scheduler.LoopScheduler`.

    A stored override that no longer validates is logged and the defaults are used, so one
    project's bad value cannot stop the scheduler's housekeeping for every project.
    """

    def settings_for(project_id: int) -> LoopSettings:
        try:
            return effective_settings(store, settings, project_id).loop
        except SettingsError as exc:
            log.warning("project %d: stored loop settings ignored: %s", project_id, exc)
            return settings.loop

    return settings_for
