"""Label Studio's JSON into the store: the label config parsed, tasks and annotations converted.

The store keeps rows and the ordering rule (:mod:`backend.store.repo`); what a config, a task or
an annotation means in Label Studio's terms is read here, with :mod:`backend.labelstudio`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Session

from backend.labelstudio.config import LabelConfig, UnsupportedConfig, parse_label_config
from backend.labelstudio.convert import annotation_labels, task_image_ref
from backend.store import repo
from backend.store.models import Project
from backend.store.repo import Outcome


def set_label_config(session: Session, project: Project, label_config: str) -> LabelConfig | None:
    """Store and parse a project's label config; an unsupported one is kept with its reason."""
    if project.label_config == label_config and project.config_error is None and project.labels:
        return project_config(project)
    try:
        cfg = parse_label_config(label_config)
    except UnsupportedConfig as exc:
        repo.store_label_config(session, project, label_config, parsed=None, error=str(exc))
        return None
    parsed = {
        "from_name": cfg.from_name,
        "to_name": cfg.to_name,
        "value_key": cfg.value_key,
        "labels": cfg.labels,
        "multiple": cfg.multiple,
    }
    repo.store_label_config(session, project, label_config, parsed=parsed, error=None)
    return cfg


def project_config(project: Project) -> LabelConfig | None:
    """The parsed label config of a project, or None when it has none we support."""
    if project.config_error or not project.from_name or not project.to_name:
        return None
    return LabelConfig(
        from_name=project.from_name,
        to_name=project.to_name,
        value_key=project.value_key or "image",
        labels=tuple(project.labels),
        multiple=project.multiple,
    )


def upsert_task(
    session: Session,
    project: Project,
    data: Mapping[str, Any],
    *,
    ahead: repo.ReadAhead | None = None,
    listed: bool = False,
) -> Outcome:
    """Insert or refresh one task from Label Studio's task JSON (:func:`repo.upsert_task`)."""
    cfg = project_config(project)
    ref = task_image_ref(dict(data), cfg) if cfg is not None else None
    return repo.upsert_task(session, project, data, image_ref=ref, ahead=ahead, listed=listed)


def upsert_annotation(
    session: Session,
    project: Project,
    task_id: int,
    data: Mapping[str, Any],
    *,
    from_reconcile: bool = False,
    ahead: repo.ReadAhead | None = None,
) -> Outcome:
    """Insert or update one annotation from Label Studio's JSON (:func:`repo.upsert_annotation`)."""
    cfg = project_config(project)
    labels = list(annotation_labels(dict(data), cfg)) if cfg is not None else []
    return repo.upsert_annotation(
        session,
        project,
        task_id,
        data,
        labels=labels,
        from_reconcile=from_reconcile,
        ahead=ahead,
    )
