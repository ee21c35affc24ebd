"""What ``/predict`` answers: one pre-annotation per task from the project's current model.

Before a project has a model we answer ``{"results": []}``. Label Studio 1.23 then stores nothing
(it only stores predictions when it gets exactly one result per task) and asks again later, instead
of storing an empty or made-up prediction that would count as "predicted" in the Data Manager, stop
LS from asking again when the task is opened, and sort first in uncertainty sampling.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from backend.labelstudio.config import LabelConfig, parse_label_config
from backend.store import repo
from backend.store.models import Project

if TYPE_CHECKING:
    from backend.app import Services

log = logging.getLogger(__name__)


def project_label_config(svc: Services, project_id: int, label_config: str | None) -> LabelConfig:
    """The project's parsed config: the stored one, else the one sent with the request.

    A project this backend was never set up for gets no row: its config is only parsed.

    Raises:
        UnsupportedConfig: neither is an image classification config we support.
    """
    with svc.store.session() as session:
        project = session.get(Project, project_id)
        if project is None:
            return parse_label_config(label_config or "")
        cfg = repo.project_config(project)
        if cfg is None and label_config:
            cfg = repo.set_label_config(session, project, label_config)
    if cfg is None:
        return parse_label_config(label_config or "")
    return cfg


def predict_tasks(
    svc: Services, project_id: int, tasks: list[dict[str, Any]], *, label_config: str | None
) -> list[dict[str, Any]]:
    """One result per task in request order, or an empty list while no model exists."""
    cfg = project_label_config(svc, project_id, label_config)
    served = svc.models.get(project_id)
    if served is None or not tasks:
        log.info("predict project %d: %d tasks, no model yet", project_id, len(tasks))
        return []
    from backend.predict_model import predict_with_model

    return predict_with_model(svc, served, cfg, tasks)
