"""What a strategy sees (a validated, read-only :class:`Pool`) and returns (:class:`Selection`).

Every signal is a kernel over the pool's arrays, declared once as a :class:`Signal` (its kind and
what it needs); calling it as ``signal(pool, k, *, rng, **options)`` gives a Selection. The pool
is validated once, when it is built; signals and their kernels trust it afterwards.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.floating[Any]]
IntArray = NDArray[np.int64]
Kind = Literal["label", "review"]

UNLABELED = -1
#: Row sums of class probabilities may deviate this much from 1 (float32 softmax output).
PROB_SUM_TOL = 1e-3
#: Elements per chunk of the row-wise kernels (about 2 MB of float64): temporaries stay in cache.
CHUNK_ELEMENTS = 262_144
#: Elements per chunk of the (M, n, C) committee kernels (their scratch buffer is reused, so a
#: chunk may be larger than cache; fewer chunks, fewer numpy calls).
COMMITTEE_CHUNK_ELEMENTS = 1_048_576
#: Most threads the chunked kernels use by default (they are bound by memory bandwidth beyond).
MAX_THREADS = 8
_THREADS: ContextVar[int | None] = ContextVar("strategies_threads", default=None)
#: Names of the optional arrays a signal may need (``Signal.needs``).
INPUTS = frozenset(
    {
        "probs",
        "committee",
        "embeddings",
        "oos_probs",
        "annotations",
        "clusters",
        "targets",
        "slices",
    }
)


def _readonly(array: NDArray[Any]) -> NDArray[Any]:
    view = array.view()
    view.flags.writeable = False
    return view


def _as_float(name: str, value: Any, ndim: int, *, check_finite: bool = True) -> FloatArray:
    array = np.asarray(value)
    if array.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
            raise ValueError(f"{name} must be a numeric array, got dtype {array.dtype}")
        array = array.astype(np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    if check_finite and not _all_finite(array):
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


#: Rows per block of :func:`_column_means` (partial sums in the array's dtype, then float64).
_MEAN_ROWS = 256


def _column_means(name: str, array: FloatArray) -> NDArray[np.float64]:
    """(d,) float64 column means of a finite (n, d) array, which this checks: the column sums
    are finite unless some value is not (or a sum overflows, and then each value is tested).

    Blocks of :data:`_MEAN_ROWS` rows are summed in the array's dtype and added up in float64:
    as fast as one float32 sum (100,000 x 1,280: 0.045 s, float64 throughout 0.07 s), and
    within 1e-7 (relative) of the float64 mean."""
    n = array.shape[0]
    sums = np.zeros(array.shape[1], dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, _MEAN_ROWS):
            sums += array[start : start + _MEAN_ROWS].sum(axis=0)
        finite = bool(np.isfinite(sums).all())
    if not finite:
        if not bool(np.isfinite(array).all()):
            raise ValueError(f"{name} contains NaN or infinite values")
        sums = array.sum(axis=0, dtype=np.float64)  # a partial sum overflowed its dtype
    out: NDArray[np.float64] = sums / max(n, 1)
    return out


def _all_finite(array: NDArray[Any]) -> bool:
    """Whether no value is NaN or infinite. Their sum is finite unless one is (NaN and infinities
    carry through a sum) or it overflows, and only then is each value checked: summing 100,000 x
    1,280 embeddings costs a fifth of testing each one."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(array.sum()):
            return True
    return bool(np.isfinite(array).all())


def _as_int(name: str, value: Any, ndim: int) -> IntArray:
    array = np.asarray(value)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array, got dtype {array.dtype}")
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    return array.astype(np.int64, copy=False)


def _check_probs(name: str, probs: FloatArray, *, multilabel: bool) -> None:
    if probs.size == 0:
        return
    if probs.min() < 0.0 or probs.max() > 1.0:
        raise ValueError(f"{name} must lie in [0, 1]")
    if not multilabel:
        sums = probs.sum(axis=-1)
        if np.abs(sums - 1.0).max() > PROB_SUM_TOL:
            raise ValueError(
                f"{name} rows must sum to 1 (max deviation {np.abs(sums - 1).max():.3g})"
            )


def _check_clusters(clusters: IntArray) -> None:
    if clusters.size and clusters.min() < 0:
        raise ValueError("clusters must be >= 0")


def _check_basis(basis: Basis, embeddings: NDArray[Any] | None) -> None:
    if not isinstance(basis, Basis):
        raise ValueError(f"basis must be a Basis, got {type(basis).__name__}")
    if embeddings is None:
        raise ValueError("a basis needs the embeddings it was fitted on")
    if basis.dim != embeddings.shape[1]:
        raise ValueError(
            f"basis has {basis.dim} dimensions but embeddings have {embeddings.shape[1]}"
        )


def _check_classes(name: str, values: IntArray, n_classes: int | None) -> None:
    if values.size == 0:
        return
    if values.min() < UNLABELED:
        raise ValueError(f"{name} must be >= -1 (-1 means none), got {values.min()}")
    if n_classes is not None and values.max() >= n_classes:
        raise ValueError(f"{name} has class {values.max()} but probabilities have {n_classes}")


#: Rows projected at once by :meth:`Basis.project` (a 100,000 x 1,280 centred copy is 0.5 GB).
PROJECT_ROWS = 8192


@dataclass(frozen=True, eq=False)
class Basis:
    """The leading principal directions of a pool's embeddings, fitted once and shared.

    Strategies that work in a reduced space (the TypiClust order, the bandit's proxy features,
    the near-copy index) project onto the same directions instead of each fitting its own PCA,
    and a cycle can carry a basis over to the next while the pool barely changes.

    Attributes:
        mean: (d,) float32 centre the directions were fitted around.
        components: (k, d) float32 orthonormal rows, strongest direction first.
    """

    mean: FloatArray
    components: FloatArray

    def __post_init__(self) -> None:
        mean = _as_float("basis mean", self.mean, 1).astype(np.float32, copy=False)
        components = _as_float("basis components", self.components, 2)
        components = components.astype(np.float32, copy=False)
        if components.shape[1] != mean.shape[0]:
            raise ValueError(
                f"basis components have {components.shape[1]} dimensions, its mean {mean.shape[0]}"
            )
        object.__setattr__(self, "mean", _readonly(mean))
        object.__setattr__(self, "components", _readonly(components))

    @property
    def dims(self) -> int:
        """Number of directions."""
        return int(self.components.shape[0])

    @property
    def dim(self) -> int:
        """Size of the embeddings it projects."""
        return int(self.mean.shape[0])

    def project(self, x: FloatArray, dims: int | None = None) -> NDArray[np.float32]:
        """(n, dims) coordinates of ``x`` (n, d) on the first ``dims`` directions (default all),
        :data:`PROJECT_ROWS` rows at a time."""
        k = self.dims if dims is None else min(int(dims), self.dims)
        basis = np.ascontiguousarray(self.components[:k].T)
        out = np.empty((x.shape[0], k), dtype=np.float32)
        for start in range(0, x.shape[0], PROJECT_ROWS):
            block = np.asarray(x[start : start + PROJECT_ROWS], dtype=np.float32) - self.mean
            np.matmul(block, basis, out=out[start : start + PROJECT_ROWS])
        return out


@dataclass(frozen=True, eq=False)
class Pool:
    """The arrays a strategy sees, validated once and read-only.

    Attributes:
        labels: (n,) int64 class index per item, -1 for unlabeled. In multi-label projects any
            value >= 0 only marks the item as labeled.
        probs: (n, C) calibrated class probabilities, or per-label sigmoid probabilities when
            ``multilabel``; None before a model exists.
        committee: (M, n, C) member probabilities (bootstrap committee or MC-dropout samples).
        embeddings: (n, d) feature vectors.
        oos_probs: (n, C) out-of-sample probabilities (cross-fitted); the rows of labeled items are
            the ones used, pass ``probs`` rows for unlabeled items.
        annotations: (n, A) int64 per-annotator labels, -1 where an annotator gave none.
        clusters: (n,) int64 precomputed cluster ids (ids >= 0); computed from ``embeddings``
            by the coverage strategies when None.
        targets: (n, C) int64 {0, 1} given labels of a multi-label pool (rows of unlabeled items
            are ignored); required there with ``oos_probs``, for the label-quality review.
        slices: (n,) int64 slice (group) id of each item, -1 for items in no slice.
        multilabel: ``probs`` are independent per-label probabilities.
        basis: principal directions of ``embeddings`` the reduced-space strategies share (fitted
            by them when None); needs ``embeddings`` of its size.
        embedding_mean: (d,) float64 mean of ``embeddings`` (computed while checking them).
    """

    labels: IntArray
    probs: FloatArray | None = None
    committee: FloatArray | None = None
    embeddings: FloatArray | None = None
    oos_probs: FloatArray | None = None
    annotations: IntArray | None = None
    clusters: IntArray | None = None
    targets: IntArray | None = None
    slices: IntArray | None = None
    multilabel: bool = False
    basis: Basis | None = None
    n_classes: int | None = field(init=False, default=None)
    embedding_mean: NDArray[np.float64] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        labels = _as_int("labels", self.labels, 1)
        arrays: dict[str, NDArray[Any]] = {"labels": labels}
        n = labels.shape[0]
        shapes = {"probs": 2, "committee": 3, "embeddings": 2, "oos_probs": 2}
        for name, ndim in shapes.items():
            value = getattr(self, name)
            if value is not None:
                arrays[name] = _as_float(name, value, ndim, check_finite=name != "embeddings")
        if "embeddings" in arrays:
            mean = _column_means("embeddings", arrays["embeddings"])
            object.__setattr__(self, "embedding_mean", _readonly(mean))
        for name in ("annotations", "clusters", "targets", "slices"):
            value = getattr(self, name)
            if value is not None:
                arrays[name] = _as_int(name, value, 1 if name in ("clusters", "slices") else 2)
        n_classes = self._check_shapes(arrays, n)
        self._check_ids(arrays, n_classes)
        if self.basis is not None:
            _check_basis(self.basis, arrays.get("embeddings"))
        for name, array in arrays.items():
            object.__setattr__(self, name, _readonly(array))
        object.__setattr__(self, "n_classes", n_classes)

    def _check_ids(self, arrays: dict[str, NDArray[Any]], n_classes: int | None) -> None:
        _check_classes("labels", arrays["labels"], None if self.multilabel else n_classes)
        if "annotations" in arrays:
            _check_classes("annotations", arrays["annotations"], n_classes)
        if "clusters" in arrays:
            _check_clusters(arrays["clusters"])
        if "slices" in arrays and arrays["slices"].size and arrays["slices"].min() < -1:
            raise ValueError("slices must be >= 0 (or -1 for no slice)")

    def _check_shapes(self, arrays: dict[str, NDArray[Any]], n: int) -> int | None:
        item_axis = {"committee": 1}
        for name, array in arrays.items():
            if array.shape[item_axis.get(name, 0)] != n:
                raise ValueError(f"{name} has {array.shape} but labels has {n} items")
        class_counts = {
            name: arrays[name].shape[-1]
            for name in ("probs", "committee", "oos_probs")
            if name in arrays
        }
        if len(set(class_counts.values())) > 1:
            raise ValueError(f"class counts disagree: {class_counts}")
        for name in class_counts:
            _check_probs(name, arrays[name], multilabel=self.multilabel)
        n_classes = next(iter(class_counts.values()), None)
        targets = arrays.get("targets")
        if targets is not None:
            if not self.multilabel:
                raise ValueError("targets are the given labels of multi-label pools only")
            if n_classes is not None and targets.shape[1] != n_classes:
                raise ValueError(
                    f"targets has {targets.shape[1]} labels but probabilities have {n_classes}"
                )
            if targets.size and not np.isin(targets, (0, 1)).all():
                raise ValueError("targets must be 0 or 1")
        if self.multilabel and "oos_probs" in arrays and targets is None:
            raise ValueError(
                "multi-label label-quality review (oos_probs) needs targets, the (n, C) 0/1 "
                "given labels"
            )
        return n_classes

    @property
    def n(self) -> int:
        """Number of items."""
        return int(self.labels.shape[0])

    @property
    def labeled(self) -> NDArray[np.bool_]:
        """(n,) True where the item has a label."""
        return self.labels > UNLABELED

    def with_clusters(self, clusters: IntArray) -> Pool:
        """This pool with ``clusters`` in place of its own, checked alone: the other arrays were
        checked when this pool was made (``dataclasses.replace`` would check them all again)."""
        array = _as_int("clusters", clusters, 1)
        if array.shape[0] != self.n:
            raise ValueError(f"clusters has {array.shape} but labels has {self.n} items")
        _check_clusters(array)
        out = copy.copy(self)
        object.__setattr__(out, "clusters", _readonly(array))
        return out

    def with_basis(self, basis: Basis | None) -> Pool:
        """This pool with ``basis`` in place of its own, checked alone (as
        :meth:`with_clusters`)."""
        if basis is not None:
            _check_basis(basis, self.embeddings)
        out = copy.copy(self)
        object.__setattr__(out, "basis", basis)
        return out

    def has(self, name: str) -> bool:
        """Whether the optional input ``name`` is present (embeddings also provide clusters)."""
        if name == "clusters":
            return self.clusters is not None or self.embeddings is not None
        return getattr(self, name) is not None


@dataclass(frozen=True, eq=False)
class Selection:
    """What a strategy returns: items, most important first.

    Attributes:
        indices: (k,) int64 item indices into the pool, unique.
        scores: (k,) float64 strategy scores of those items, higher = more important.
    """

    indices: IntArray
    scores: NDArray[np.float64]

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices, dtype=np.int64)
        scores = np.asarray(self.scores, dtype=np.float64)
        if indices.ndim != 1 or indices.shape != scores.shape:
            raise ValueError(f"indices {indices.shape} and scores {scores.shape} must be equal 1-D")
        object.__setattr__(self, "indices", _readonly(indices))
        object.__setattr__(self, "scores", _readonly(scores))

    def __len__(self) -> int:
        return int(self.indices.shape[0])


#: ``kernel(**arrays, **options) -> (n,) scores``, its parameters named as in :class:`Signal`.
Kernel = Callable[..., NDArray[np.float64]]
#: ``select(pool, k, *, rng, **options) -> Selection``: a signal's own way to choose ``k`` items.
Selector = Callable[..., Selection]
#: Pool attributes a kernel parameter of the same name is given (see :class:`Signal`): its
#: fields and the ``labeled`` mask and item count ``n``.
POOL_FIELDS = frozenset({f.name for f in fields(Pool)} | {"labeled", "n"})
_RNG = "rng"


def _given(kernel: Kernel) -> tuple[tuple[str, ...], frozenset[str]]:
    """The kernel parameters a signal fills (pool fields, ``rng``) and the inputs it requires.

    TypeError on a parameter without a default that names neither.
    """
    given, required = [], set()
    for param in inspect.signature(kernel).parameters.values():
        if param.name in POOL_FIELDS or param.name == _RNG:
            given.append(param.name)
        if param.default is inspect.Parameter.empty:
            if param.name not in POOL_FIELDS and param.name != _RNG:
                raise TypeError(f"{kernel.__name__}: parameter {param.name!r} names no pool field")
            required.add(param.name)
    return tuple(given), frozenset(required & INPUTS)


@dataclass(frozen=True)
class Signal:
    """One selection signal, defined once: its kernel and what the kernel cannot say itself.

    The kernel takes arrays and returns (n,) float64 scores, higher = more important, meaningful
    on the items of ``kind`` (unlabeled for "label", labeled for "review"). A parameter named after
    a pool attribute (:data:`POOL_FIELDS`: ``probs``, ``labels``, ``labeled``, ``multilabel``...)
    is given that attribute; ``rng``, only where the signal draws random numbers, the caller's
    generator; the others are options with defaults. The pool inputs (:data:`INPUTS`) among the
    parameters without a default are the signal's ``needs``.

    Attributes:
        name: the registry key.
        kind: "label" (ranks unlabeled items, for the labeling queue) or "review" (labeled items).
        kernel: the scores, as above.
        summary: what a high score means, in a line.
        multilabel: defined on multi-label pools.
        alarm: for review signals, the raw score above which an item is evidence of a problem
            (a relabel candidate).
        select: ``select(pool, k, *, rng, **options)`` where the choice of ``k`` items is not
            the top ``k`` scores (core-set, allocation over clusters); None = the top ``k``.
        needs: given only where a parameter's default stands for another input (coverage:
            the clusters, else k-means of the embeddings); else read off the kernel.
    """

    name: str
    kind: Kind
    kernel: Kernel
    summary: str
    multilabel: bool = True
    alarm: float | None = None
    select: Selector | None = None
    needs: frozenset[str] = frozenset()
    _given: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        given, required = _given(self.kernel)
        object.__setattr__(self, "_given", given)
        if not self.needs:
            object.__setattr__(self, "needs", required)
        if not self.needs <= INPUTS:
            raise ValueError(f"{self.name}: needs {sorted(self.needs - INPUTS)} are not inputs")

    def __call__(
        self, pool: Pool, k: int, *, rng: np.random.Generator, **options: Any
    ) -> Selection:
        """The ``k`` items of ``kind`` this signal puts first, best first."""
        self._check(pool)
        if self.select is not None:
            return self.select(pool, k, rng=rng, **options)
        return top_k(self._scores(pool, rng, options), eligible(pool, self.kind), k, rng=rng)

    def score(self, pool: Pool, *, rng: np.random.Generator, **options: Any) -> NDArray[np.float64]:
        """(n,) every item's score, for the combination (``rng`` is used only if it draws)."""
        self._check(pool)
        return self._scores(pool, rng, options)

    def _scores(
        self, pool: Pool, rng: np.random.Generator, options: dict[str, Any]
    ) -> NDArray[np.float64]:
        given = {name: rng if name == _RNG else getattr(pool, name) for name in self._given}
        return self.kernel(**given, **options)

    def _check(self, pool: Pool) -> None:
        reason = self.unavailable(pool)
        if reason is not None:
            raise ValueError(f"strategy {self.name!r} {reason}")

    def unavailable(self, pool: Pool) -> str | None:
        """Why this signal cannot score ``pool`` (missing inputs, multi-label), or None."""
        missing = sorted(name for name in self.needs if not pool.has(name))
        if missing:
            return f"needs {', '.join(missing)}, which the pool lacks"
        if pool.multilabel and not self.multilabel:
            return "is not defined for multi-label pools"
        return None


def registry(*signals: Signal) -> MappingProxyType[str, Signal]:
    """The read-only mapping name -> signal; ValueError on a name given twice."""
    by_name = {signal.name: signal for signal in signals}
    if len(by_name) != len(signals):
        names = [signal.name for signal in signals]
        raise ValueError(f"signals named twice: {sorted({n for n in names if names.count(n) > 1})}")
    return MappingProxyType(by_name)


def check_k(k: int) -> int:
    """Return ``k`` as int after checking it is a non-negative integer."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    return int(k)


def need(pool: Pool, strategy: str, name: str) -> NDArray[Any]:
    """The pool's array ``name``; ValueError naming ``strategy`` when the pool has none."""
    value: NDArray[Any] | None = getattr(pool, name)
    if value is None:
        raise ValueError(f"strategy {strategy!r} needs {name}; the pool has none")
    return value


def eligible(pool: Pool, kind: Kind) -> IntArray:
    """(m,) indices a ``kind`` strategy may return: unlabeled for "label", labeled for "review"."""
    mask = pool.labeled if kind == "review" else ~pool.labeled
    return np.flatnonzero(mask).astype(np.int64)


def top_k(
    scores: NDArray[np.floating[Any]], candidates: IntArray, k: int, *, rng: np.random.Generator
) -> Selection:
    """The ``k`` highest-scoring candidates, best first, ties broken at random by ``rng``.

    Args:
        scores: (n,) scores over the whole pool, higher = more important.
        candidates: (m,) indices allowed in the selection.
        k: how many to return; all candidates when fewer.
        rng: breaks ties, so equal scores do not favour low indices.
    """
    k = min(check_k(k), candidates.shape[0])
    shuffled = candidates[rng.permutation(candidates.shape[0])]
    values = np.asarray(scores, dtype=np.float64)[shuffled]
    if k < shuffled.shape[0]:
        part = np.argpartition(-values, k - 1)[:k] if k else np.empty(0, dtype=np.int64)
        shuffled, values = shuffled[part], values[part]
    order = np.argsort(-values, kind="stable")
    return Selection(shuffled[order], values[order])


def available_threads() -> int:
    """Threads the chunked kernels may use: :func:`threads`' limit, else one per usable CPU."""
    limit = _THREADS.get()
    if limit is not None:
        return limit
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Let the scoring kernels use at most ``n`` threads inside the ``with`` block.

    The default is one thread per usable CPU (at most :data:`MAX_THREADS`); pass 1 to keep
    scoring on the calling thread (benchmarks of one core, a process sharing its CPUs).
    """
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    token = _THREADS.set(int(n))
    try:
        yield
    finally:
        _THREADS.reset(token)


def _over_chunks(
    n: int, rows: int, work: Callable[[int, int, Any], None], scratch: Callable[[], Any]
) -> None:
    """Call ``work(start, stop, buffer)`` for every chunk of ``rows`` items, on worker threads.

    numpy releases the GIL inside its loops, so chunks scored on several threads run in parallel.
    Each thread gets its own ``scratch()`` buffer and every chunk writes a disjoint output slice.
    """
    starts = range(0, n, rows)
    workers = min(available_threads(), len(starts))

    def run(first: int) -> None:
        buffer = scratch()
        for start in starts[first :: max(workers, 1)]:
            work(start, min(start + rows, n), buffer)

    if workers <= 1:
        run(0)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="strategies") as executor:
        for _ in executor.map(run, range(workers)):
            pass  # re-raises the first worker error


def rowwise(
    kernel: Callable[..., NDArray[Any]],
    array: FloatArray,
    *aligned: NDArray[Any],
) -> NDArray[np.float64]:
    """Apply a row kernel chunk by chunk (on :func:`available_threads` threads); (n,) float64.

    ``kernel(block, *aligned_blocks)`` gets the same rows of ``array`` and of every ``aligned``
    array (per-item labels, say). Large temporaries (a 1M x 100 log) cost more in page faults than
    in arithmetic; chunks of about :data:`CHUNK_ELEMENTS` elements keep them small. The loop is
    over chunks, never items.
    """
    n = array.shape[0]
    rows = max(64, CHUNK_ELEMENTS // max(1, array.size // max(n, 1)))
    out = np.empty(n, dtype=np.float64)

    def work(start: int, stop: int, _: None) -> None:
        out[start:stop] = kernel(array[start:stop], *(a[start:stop] for a in aligned))

    _over_chunks(n, rows, work, lambda: None)
    return out


def xlogy_sum(subscripts: str, x: FloatArray, y: FloatArray, log_out: FloatArray) -> FloatArray:
    """``einsum(subscripts, x, log(y))`` with ``0 * log 0 = 0``; ``log(y)`` goes into ``log_out``.

    One log pass and no flooring pass (``np.maximum`` over a committee costs as much as its log):
    a row (axis -2) where ``y`` has an exact zero comes out NaN (0 * -inf), and only those rows
    are recomputed with ``y`` floored at the dtype's smallest normal number. ``x`` is zero
    wherever ``y`` is (a member probability, or the members' mean), so the floor changes nothing.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        total: FloatArray = np.einsum(subscripts, x, np.log(y, out=log_out))
    bad = np.isnan(total)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(-1, bad.shape[-1]).any(axis=0))
        tiny = np.finfo(y.dtype).tiny
        if rows.shape[0] > total.shape[-1] // 4:  # mostly zeros (hard votes): floor everything
            np.maximum(y, tiny, out=log_out)
            floored_all: FloatArray = np.einsum(subscripts, x, np.log(log_out, out=log_out))
            return floored_all
        floored = np.log(np.maximum(y[..., rows, :], tiny))
        total[..., rows] = np.einsum(subscripts, x[..., rows, :], floored)
    return total


def committee_rowwise(
    kernel: Callable[[FloatArray, FloatArray], NDArray[np.floating[Any]]], committee: FloatArray
) -> NDArray[np.float64]:
    """Apply ``kernel(block, scratch)`` to (M, rows, C) item chunks of a committee; (n,) float64.

    ``scratch`` is one (M + 2, rows, C) buffer per thread in the committee's dtype, reused by every
    chunk: a fresh multi-megabyte temporary per chunk costs more in page faults than the logs.
    """
    n_members, n, n_classes = committee.shape
    dtype = np.result_type(committee.dtype, np.float32)
    rows = max(64, COMMITTEE_CHUNK_ELEMENTS // max(1, n_members * n_classes))
    out = np.empty(n, dtype=np.float64)

    def work(start: int, stop: int, scratch: FloatArray) -> None:
        out[start:stop] = kernel(committee[:, start:stop], scratch[:, : stop - start])

    _over_chunks(
        n, rows, work, lambda: np.empty((n_members + 2, min(rows, n), n_classes), dtype=dtype)
    )
    return out


def fast_committee(committee: FloatArray) -> bool:
    """Whether the compiled float32 committee kernels take ``committee``: float32, C-contiguous."""
    return committee.dtype == np.float32 and committee.flags.c_contiguous


def float_bits(values: FloatArray) -> NDArray[np.signedinteger[Any]]:
    """A C-contiguous view of non-negative float32/float64 ``values`` as int32/int64 (copied only
    when not C-contiguous): non-negative floats order as their bit patterns, and integer max and
    min reductions vectorize in compiled loops where float ones do not."""
    contiguous = np.ascontiguousarray(values, dtype=np.result_type(values.dtype, np.float32))
    return contiguous.view(np.int32 if contiguous.dtype == np.float32 else np.int64)


def compiled_rowwise(
    kernel: Callable[..., None], array: NDArray[Any], *extra: Any
) -> NDArray[np.float64]:
    """Apply a compiled ``kernel(array, start, stop, out, *extra)`` to item chunks of a
    C-contiguous (M, n, C) committee or (n, C) array (items on axis -2), on
    :func:`available_threads` threads; (n,) float64.

    The kernel writes ``out[start:stop]`` and releases the GIL, so chunks run in parallel; they
    are as large as :func:`committee_rowwise`'s (several per thread balance the load)."""
    n = array.shape[-2]
    rows = max(64, COMMITTEE_CHUNK_ELEMENTS // max(1, array.size // max(n, 1)))
    out = np.empty(n, dtype=np.float64)

    def work(start: int, stop: int, _: None) -> None:
        kernel(array, start, stop, out, *extra)

    _over_chunks(n, rows, work, lambda: None)
    return out
