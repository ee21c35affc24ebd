"""The audit sample: uniform draws give an unbiased accuracy estimate with honest intervals."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from strategies.audit import (
    audit_count,
    audit_slots,
    draw_audit,
    exact_interval,
    prequential_accuracy,
)


def test_audit_count_keeps_one_item_in_small_batches() -> None:
    assert audit_count(100, 0.1) == 10
    assert audit_count(5, 0.1) == 1
    assert audit_count(20, 0.0) == 0
    assert audit_count(3, 0.5) == 2


def test_every_batch_keeps_its_share_even_a_short_last_one() -> None:
    slots = audit_slots(250, 100, 0.1)
    assert [int(slots[i : i + 100].sum()) for i in (0, 100, 200)] == [10, 10, 5]
    short = audit_slots(18, 100, 0.1)  # a pool smaller than one batch still carries its share
    assert int(short.sum()) == 2 and not short[0]
    assert not audit_slots(40, 20, 0.0).any()


def test_draws_are_unique_unlabeled_items_and_stop_at_the_pool() -> None:
    candidates = np.arange(10, 30)
    drawn = draw_audit(candidates, 5, rng=np.random.default_rng(0))
    assert len(set(drawn.tolist())) == 5 and set(drawn) <= set(candidates)
    assert sorted(draw_audit(candidates, 50, rng=np.random.default_rng(0))) == list(candidates)


def test_the_audit_estimate_is_unbiased_where_picked_items_are_not() -> None:
    """A model right on 80 % of the pool and wrong where it is unsure: accuracy on the items an
    uncertainty strategy picks is far lower, the audit estimate's mean is the truth."""
    rng = np.random.default_rng(0)
    n = 2000
    confidence = rng.random(n)
    correct = rng.random(n) < 0.55 + 0.5 * confidence  # errors where the model is unsure
    truth = correct.mean()
    estimates, covered = [], []
    for seed in range(400):
        audit = draw_audit(np.arange(n), 40, rng=np.random.default_rng(seed))
        est = prequential_accuracy(correct[audit])
        estimates.append(est.accuracy)
        covered.append(est.low <= truth <= est.high)
    picked = np.argsort(confidence)[:200]  # what margin sampling would have labeled
    assert np.mean(estimates) == pytest.approx(truth, abs=0.01)
    assert correct[picked].mean() < truth - 0.15
    assert np.mean(covered) >= 0.85  # the 90 % interval holds at 40 items


def test_exact_interval_is_inside_0_1_and_narrows() -> None:
    assert exact_interval(0, 0) == (0.0, 1.0)
    low, high = exact_interval(10, 10)
    assert 0.7 < low < 1.0 and high == 1.0
    assert exact_interval(0, 10)[0] == 0.0
    wide, narrow = exact_interval(7, 10), exact_interval(700, 1000)
    assert wide[1] - wide[0] > 5 * (narrow[1] - narrow[0])
    est = prequential_accuracy(np.array([True, False, True, True]))
    assert (est.n, est.correct, est.accuracy) == (4, 3, 0.75)
    assert est.as_dict()["confidence"] == 0.9


@pytest.mark.parametrize("n", [1, 5, 10, 20, 40, 80])
def test_the_interval_covers_at_least_as_often_as_it_says(n: int) -> None:
    """Exact coverage (summed over every outcome) for accuracies from 0.5 to 0.999: never under
    the 90 % it states, also near 1, where a good model's accuracy is."""
    counts = np.arange(n + 1)
    bounds = [exact_interval(int(k), n) for k in counts]
    for p in np.linspace(0.5, 0.999, 60):
        covered = [low <= p <= high for low, high in bounds]
        coverage = float(binom.pmf(counts, n, p)[covered].sum())
        assert coverage >= 0.9 - 1e-9, (n, p, coverage)
