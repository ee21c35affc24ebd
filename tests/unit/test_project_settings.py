"""Per-project settings: stored as overrides, recorded in history, used by the next cycle."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from backend.cli.admin_cli import parse_assignments
from backend.cli.main import main
from backend.loop.preview import preview
from backend.serving.registry import ModelRegistry
from backend.settings import Settings, SettingsError
from backend.store.db import Store
from backend.store.models import ProjectSettings, SettingsChange
from backend.store.project_settings import (
    effective_settings,
    error_fields,
    loop_settings_for,
    project_history,
    set_project_settings,
)
from tests.conftest import make_settings, upgraded_store
from tests.fake_labelstudio import FAST_MODEL, FakeLabelStudio, run_one_cycle


@pytest.fixture
def fast_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, model=FAST_MODEL, strategy={"cold_start_labels": 0})


@pytest.fixture
def fast_store(fast_settings: Settings) -> Iterator[Store]:
    yield from upgraded_store(fast_settings)


def test_a_change_is_stored_as_overrides_with_history(settings: Settings, store: Store) -> None:
    changed = set_project_settings(
        store,
        settings,
        7,
        {"strategy": {"weights": {"coverage": 0}, "batch_size": 50}, "loop": {"retrain_after": 5}},
        token_name="ops",
    )
    assert changed.strategy.weights == {"margin": 1.0, "coverage": 0.0}
    assert effective_settings(store, settings, 7) == changed
    assert effective_settings(store, settings, 8) == settings  # other projects keep the defaults
    assert loop_settings_for(store, settings)(7).retrain_after == 5
    with store.session() as session:
        row = session.get(ProjectSettings, 7)
        assert row is not None
        assert row.overrides == {
            "strategy": {"weights": {"margin": 1.0, "coverage": 0.0}, "batch_size": 50},
            "loop": {"retrain_after": 5},
        }
    [entry] = project_history(store, 7)
    assert entry["token_name"] == "ops"
    assert {c["field"]: (c["before"], c["after"]) for c in entry["changes"]} == {
        "strategy.weights": ({"margin": 1.0, "coverage": 0.25}, {"margin": 1.0, "coverage": 0.0}),
        "strategy.batch_size": (100, 50),
        "loop.retrain_after": (20, 5),
    }


def test_setting_the_default_again_removes_the_override(settings: Settings, store: Store) -> None:
    set_project_settings(store, settings, 7, {"strategy": {"batch_size": 50}}, token_name="a")
    set_project_settings(store, settings, 7, {"strategy": {"batch_size": 100}}, token_name="b")
    set_project_settings(store, settings, 7, {"strategy": {"batch_size": 100}}, token_name="c")
    with store.session() as session:
        row = session.get(ProjectSettings, 7)
        assert row is not None and row.overrides == {}
    assert [h["token_name"] for h in project_history(store, 7)] == ["b", "a"]  # no-op not logged


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"strategy": {"weights": {"margn": 1}}}, "strategy.weights"),
        ({"strategy": {"weights": {"margin": -1}}}, "strategy.weights"),
        ({"loop": {"retrain_after": 0}}, "loop.retrain_after"),
        ({"loop": {"debounce_s": 900}}, "loop"),  # above max_delay_s: a cross-field rule
        ({"model": {"backbone": "resnet9000"}}, "model.backbone"),
        ({"strategy": {"batchsize": 5}}, "strategy.batchsize"),
        ({"server": {"port": 1}}, "server"),
        ({"loop": {"poll_s": 1}}, "loop.poll_s"),
        ({"strategy": 5}, "strategy"),
    ],
)
def test_bad_values_name_the_field_and_store_nothing(
    settings: Settings, store: Store, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(SettingsError) as err:
        set_project_settings(store, settings, 7, changes, token_name="ops")
    assert field in error_fields(err.value)
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(ProjectSettings)) == 0
        assert session.scalar(select(func.count()).select_from(SettingsChange)) == 0


def test_the_next_cycle_pushes_with_the_new_settings(
    fast_settings: Settings, fast_store: Store
) -> None:
    ls = FakeLabelStudio()
    run_one_cycle(fast_settings, fast_store, ls)
    assert all("cluster" not in p for p in ls.last_push())
    set_project_settings(
        fast_store,
        fast_settings,
        7,
        {"strategy": {"push_clusters": True, "weights": {"margin": 0, "coverage": 1}}},
        token_name="ops",
    )
    run_one_cycle(fast_settings, fast_store, ls)
    pushed = ls.last_push()
    assert len(pushed) == 18  # every unlabeled task, clusters now included
    assert all(isinstance(p["cluster"], int) for p in pushed)
    # The pushed queue is the one preview calls today's (same model, embeddings and settings).
    served = ModelRegistry(fast_store).get(7)
    shown = preview(fast_store, fast_settings, 7, {}, top=18, served=served)
    by_score = [p["task"] for p in sorted(pushed, key=lambda p: p["score"])]
    assert [item["task_id"] for item in shown["items"]] == by_score
    assert [item["today_rank"] for item in shown["items"]] == list(range(1, 19))
    assert shown["overlap"]["count"] == 18


def test_preview_ranks_by_the_proposed_weights_and_writes_nothing(
    fast_settings: Settings, fast_store: Store
) -> None:
    ls = FakeLabelStudio()
    run_one_cycle(fast_settings, fast_store, ls)
    served = ModelRegistry(fast_store).get(7)
    calls = len(ls.calls)
    result = preview(
        fast_store,
        fast_settings,
        7,
        {
            # Near-copies of labeled items would go last whatever their entropy; the adaptive
            # selection and the audit share would give other arms and random draws places.
            "strategy": {
                "weights": {"margin": 0, "coverage": 0, "entropy": 1},
                "near_duplicates_last": False,
                "selection": "fixed",
                "audit_share": 0,
            },
            "model": {"head": "mlp"},
        },
        top=5,
        served=served,
    )
    assert len(result["items"]) == 5
    assert result["not_previewed"] == ["model.head"]
    assert result["left_out_without_embedding"] == 0
    for item in result["items"]:
        assert set(item["breakdown"]) == {"entropy"}
        assert item["suggested_labels"][0] in {"cat", "dog", "bird"}
    entropy = [item["breakdown"]["entropy"] for item in result["items"]]
    assert entropy[0] == max(entropy)
    assert result["selection"]["proposed"] == {
        "mode": "fixed",
        "shares": {"combined": 1.0},
        "audit_items": 0,
    }
    assert result["selection"]["today"]["audit_items"] > 0
    assert len(ls.calls) == calls
    with fast_store.session() as session:
        assert session.scalar(select(func.count()).select_from(ProjectSettings)) == 0


def test_parse_assignments_reads_yaml_scalars() -> None:
    assert parse_assignments(
        ["strategy.weights.margin=1.0", "loop.retrain_after=10", "strategy.n_clusters=null"]
    ) == {
        "strategy": {"weights": {"margin": 1.0}, "n_clusters": None},
        "loop": {"retrain_after": 10},
    }


def _cli(tmp_path: Path, *args: str) -> int:
    config = tmp_path / "cli.yaml"
    config.write_text(f"store:\n  data_dir: {tmp_path / 'data'}\n")
    return main(["--config", str(config), *args])


def test_cli_set_show_history(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(tmp_path, "strategy", "set", "--project", "4", "strategy.batch_size=25") == 0
    assert "strategy.batch_size: 100 -> 25" in capsys.readouterr().out
    assert _cli(tmp_path, "strategy", "show", "--project", "4") == 0
    assert "strategy.batch_size = 25   (project; default 100)" in capsys.readouterr().out
    assert _cli(tmp_path, "strategy", "history", "--project", "4") == 0
    assert "cli:" in capsys.readouterr().out
    assert _cli(tmp_path, "strategy", "set", "--project", "4", "loop.retrain_after=0") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "loop.retrain_after" in err


@pytest.mark.parametrize("first", [True, False], ids=["first-override", "existing-override"])
def test_concurrent_changes_are_all_kept(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    """Two admins change different weights at once: neither change is lost."""
    import contextlib
    import threading
    import time

    import backend.store.project_settings as project_settings

    merge = project_settings.with_overrides
    read_both = threading.Barrier(2, timeout=5)

    def slow_merge(base: Settings, changes: Any) -> Settings:
        if threading.current_thread().name.startswith("admin-"):
            # Without a write lock both read the old overrides before either writes.
            with contextlib.suppress(threading.BrokenBarrierError):
                read_both.wait(timeout=1)
            time.sleep(0.1)
        return merge(base, changes)

    if not first:
        set_project_settings(store, settings, 7, {"strategy": {"batch_size": 50}}, token_name="x")
    monkeypatch.setattr(project_settings, "with_overrides", slow_merge)
    errors: list[BaseException] = []

    def change(name: str, body: dict[str, Any]) -> None:
        try:
            set_project_settings(store, settings, 7, body, token_name=name)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(
            target=change, name="admin-a", args=("a", {"strategy": {"weights": {"margin": 2}}})
        ),
        threading.Thread(
            target=change, name="admin-b", args=("b", {"strategy": {"weights": {"coverage": 0}}})
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert effective_settings(store, settings, 7).strategy.weights == {
        "margin": 2.0,
        "coverage": 0.0,
    }
    assert len(project_history(store, 7)) == (2 if first else 3)
