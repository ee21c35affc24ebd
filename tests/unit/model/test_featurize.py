"""Featurization: batches, the content-keyed cache, and per-task failures."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from backend.model.backbones import TorchBackbone, build_backbone
from backend.model.cache import EmbeddingCache, content_hash
from backend.model.featurize import Embeddings, decode_image, featurize, stack_rows

from .conftest import fast_settings, png_bytes


@pytest.fixture
def backbone() -> TorchBackbone:
    return build_backbone(fast_settings(backbone="small_cnn", image_size=32))


def fetcher(data: bytes) -> Callable[[], bytes]:
    return lambda: data


def failing_fetch() -> bytes:
    raise ConnectionError("image host unreachable")


def test_corrupt_image_is_reported_for_its_task_and_the_batch_goes_on(
    backbone: TorchBackbone, tmp_path: Path
) -> None:
    good = {i: png_bytes((40 * i, 100, 200 - 30 * i)) for i in (1, 2, 4, 5)}
    truncated = png_bytes((9, 9, 9))[:30]
    items = [
        (1, fetcher(good[1])),
        (2, fetcher(good[2])),
        (3, fetcher(b"definitely not an image")),
        (4, fetcher(good[4])),
        (6, fetcher(truncated)),
        (7, failing_fetch),
        (5, fetcher(good[5])),
    ]
    result = featurize(items, backbone, EmbeddingCache(tmp_path), batch_size=3)
    assert sorted(result.embeddings) == [1, 2, 4, 5]
    assert sorted(result.failures) == [3, 6, 7]
    assert result.failures[3].startswith("UnidentifiedImageError")
    assert "unreachable" in result.failures[7]
    assert all(
        v.shape == (backbone.dim,) and v.dtype == np.float32 for v in result.embeddings.values()
    )
    assert result.n_computed == 4


def test_embeddings_match_a_direct_forward_pass(backbone: TorchBackbone, tmp_path: Path) -> None:
    data = png_bytes((10, 200, 30))
    result = featurize([(9, fetcher(data))], backbone, EmbeddingCache(tmp_path))
    direct = backbone.embed(backbone.preprocess(decode_image(data))[None])[0]
    np.testing.assert_allclose(result.embeddings[9], direct, rtol=1e-5, atol=1e-6)


def test_cache_is_reused_across_passes_and_duplicates_embed_once(
    backbone: TorchBackbone, tmp_path: Path
) -> None:
    a, b = png_bytes((200, 0, 0)), png_bytes((0, 0, 200))
    items = [(1, fetcher(a)), (2, fetcher(b)), (3, fetcher(a))]
    cache = EmbeddingCache(tmp_path)
    first = featurize(items, backbone, cache, batch_size=8)
    assert (first.n_computed, first.n_cached) == (2, 1)
    np.testing.assert_array_equal(first.embeddings[1], first.embeddings[3])
    second = featurize(items, backbone, cache, batch_size=8)
    assert (second.n_computed, second.n_cached) == (0, 3)
    for task in (1, 2, 3):
        np.testing.assert_array_equal(second.embeddings[task], first.embeddings[task])
    assert (content_hash(a), backbone.name) in cache
    assert (content_hash(a), "another-backbone") not in cache


def test_torn_cache_tail_is_cut_and_recomputed(backbone: TorchBackbone, tmp_path: Path) -> None:
    a, b = png_bytes((1, 2, 3)), png_bytes((3, 2, 1))
    cache = EmbeddingCache(tmp_path)
    featurize([(1, fetcher(a))], backbone, cache)
    [index] = list(tmp_path.rglob("index.sha"))
    with index.open("ab") as handle:  # a crash in the middle of appending b's row
        handle.write(bytes.fromhex(content_hash(b))[:10])
    fresh = EmbeddingCache(tmp_path)
    result = featurize([(1, fetcher(a)), (2, fetcher(b))], backbone, fresh)
    assert (result.n_cached, result.n_computed) == (1, 1)
    assert index.stat().st_size == 2 * 32
    again = EmbeddingCache(tmp_path).get_many([content_hash(a), content_hash(b)], backbone.name)
    np.testing.assert_array_equal(again[content_hash(b)], result.embeddings[2])


def test_known_hashes_are_served_without_fetching(backbone: TorchBackbone, tmp_path: Path) -> None:
    a, b = png_bytes((200, 0, 0)), png_bytes((0, 0, 200))
    cache = EmbeddingCache(tmp_path)
    first = featurize([(1, fetcher(a)), (2, fetcher(b))], backbone, cache)
    calls: list[int] = []

    def counted(task_id: int, data: bytes) -> Callable[[], bytes]:
        def fetch() -> bytes:
            calls.append(task_id)
            return data

        return fetch

    c = png_bytes((0, 200, 0))
    known = {1: content_hash(a), 2: content_hash(b), 3: content_hash(c)}  # c was never embedded
    items = [(1, counted(1, a)), (2, counted(2, b)), (3, counted(3, c))]
    second = featurize(items, backbone, EmbeddingCache(tmp_path), known=known)
    assert calls == [3]  # only the task whose vector is not cached is fetched
    assert (second.n_fetched, second.n_computed, second.n_cached) == (1, 1, 2)
    np.testing.assert_array_equal(second.embeddings[1], first.embeddings[1])
    assert second.hashes == known


def test_a_warm_pass_hands_out_the_block_it_read_in_task_order(
    backbone: TorchBackbone, tmp_path: Path
) -> None:
    # The same image on tasks 7 and 2, a third image on 5: one vector each, in task id order.
    a, b = png_bytes((200, 0, 0)), png_bytes((0, 0, 200))
    items = [(7, fetcher(a)), (5, fetcher(b)), (2, fetcher(a))]
    first = featurize(items, backbone, EmbeddingCache(tmp_path))
    assert first.embeddings.ids.tolist() == [2, 5, 7]
    known = {7: content_hash(a), 5: content_hash(b), 2: content_hash(a)}
    warm = featurize(items, backbone, EmbeddingCache(tmp_path), known=known)
    assert (warm.n_fetched, warm.n_computed, warm.n_cached) == (0, 0, 3)
    assert warm.embeddings.ids.tolist() == [2, 5, 7]
    np.testing.assert_array_equal(warm.embeddings.matrix, first.embeddings.matrix)
    for task in (2, 5, 7):
        assert np.shares_memory(warm.embeddings[task], warm.embeddings.matrix)
    # One task new, one known but re-imported with new bytes: both in their place in the order.
    c = png_bytes((0, 200, 0))
    mixed = featurize(
        [*items, (3, fetcher(c)), (6, fetcher(b))],
        backbone,
        EmbeddingCache(tmp_path),
        known={7: content_hash(a), 2: content_hash(a)},
    )
    assert mixed.embeddings.ids.tolist() == [2, 3, 5, 6, 7]
    direct = backbone.embed(backbone.preprocess(decode_image(c))[None])[0]
    np.testing.assert_allclose(mixed.embeddings[3], direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mixed.embeddings[6], first.embeddings[5])
    np.testing.assert_array_equal(mixed.embeddings[7], first.embeddings[7])


def test_embeddings_table_gathers_rows_and_names_what_it_lacks() -> None:
    rng = np.random.default_rng(3)
    vectors = {int(t): rng.normal(size=4).astype(np.float32) for t in (9, 1, 4, 30)}
    table = Embeddings.of(vectors)
    assert table.ids.tolist() == [1, 4, 9, 30] and len(table) == 4 and list(table) == [1, 4, 9, 30]
    assert stack_rows(table, [1, 4, 9, 30]) is table.matrix  # the whole table: no copy
    np.testing.assert_array_equal(stack_rows(table, [30, 1]), np.stack([vectors[30], vectors[1]]))
    np.testing.assert_array_equal(stack_rows(vectors, [30, 1]), stack_rows(table, [30, 1]))
    assert 9 in table and 5 not in table and "9" not in table and 31 not in table
    with pytest.raises(KeyError, match="5"):
        stack_rows(table, [1, 5])
    with pytest.raises(KeyError):
        table[31]
    with pytest.raises(ValueError, match="ascending"):
        Embeddings(np.array([2, 1]), np.zeros((2, 4), np.float32))
    empty = Embeddings.of({})
    assert len(empty) == 0 and stack_rows(empty, []).shape[0] == 0


def test_cache_takes_hashes_in_order_with_repeats_and_misses(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    vectors = {f"{i:064x}": rng.normal(size=8).astype(np.float32) for i in range(20)}
    EmbeddingCache(tmp_path).put_many(vectors, "bb")
    keys = list(vectors)
    asked = [keys[3], f"{999:064x}", keys[3], *keys[10:14], "not-a-hash", keys[0]]
    hit, block = EmbeddingCache(tmp_path).take_in_order(asked, "bb")
    assert hit.tolist() == [True, False, True, True, True, True, True, False, True]
    expected = [vectors[sha] for sha, h in zip(asked, hit, strict=True) if h]
    np.testing.assert_array_equal(block, np.stack(expected))
    none, empty = EmbeddingCache(tmp_path).take_in_order([f"{998:064x}"], "other")
    assert not none.any() and empty.shape[0] == 0
    # One run of stored rows comes mapped, copy on write: a write never reaches the cache.
    hit, run = EmbeddingCache(tmp_path).take_in_order(keys[4:12], "bb")
    assert hit.all() and type(run) is np.ndarray and run.flags.writeable
    np.testing.assert_array_equal(run, np.stack([vectors[sha] for sha in keys[4:12]]))
    run[:] = 0.0
    again = EmbeddingCache(tmp_path).get_many(keys[4:12], "bb")
    np.testing.assert_array_equal(again[keys[5]], vectors[keys[5]])


def test_cache_is_shared_between_instances_and_reads_the_old_layout(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = {f"{i:064x}": rng.normal(size=8).astype(np.float32) for i in range(50)}
    writer, reader = EmbeddingCache(tmp_path), EmbeddingCache(tmp_path)
    assert reader.get_many(vectors, "bb") == {}
    writer.put_many(dict(list(vectors.items())[:30]), "bb")
    writer.put_many(dict(list(vectors.items())[20:]), "bb")  # overlap is stored once
    got = reader.get_many(list(vectors)[::-1], "bb")
    assert sorted(got) == sorted(vectors)
    for sha, vector in vectors.items():
        np.testing.assert_array_equal(got[sha], vector)
    assert (tmp_path / "bb" / "index.sha").stat().st_size == 50 * 32
    with pytest.raises(ValueError, match="8-long"):
        writer.put(f"{99:064x}", "bb", np.zeros(4, dtype=np.float32))
    old = tmp_path / "other" / "ab"
    old.mkdir(parents=True)
    sha = "ab" + "0" * 62
    np.save(old / f"{sha}.npy", vectors[f"{1:064x}"])
    np.testing.assert_array_equal(EmbeddingCache(tmp_path).get(sha, "other"), vectors[f"{1:064x}"])
    assert (tmp_path / "other" / "index.sha").stat().st_size == 32  # copied into the arrays


def test_cache_reads_runs_and_scattered_rows_in_the_order_asked(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vectors = {f"{i:064x}": rng.normal(size=16).astype(np.float32) for i in range(40)}
    EmbeddingCache(tmp_path).put_many(vectors, "bb")
    keys = list(vectors)
    missing = f"{999:064x}"
    asked = [*keys[5:15], keys[3], missing, *keys[30:20:-1], keys[39], keys[0], *keys[15:18]]
    reader = EmbeddingCache(tmp_path)
    got = reader.get_many(asked, "bb")
    assert list(got) == [key for key in asked if key != missing]
    for sha in got:
        np.testing.assert_array_equal(got[sha], vectors[sha])
    with pytest.raises(LookupError):  # a row the index never listed
        reader._shelf("bb").take(np.array([0, 40], dtype=np.int64))


def test_progress_is_logged_without_image_bytes(
    backbone: TorchBackbone, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = png_bytes((5, 6, 7))
    items = [(i, fetcher(data if i else b"\x89PNG-broken")) for i in range(5)]
    with caplog.at_level(logging.INFO, logger="backend.model.featurize"):
        featurize(items, backbone, EmbeddingCache(tmp_path), batch_size=2, log_every=2)
    text = caplog.text
    assert "images/s" in text and "5/5 images" in text
    assert "PNG" not in text and "task 0" in text
