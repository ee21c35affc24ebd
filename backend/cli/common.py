"""What the ``labelloop`` commands share: the one-line error, the Label Studio client, connect.

Every command module imports from here, never from :mod:`backend.cli.main` (which imports them).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from backend.settings import Settings

log = logging.getLogger("labelloop")


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


# Commands that talk to Label Studio: without a token they stop before creating any file.
NEEDS_LABEL_STUDIO = frozenset({"connect", "sync", "train", "cycle"})


def require_label_studio(settings: Settings, command: str) -> None:
    """Refuse a command that talks to Label Studio before it touches anything, without a token."""
    if settings.label_studio.token is None:
        raise CliError(
            f"`{command}` needs a Label Studio API token: set label_studio.token in the file "
            "given with --config, or LABELLOOP_LABEL_STUDIO__TOKEN (a personal access token or "
            "a legacy token); the demo writes one to .demo/labelloop.yaml"
        )


def label_studio_client(settings: Settings) -> Any:
    """A Label Studio client for a CLI command (CliError when no token is configured)."""
    from backend.labelstudio.client import LabelStudio

    require_label_studio(settings, "this command")
    return LabelStudio(settings.label_studio)


@dataclass(frozen=True)
class Connected:
    """What ``connect`` did: the backend registered, the sync, the first cycle queued."""

    project: int
    backend_id: int | None
    dashboard: str
    tasks: int
    annotations: int
    cycle_id: int


def connect_project(settings: Settings, project: int) -> Connected:
    """Register the backend, prepare the project, sync it and queue its first cycle at once.

    The queued cycle (trigger ``connect``) orders "Label All Tasks" from the first task: with no
    labels yet it pushes the cold-start order, so annotators never start in random order.
    """
    from backend.loop.sync import reconcile
    from backend.store import cycle_records
    from backend.store.db import Store
    from backend.store.models import utcnow

    store = Store(settings.store.url)
    store.upgrade()
    try:
        with label_studio_client(settings) as ls:
            dashboard = f"{settings.server.public_url}/dashboard/{project}"
            backend = ls.connect_ml_backend(
                project,
                url=settings.server.public_url,
                title=settings.server.title,
                basic_auth=settings.server.basic_auth,
                description=f"labelloop diagnosis: {dashboard}",
            )
            ls.set_sampling(project, "Uncertainty sampling")
            link_dashboard(ls, project, dashboard)
            report = reconcile(store, ls, project)
        now = utcnow()
        with store.session() as session:
            cycle_id = cycle_records.request(session, project, "connect", due_at=now, now=now).id
    finally:
        store.dispose()
    log.info("connected project %d (%d tasks); cycle %d queued", project, report.tasks, cycle_id)
    backend_id = backend.get("id")
    return Connected(
        project,
        int(backend_id) if backend_id is not None else None,
        dashboard,
        report.tasks,
        report.annotations,
        cycle_id,
    )


def link_dashboard(ls: Any, project: int, url: str) -> None:
    """Put the dashboard link in the project's description (once), where admins look."""
    description = ls.get_project(project).get("description") or ""
    if url not in description:
        line = f"labelloop diagnosis: {url}"
        ls.update_project(project, description=f"{description}\n{line}".strip())
