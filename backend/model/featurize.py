"""Images to embeddings in batches, through the on-disk cache, one failure per task at most."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from backend.model.backbones import Backbone
from backend.model.cache import EmbeddingCache, content_hash

log = logging.getLogger(__name__)

Fetch = Callable[[], bytes]


@dataclass(frozen=True)
class FeaturizeResult:
    """What one featurization pass produced.

    Attributes:
        embeddings: task id -> (dim,) float32 vector.
        failures: task id -> why its image could not be embedded (fetch, decode or preprocess).
        hashes: task id -> sha256 of the image bytes (the content half of the cache key).
        n_cached: items served from the cache (or a duplicate image in the same pass).
        n_computed: items the backbone ran on.
        seconds: wall time of the pass.
    """

    embeddings: dict[int, np.ndarray]
    failures: dict[int, str]
    hashes: dict[int, str]
    n_cached: int
    n_computed: int
    seconds: float


def decode_image(data: bytes) -> Image.Image:
    """Bytes to a lazily decoded PIL image; ``OSError`` (``UnidentifiedImageError``) if not one.

    Pixels are decoded by the backbone's preprocessing, which can ask JPEG for a reduced scale.
    """
    return Image.open(io.BytesIO(data))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


@dataclass
class _Pass:
    """Mutable bookkeeping of one featurize() call (kept off the module and the cache)."""

    backbone: Backbone
    cache: EmbeddingCache
    batch_size: int
    log_every: int
    total: int
    started: float = field(default_factory=time.perf_counter)
    by_sha: dict[str, np.ndarray] = field(default_factory=dict)
    waiting: dict[str, list[int]] = field(default_factory=dict)
    batch: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    embeddings: dict[int, np.ndarray] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    hashes: dict[int, str] = field(default_factory=dict)
    n_cached: int = 0
    n_computed: int = 0
    next_log: int = 0

    def add(self, task_id: int, fetch: Fetch) -> None:
        try:
            data = fetch()
            sha = content_hash(data)
            self.hashes[task_id] = sha
            if self._reuse(task_id, sha):
                return
            tensor = self.backbone.preprocess(decode_image(data))
        except Exception as exc:  # one bad image must not stop a pass over thousands
            self.failures[task_id] = _reason(exc)
            log.warning("image of task %d skipped: %s", task_id, type(exc).__name__)
            return
        self.waiting[sha] = [task_id]
        self.batch.append((sha, tensor))
        if len(self.batch) >= self.batch_size:
            self.flush()

    def _reuse(self, task_id: int, sha: str) -> bool:
        if sha in self.waiting:
            self.waiting[sha].append(task_id)
            return True
        vector = self.by_sha.get(sha)
        if vector is None:
            vector = self.cache.get(sha, self.backbone.name)
        if vector is None:
            return False
        self.by_sha[sha] = self.embeddings[task_id] = vector
        self.n_cached += 1
        self._progress()
        return True

    def flush(self) -> None:
        if not self.batch:
            return
        vectors = self.backbone.embed(torch.stack([tensor for _, tensor in self.batch]))
        for (sha, _), vector in zip(self.batch, vectors, strict=True):
            self.cache.put(sha, self.backbone.name, vector)
            self.by_sha[sha] = vector
            tasks = self.waiting.pop(sha)
            for task_id in tasks:
                self.embeddings[task_id] = vector
            self.n_computed += 1
            self.n_cached += len(tasks) - 1
        self.batch.clear()
        self._progress()

    def _progress(self) -> None:
        done = len(self.embeddings) + len(self.failures)
        if self.log_every > 0 and done >= self.next_log:
            elapsed = max(time.perf_counter() - self.started, 1e-9)
            log.info(
                "featurize %s: %d/%d items (%d cached, %d failed), %.1f items/s",
                self.backbone.name,
                done,
                self.total,
                self.n_cached,
                len(self.failures),
                done / elapsed,
            )
            self.next_log = done + self.log_every


def featurize(
    items: Sequence[tuple[int, Fetch]],
    backbone: Backbone,
    cache: EmbeddingCache,
    *,
    batch_size: int = 32,
    log_every: int = 500,
) -> FeaturizeResult:
    """Embed every item's image, reusing cached vectors for image bytes seen before.

    Args:
        items: (task id, fetch) pairs; ``fetch()`` returns the image bytes and may raise.
        backbone: the feature extractor; its ``name`` is the cache namespace.
        cache: the on-disk embedding cache.
        batch_size: images per forward pass.
        log_every: log progress every this many items (0: only at the end).

    Returns:
        Embeddings for the items that worked, a reason for each that did not.
    """
    state = _Pass(backbone, cache, batch_size, log_every, total=len(items))
    for task_id, fetch in items:
        state.add(task_id, fetch)
    state.flush()
    seconds = time.perf_counter() - state.started
    log.info(
        "featurize %s done: %d embedded (%d computed), %d failed in %.1fs",
        backbone.name,
        len(state.embeddings),
        state.n_computed,
        len(state.failures),
        seconds,
    )
    return FeaturizeResult(
        embeddings=state.embeddings,
        failures=state.failures,
        hashes=state.hashes,
        n_cached=state.n_cached,
        n_computed=state.n_computed,
        seconds=seconds,
    )
