"""The inference runtime: conversion cached per backbone/weights/precision, the cosine check,
int8 refusal and the device fallback. OpenVINO (a default dependency) on a small CNN."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from backend.model import engines
from backend.model.backbones import TorchBackbone, build_backbone
from backend.model.engines import PrecisionRefused, RuntimeBackbone, cosines, resolve_device
from backend.settings import ModelSettings

from .conftest import fast_settings


@pytest.fixture
def base() -> TorchBackbone:
    return build_backbone(fast_settings(backbone="small_cnn", image_size=32))


def images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    smooth = rng.integers(0, 256, size=(n, 8, 8, 3)).astype(np.uint8)
    return np.repeat(np.repeat(smooth, 4, axis=1), 4, axis=2)  # (n, 32, 32, 3) blocky pictures


def settings(**values: Any) -> ModelSettings:
    return ModelSettings(backbone="small_cnn", image_size=32, device="cpu", **values)


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the backbones converted to OpenVINO (the real conversion still runs)."""
    seen: list[str] = []
    real = engines._convert_openvino

    def spy(base: TorchBackbone, out: Path, calibration: np.ndarray | None) -> None:
        seen.append(base.name + ("+int8" if calibration is not None else ""))
        real(base, out, calibration)

    monkeypatch.setattr(engines, "_convert_openvino", spy)
    return seen


def test_openvino_fp32_matches_torch_and_is_cached_by_weights_and_precision(
    base: TorchBackbone, tmp_path: Path, conversions: list[str]
) -> None:
    x = images(8)
    fp32 = RuntimeBackbone(base, settings(runtime="openvino", precision="fp32"), tmp_path)
    got = fp32.embed_pixels(x)
    assert cosines(base.embed_pixels(x), got).min() >= 0.999
    assert fp32.check is not None and fp32.check.passed and fp32.name == base.name
    stored = json.loads((tmp_path / f"{base.name}-openvino-fp32" / "check.json").read_text())
    assert stored["precision"] == "fp32" and stored["min_cosine"] >= 0.999
    # Same backbone, weights and precision in a new process: read from the cache.
    RuntimeBackbone(base, settings(runtime="openvino", precision="fp32"), tmp_path).embed_pixels(x)
    assert conversions == [base.name]
    # Other weights (a fine-tuned copy) or another precision: converted again.
    module = base.module
    with torch.no_grad():
        for p in module.parameters():
            p.mul_(1.5)
    tuned = base.with_weights(module)
    RuntimeBackbone(tuned, settings(runtime="openvino", precision="fp32"), tmp_path).embed_pixels(x)
    RuntimeBackbone(tuned, settings(runtime="openvino", precision="int8"), tmp_path)
    assert conversions == [base.name, tuned.name]
    if "BF16" in __import__("openvino").Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        bf16 = RuntimeBackbone(tuned, settings(runtime="openvino", precision="bf16"), tmp_path)
        with contextlib.suppress(PrecisionRefused):  # refused or not, its check is stored
            bf16.embed_pixels(x)
        assert conversions == [base.name, tuned.name, tuned.name]
        assert (tmp_path / f"{tuned.name}-openvino-bf16" / "check.json").exists()


def planted_bad(monkeypatch: pytest.MonkeyPatch) -> None:
    """Conversions that silently compute something else (other weights)."""
    real = engines._convert_openvino

    def bad(base: TorchBackbone, out: Path, calibration: np.ndarray | None) -> None:
        wrong = build_backbone(fast_settings(backbone="small_cnn", image_size=32, seed=99))
        real(wrong, out, calibration)

    monkeypatch.setattr(engines, "_convert_openvino", bad)


def test_openvino_splits_a_batch_over_its_streams_and_keeps_each_rows_embedding(
    base: TorchBackbone, tmp_path: Path
) -> None:
    runtime = RuntimeBackbone(
        base, settings(runtime="openvino", precision="fp32", num_threads=2), tmp_path
    )
    x = images(7, seed=3)
    runtime.embed_pixels(x)  # converts and checks
    engine = runtime.engine
    assert isinstance(engine, engines._OpenVinoEngine)
    one_by_one = np.concatenate([engine.run(x[i : i + 1]) for i in range(7)])
    for size in (1, 2, 5, 7):  # split into parts of unequal length
        np.testing.assert_allclose(engine.run(x[:size]), one_by_one[:size], rtol=1e-5, atol=1e-5)


def test_a_bad_conversion_is_refused_and_auto_falls_back_to_torch(
    base: TorchBackbone,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    planted_bad(monkeypatch)
    x = images(8)
    with pytest.raises(PrecisionRefused, match="refused: cosine to torch fp32 min"):
        RuntimeBackbone(
            base, settings(runtime="openvino", precision="fp32"), tmp_path
        ).embed_pixels(x)
    check = json.loads((tmp_path / f"{base.name}-openvino-fp32" / "check.json").read_text())
    assert check["min_cosine"] < 0.999  # stored with the conversion: not tried again
    monkeypatch.setattr(engines, "_onnx_available", lambda: False)  # OpenVINO or torch
    with caplog.at_level(logging.WARNING, logger="backend.model.engines"):
        auto = RuntimeBackbone(base, settings(runtime="auto", precision="fp32"), tmp_path)
        np.testing.assert_allclose(auto.embed_pixels(x), base.embed_pixels(x), rtol=1e-5)
    assert auto.check is None and "refused" in caplog.text  # torch fp32, with the reason logged


def test_int8_is_refused_below_its_threshold_and_with_too_few_images(
    base: TorchBackbone, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    int8 = settings(runtime="auto", precision="int8")
    with pytest.raises(PrecisionRefused, match="calibrates on 96"):
        RuntimeBackbone(base, int8, tmp_path).embed_pixels(images(8))
    planted_bad(monkeypatch)
    wrapped = RuntimeBackbone(base, int8, tmp_path)
    assert wrapped.name == base.name + "+int8" and wrapped.min_images == 128
    with pytest.raises(PrecisionRefused, match=r"int8 refused: .*\(needs >= 0.99\)"):
        wrapped.embed_pixels(images(128))
    check = json.loads((tmp_path / f"{base.name}-openvino-int8" / "check.json").read_text())
    assert check["images"] == 32 and check["threshold"] == 0.99  # held-aside images


def test_cuda_request_without_a_gpu_falls_back_to_cpu_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="backend.model.engines"):
        assert resolve_device("cuda") == "cpu"
    assert "model.device is cuda but torch sees no CUDA device" in caplog.text
    caplog.clear()
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    assert caplog.text == ""  # auto without a GPU is not a surprise


def test_featurize_waits_for_the_images_int8_calibrates_on(
    base: TorchBackbone, tmp_path: Path
) -> None:
    from backend.model.cache import EmbeddingCache
    from backend.model.featurize import featurize

    from .conftest import png_bytes

    class Recording(RuntimeBackbone):
        batches: list[int] = []

        def embed_pixels(self, batch: np.ndarray) -> np.ndarray:
            self.batches.append(len(batch))
            return base.embed_pixels(batch)

    wrapped = Recording(base, settings(precision="int8"), tmp_path)
    items = [
        (i, (lambda i=i: png_bytes((i, 255 - i, i // 2), size=36 + i % 5))) for i in range(140)
    ]
    featurize(items, wrapped, EmbeddingCache(tmp_path / "cache"), batch_size=16)
    assert Recording.batches[0] == 128 and sum(Recording.batches) == 140


def test_a_half_precision_engine_leaves_the_torch_reference_in_fp32(base: TorchBackbone) -> None:
    engine = engines._TorchEngine(base, "cpu", half=True)
    assert next(engine.module.parameters()).dtype == torch.float16
    assert next(base.module.parameters()).dtype == torch.float32  # the check's reference


def test_engines_keep_one_converted_backbone_per_setting_and_one_shot_calls_keep_none(
    base: TorchBackbone, tmp_path: Path
) -> None:
    ov = settings(runtime="openvino", precision="fp32")
    kept = engines.Engines()
    first = kept.runtime(base, ov, tmp_path)
    assert isinstance(first, RuntimeBackbone)
    assert engines.for_inference(base, ov, tmp_path, kept) is first  # compiled once
    assert kept.runtime(base, settings(runtime="onnxruntime"), tmp_path) is not first
    assert engines.Engines().runtime(base, ov, tmp_path) is not first  # another owner's
    assert engines.for_inference(base, ov, tmp_path) is not first  # a one-shot call
    plain = settings(runtime="torch", precision="fp32")
    assert kept.runtime(base, plain, tmp_path) is base  # torch fp32 on the CPU needs nothing
