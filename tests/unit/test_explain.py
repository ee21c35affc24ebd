"""Planted answer: a class decided by a bright patch in the top-left corner puts the largest share
of both maps' mass in that quadrant (over 40 %; a uniform map gives 25 %)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from backend.diagnosis.explain import explain, explanation_png, quadrant_mass
from backend.model.backbones import TorchBackbone, build_backbone
from backend.model.train import TrainedModel, train_model
from backend.settings import ModelSettings
from tests.conftest import SMALL_MODEL


def _image(rng: np.random.Generator, patch: bool) -> Image.Image:
    pixels = rng.normal(110, 25, (128, 128, 3))
    if patch:
        pixels[6:52, 6:52] = 250.0
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def trained() -> tuple[TorchBackbone, TrainedModel, list[Image.Image]]:
    torch.manual_seed(0)
    settings = ModelSettings(**{**SMALL_MODEL, "image_size": 128})
    backbone = build_backbone(settings)
    rng = np.random.default_rng(0)
    images = [_image(rng, patch=i % 2 == 1) for i in range(60)]
    x = backbone.embed(torch.stack([backbone.preprocess(im) for im in images]))
    model = train_model(
        x, np.arange(60) % 2, classes=("plain", "patch"), multilabel=False, settings=settings
    )
    return backbone, model, [_image(rng, patch=True) for _ in range(4)]


def test_both_maps_point_at_the_corner_that_decides_the_class(
    trained: tuple[TorchBackbone, TrainedModel, list[Image.Image]],
) -> None:
    backbone, model, probes = trained
    assert model.metrics["accuracy"] > 0.9
    for image in probes:
        result = explain(backbone, model, image)
        assert result.predicted == 1 and result.confidence > 0.5
        for heat in (result.gradcam, result.occlusion):
            mass = quadrant_mass(heat)
            assert mass.argmax() == 0 and mass[0] > 0.4, mass
        png = explanation_png(image, result, backbone.image_size)
        with Image.open(io.BytesIO(png)) as shown:
            assert shown.size == (3 * 224 + 16, 224)
