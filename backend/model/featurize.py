"""Images to embeddings in batches, through the on-disk cache, one failure per task at most.

A pass runs in two parts that overlap: a thread pool fetches, hashes, decodes and resizes images
(network waits and PIL's decoders release the GIL), while the calling thread runs the backbone on
full batches. Tasks whose image content hash is already known (``known``: the store remembers what
it embedded) and cached are served without fetching anything.
"""

from __future__ import annotations

import functools
import io
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from backend.model.backbones import Backbone
from backend.model.cache import EmbeddingCache, content_hash
from backend.model.png import decode_png

log = logging.getLogger(__name__)

Fetch = Callable[[], bytes]
#: ``progress(done, total, images_per_second)`` while a pass runs.
Progress = Callable[[int, int, float], None]


class Embeddings(Mapping[int, NDArray[np.float32]]):
    """Task id -> (dim,) float32 vector, held as one (n, dim) matrix in ascending task id order.

    A warm cycle reads its 100,000 cached vectors in that order in one pass, and the pool and
    the training set are that matrix (or rows gathered from it, :func:`stack_rows`) instead of
    100,000 vectors stacked again. Callers read the matrix and never write it (it is not
    flagged read-only: torch wraps it for inference without a copy).
    """

    def __init__(self, ids: NDArray[np.int64], matrix: NDArray[np.float32]) -> None:
        if matrix.ndim != 2 or ids.shape != (matrix.shape[0],):
            raise ValueError("Embeddings needs (n,) ids and an (n, dim) matrix")
        if ids.shape[0] > 1 and not bool((np.diff(ids) > 0).all()):
            raise ValueError("Embeddings ids must be strictly ascending")
        self.ids = ids
        self.matrix = matrix
        self.ids.flags.writeable = False

    @classmethod
    def empty(cls) -> Embeddings:
        """No vectors."""
        return cls(np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32))

    @classmethod
    def of(cls, vectors: Mapping[int, NDArray[np.floating[Any]]]) -> Embeddings:
        """The same vectors as one matrix (copied once)."""
        if isinstance(vectors, Embeddings):
            return vectors
        ids = np.array(sorted(vectors), dtype=np.int64)
        return cls(ids, stack_rows(vectors, ids)) if len(ids) else cls.empty()

    def positions(self, task_ids: Sequence[int] | NDArray[np.integer[Any]]) -> NDArray[np.int64]:
        """Rows of ``task_ids`` in the matrix; KeyError names the first one not held."""
        wanted = np.asarray(task_ids, dtype=np.int64)
        at = np.searchsorted(self.ids, wanted)
        held = at < len(self.ids)
        held[held] = self.ids[at[held]] == wanted[held]
        if not held.all():
            raise KeyError(int(wanted[~held][0]))
        return at

    @functools.cached_property
    def rows(self) -> Mapping[int, int]:
        """Task id -> row of the matrix, built at the first single lookup (a scalar search per
        lookup cost 3 us: 0.3 s for 100,000 membership tests)."""
        return {task_id: row for row, task_id in enumerate(self.ids.tolist())}

    def __getitem__(self, task_id: int) -> NDArray[np.float32]:
        row: NDArray[np.float32] = self.matrix[self.rows[int(task_id)]]
        return row

    def __contains__(self, task_id: object) -> bool:
        return isinstance(task_id, int | np.integer) and int(task_id) in self.rows

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids.tolist())

    def __len__(self) -> int:
        return int(self.ids.shape[0])


def stack_rows(
    vectors: Mapping[int, NDArray[np.floating[Any]]],
    task_ids: Sequence[int] | NDArray[np.integer[Any]],
) -> NDArray[np.float32]:
    """(len(task_ids), dim) vectors of ``task_ids`` in that order: the matrix itself when they are
    all of an :class:`Embeddings` in its order, one gather from it for others, else a stack."""
    if isinstance(vectors, Embeddings):
        wanted = np.asarray(task_ids, dtype=np.int64)
        if np.array_equal(wanted, vectors.ids):
            return vectors.matrix
        return vectors.matrix[vectors.positions(wanted)]
    return np.stack([np.asarray(vectors[int(t)], dtype=np.float32) for t in task_ids])


@dataclass(frozen=True)
class FeaturizeResult:
    """What one featurization pass produced.

    Attributes:
        embeddings: task id -> (dim,) float32 vector, as one matrix (:class:`Embeddings`).
        failures: task id -> why its image could not be embedded (fetch, decode or preprocess).
        hashes: task id -> sha256 of the image bytes (the content half of the cache key).
        n_cached: items served from the cache (or a duplicate image in the same pass).
        n_computed: items the backbone ran on.
        seconds: wall time of the pass.
        n_fetched: items whose image was fetched (the others were known and cached).
    """

    embeddings: Embeddings
    failures: dict[int, str]
    hashes: dict[int, str]
    n_cached: int
    n_computed: int
    seconds: float
    n_fetched: int = 0


def decode_image(data: bytes) -> Image.Image:
    """Bytes to a lazily decoded PIL image; ``OSError`` (``UnidentifiedImageError``) if not one.

    Pixels are decoded by the backbone's preprocessing, which can ask JPEG for a reduced scale.
    The common PNGs are decoded here, by :func:`backend.model.png.decode_png` (PIL's pixels in
    about 60 % of PIL's time).
    """
    pixels = decode_png(data)
    if pixels is not None:
        return Image.fromarray(pixels)
    return Image.open(io.BytesIO(data))


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:300]


@dataclass(frozen=True)
class _Ready:
    """One fetched item: its hash and either a cached vector, the pixels to embed, or why not."""

    task_id: int
    sha: str | None = None
    vector: NDArray[np.float32] | None = None
    pixels: NDArray[np.uint8] | None = None
    error: str | None = None


def _prepare(task_id: int, fetch: Fetch, backbone: Backbone, cache: EmbeddingCache) -> _Ready:
    """Fetch, hash and (on a cache miss) decode and resize one image; runs in the pool."""
    try:
        data = fetch()
        sha = content_hash(data)
        vector = cache.get(sha, backbone.name)
        if vector is not None:
            return _Ready(task_id, sha, vector=vector)
        return _Ready(task_id, sha, pixels=backbone.pixels(decode_image(data)))
    except Exception as exc:  # one bad image must not stop a pass over thousands
        return _Ready(task_id, error=_reason(exc))


@dataclass
class _Pass:
    """Mutable bookkeeping of one featurize() call (kept off the module and the cache)."""

    backbone: Backbone
    cache: EmbeddingCache
    batch_size: int
    log_every: int
    total: int
    progress: Progress | None
    started: float = field(default_factory=time.perf_counter)
    by_sha: dict[str, NDArray[np.float32]] = field(default_factory=dict)
    waiting: dict[str, list[int]] = field(default_factory=dict)
    batch: list[tuple[str, NDArray[np.uint8]]] = field(default_factory=list)
    embeddings: dict[int, NDArray[np.float32]] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)
    hashes: dict[int, str] = field(default_factory=dict)
    n_cached: int = 0
    n_computed: int = 0
    n_fetched: int = 0
    next_log: int = 0
    #: images the first forward pass waits for (a runtime converts and checks on them)
    first_batch: int = 0
    #: the known tasks' cached vectors as they were read (:meth:`reuse_known`)
    known_block: Embeddings = field(default_factory=Embeddings.empty)

    def reuse_known(self, known: Mapping[int, str]) -> None:
        """Serve the tasks whose image hash is known and cached, fetching nothing: their vectors
        are read in ascending task id order, one block (:attr:`known_block`)."""
        ids = sorted(known)
        hit, block = self.cache.take_in_order([known[t] for t in ids], self.backbone.name)
        served = np.array(ids, dtype=np.int64)[hit]
        for task_id, vector in zip(served.tolist(), block, strict=True):
            sha = known[task_id]
            self.by_sha[sha] = self.embeddings[task_id] = vector
            self.hashes[task_id] = sha
        self.n_cached += len(served)
        self.known_block = Embeddings(served, block)
        self._progress()

    def result_embeddings(self) -> Embeddings:
        """Every embedded task's vector as one matrix: the known block as it was read when nothing
        else was embedded (a warm cycle), else it and the others copied in once."""
        block = self.known_block
        if len(block) == len(self.embeddings):
            return block
        ids = np.array(sorted(self.embeddings), dtype=np.int64)
        others = [t for t in ids.tolist() if t not in block]
        dim = (block.matrix if len(block) else self.embeddings[others[0]]).shape[-1]
        matrix = np.empty((len(ids), dim), dtype=np.float32)
        if len(block):
            matrix[np.searchsorted(ids, block.ids)] = block.matrix
        if others:
            matrix[np.searchsorted(ids, others)] = np.stack([self.embeddings[t] for t in others])
        return Embeddings(ids, matrix)

    def add(self, ready: _Ready) -> None:
        self.n_fetched += 1
        if ready.error is not None or ready.sha is None:
            self.failures[ready.task_id] = ready.error or "no image"
            log.warning(
                "image of task %d skipped: %s", ready.task_id, (ready.error or "").split(":")[0]
            )
            self._progress()
            return
        task_id, sha = ready.task_id, ready.sha
        self.hashes[task_id] = sha
        if sha in self.waiting:
            self.waiting[sha].append(task_id)
            return
        vector = self.by_sha.get(sha) if ready.vector is None else ready.vector
        if vector is not None:
            self.by_sha[sha] = self.embeddings[task_id] = vector
            self.n_cached += 1
            self._progress()
            return
        if ready.pixels is None:  # a fetched image is decoded unless its vector was cached
            raise RuntimeError(f"task {task_id}: image {sha[:12]} has no vector and no pixels")
        self.waiting[sha] = [task_id]
        self.batch.append((sha, ready.pixels))
        if len(self.batch) >= self.batch_size and len(self.batch) >= self.first_batch:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        vectors = self.backbone.embed_pixels(np.stack([pixels for _, pixels in self.batch]))
        self.first_batch = 0
        fresh = {}
        for (sha, _), vector in zip(self.batch, vectors, strict=True):
            fresh[sha] = self.by_sha[sha] = vector
            tasks = self.waiting.pop(sha)
            for task_id in tasks:
                self.embeddings[task_id] = vector
            self.n_computed += 1
            self.n_cached += len(tasks) - 1
        self.cache.put_many(fresh, self.backbone.name)
        self.batch.clear()
        self._progress()

    def rate(self) -> float:
        """Items finished per second so far."""
        done = len(self.embeddings) + len(self.failures)
        return done / max(time.perf_counter() - self.started, 1e-9)

    def _progress(self) -> None:
        done = len(self.embeddings) + len(self.failures)
        if self.progress is not None:
            self.progress(done, self.total, self.rate())
        if self.log_every > 0 and done >= self.next_log:
            log.info(
                "featurize %s: %d/%d images (%d cached, %d fetched, %d failed), %.1f images/s",
                self.backbone.name,
                done,
                self.total,
                self.n_cached,
                self.n_fetched,
                len(self.failures),
                self.rate(),
            )
            self.next_log = done + self.log_every


def featurize(
    items: Sequence[tuple[int, Fetch]],
    backbone: Backbone,
    cache: EmbeddingCache,
    *,
    batch_size: int = 32,
    log_every: int = 500,
    known: Mapping[int, str] | None = None,
    workers: int = 4,
    progress: Progress | None = None,
) -> FeaturizeResult:
    """Embed every item's image, reusing cached vectors for image bytes seen before.

    Args:
        items: (task id, fetch) pairs; ``fetch()`` returns the image bytes and may raise.
        backbone: the feature extractor; its ``name`` is the cache namespace.
        cache: the on-disk embedding cache.
        batch_size: images per forward pass.
        log_every: log progress every this many items (0: only at the end).
        known: task id -> content hash of the image it had when last embedded; such a task is
            served from the cache without calling its ``fetch`` (fetched when not cached).
        workers: threads that fetch, decode and resize while the backbone runs.
        progress: called with (done, total, images per second) as items finish.

    Returns:
        Embeddings for the items that worked, a reason for each that did not.
    """
    state = _Pass(backbone, cache, batch_size, log_every, len(items), progress)
    state.first_batch = int(getattr(backbone, "min_images", 0))
    ids = {task_id for task_id, _ in items}
    if known:
        state.reuse_known({t: sha for t, sha in known.items() if t in ids})
    todo = [(task_id, fetch) for task_id, fetch in items if task_id not in state.embeddings]
    window = max(2 * batch_size, 4 * workers)  # prepared items held at once (bounded memory)
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="featurize") as pool:
        pending: deque[Future[_Ready]] = deque()
        queue = iter(todo)
        for task_id, fetch in queue:
            pending.append(pool.submit(_prepare, task_id, fetch, backbone, cache))
            if len(pending) >= window:
                break
        while pending:
            ready = pending.popleft().result()
            for task_id, fetch in queue:
                pending.append(pool.submit(_prepare, task_id, fetch, backbone, cache))
                break
            state.add(ready)
        state.flush()
    seconds = time.perf_counter() - state.started
    log.info(
        "featurize %s done: %d embedded (%d computed, %d fetched), %d failed in %.1fs, "
        "%.1f images/s",
        backbone.name,
        len(state.embeddings),
        state.n_computed,
        state.n_fetched,
        len(state.failures),
        seconds,
        state.rate(),
    )
    return FeaturizeResult(
        embeddings=state.result_embeddings(),
        failures=state.failures,
        hashes=state.hashes,
        n_cached=state.n_cached,
        n_computed=state.n_computed,
        seconds=seconds,
        n_fetched=state.n_fetched,
    )
