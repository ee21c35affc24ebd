"""The audit picks in the store: recorded per push, resolved by the next cycle, estimated."""

from __future__ import annotations

from backend.loop import selection
from backend.store.db import Store
from backend.store.models import SelectionPick


def _states(store: Store) -> dict[int, str]:
    with store.session() as session:
        return {p.task_id: p.state for p in session.query(SelectionPick).all()}


def test_picks_resolve_when_labels_arrive_and_expire_when_not(store: Store) -> None:
    arms = ("audit", "margin", "audit", "random", "audit")
    predicted = ["cat", "dog", "dog", None, "cat"]
    assert selection.record(store, 7, 1, "v1", [11, 12, 13, 14, 15], arms, predicted) == 5
    assert selection.audit_accuracy(store, 7) is None  # nothing labeled yet
    done = selection.resolve(store, 7, {11: "cat", 12: "dog", 13: "cat"})
    assert sorted(p.task_id for p in done) == [11, 12, 13]
    estimate = selection.audit_accuracy(store, 7)
    assert estimate is not None and (estimate.n, estimate.correct) == (2, 1)  # 11 right, 13 wrong
    assert estimate.low < 0.5 < estimate.high
    selection.record(store, 7, 2, "v2", [14], ("audit",), ["dog"])
    states = _states(store)
    assert states[15] == "expired"  # not labeled while push 1 was live
    assert states[11] == "labeled"
    assert selection.audit_accuracy(store, 8) is None  # per project


def test_strategy_show_lines_name_trusted_arms_and_both_accuracies() -> None:
    report = {
        "selection": {
            "mode": "adaptive",
            "arms": [
                {"arm": "random", "share": 0.1, "reason": "the reference"},
                {"arm": "margin", "share": 0.8, "reason": "won 6.0 of 7.0 ...: trusted"},
            ],
        },
        "audit_accuracy": {"n": 40, "accuracy": 0.8, "low": 0.69, "high": 0.88, "confidence": 0.9},
        "accuracy": 0.61,
    }
    lines = selection.describe_report(report)
    assert lines[0] == "selection (last cycle): adaptive"
    assert any("margin" in line and "trusted" in line for line in lines)
    assert any(line.startswith("audit accuracy (prequential, 40 items): 0.800") for line in lines)
    assert lines[-1].endswith("0.610")
