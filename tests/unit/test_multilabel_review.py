"""Multi-label projects get label-error candidates too: a wrong tag is flagged, named, pushed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend.diagnosis.view import load_diagnosis
from backend.settings import Settings
from backend.store import repo
from backend.store.models import ReviewFlag
from tests.conftest import make_settings, upgraded_store
from tests.fake_labelstudio import CLASSES, FAST_MODEL, FakeLabelStudio, run_one_cycle

PLANTED = {3: ("dog",), 10: ("bird",), 20: ("cat",)}  # true classes cat, dog, bird: all wrong


@pytest.fixture
def ml_settings(tmp_path: Path) -> Settings:
    model = {**FAST_MODEL, "max_epochs": 30}
    return make_settings(tmp_path, model=model, strategy={"cold_start_labels": 0})


@pytest.mark.parametrize("signal", ["confident_learning", "self_confidence"])
def test_a_wrong_tag_is_flagged_with_the_tag_named(
    ml_settings: Settings, signal: str, tmp_path: Path
) -> None:
    settings = ml_settings.model_copy(
        update={"strategy": ml_settings.strategy.model_copy(update={"review_signal": signal})}
    )
    store = next(upgraded_store(settings))
    try:
        ls = FakeLabelStudio(n_tasks=60, n_labeled=48, multi=True, wrong=PLANTED)
        run_one_cycle(settings, store, ls, project=7)
        with store.session() as session:
            flags = {
                f.task_id: f
                for f in session.query(ReviewFlag).filter_by(project_id=7, kind="label_error")
            }
            assert repo.ensure_project(session, 7).model_version is not None
        planted_tasks = {100 + i: tags for i, tags in PLANTED.items()}
        assert set(planted_tasks) <= set(flags), sorted(flags)
        for task, tags in planted_tasks.items():
            flag = flags[task]
            assert flag.annotated_label == tags[0]
            truth = CLASSES[(task - 100) % 3]
            # The doubted tag: the wrong one given, or the true one missing.
            expected = (
                rf"^(tagged '{tags[0]}'; model says it is absent"
                rf"|not tagged '{truth}'; model says it is present) \(\d+%\)$"
            )
            assert re.match(expected, flag.reason), flag.reason
            assert ls.task_data[task]["labelloop_label_error_reason"] == flag.reason
        # A correctly tagged task is not flagged.
        assert len(flags) <= len(PLANTED) + 3
        # The dashboard lists the same candidates with the same reasons, and no confusion matrix.
        diagnosis = load_diagnosis(settings, 7)
        assert diagnosis is not None and diagnosis.classification is None
        listed = {e.task: e.reason for e in diagnosis.label_errors}
        assert {task: flags[task].reason for task in planted_tasks} == {
            task: listed[task] for task in planted_tasks
        }
    finally:
        store.dispose()


def test_the_default_suspicion_judges_each_tag(ml_settings: Settings) -> None:
    assert ml_settings.strategy.review_signal == "suspicion"
    store = next(upgraded_store(ml_settings))
    try:
        ls = FakeLabelStudio(n_tasks=60, n_labeled=48, multi=True, wrong=PLANTED)
        run_one_cycle(ml_settings, store, ls, project=7)
        with store.session() as session:
            flags = {
                f.task_id: f
                for f in session.query(ReviewFlag).filter_by(project_id=7, kind="label_error")
            }
        planted = {100 + i: tags for i, tags in PLANTED.items()}
        assert len(set(planted) & set(flags)) >= 2, sorted(flags)
        assert len(set(flags) - set(planted)) <= 2, sorted(flags)
        for task in set(planted) & set(flags):
            reason = flags[task].reason
            assert re.match(r"^(not )?tagged '\w+'; the model and similar labeled items", reason)
            assert reason.endswith("likely mislabeled"), reason
    finally:
        store.dispose()
