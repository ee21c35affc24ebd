"""Featurization: batches, the content-keyed cache, and per-task failures."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from backend.model.backbones import TorchBackbone, build_backbone
from backend.model.cache import EmbeddingCache, content_hash
from backend.model.featurize import decode_image, featurize

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


def test_unreadable_cache_entry_is_recomputed(backbone: TorchBackbone, tmp_path: Path) -> None:
    data = png_bytes((1, 2, 3))
    cache = EmbeddingCache(tmp_path)
    featurize([(1, fetcher(data))], backbone, cache)
    [entry] = list(tmp_path.rglob("*.npy"))
    entry.write_bytes(b"\x93NUMPY garbage")
    result = featurize([(1, fetcher(data))], backbone, cache)
    assert result.n_computed == 1 and 1 in result.embeddings


def test_progress_is_logged_without_image_bytes(
    backbone: TorchBackbone, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = png_bytes((5, 6, 7))
    items = [(i, fetcher(data if i else b"\x89PNG-broken")) for i in range(5)]
    with caplog.at_level(logging.INFO, logger="backend.model.featurize"):
        featurize(items, backbone, EmbeddingCache(tmp_path), batch_size=2, log_every=2)
    text = caplog.text
    assert "items/s" in text and "5/5 items" in text
    assert "PNG" not in text and "task 0" in text
