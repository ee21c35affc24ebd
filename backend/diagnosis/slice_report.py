"""Slices: how the model does on groups of tasks named by task data fields (a camera, a site, a
source), and on images with a quality issue.

The admin names the fields (``diagnosis.slice_fields``, per project); by default every
low-cardinality string field of the task data is offered (2 to :data:`MAX_VALUES` values, on at
least half of the tasks; not URLs, not labelloop's own keys). Per slice: labeled support,
out-of-sample accuracy with a Wilson 95 % interval, macro F1 with a bootstrap 95 % interval, the
gap to the rest of the labeled items, and ``worse`` when a one-sided two-proportion z-test puts
the slice's accuracy below the rest's at p < 0.05.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import erf, sqrt
from typing import Any

import numpy as np
from numpy.typing import NDArray

from backend.diagnosis.schema import SliceField, SliceRow

MAX_VALUES = 20
#: Labeled items a slice needs before it can be flagged worse.
MIN_SUPPORT = 5
BOOTSTRAP = 200
Z95 = 1.959964


def offered_fields(datas: Sequence[Mapping[str, Any]], *, exclude: Sequence[str] = ()) -> list[str]:
    """Task data fields that look like groups: strings, 2..MAX_VALUES values, on half the tasks."""
    values: dict[str, set[str]] = {}
    present: dict[str, int] = {}
    for data in datas:
        for key, value in data.items():
            if isinstance(value, str) and value and not _looks_like_data(value):
                values.setdefault(key, set()).add(value)
                present[key] = present.get(key, 0) + 1
    return sorted(
        key
        for key, seen in values.items()
        if 2 <= len(seen) <= MAX_VALUES
        and present[key] * 2 >= len(datas)
        and not key.startswith("labelloop_")
        and key not in exclude
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


def wilson(successes: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def worse_p_value(k1: int, n1: int, k2: int, n2: int) -> float:
    """One-sided p-value that proportion 1 is below proportion 2 (pooled two-proportion z)."""
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (k1 + k2) / (n1 + n2)
    se = sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (k1 / n1 - k2 / n2) / se
    return 0.5 * (1 + erf(z / sqrt(2)))


def _macro_f1(y: NDArray[np.int64], pred: NDArray[np.int64]) -> float:
    """Macro F1 over the classes present in ``y`` (as scikit-learn's with those labels)."""
    k = int(max(y.max(), pred.max())) + 1 if len(y) else 1
    tp = np.bincount(y[y == pred], minlength=k)
    support, predicted = np.bincount(y, minlength=k), np.bincount(pred, minlength=k)
    present = support > 0
    denominator = support + predicted
    f1 = np.divide(2 * tp, denominator, out=np.zeros(k), where=denominator > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def slice_row(
    value: str,
    members: NDArray[np.bool_],
    rest: NDArray[np.bool_],
    y: NDArray[np.int64],
    pred: NDArray[np.int64],
    rng: np.random.Generator,
) -> SliceRow:
    """One slice against the rest (both masks over labeled items)."""
    n, k = int(members.sum()), int((pred[members] == y[members]).sum())
    n_rest, k_rest = int(rest.sum()), int((pred[rest] == y[rest]).sum())
    low, high = wilson(k, n)
    f1 = f1_low = f1_high = None
    if n:
        f1 = _macro_f1(y[members], pred[members])
        rows = np.flatnonzero(members)
        draws = rng.choice(rows, size=(BOOTSTRAP, n))
        boot = [_macro_f1(y[d], pred[d]) for d in draws]
        f1_low, f1_high = (float(v) for v in np.quantile(boot, [0.025, 0.975]))
    accuracy = k / n if n else None
    gap = accuracy - k_rest / n_rest if accuracy is not None and n_rest else None
    p = worse_p_value(k, n, k_rest, n_rest)
    return SliceRow(
        value=value,
        support=n,
        accuracy=None if accuracy is None else round(accuracy, 4),
        accuracy_low=round(low, 4),
        accuracy_high=round(high, 4),
        macro_f1=None if f1 is None else round(f1, 4),
        f1_low=None if f1_low is None else round(f1_low, 4),
        f1_high=None if f1_high is None else round(f1_high, 4),
        gap=None if gap is None else round(gap, 4),
        p_value=round(p, 4),
        worse=n >= MIN_SUPPORT and p < 0.05,
    )


def slice_field(
    name: str,
    groups: Mapping[str, NDArray[np.bool_]],
    scope: NDArray[np.bool_],
    y: NDArray[np.int64],
    pred: NDArray[np.int64],
    rng: np.random.Generator,
) -> SliceField:
    """Every group of one field against the other labeled items of ``scope``."""
    rows = [slice_row(v, m & scope, ~m & scope, y, pred, rng) for v, m in groups.items()]
    rows.sort(key=lambda r: (not r.worse, r.gap if r.gap is not None else 0.0, r.value))
    return SliceField(field=name, slices=rows)


def value_groups(values: Sequence[str | None]) -> dict[str, NDArray[np.bool_]]:
    """Value -> (n,) mask of the items that have it."""
    array = np.array([v if v is not None else "" for v in values], dtype=object)
    return {v: array == v for v in sorted({v for v in values if v is not None})}


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
    data = {t.id: t.data or {} for t in tasks}
    datas = [data.get(int(t), {}) for t in task_ids]
    fields = project_slice_fields(datas, configured, image_key=image_key)
    return {name: field_values(datas, name) for name in fields}
