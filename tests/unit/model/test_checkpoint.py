"""Checkpoints: identical predictions after a round trip; nothing half-written is ever loaded."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from backend import files as files_module
from backend.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from backend.model.train import TrainedModel, train_model

from .conftest import blobs, fast_settings


@pytest.fixture(scope="module", params=["bootstrap", "mc_dropout"])
def model(request: pytest.FixtureRequest) -> TrainedModel:
    x, y, _ = blobs(60, seed=11)
    settings = fast_settings(committee_mode=request.param, dropout=0.2, head="mlp", hidden_dim=8)
    return train_model(x, y, classes=list("abcd"), multilabel=False, settings=settings)


def test_round_trip_gives_identical_probabilities(model: TrainedModel, tmp_path: Path) -> None:
    x, _, _ = blobs(30, seed=12)
    path = save_checkpoint(model, tmp_path / "v1.ckpt")
    loaded = load_checkpoint(path)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))
    np.testing.assert_array_equal(loaded.committee_proba(x), model.committee_proba(x))
    np.testing.assert_array_equal(loaded.oos_probs, model.oos_probs)
    np.testing.assert_array_equal(loaded.folds, model.folds)
    assert loaded.metrics == model.metrics
    assert (loaded.classes, loaded.temperature) == (model.classes, model.temperature)


def test_multilabel_thresholds_survive_a_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    targets = np.stack([x[:, 0] > 0, x[:, 1] > 0], axis=1).astype(int)
    model = train_model(x, targets, classes=["p", "q"], multilabel=True, settings=fast_settings())
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "m.ckpt"))
    assert loaded.multilabel and loaded.thresholds is not None
    np.testing.assert_array_equal(loaded.thresholds, model.thresholds)
    np.testing.assert_array_equal(loaded.predict_proba(x), model.predict_proba(x))


@pytest.mark.parametrize("keep_bytes", [0, 10, 60, -1])
def test_truncated_checkpoint_is_refused(
    model: TrainedModel, tmp_path: Path, keep_bytes: int
) -> None:
    path = save_checkpoint(model, tmp_path / "v.ckpt")
    data = path.read_bytes()
    path.write_bytes(data[:keep_bytes])
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_flipped_byte_fails_the_checksum(model: TrainedModel, tmp_path: Path) -> None:
    path = save_checkpoint(model, tmp_path / "v.ckpt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_missing_checkpoint_raises_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "absent.ckpt")


def test_crash_during_save_leaves_the_previous_version(
    model: TrainedModel, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(model, tmp_path / "live.ckpt")
    before = path.read_bytes()

    def power_cut(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(files_module.os, "replace", power_cut)  # the rename atomic_write does
    with pytest.raises(OSError, match="disk gone"):
        save_checkpoint(model, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["live.ckpt"]  # no temp file left behind
    load_checkpoint(path)
