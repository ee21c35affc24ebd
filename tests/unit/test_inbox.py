"""Applying webhook events: idempotent, order-safe, and never blocked by one bad event."""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.exc import OperationalError

from backend.api.app import create_app, shutdown
from backend.cli.main import main
from backend.loop.inbox import BadEvent, apply_pending, parse_event, retry_set_aside
from backend.settings import Settings
from backend.store import repo
from backend.store.db import Store
from backend.store.models import Annotation, InboxEvent, Task
from tests.conftest import ADMIN, SINGLE_CONFIG, deliver

PROJECT = {"id": 7, "title": "pets", "label_config": SINGLE_CONFIG}


def _ann(ann_id: int, task: int, label: str, updated: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": ann_id,
        "task": task,
        "completed_by": 3,
        "result": [
            {
                "from_name": "label",
                "to_name": "image",
                "type": "choices",
                "value": {"choices": [label]},
            }
        ],
        "created_at": "2026-01-01T10:00:00.000000Z",
        "updated_at": updated,
        "was_cancelled": False,
        **extra,
    }


def _task(task_id: int) -> dict[str, Any]:
    return {"id": task_id, "project": 7, "data": {"image": f"/data/upload/7/{task_id}.png"}}


def ev(action: str, **body: Any) -> dict[str, Any]:
    return {"action": action, "project": PROJECT, **body}


def store_raw(store: Store, event: dict[str, Any], project_id: int = 7) -> None:
    """Store an event as it came, unvalidated (as an older version of the webhook did)."""
    with store.session() as session:
        repo.record_delivery(
            session,
            key=repo.delivery_key(json.dumps(event, sort_keys=True).encode()),
            action=event["action"],
            project_id=project_id,
            payload=event,
        )


def set_up(store: Store, project_id: int = 7) -> None:
    """The project row /setup or a sync makes: only such projects' events are applied."""
    with store.session() as session:
        repo.ensure_project(session, project_id)


def labels_of(store: Store) -> dict[int, tuple[list[str], bool]]:
    with store.session() as session:
        rows = session.query(Annotation).order_by(Annotation.id).all()
        return {r.id: (r.labels, r.deleted) for r in rows}


@pytest.fixture
def project_store(store: Store) -> Store:
    set_up(store)
    deliver(store, ev("PROJECT_UPDATED"), ev("TASKS_CREATED", tasks=[_task(1), _task(2)]))
    apply_pending(store)
    return store


def test_tasks_and_config_come_from_events(project_store: Store) -> None:
    with project_store.session() as session:
        tasks = session.query(Task).order_by(Task.id).all()
        project = repo.ensure_project(session, 7)
        assert [(t.id, t.image_ref) for t in tasks] == [
            (1, "/data/upload/7/1.png"),
            (2, "/data/upload/7/2.png"),
        ]
        assert project.labels == ["cat", "dog", "bird"]
        assert (project.from_name, project.to_name) == ("label", "image")


def test_same_delivery_twice_changes_nothing(project_store: Store) -> None:
    event = ev("ANNOTATION_CREATED", annotation=_ann(10, 1, "cat", "2026-01-01T10:00:00Z"))
    deliver(project_store, event, event)
    with project_store.session() as session:
        assert session.query(InboxEvent).filter_by(action="ANNOTATION_CREATED").count() == 1
    first = apply_pending(project_store)
    second = apply_pending(project_store)
    assert first.total == 1 and second.total == 0
    assert labels_of(project_store) == {10: (["cat"], False)}


@pytest.mark.parametrize("order", list(itertools.permutations(range(3))))
def test_any_arrival_order_ends_in_the_newest_state(
    project_store: Store, order: tuple[int]
) -> None:
    events = [
        ev("ANNOTATION_CREATED", annotation=_ann(10, 1, "cat", "2026-01-01T10:00:00Z")),
        ev("ANNOTATION_UPDATED", annotation=_ann(10, 1, "dog", "2026-01-01T11:00:00Z")),
        ev("ANNOTATION_UPDATED", annotation=_ann(10, 1, "bird", "2026-01-01T12:00:00Z")),
    ]
    for i in order:  # each delivery applied as it arrives
        deliver(project_store, events[i])
        apply_pending(project_store)
    assert labels_of(project_store) == {10: (["bird"], False)}


def test_deletion_is_final_for_late_updates(project_store: Store) -> None:
    deliver(
        project_store,
        ev("ANNOTATION_CREATED", annotation=_ann(10, 1, "cat", "2026-01-01T10:00:00Z")),
        ev("ANNOTATION_CREATED", annotation=_ann(11, 2, "dog", "2026-01-01T10:00:00Z")),
        ev("ANNOTATIONS_DELETED", annotations=[{"id": 10}]),
    )
    apply_pending(project_store)
    late = ev("ANNOTATION_UPDATED", annotation=_ann(10, 1, "bird", "2026-01-01T09:00:00Z"))
    deliver(project_store, late)
    report = apply_pending(project_store)
    assert report.outcomes["ignored"] == 1
    assert labels_of(project_store) == {10: (["cat"], True), 11: (["dog"], False)}
    with project_store.session() as session:
        assert [a.id for a in repo.live_annotations(session, 7)] == [11]


def test_start_training_is_reported_and_unknown_actions_are_not_applied(store: Store) -> None:
    set_up(store)
    deliver(store, ev("START_TRAINING"))
    report = apply_pending(store)
    assert report.train_requested == {7}


def test_a_poison_event_does_not_block_later_ones(
    project_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = ev("ANNOTATION_CREATED", annotation=_ann(20, 1, "cat", "2026-01-01T10:00:00Z"))
    bad["annotation"]["completed_by"] = {"id": "x"}
    bad["annotation"]["id"] = "not-a-number"
    good = ev("ANNOTATION_CREATED", annotation=_ann(21, 2, "dog", "2026-01-01T10:00:00Z"))
    store_raw(project_store, bad)
    deliver(project_store, good)
    report = apply_pending(project_store)
    assert report.outcomes["error"] == 1 and report.set_aside == 1
    assert labels_of(project_store) == {21: (["dog"], False)}
    with project_store.session() as session:
        assert not repo.pending_events(session)
        assert repo.set_aside_count(session, project_id=7) == 1


def test_odd_shapes_in_a_chunk_do_not_stop_its_read_ahead(project_store: Store) -> None:
    # Payload parts of the wrong type must not fail the chunk's read-ahead (which runs before
    # any event's own guard): each event is applied or ignored as it would be alone.
    odd_tasks = ev("TASKS_CREATED", tasks=5)
    odd_task = ev("ANNOTATION_CREATED", annotation=_ann(22, 1, "cat", "2026-01-01T10:00:00Z"))
    odd_task["task"] = {"id": True}
    good = ev("ANNOTATION_CREATED", annotation=_ann(23, 2, "dog", "2026-01-01T10:00:00Z"))
    for event in (odd_tasks, odd_task, good):
        store_raw(project_store, event)
    apply_pending(project_store)
    assert labels_of(project_store) == {22: (["cat"], False), 23: (["dog"], False)}
    with project_store.session() as session:
        assert not repo.pending_events(session)


def test_a_poison_event_among_good_ones_sets_only_itself_aside_and_counts_each_once(
    project_store: Store,
) -> None:
    # The transaction applying them fails at the poison event and is rolled back; the same
    # events are applied again, each in a savepoint: nothing is lost or counted twice.
    for i in (1, 2):
        deliver(
            project_store,
            ev("ANNOTATION_CREATED", annotation=_ann(i, i, "cat", "2026-01-01T10:00:00Z")),
        )
    bad = ev("ANNOTATION_CREATED", annotation=_ann(3, 3, "cat", "2026-01-01T10:00:00Z"))
    bad["annotation"]["id"] = "not-a-number"
    store_raw(project_store, bad)
    for i in (4, 5):
        deliver(
            project_store,
            ev("ANNOTATION_CREATED", annotation=_ann(i, i, "dog", "2026-01-01T10:00:00Z")),
        )
    report = apply_pending(project_store)
    assert report.total == 4 and report.set_aside == 1
    assert report.outcomes == {"created": 4, "error": 1}
    assert labels_of(project_store) == {
        1: (["cat"], False),
        2: (["cat"], False),
        4: (["dog"], False),
        5: (["dog"], False),
    }
    with project_store.session() as session:
        assert not repo.pending_events(session)
        assert repo.set_aside_count(session, project_id=7) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"project": {"id": 1}}, "action"),
        ({"action": "ANNOTATION_CREATED"}, "project.id"),
        ({"action": "ANNOTATION_CREATED", "project": {"id": "7"}}, "integer"),
    ],
)
def test_malformed_events_are_rejected(body: Any, message: str) -> None:
    with pytest.raises(BadEvent, match=message):
        parse_event(body)


def _locked() -> OperationalError:
    return OperationalError("UPDATE annotations ...", {}, Exception("database is locked"))


def test_transient_lock_errors_are_retried_and_never_set_aside(
    project_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transient 'database is locked' marked events poisoned: acknowledged, never applied."""
    events = [
        ev("ANNOTATION_CREATED", annotation=_ann(100 + i, 1 + i % 2, "dog", "2026-01-01T10:00Z"))
        for i in range(12)
    ]
    deliver(project_store, *events)
    real, calls = repo.upsert_annotation, itertools.count()

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if next(calls) % 3 == 0:  # every third write hits a lock
            raise _locked()
        return real(*args, **kwargs)

    monkeypatch.setattr(repo, "upsert_annotation", flaky)
    pauses: list[float] = []
    report = apply_pending(project_store, batch=4, sleep=pauses.append)
    assert report.set_aside == 0 and report.retries > 0 and not report.deferred
    assert pauses and pauses[0] == 0.05
    assert {i: labels for i, (labels, _) in labels_of(project_store).items()} == {
        100 + i: ["dog"] for i in range(12)
    }
    with project_store.session() as session:
        assert repo.pending_events(session) == []
        assert repo.set_aside_count(session) == 0


def test_a_lock_that_persists_leaves_events_pending_with_backoff(
    project_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(project_store, ev("ANNOTATION_CREATED", annotation=_ann(30, 1, "cat", "2026-01-01")))

    def locked(*_a: Any, **_k: Any) -> Any:
        raise _locked()

    with monkeypatch.context() as patch:
        patch.setattr(repo, "upsert_annotation", locked)
        pauses: list[float] = []
        report = apply_pending(project_store, retries=3, backoff_s=0.1, sleep=pauses.append)
    assert report.deferred and report.set_aside == 0 and report.total == 0
    assert pauses == [0.1, 0.2, 0.4]
    with project_store.session() as session:
        assert len(repo.pending_events(session)) == 1
    assert apply_pending(project_store).total == 1  # the lock is gone: applied
    assert labels_of(project_store) == {30: (["cat"], False)}


def test_set_aside_events_are_applied_again_by_retry(
    project_store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(project_store, ev("ANNOTATION_CREATED", annotation=_ann(40, 1, "bird", "2026-01-01")))

    def broken(*_a: Any, **_k: Any) -> Any:
        raise KeyError("a bug")

    with monkeypatch.context() as patch:
        patch.setattr(repo, "upsert_annotation", broken)
        assert apply_pending(project_store).set_aside == 1
    assert apply_pending(project_store).total == 0  # set aside: not tried again by itself
    assert retry_set_aside(project_store, project_id=7) == 1
    assert apply_pending(project_store).total == 1
    assert labels_of(project_store) == {40: (["bird"], False)}


def test_concurrent_webhooks_and_the_worker_lose_nothing(project_store: Store) -> None:
    """Deliveries stored while the inbox applies (real SQLite locking): all applied."""
    stop, reports = threading.Event(), []

    def worker() -> None:
        while not stop.is_set():
            reports.append(apply_pending(project_store, batch=5))

    def sender(offset: int) -> None:
        for i in range(25):
            ann = _ann(1000 + offset * 100 + i, 1 + i % 2, "cat", "2026-01-01T10:00Z")
            deliver(project_store, ev("ANNOTATION_CREATED", annotation=ann))

    thread = threading.Thread(target=worker)
    thread.start()
    senders = [threading.Thread(target=sender, args=(k,)) for k in range(4)]
    for s in senders:
        s.start()
    for s in senders:
        s.join()
    stop.set()
    thread.join()
    apply_pending(project_store)
    assert sum(r.set_aside for r in reports) == 0
    assert len(labels_of(project_store)) == 100
    with project_store.session() as session:
        assert repo.pending_events(session) == [] and repo.set_aside_count(session) == 0


def test_set_aside_events_show_in_status_and_cycles_and_inbox_retry_applies_them(
    settings: Settings,
    project_store: Store,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    deliver(project_store, ev("ANNOTATION_CREATED", annotation=_ann(50, 1, "dog", "2026-01-01")))
    with monkeypatch.context() as patch:
        patch.setattr(repo, "upsert_annotation", lambda *_a, **_k: {}["a bug"])
        assert apply_pending(project_store).set_aside == 1
    config = tmp_path / "cli.yaml"
    config.write_text(yaml.safe_dump({"store": {"database_url": settings.store.url}}))
    assert main(["--config", str(config), "status", "--project", "7", "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["pending_events"], row["set_aside_events"]) == (0, 1)
    app = create_app(settings, store=project_store, upgrade=False)
    try:
        body = app.test_client().get("/api/projects/7/cycles", headers=ADMIN).get_json()
        metrics = app.test_client().get("/metrics", headers=ADMIN).get_data(as_text=True)
    finally:
        shutdown(app)
    assert body["inbox"] == {"pending": 0, "set_aside": 1}
    assert "labelloop_inbox_set_aside_events 1.0" in metrics
    assert main(["--config", str(config), "inbox", "retry", "--project", "7"]) == 0
    assert "requeued 1 set-aside events; applied 1" in capsys.readouterr().out
    assert labels_of(project_store) == {50: (["dog"], False)}


def test_a_spent_time_budget_still_applies_an_event_per_transaction(store: Store) -> None:
    """A transaction whose budget is gone before its first event (a slow lock, a busy machine)
    still applies one: applying ends only when nothing is pending."""
    set_up(store)
    deliver(store, ev("TASKS_CREATED", tasks=[_task(i) for i in range(1, 6)]))
    deliver(store, *(ev("TASKS_CREATED", tasks=[_task(i)]) for i in range(6, 9)))
    report = apply_pending(store, budget_s=0.0)
    assert report.total == 4
    with store.session() as session:
        assert not repo.has_pending(session)
        assert session.query(Task).count() == 8


def test_events_beyond_one_chunk_are_applied_in_order_in_one_pass(store: Store) -> None:
    from backend.loop.inbox import CHUNK

    set_up(store)
    count = 2 * CHUNK + 3
    deliver(store, *(ev("TASKS_CREATED", tasks=[_task(1)], n=i) for i in range(count)))
    assert apply_pending(store, budget_s=60.0, batch=count).total == count
    with store.session() as session:
        assert not repo.has_pending(session)


@pytest.mark.parametrize("at_once", [True, False])
def test_events_of_one_chunk_reading_their_rows_ahead_end_as_applied_one_by_one(
    project_store: Store, at_once: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows read ahead for a chunk see what earlier events of the same chunk created, updated
    or deleted: the end state is the same as applying each delivery as it arrives, and no
    event fails on the way (the events are never applied again one by one in savepoints)."""
    from backend.loop import inbox

    def no_fallback(*_a: Any) -> None:
        raise AssertionError("an event failed in the chunk's transaction")

    monkeypatch.setattr(inbox, "_apply_guarded", no_fallback)
    set_up(project_store, 8)
    other = {"id": 8, "title": "other", "label_config": SINGLE_CONFIG}
    events = [
        ev("TASKS_CREATED", tasks=[_task(30)]),
        ev(
            "ANNOTATION_CREATED",
            annotation=_ann(40, 30, "cat", "2026-01-01T10:00:00Z"),
            task=_task(30),
        ),
        ev(
            "ANNOTATION_UPDATED",
            annotation=_ann(40, 30, "dog", "2026-01-01T11:00:00Z"),
            task=_task(30),
        ),
        ev("ANNOTATION_UPDATED", annotation=_ann(40, 30, "bird", "2026-01-01T09:00:00Z")),
        ev("ANNOTATION_CREATED", annotation=_ann(41, 1, "cat", "2026-01-01T10:00:00Z")),
        ev("ANNOTATIONS_DELETED", annotations=[{"id": 41}]),
        ev("ANNOTATION_UPDATED", annotation=_ann(41, 1, "dog", "2026-01-01T12:00:00Z")),
        # project 8 naming project 7's task and annotation: ignored
        {
            "action": "ANNOTATION_CREATED",
            "project": other,
            "annotation": _ann(42, 1, "dog", "2026-01-01T10:00:00Z"),
            "task": _task(1),
        },
        {
            "action": "ANNOTATION_UPDATED",
            "project": other,
            "annotation": _ann(40, 30, "bird", "2026-01-01T13:00:00Z"),
        },
        ev("ANNOTATION_CREATED", annotation=_ann(43, 31, "bird", "2026-01-01T10:00:00Z")),
        ev("TASKS_CREATED", tasks=[_task(31), _task(32)]),
    ]
    if at_once:
        deliver(project_store, *events)
        report = apply_pending(project_store)
        assert report.total == len(events) and report.set_aside == 0
    else:
        for event in events:
            deliver(project_store, event)
            apply_pending(project_store)
    assert labels_of(project_store) == {
        40: (["dog"], False),
        41: (["cat"], True),
        43: (["bird"], False),
    }
    with project_store.session() as session:
        tasks = {t.id: t.project_id for t in session.query(Task)}
        assert tasks == {1: 7, 2: 7, 30: 7, 31: 7, 32: 7}
        assert {a.id: a.task_id for a in session.query(Annotation)} == {40: 30, 41: 1, 43: 31}
        assert not repo.pending_events(session)
