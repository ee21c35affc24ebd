"""fine_tune mode: the small CNN trains end to end for a few steps on CPU."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from backend.model.backbones import build_backbone
from backend.model.featurize import decode_image
from backend.model.finetune import fine_tune_backbone

from .conftest import fast_settings, png_bytes


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_fine_tune_small_cnn_for_a_few_steps(
    device: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On ``cuda`` without a GPU the tuning still runs, on the CPU, and says why."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    settings = fast_settings(
        backbone="small_cnn", image_size=32, batch_size=4, fine_tune=True, device=device
    )
    backbone = build_backbone(settings)
    images = [png_bytes((200, 20, 20), size=24 + i) for i in range(4)]
    images += [png_bytes((20, 20, 200), size=24 + i) for i in range(4)]
    targets = np.array([0] * 4 + [1] * 4)
    before = {k: v.clone() for k, v in backbone.module.state_dict().items()}
    tuned = fine_tune_backbone(
        backbone,
        [functools.partial(bytes, data) for data in images],
        targets,
        n_classes=2,
        multilabel=False,
        settings=settings,
        max_steps=3,
    )
    assert tuned.name != backbone.name and tuned.name.startswith(backbone.name + "+ft")
    changed = [k for k, v in tuned.module.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)
    for key, value in backbone.module.state_dict().items():  # the original is untouched
        assert torch.equal(value, before[key])
    batch = torch.stack([tuned.preprocess(decode_image(images[0]))])
    assert tuned.embed(batch).shape == (1, backbone.dim)
    assert all(p.device.type == "cpu" for p in tuned.module.parameters())
    fell_back = "model.device is cuda but torch sees no CUDA device" in caplog.text
    assert fell_back == (device == "cuda")
