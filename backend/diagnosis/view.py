"""The API's side of the diagnosis: load the saved one and add what changes between cycles (the
learning curve across model versions, Label Studio links, thumbnail URLs, the current drift
threshold)."""

from __future__ import annotations

import logging
from typing import TypeVar

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.diagnosis.forecast import forecast
from backend.diagnosis.performance import fit_gap
from backend.diagnosis.record import diagnosis_path
from backend.diagnosis.schema import (
    FORMAT,
    ArmBelief,
    AuditEstimate,
    CurvePoint,
    Diagnosis,
    Selection,
    TaskRow,
)
from backend.loop.selection import latest_report
from backend.settings import Settings
from backend.store.db import Store
from backend.store.models import Cycle, ModelVersion

log = logging.getLogger(__name__)
Row = TypeVar("Row", bound=TaskRow)


def load_diagnosis(settings: Settings, project_id: int) -> Diagnosis | None:
    """The saved diagnosis, or None when no cycle has written one yet (or an older format's)."""
    try:
        text = diagnosis_path(settings, project_id).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return Diagnosis.model_validate_json(text)
    except ValidationError:
        # An older labelloop's file (or a foreign one): the next cycle replaces it.
        log.warning(
            "project %d: saved diagnosis unreadable (format %d expected)", project_id, FORMAT
        )
        return None


def learning_curve(store: Store, project_id: int) -> list[CurvePoint]:
    """One point per model version, oldest first: labels used against accuracy and macro F1,
    and the version's accuracy on the audit items where its cycle measured it."""
    with store.session() as session:
        rows = session.scalars(
            select(ModelVersion)
            .where(ModelVersion.project_id == project_id)
            .order_by(ModelVersion.created_at, ModelVersion.id)
        ).all()
        audited = _audit_by_version(session, project_id)
        return [
            CurvePoint(
                version=row.version,
                created_at=row.created_at.isoformat(timespec="seconds"),
                n_labels=row.n_labels,
                accuracy=row.metrics.get("accuracy"),
                macro_f1=row.metrics.get("macro_f1"),
                train_accuracy=row.metrics.get("train_accuracy"),
                audit_accuracy=audited[row.version].accuracy if row.version in audited else None,
                audit_n=audited[row.version].n if row.version in audited else None,
            )
            for row in rows
        ]


def _audit_by_version(session: Session, project_id: int) -> dict[str, AuditEstimate]:
    """Model version -> its cross-fitted accuracy on the audit items, from the cycle that
    trained it (``audit_accuracy_crossfit`` in the cycle's metrics)."""
    found: dict[str, AuditEstimate] = {}
    for version, metrics in session.execute(
        select(Cycle.model_version, Cycle.metrics).where(
            Cycle.project_id == project_id, Cycle.state == "succeeded"
        )
    ):
        estimate = _estimate((metrics or {}).get("audit_accuracy_crossfit"))
        if version is not None and estimate is not None:
            found[version] = estimate
    return found


def task_link(browser_url: str, project_id: int, task_id: int) -> str:
    """The Label Studio URL that opens ``task_id`` in the project's data manager."""
    return f"{browser_url}/projects/{project_id}/data?task={task_id}"


def thumb_url(project_id: int, task_id: int) -> str:
    return f"/dashboard/{project_id}/thumb/{task_id}.png"


def with_links(
    diagnosis: Diagnosis, browser_url: str, project_id: int, *, drift_threshold: float
) -> Diagnosis:
    """The diagnosis with task links, thumbnail URLs and the drift warning at today's threshold."""

    def linked(row: Row) -> Row:
        return row.model_copy(
            update={
                "ls_url": task_link(browser_url, project_id, row.task),
                "thumbnail": thumb_url(project_id, row.task),
            }
        )

    coverage = diagnosis.coverage.model_copy(
        update={
            "under_covered": [
                c.model_copy(
                    update={
                        "example_links": [task_link(browser_url, project_id, t) for t in c.examples]
                    }
                )
                for c in diagnosis.coverage.under_covered
            ]
        }
    )
    drift = diagnosis.drift
    drift = drift.model_copy(
        update={
            "threshold": drift_threshold,
            "warning": drift.auc is not None and drift.auc >= drift_threshold,
        }
    )
    return diagnosis.model_copy(
        update={
            "label_errors": [linked(e) for e in diagnosis.label_errors],
            "outliers": [linked(o) for o in diagnosis.outliers],
            "coverage": coverage,
            "drift": drift,
            "label_studio_url": browser_url,
        }
    )


def diagnosis_view(settings: Settings, store: Store, project_id: int) -> Diagnosis | None:
    """The saved diagnosis plus the learning curve, task links and thumbnail URLs; None if none."""
    diagnosis = load_diagnosis(settings, project_id)
    if diagnosis is None:
        return None
    linked = with_links(
        diagnosis,
        settings.label_studio.browser_url,
        project_id,
        drift_threshold=settings.diagnosis.drift_auc_warning,
    )
    curve = learning_curve(store, project_id)
    return linked.model_copy(
        update={
            "learning_curve": curve,
            "fit_gap": fit_gap(curve),
            "forecast": forecast(curve),
            "selection": selection_view(store, project_id),
        }
    )


def selection_view(store: Store, project_id: int) -> Selection | None:
    """The newest cycle's selection report as the diagnosis shows it; None before one."""
    report = latest_report(store, project_id)
    if report is None or not isinstance(report["selection"], dict):
        return None
    chosen = report["selection"]
    accuracy = report.get("accuracy")
    return Selection(
        mode=str(chosen["mode"]),
        arms=[ArmBelief.model_validate(arm) for arm in chosen.get("arms", [])],
        audit=_estimate(report.get("audit_accuracy")),
        audit_crossfit=_estimate(report.get("audit_accuracy_crossfit")),
        crossval_accuracy=float(accuracy) if isinstance(accuracy, int | float) else None,
    )


def _estimate(value: object) -> AuditEstimate | None:
    return AuditEstimate.model_validate(value) if isinstance(value, dict) else None
