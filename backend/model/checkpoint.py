"""Model versions on disk, written atomically and verified on load; one live model per process.

File format: ``MAGIC`` (8 bytes) | payload length (8 bytes, big-endian) | sha256 of payload
(32 bytes) | payload. The payload is a ``torch.save`` of tensors, strings and numbers only, read
back with ``weights_only=True`` (no pickled code runs on load). A file is written to a temporary
name, fsynced and renamed over the target, so a reader sees the old version or the new one; a
truncated or altered file fails the length or checksum test and raises :class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from backend.files import atomic_write
from backend.model.module import StackedHead
from backend.model.train import TrainedModel

MAGIC = b"LLCKPT01"
_HEADER = len(MAGIC) + 8 + 32


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupt or of an unknown format."""


def _head_payload(head: StackedHead) -> dict[str, Any]:
    return {
        "config": {
            "in_dim": head.in_dim,
            "n_out": head.n_out,
            "n_heads": head.n_heads,
            "kind": head.kind,
            "hidden_dim": head.hidden_dim,
            "dropout": head.dropout,
        },
        "state": {k: v.detach().clone() for k, v in head.state_dict().items()},
    }


def _head_from(payload: dict[str, Any]) -> StackedHead:
    cfg = payload["config"]
    head = StackedHead(
        cfg["in_dim"],
        cfg["n_out"],
        cfg["n_heads"],
        kind=cfg["kind"],
        hidden_dim=cfg["hidden_dim"],
        dropout=cfg["dropout"],
    )
    head.load_state_dict(payload["state"])
    return head.eval()


def _array(value: NDArray[np.generic] | None) -> torch.Tensor | None:
    return None if value is None else torch.from_numpy(np.ascontiguousarray(value))


def to_payload(model: TrainedModel) -> dict[str, Any]:
    """The model as a dict of tensors, strings and numbers (safe for ``weights_only`` loading)."""
    return {
        "format": 1,
        "classes": list(model.classes),
        "multilabel": model.multilabel,
        "head": _head_payload(model.head),
        "committee": None if model.committee is None else _head_payload(model.committee),
        "committee_size": model.committee_size,
        "temperature": float(model.temperature),
        "feature_mean": _array(model.feature_mean),
        "feature_std": _array(model.feature_std),
        "oos_probs": _array(model.oos_probs),
        "folds": _array(model.folds),
        "fold_seen": _array(model.fold_seen),
        "thresholds": _array(model.thresholds),
        "metrics_json": json.dumps(model.metrics),
        "backbone": model.backbone,
        "seed": model.seed,
    }


def from_payload(data: dict[str, Any]) -> TrainedModel:
    """Inverse of :func:`to_payload`."""
    if data.get("format") != 1:
        raise CheckpointError(f"unknown checkpoint format {data.get('format')!r}")
    thresholds = data["thresholds"]
    return TrainedModel(
        classes=tuple(data["classes"]),
        multilabel=bool(data["multilabel"]),
        head=_head_from(data["head"]),
        committee=None if data["committee"] is None else _head_from(data["committee"]),
        committee_size=int(data["committee_size"]),
        temperature=float(data["temperature"]),
        feature_mean=data["feature_mean"].numpy(),
        feature_std=data["feature_std"].numpy(),
        oos_probs=data["oos_probs"].numpy(),
        folds=data["folds"].numpy(),
        fold_seen=data["fold_seen"].numpy(),
        thresholds=None if thresholds is None else thresholds.numpy(),
        metrics=json.loads(data["metrics_json"]),
        backbone=str(data["backbone"]),
        seed=int(data["seed"]),
    )


def save_checkpoint(model: TrainedModel, path: Path) -> Path:
    """Write ``model`` to ``path`` atomically (temp file, fsync, rename, fsync directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(to_payload(model), buffer)
    payload = buffer.getvalue()
    header = MAGIC + len(payload).to_bytes(8, "big") + hashlib.sha256(payload).digest()
    with atomic_write(path, durable=True) as handle:
        handle.write(header)
        handle.write(payload)
    return path


def load_checkpoint(path: Path) -> TrainedModel:
    """Read and verify a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, truncated, fails its checksum or is not a checkpoint.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    if len(raw) < _HEADER or not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a labelloop checkpoint (bad header)")
    length = int.from_bytes(raw[len(MAGIC) : len(MAGIC) + 8], "big")
    payload = raw[_HEADER:]
    if len(payload) != length:
        raise CheckpointError(f"{path} is truncated: {len(payload)} of {length} payload bytes")
    if hashlib.sha256(payload).digest() != raw[len(MAGIC) + 8 : _HEADER]:
        raise CheckpointError(f"{path} is corrupt: checksum mismatch")
    data = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    return from_payload(data)
