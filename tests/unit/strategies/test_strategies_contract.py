"""One contract suite over every entry of the registry."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest
from conftest import N_ANNOTATORS, N_CLASSES, N_DIMS, N_MEMBERS, make_arrays

from strategies import REGISTRY, Pool, Selection, Signal
from strategies.base import registry

NAMES = sorted(REGISTRY)


def _eligible(pool: Pool, info: Signal) -> np.ndarray:
    return np.flatnonzero(pool.labeled if info.kind == "review" else ~pool.labeled)


def _select(name: str, pool: Pool, k: int, seed: int = 0) -> Selection:
    return REGISTRY[name](pool, k, rng=np.random.default_rng(seed))


def test_registry_is_read_only_and_documents_each_entry() -> None:
    with pytest.raises(TypeError):
        REGISTRY["new"] = REGISTRY["entropy"]  # type: ignore[index]
    for info in REGISTRY.values():
        assert info.kind in ("label", "review")
        assert info.needs <= {
            "probs",
            "committee",
            "embeddings",
            "oos_probs",
            "annotations",
            "clusters",
            "slices",
        }
        assert info.summary


def test_a_signal_reads_its_needs_and_options_off_its_kernel(full_pool: Pool) -> None:
    calls: list[dict[str, Any]] = []

    def kernel(
        probs: np.ndarray, labeled: np.ndarray, embeddings: Any = None, *, scale: float = 1.0
    ) -> np.ndarray:
        calls.append({"probs": probs, "labeled": labeled, "embeddings": embeddings})
        return scale * probs[:, 0]

    signal = Signal("first_class", "label", kernel, "probability of class 0")
    assert signal.needs == {"probs"}
    scores = signal.score(full_pool, rng=np.random.default_rng(0), scale=2.0)
    np.testing.assert_array_equal(scores, 2.0 * full_pool.probs[:, 0])  # type: ignore[index]
    assert calls[0]["embeddings"] is full_pool.embeddings
    np.testing.assert_array_equal(calls[0]["labeled"], full_pool.labeled)
    assert signal.unavailable(Pool(labels=full_pool.labels)) == "needs probs, which the pool lacks"


def test_a_kernel_parameter_no_pool_field_fills_is_rejected() -> None:
    def kernel(probs: np.ndarray, temperature: float) -> np.ndarray:
        return probs[:, 0] / temperature

    with pytest.raises(TypeError, match="'temperature' names no pool field"):
        Signal("tempered", "label", kernel, "needs a temperature nobody gives")


def test_registry_rejects_a_name_given_twice() -> None:
    with pytest.raises(ValueError, match=r"named twice: \['margin'\]"):
        registry(REGISTRY["margin"], REGISTRY["entropy"], REGISTRY["margin"])


@pytest.mark.parametrize("name", NAMES)
def test_only_signals_taking_rng_depend_on_it(name: str, full_pool: Pool) -> None:
    first = REGISTRY[name].score(full_pool, rng=np.random.default_rng(1))
    second = REGISTRY[name].score(full_pool, rng=np.random.default_rng(2))
    takes_rng = "rng" in inspect.signature(REGISTRY[name].kernel).parameters
    if not takes_rng:
        np.testing.assert_array_equal(first, second)
    elif name == "random":
        assert not np.array_equal(first, second)


def test_settings_default_signals_exist() -> None:
    for name in ("entropy", "coverage", "balance"):
        assert REGISTRY[name].kind == "label"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("k", [0, 1, 7, 1000])
def test_returns_k_unique_in_range_items_of_its_kind(name: str, k: int, full_pool: Pool) -> None:
    info = REGISTRY[name]
    selection = _select(name, full_pool, k)
    allowed = _eligible(full_pool, info)
    assert len(selection) == min(k, allowed.shape[0])
    assert np.unique(selection.indices).shape == selection.indices.shape
    assert np.isin(selection.indices, allowed).all()
    assert selection.indices.dtype == np.int64 and selection.scores.dtype == np.float64
    assert np.isfinite(selection.scores).all()
    assert (np.diff(selection.scores) <= 1e-12).all() or name == "coreset"


@pytest.mark.parametrize("name", NAMES)
def test_label_signals_never_return_labeled_items(name: str, arrays: dict[str, Any]) -> None:
    arrays["labels"][:100] = np.arange(100) % N_CLASSES
    pool = Pool(**arrays)
    selection = _select(name, pool, 50)
    if REGISTRY[name].kind == "label":
        assert len(selection) == 20
        assert not pool.labeled[selection.indices].any()
    else:
        assert pool.labeled[selection.indices].all()


@pytest.mark.parametrize("name", NAMES)
def test_same_rng_same_output(name: str, full_pool: Pool) -> None:
    first, second = _select(name, full_pool, 9, seed=3), _select(name, full_pool, 9, seed=3)
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_array_equal(first.scores, second.scores)


@pytest.mark.parametrize("name", NAMES)
def test_inputs_not_mutated(name: str, arrays: dict[str, Any]) -> None:
    before = {key: np.copy(value) for key, value in arrays.items()}
    _select(name, Pool(**arrays), 11)
    for key, value in arrays.items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
        assert value.flags.writeable, key


@pytest.mark.parametrize("name", NAMES)
def test_empty_pool(name: str) -> None:
    pool = Pool(
        labels=np.zeros(0, dtype=np.int64),
        probs=np.zeros((0, N_CLASSES)),
        committee=np.zeros((N_MEMBERS, 0, N_CLASSES)),
        embeddings=np.zeros((0, N_DIMS)),
        oos_probs=np.zeros((0, N_CLASSES)),
        annotations=np.zeros((0, N_ANNOTATORS), dtype=np.int64),
        slices=np.zeros(0, dtype=np.int64),
    )
    assert len(_select(name, pool, 5)) == 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_pools_and_k_larger_than_pool(name: str, n: int) -> None:
    pool = Pool(**make_arrays(n, n_labeled=1))
    selection = _select(name, pool, 10)
    assert len(selection) == _eligible(pool, REGISTRY[name]).shape[0]


@pytest.mark.parametrize("name", NAMES)
def test_missing_input_is_a_clear_value_error(name: str, arrays: dict[str, Any]) -> None:
    for needed in REGISTRY[name].needs - {"clusters"}:
        partial = {key: value for key, value in arrays.items() if key != needed}
        with pytest.raises(ValueError, match=f"{name}.*needs.*{needed}"):
            _select(name, Pool(**partial), 3)
    if "clusters" in REGISTRY[name].needs:
        partial = {key: value for key, value in arrays.items() if key != "embeddings"}
        with pytest.raises(ValueError, match="needs clusters"):
            _select(name, Pool(**partial), 3)


@pytest.mark.parametrize("name", NAMES)
def test_negative_or_fractional_k_rejected(name: str, full_pool: Pool) -> None:
    for k in (-1, 2.5):
        with pytest.raises(ValueError, match="k must be a non-negative integer"):
            _select(name, full_pool, k)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "bad", "message"),
    [
        ("probs", lambda a: np.where(a == a.max(), np.nan, a), "probs contains NaN"),
        ("embeddings", lambda a: np.where(a == a.max(), np.inf, a), "embeddings contains NaN"),
        ("committee", lambda a: a[:, :-1], r"committee has \(3, 119, 4\)"),
        ("oos_probs", lambda a: a[:, :-1], "class counts disagree"),
        ("probs", lambda a: a * 2.0, r"probs must lie in \[0, 1\]"),
        ("oos_probs", lambda a: a * 0.5, "oos_probs rows must sum to 1"),
        ("probs", lambda a: a[:, :, None], "probs must be 2-D"),
        ("labels", lambda a: a.astype(np.float64), "labels must be an integer array"),
        ("labels", lambda a: np.where(a == 0, N_CLASSES, a), "labels has class 4"),
        ("labels", lambda a: np.where(a == 0, -2, a), "labels must be >= -1"),
        ("annotations", lambda a: a[:-2], r"annotations has \(118, 3\)"),
        ("embeddings", lambda a: a.astype(str), "embeddings must be a numeric array"),
    ],
)
def test_bad_input_rejected_with_clear_message(
    arrays: dict[str, Any], key: str, bad: Any, message: str
) -> None:
    arrays[key] = bad(arrays[key])
    with pytest.raises(ValueError, match=message):
        Pool(**arrays)


def test_embeddings_whose_sum_overflows_are_accepted_and_opposite_infinities_rejected(
    arrays: dict[str, Any],
) -> None:
    huge = np.full_like(arrays["embeddings"], 3e38, dtype=np.float32)
    with np.errstate(over="ignore"):
        assert not np.isfinite(huge.sum())  # the quick check overflows, each value is finite
    pool = Pool(**{**arrays, "embeddings": huge})
    assert pool.embeddings is not None and pool.embedding_mean is not None
    np.testing.assert_allclose(pool.embedding_mean, 3e38, rtol=1e-6)
    both = huge.copy()
    both[0, 0], both[1, 0] = np.inf, -np.inf  # their sum is NaN, still not finite
    with pytest.raises(ValueError, match="embeddings contains NaN or infinite values"):
        Pool(**{**arrays, "embeddings": both})


def test_with_clusters_replaces_only_the_clusters_and_checks_them(full_pool: Pool) -> None:
    clusters = np.arange(full_pool.n) % 5
    pool = full_pool.with_clusters(clusters)
    assert pool.clusters is not None and np.array_equal(pool.clusters, clusters)
    assert pool.embeddings is full_pool.embeddings and pool.probs is full_pool.probs
    with pytest.raises(ValueError, match="read-only"):
        pool.clusters[0] = 1
    assert full_pool.clusters is None or not np.array_equal(full_pool.clusters, clusters)
    for bad, message in (
        (clusters[:-1], rf"clusters has \({full_pool.n - 1},\) but labels has {full_pool.n} items"),
        (clusters - 1, "clusters must be >= 0"),
        (clusters.astype(np.float64), "clusters must be an integer array"),
    ):
        with pytest.raises(ValueError, match=message):
            full_pool.with_clusters(bad)


def test_pool_arrays_are_read_only(full_pool: Pool) -> None:
    assert full_pool.probs is not None
    with pytest.raises(ValueError, match="read-only"):
        full_pool.probs[0, 0] = 1.0


@pytest.mark.parametrize("name", NAMES)
def test_multilabel_pools_supported_or_rejected_clearly(name: str, arrays: dict[str, Any]) -> None:
    rng = np.random.default_rng(5)
    arrays["probs"] = rng.random(arrays["probs"].shape)
    arrays["committee"] = rng.random(arrays["committee"].shape)
    arrays.pop("oos_probs")
    pool = Pool(**arrays, multilabel=True)
    info = REGISTRY[name]
    if info.multilabel and "oos_probs" not in info.needs:
        assert len(_select(name, pool, 5)) == 5
    else:
        with pytest.raises(ValueError, match=name):
            _select(name, pool, 5)


def _tags(n: int = 20, n_labels: int = 3) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    probs = rng.random((n, n_labels))
    targets = (probs > 0.5).astype(np.int64)
    return {"labels": np.zeros(n, dtype=np.int64), "probs": probs, "oos_probs": probs,
            "targets": targets, "multilabel": True}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"targets": None}, "needs targets"),
        ({"multilabel": False, "oos_probs": None, "probs": None}, "multi-label pools only"),
        ({"targets": np.zeros((20, 2), dtype=np.int64)}, "targets has 2 labels"),
        ({"targets": np.full((20, 3), 2, dtype=np.int64)}, "targets must be 0 or 1"),
        ({"targets": np.zeros((19, 3), dtype=np.int64)}, r"targets has \(19, 3\)"),
    ],
)
def test_multilabel_targets_are_validated(change: dict[str, Any], message: str) -> None:
    arrays = {**_tags(), **change}
    with pytest.raises(ValueError, match=message):
        Pool(**arrays)


def test_multilabel_review_signals_score_a_pool_with_targets() -> None:
    pool = Pool(**_tags())
    for name in ("self_confidence", "confident_learning"):
        assert REGISTRY[name].unavailable(pool) is None
        assert len(REGISTRY[name](pool, 5, rng=np.random.default_rng(0))) == 5
    with pytest.raises(ValueError, match="not defined for multi-label pools"):
        REGISTRY["normalized_margin"](pool, 5, rng=np.random.default_rng(0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_pool_knows_its_embedding_mean(dtype: Any) -> None:
    rng = np.random.default_rng(12)
    x = (rng.normal(size=(9_000, 16)) * 50 + 1e3).astype(dtype)  # several blocks, a large mean
    pool = Pool(labels=np.full(9_000, -1), embeddings=x)
    assert pool.embedding_mean is not None and not pool.embedding_mean.flags.writeable
    np.testing.assert_allclose(pool.embedding_mean, x.mean(axis=0, dtype=np.float64), rtol=1e-6)
    assert Pool(labels=np.full(9_000, -1)).embedding_mean is None
