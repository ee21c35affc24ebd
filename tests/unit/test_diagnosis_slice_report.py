"""Planted answers for slices: offered fields, a slice with noisier labels flagged worse."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from backend.diagnosis.compute import DiagnosisInputs, compute_diagnosis
from backend.diagnosis.slice_report import worse_p_value
from backend.loop.task_fields import offered_fields, slice_ids
from backend.settings import DiagnosisSettings


def test_low_cardinality_string_fields_are_offered() -> None:
    datas = [
        {"image": f"http://x/{i}.jpg", "camera": f"cam{i % 3}", "id_text": f"t{i}", "n": i}
        for i in range(40)
    ]
    datas[0]["labelloop_quality_issue"] = "dark"
    assert offered_fields(datas, exclude=["image"]) == ["camera"]
    ids = slice_ids([["a", "b", None, "a"], ["x", "x", None, "y"]])
    assert ids.tolist() == [0, 1, -1, 2]


def test_offered_fields_keep_their_rules_at_every_boundary() -> None:
    from backend.loop.task_fields import MAX_VALUES

    n = 200
    datas = [
        {
            "image": f"/data/upload/{i}.png",
            "at_max": f"v{i % MAX_VALUES}",  # exactly MAX_VALUES values: offered
            "past_max": f"v{i % (MAX_VALUES + 1)}",  # one more: not
            "half": f"h{i % 2}" if i % 2 else "",  # set on half the tasks, 1 value: not
            "site": f"s{i % 3}" if i < n // 2 else 7,  # strings on exactly half: offered
            "few": f"f{i % 2}" if i < n // 2 - 1 else None,  # one short of half: not
            "links": f"https://x/{i % 3}.jpg",  # URLs: not
            "labelloop_flag": f"x{i % 2}",  # labelloop's own: not
        }
        for i in range(n)
    ]
    assert offered_fields(datas, exclude=["image"]) == ["at_max", "site"]
    assert offered_fields(datas, exclude=["image", "site"]) == ["at_max"]
    assert offered_fields([], exclude=["image"]) == []


def test_the_one_sided_test() -> None:
    assert worse_p_value(10, 50, 90, 100) < 0.001
    assert worse_p_value(45, 50, 90, 100) == 0.5 and worse_p_value(48, 50, 90, 100) > 0.8


def test_the_slice_with_noisier_labels_is_flagged_worse() -> None:
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 3, n).astype(np.int64)
    source = np.where(np.arange(n) % 4 == 0, "phone", "scanner")
    probs = np.full((n, 3), 0.05)
    predicted = labels.copy()
    noisy = (source == "phone") & (rng.random(n) < 0.4)  # 40 % of phone labels disagree
    predicted[noisy] = (labels[noisy] + 1) % 3
    probs[np.arange(n), predicted] = 0.9
    inputs = DiagnosisInputs(
        task_ids=np.arange(1, n + 1, dtype=np.int64),
        embeddings=rng.normal(size=(n, 8)),
        labels=labels,
        classes=("a", "b", "c"),
        class_counts=np.bincount(labels, minlength=3),
        oos_probs=probs,
        slice_values={"source": tuple(source.tolist())},
    )
    diag = compute_diagnosis(inputs, limits=DiagnosisSettings(), rng=rng)
    assert diag.slices is not None and not diag.slices.configured
    [field] = diag.slices.fields
    rows = {r.value: r for r in field.slices}
    phone, scanner = rows["phone"], rows["scanner"]
    assert phone.worse and not scanner.worse and field.slices[0].value == "phone"
    assert phone.support == 100 and phone.accuracy is not None and phone.gap is not None
    assert phone.accuracy_low < phone.accuracy < phone.accuracy_high
    # The exact (Clopper-Pearson) 95 % bounds of the slice's k right out of n (rows keep 4 places).
    k = round(phone.accuracy * 100)
    assert phone.accuracy_low == pytest.approx(beta.ppf(0.025, k, 100 - k + 1), abs=5e-5)
    assert phone.accuracy_high == pytest.approx(beta.ppf(0.975, k + 1, 100 - k), abs=5e-5)
    # All 300 right: the lower bound is 0.025 ** (1 / 300), the upper one 1.
    assert scanner.accuracy_low == pytest.approx(0.025 ** (1 / 300), abs=5e-5)
    assert scanner.accuracy_high == 1.0
    assert phone.gap < -0.25 and scanner.accuracy == 1.0
    assert phone.f1_low is not None and phone.f1_high is not None
    assert phone.f1_low <= (phone.macro_f1 or 0) <= phone.f1_high


def test_fast_macro_f1_equals_scikit_learns() -> None:
    from sklearn.metrics import f1_score

    from backend.diagnosis.slice_report import _macro_f1

    rng = np.random.default_rng(3)
    y, pred = rng.integers(0, 4, 50), rng.integers(0, 5, 50)
    expected = f1_score(y, pred, average="macro", labels=np.unique(y), zero_division=0.0)
    assert _macro_f1(y, pred) == pytest.approx(expected)
