"""Pure conversions between Label Studio's task/annotation JSON and what labelloop keeps."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from backend.labelstudio.config import LabelConfig


def task_image_ref(task: Mapping[str, Any], cfg: LabelConfig) -> str | None:
    """The image reference in ``task["data"][cfg.value_key]``, or None when absent or not text."""
    data = task.get("data")
    if not isinstance(data, Mapping):
        return None
    ref = data.get(cfg.value_key)
    return ref if isinstance(ref, str) and ref.strip() else None


def annotation_labels(annotation: Mapping[str, Any], cfg: LabelConfig) -> tuple[str, ...]:
    """The choices an annotation gives for ``cfg.from_name``, in the order chosen.

    A cancelled (skipped) annotation and one without our control give ``()``. Values are kept as
    Label Studio stored them, even ones no longer in ``cfg.labels`` (the config may have changed);
    the caller decides what to do with those.
    """
    if annotation.get("was_cancelled"):
        return ()
    labels: list[str] = []
    for item in annotation.get("result") or ():
        if not isinstance(item, Mapping) or item.get("from_name") != cfg.from_name:
            continue
        value = item.get("value")
        choices = value.get("choices") if isinstance(value, Mapping) else None
        for choice in choices or ():
            if isinstance(choice, str) and choice not in labels:
                labels.append(choice)
    return tuple(labels)


def choices_result(labels: Sequence[str], cfg: LabelConfig) -> list[dict[str, Any]]:
    """The ``result`` list that selects ``labels`` in ``cfg``'s control (empty for no labels)."""
    unknown = [label for label in labels if label not in cfg.labels]
    if unknown:
        raise ValueError(f"labels {unknown} are not choices of {cfg.from_name!r}")
    if len(labels) > 1 and not cfg.multiple:
        raise ValueError(f"{cfg.from_name!r} is single choice; got {len(labels)} labels")
    if not labels:
        return []
    return [
        {
            "from_name": cfg.from_name,
            "to_name": cfg.to_name,
            "type": "choices",
            "value": {"choices": list(labels)},
        }
    ]


def prediction_item(
    labels: Sequence[str],
    score: float,
    model_version: str,
    cfg: LabelConfig,
    cluster: int | None = None,
) -> dict[str, Any]:
    """One prediction as ``/predict`` answers it and ``import/predictions`` takes it.

    Args:
        labels: the suggested choices (one for single choice).
        score: a finite float; with uncertainty sampling Label Studio serves low scores first.
        model_version: the version the prediction belongs to.
        cfg: the project's parsed label config.
        cluster: optional group; Label Studio then round-robins annotators over clusters.

    Raises:
        ValueError: unknown labels, several labels for a single choice, a non-finite score.
    """
    if not math.isfinite(score):
        raise ValueError(f"score must be finite, got {score}")
    item: dict[str, Any] = {
        "result": choices_result(labels, cfg),
        "score": float(score),
        "model_version": model_version,
    }
    if cluster is not None:
        item["cluster"] = int(cluster)
    return item


def parse_ls_datetime(value: Any) -> datetime | None:
    """Label Studio's ISO timestamps (``2026-11-29T07:14:12.955499Z``) as aware UTC datetimes."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def ls_datetime(value: datetime) -> str:
    """A datetime as Label Studio's filters take it (UTC, microseconds, ``Z``).

    Raises:
        ValueError: a naive datetime (whose zone would be a guess).
    """
    if value.tzinfo is None:
        raise ValueError("a timezone-aware datetime is needed")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
