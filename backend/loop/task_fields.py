"""Task data fields as groups (slices): which fields are offered, and each task's value.

The admin names the fields (``diagnosis.slice_fields``, per project); by default every
low-cardinality string field of the task data is offered (2 to :data:`MAX_VALUES` values, on at
least half of the tasks; not URLs, not labelloop's own keys). The cycle gives the strategies one
slice id per combination of values (:func:`slice_ids`, the pool's ``slices``); the diagnosis
reports how the model does on each value (:mod:`backend.diagnosis.slice_report`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

MAX_VALUES = 20


def offered_fields(datas: Sequence[Mapping[str, Any]], *, exclude: Sequence[str] = ()) -> list[str]:
    """Task data fields that look like groups: strings, 2..MAX_VALUES values, on half the tasks."""
    # A key is dropped at first sight when it can never be offered (excluded, labelloop's own, or
    # past MAX_VALUES values), so the image field of 100,000 tasks is not tested value by value.
    dropped = set(exclude)
    values: dict[str, set[str]] = {}
    present: dict[str, int] = {}
    for data in datas:
        for key, value in data.items():
            if key in dropped or not isinstance(value, str) or not value:
                continue
            if key.startswith("labelloop_"):
                dropped.add(key)
            elif not _looks_like_data(value):
                seen = values.setdefault(key, set())
                seen.add(value)
                if len(seen) > MAX_VALUES:
                    dropped.add(key)
                present[key] = present.get(key, 0) + 1
    return sorted(
        key
        for key, seen in values.items()
        if key not in dropped and len(seen) >= 2 and present[key] * 2 >= len(datas)
    )


def _looks_like_data(value: str) -> bool:
    return (
        value.startswith(("http://", "https://", "data:", "/", "s3://", "gs://"))
        or len(value) > 100
    )


def field_values(datas: Sequence[Mapping[str, Any]], field: str) -> tuple[str | None, ...]:
    """(n,) each task's value of ``field`` as a string, None where it has none."""
    out = []
    for data in datas:
        value = data.get(field)
        out.append(str(value) if isinstance(value, str | int) and value != "" else None)
    return tuple(out)


def slice_ids(columns: Sequence[Sequence[str | None]]) -> NDArray[np.int64]:
    """(n,) one id per combination of the fields' values, -1 where a task has none of them."""
    if not columns:
        return np.zeros(0, dtype=np.int64)
    keys = list(zip(*columns, strict=True))
    ids: dict[tuple[str | None, ...], int] = {}
    out = np.full(len(keys), -1, dtype=np.int64)
    for row, key in enumerate(keys):
        if any(v is not None for v in key):
            out[row] = ids.setdefault(key, len(ids))
    return out


def project_slice_fields(
    datas: Sequence[Mapping[str, Any]], configured: Sequence[str] | None, *, image_key: str | None
) -> list[str]:
    """The admin's fields when set, else the offered ones (never the image field)."""
    if configured is not None:
        return list(configured)
    return offered_fields(datas, exclude=[image_key] if image_key else [])


def slice_columns(
    tasks: Sequence[Any],
    task_ids: Sequence[int] | NDArray[np.int64],
    configured: Sequence[str] | None,
    *,
    image_key: str | None,
) -> dict[str, tuple[str | None, ...]]:
    """Slice field -> each task's value, in ``task_ids`` order (``tasks``: rows with ``id`` and
    ``data``)."""
    data = {t.id: t.data for t in tasks}
    empty: dict[str, Any] = {}
    ids = task_ids.tolist() if isinstance(task_ids, np.ndarray) else [int(t) for t in task_ids]
    datas = [data.get(t) or empty for t in ids]
    fields = project_slice_fields(datas, configured, image_key=image_key)
    return {name: field_values(datas, name) for name in fields}
