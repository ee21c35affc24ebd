"""The loop against a REAL Label Studio: cycles steer "Label All Tasks" and the review views.

A simulated annotator labels digits through Label Studio's own next-task API (the "Label All
Tasks" path) with the true labels, except a few planted wrong ones. Cycles run through the same
code as the scheduler (``run_cycle_once``), so the test controls when they happen.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import select

from backend.cli.demo import DEMO_CONFIG
from backend.diagnosis.view import load_diagnosis
from backend.labelstudio.client import LabelStudio
from backend.runtime.lease import run_cycle_once
from backend.runtime.runner import make_runner
from backend.settings import load_settings
from backend.simulate.sets import digit_images
from backend.store import repo
from backend.store.models import SelectionPick
from backend.store.project_settings import set_project_settings
from strategies.audit import audit_count
from strategies.bandit import ARMS
from tests.integration.support import Loop, choice, digits_loop

pytestmark = pytest.mark.integration
N_IMAGES = 240
PLANTED = 6  # wrong labels among the first labels given


@pytest.fixture(scope="module")
def loop(label_studio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loop]:
    with digits_loop(
        label_studio, tmp_path_factory.mktemp("loop"), "loop digits", N_IMAGES, seed=1
    ) as loop:
        yield loop


def _queue_order(loop: Loop) -> list[int]:
    """Unlabeled tasks ordered by the score of the current version's predictions."""
    project = loop.ls.get_project(loop.project)
    version = project["model_version"]
    scores = {}
    for task in loop.ls.iter_tasks(loop.project):
        if task.get("annotations"):
            continue
        mine = [p for p in loop.ls.list_predictions(task["id"]) if p["model_version"] == version]
        assert len(mine) == 1, (
            f"task {task['id']} has {len(mine)} predictions of {version}: {loop.last_cycle()}"
        )
        scores[task["id"]] = mine[0]["score"]
    return sorted(scores, key=lambda t: scores[t])


def test_cold_start_cycle_steers_label_all_tasks(loop: Loop) -> None:
    run = loop.cycle()
    assert run.state == "succeeded", loop.last_cycle()
    record = loop.last_cycle()
    assert record["model_version"].endswith("-cold")
    assert set(record["stage_timings"]) == {
        "reconcile",
        "featurize",
        "train",
        "score",
        "push",
        "record",
        "after",  # the diagnosis and pruning old versions, once the cycle is recorded
    }
    assert loop.ls.get_project(loop.project)["model_version"] == record["model_version"]
    # The diagnosis ran once the cycle was recorded, with the cycle's client still open.
    diagnosis = record["counts"]["after"]["diagnosis"]
    assert "failed" not in diagnosis and not any(k.endswith("_view_failed") for k in diagnosis)
    expected = _queue_order(loop)[:10]
    assert loop.label_next(10) == expected  # "Label All Tasks" serves our order
    # The cold start spreads the first labels over the digits instead of one corner of the data.
    assert len({loop.truth[t] for t in expected}) >= 6


def test_model_cycle_reorders_queue_and_flags_planted_errors(loop: Loop) -> None:
    planted_positions = set(range(0, 10 * PLANTED, 10))
    served = loop.label_next(90, wrong=planted_positions)
    planted = {served[i] for i in planted_positions}
    run = loop.cycle()
    assert run.state == "succeeded", loop.last_cycle()
    record = loop.last_cycle()
    assert not record["model_version"].endswith("-cold")
    assert record["metrics"]["n_labels"] == 100
    expected = _queue_order(loop)[:5]
    assert loop.label_next(5) == expected
    view = next(
        v
        for v in loop.ls.list_views(loop.project)
        if v["data"]["title"] == "labelloop: suspected label errors"
    )
    flagged = [t["id"] for t in loop.ls.view_tasks(loop.project, view["id"])]
    top = set(flagged[: 2 * PLANTED])
    assert len(planted & top) >= PLANTED - 2, (planted, flagged, record["metrics"])
    first = loop.ls.get_task(flagged[0])
    assert "likely mislabeled" in first["data"]["labelloop_label_error_reason"]
    assert first["data"]["labelloop_model"] != ""


def test_the_pushed_queue_carries_the_recorded_audit_share(loop: Loop) -> None:
    """The 5 labels since the last push resolve its picks; the new push's first batch holds the
    audit share, recorded position by position in the order Label Studio serves."""
    run = loop.cycle()
    assert run.state == "succeeded", loop.last_cycle()
    record = loop.last_cycle()
    strategy = loop.settings.strategy
    with loop.store.session() as session:
        picks = session.scalars(
            select(SelectionPick)
            .where(SelectionPick.cycle_id == run.cycle_id)
            .order_by(SelectionPick.position)
        ).all()
        resolved = session.scalars(
            select(SelectionPick).where(SelectionPick.state == "labeled")
        ).all()
        assert picks and all(p.state == "pending" for p in picks)
        queue = _queue_order(loop)
        assert [p.task_id for p in picks] == queue[: len(picks)]
        first = picks[: strategy.batch_size]
        audit = [p for p in first if p.arm == "audit"]
        assert len(audit) == audit_count(strategy.batch_size, strategy.audit_share)
        assert all(p.predicted is not None and p.model_version == record["model_version"]
                   for p in audit)  # fmt: skip
        assert {p.arm for p in first} - {"audit"} <= set(ARMS)
        # the 5 tasks labeled (rightly) after the model cycle's push were its first positions
        previous = max(p.cycle_id for p in resolved)
        recent = [p for p in resolved if p.cycle_id == previous]
        assert previous < run.cycle_id and len(recent) >= 5
        assert all(p.label == loop.truth[p.task_id] for p in recent)
    assert record["metrics"]["selection"]["mode"] == "adaptive"
    assert "accuracy" in record["metrics"]  # the cross-validated figure, beside the audit's
    assert "audit_accuracy" in record["metrics"]


def test_reviewed_tasks_leave_the_review_view(loop: Loop) -> None:
    view = next(
        v
        for v in loop.ls.list_views(loop.project)
        if v["data"]["title"] == "labelloop: suspected label errors"
    )
    flagged = [t["id"] for t in loop.ls.view_tasks(loop.project, view["id"])]
    fixed, confirmed = flagged[0], flagged[1]
    annotation = loop.ls.get_task(fixed)["annotations"][0]
    loop.ls.update_annotation(annotation["id"], choice(loop.truth[fixed]))
    kept = loop.ls.get_task(confirmed)["annotations"][0]  # the reviewer keeps the label as it is
    loop.ls.update_annotation(kept["id"], kept["result"])
    assert loop.cycle().state == "succeeded"
    after = [t["id"] for t in loop.ls.view_tasks(loop.project, view["id"])]
    assert fixed not in after and confirmed not in after
    # The dashboard's candidates leave out what was reviewed, too.
    diagnosis = load_diagnosis(loop.settings, loop.project)
    assert diagnosis is not None
    listed = {e.task for e in diagnosis.label_errors}
    assert fixed not in listed and confirmed not in listed
    assert listed  # the other planted errors are still there


def test_annotations_made_while_down_are_all_used(loop: Loop) -> None:
    with loop.store.session() as session:
        before = len(repo.live_annotations(session, loop.project))
    loop.stop()
    loop.label_next(5)
    loop.start()
    assert loop.cycle().state == "succeeded"
    with loop.store.session() as session:
        assert len(repo.live_annotations(session, loop.project)) == before + 5
    assert loop.last_cycle()["counts"]["reconcile"]["annotations"] == before + 5


def test_crash_mid_cycle_keeps_previous_version(loop: Loop) -> None:
    served_before = loop.ls.get_project(loop.project)["model_version"]
    with loop.store.session() as session:
        model_before = repo.ensure_project(session, loop.project).model_version

    class Crash(RuntimeError):
        pass

    real = make_runner(loop.settings, loop.store)

    def crashing(ctx: Any, project_id: int) -> Any:
        original = LabelStudio.update_project

        def boom(self: LabelStudio, project: int, **fields: Any) -> dict[str, Any]:
            if "model_version" in fields:  # the switch to the new version
                raise Crash("label studio went away mid-push")
            return original(self, project, **fields)

        LabelStudio.update_project = boom  # type: ignore[method-assign]
        try:
            return real(ctx, project_id)
        finally:
            LabelStudio.update_project = original  # type: ignore[method-assign]

    run = loop.cycle(crashing)
    assert run.state == "failed"
    assert "push" in (loop.last_cycle()["error"] or "")
    assert loop.ls.get_project(loop.project)["model_version"] == served_before
    with loop.store.session() as session:
        assert repo.ensure_project(session, loop.project).model_version == model_before
    expected = _queue_order(loop)[:1]
    assert loop.label_next(1) == expected  # the old queue still serves
    assert loop.cycle().state == "succeeded"
    assert loop.ls.get_project(loop.project)["model_version"] != served_before


def test_clustered_push_keeps_each_prediction_cluster(loop: Loop) -> None:
    from backend.labelstudio.config import parse_label_config
    from backend.loop.push import QueueItem, push_queue

    project = loop.ls.create_project("loop clusters", DEMO_CONFIG)
    ids = loop.ls.upload_images(project, [(n, d) for n, d, _ in digit_images(4, size=32)])
    items = [QueueItem(t, i / 4, ("1",), cluster=i % 2) for i, t in enumerate(ids)]
    counts = push_queue(
        loop.ls, project, "labelloop-p9-clusters", items, parse_label_config(DEMO_CONFIG)
    )
    assert counts["predictions"] == 4
    stored = {
        p["task"]: (p["cluster"], p["score"]) for t in ids for p in loop.ls.list_predictions(t)
    }
    assert stored == {t: (i % 2, i / 4) for i, t in enumerate(ids)}
    assert loop.ls.get_project(project)["model_version"] == "labelloop-p9-clusters"


def test_train_command_trains_a_version_and_prints_metrics(
    loop: Loop, capsys: pytest.CaptureFixture[str]
) -> None:
    from backend.cli.main import main as cli_main

    with loop.store.session() as session:
        before = repo.ensure_project(session, loop.project).model_version
    assert cli_main(["--config", str(loop.config), "train", "--project", str(loop.project)]) == 0
    out = capsys.readouterr().out
    with loop.store.session() as session:
        after = repo.ensure_project(session, loop.project).model_version
    assert after != before and f"model {after}:" in out
    assert '"accuracy"' in out and '"confusion_matrix"' in out


def test_a_worker_process_runs_the_cycle_the_scheduler_queued(
    loop: Loop, redis_url: str, tmp_path: Path
) -> None:
    """``loop.executor: rq``: the scheduler only queues; `labelloop worker` (forking) runs it."""
    import subprocess
    import sys

    from redis import Redis

    from backend.runtime.scheduler import LoopScheduler, cycle_dispatch
    from backend.runtime.workers import job_id

    Redis.from_url(redis_url).flushdb()
    config = yaml.safe_load(loop.config.read_text())
    config["loop"].update(executor="rq", redis_url=redis_url)
    rq_config = tmp_path / "rq.yaml"
    rq_config.write_text(yaml.safe_dump(config))
    settings = load_settings(rq_config, environ={})

    def in_scheduler(*_: Any) -> None:
        raise AssertionError("with executor rq the scheduler must not run the cycle")

    before = loop.last_cycle()["id"]
    scheduler = LoopScheduler(
        loop.store, in_scheduler, settings.loop, dispatch=cycle_dispatch(settings)
    )
    scheduler.start(paused=True)
    try:
        scheduler.request(loop.project, "manual")
        scheduler.run_due(loop.project)
    finally:
        scheduler.shutdown()
    labelloop = Path(sys.executable).with_name("labelloop")
    done = subprocess.run(
        [str(labelloop), "--config", str(rq_config), "worker", "--burst"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = loop.last_cycle()
    assert record["id"] != before and record["state"] == "succeeded", record
    assert loop.ls.get_project(loop.project)["model_version"] == record["model_version"]
    from rq.job import Job

    job = Job.fetch(job_id(settings, loop.project), connection=Redis.from_url(redis_url))
    assert job.return_value() == {
        "project": loop.project,
        "cycle": record["id"],
        "state": "succeeded",
        "error": None,
    }


TAGS_CONFIG = DEMO_CONFIG.replace('choice="single"', 'choice="multiple"')


def test_a_multilabel_project_gets_its_wrong_tags_flagged(loop: Loop) -> None:
    """Multi-label against the real server: wrong tags land in the review view, named."""
    project = loop.ls.create_project("loop tags", TAGS_CONFIG)
    images = [im for im in digit_images(400, size=64, seed=3) if im[2] in (0, 1, 7)][:90]
    ids = loop.ls.upload_images(project, [(name, data) for name, data, _ in images])
    truth = {task: str(digit) for task, (_, _, digit) in zip(ids, images, strict=True)}
    other = {"0": "1", "1": "7", "7": "0"}
    planted = {ids[i]: other[truth[ids[i]]] for i in (0, 10, 20)}  # a wrong digit each
    for task in ids[:60]:
        loop.ls.create_annotation(task, choice(planted.get(task, truth[task])))
    # Self-confidence of the least believed tag (confident learning is checked against cleanlab
    # in the unit tests; with 60 labels its per-tag thresholds flag only the clearest cases).
    set_project_settings(
        loop.store,
        loop.settings,
        project,
        {"strategy": {"review_signal": "self_confidence"}},
        token_name="test",
    )
    run = run_cycle_once(
        loop.store, make_runner(loop.settings, loop.store), project, trigger="manual", lease_s=60
    )
    assert run is not None and run.state == "succeeded", run
    view = next(
        v
        for v in loop.ls.list_views(project)
        if v["data"]["title"] == "labelloop: suspected label errors"
    )
    flagged = [t["id"] for t in loop.ls.view_tasks(project, view["id"])]
    assert len(set(planted) & set(flagged[:6])) >= 2, (planted, flagged)
    for task in set(planted) & set(flagged):
        reason = loop.ls.get_task(task)["data"]["labelloop_label_error_reason"]
        assert "model says it is" in reason and (
            repr(planted[task]) in reason or repr(truth[task]) in reason
        ), reason
