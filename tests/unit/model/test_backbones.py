"""Backbones: offline pretrained weights, shapes, cache names, the optional timm extra."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from backend.model.backbones import BackboneUnavailableError, build_backbone, resize_center_crop

from .conftest import fast_settings

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_efficientnet_lite0_loads_offline_and_sees_the_cat() -> None:
    backbone = build_backbone(fast_settings(backbone="efficientnet_lite0"))
    cat = Image.fromarray(skdata.chelsea())
    batch = backbone.preprocess(cat)[None]
    assert batch.shape == (1, 3, 224, 224)
    with torch.inference_mode():
        logits = backbone.module.classify(batch)  # type: ignore[operator]
    top5 = logits[0].topk(5).indices.tolist()
    assert top5[0] in CAT_CLASSES, top5
    assert len(CAT_CLASSES.intersection(top5)) >= 3
    embedding = backbone.embed(batch)
    assert embedding.shape == (1, 1280) and embedding.dtype == np.float32
    assert backbone.name.startswith("efficientnet_lite0-") and backbone.name.endswith("-224px")


def test_backbone_name_changes_with_image_size() -> None:
    small = build_backbone(fast_settings(backbone="small_cnn", image_size=32))
    large = build_backbone(fast_settings(backbone="small_cnn", image_size=64))
    assert small.name != large.name
    assert small.preprocess(Image.new("RGB", (50, 20))).shape == (3, 32, 32)


def test_small_cnn_is_seeded() -> None:
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    first = build_backbone(fast_settings(backbone="small_cnn", image_size=32, seed=1))
    again = build_backbone(fast_settings(backbone="small_cnn", image_size=32, seed=1))
    other = build_backbone(fast_settings(backbone="small_cnn", image_size=32, seed=2))
    np.testing.assert_array_equal(first.embed(x), again.embed(x))
    assert not np.allclose(first.embed(x), other.embed(x))
    assert first.embed(x).shape == (2, first.dim)


def test_timm_without_the_extra_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # as if the extra were not installed
    with pytest.raises(BackboneUnavailableError, match=r"labelloop\[timm\]"):
        build_backbone(fast_settings(backbone="timm"))


@pytest.mark.parametrize("shape", [(480, 640), (640, 480), (300, 301), (100, 150), (224, 224)])
def test_center_crop_resamples_only_the_square_it_keeps(shape: tuple[int, int]) -> None:
    """The central square, resampled alone, holds the pixels of the whole image scaled and then
    cropped (up to rounding), for wide, tall, nearly square, upscaled and exact inputs."""
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (*shape, 3)).cumsum(axis=0).cumsum(axis=1)
    pixels = ((noise - noise.min()) / np.ptp(noise) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    got = np.asarray(resize_center_crop(image, 224), dtype=np.int16)
    height, width = shape
    scale = 224 / min(width, height)
    new_w, new_h = max(224, round(width * scale)), max(224, round(height * scale))
    whole = image.resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (new_w - 224) // 2, (new_h - 224) // 2
    want = np.asarray(whole.crop((left, top, left + 224, top + 224)), dtype=np.int16)
    assert got.shape == (224, 224, 3)
    assert np.abs(got - want).max() <= 1
    assert np.abs(got - want).mean() < 0.01
