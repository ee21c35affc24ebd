"""The backbone's forward pass on an inference runtime, checked against torch before it is used.

``model.runtime`` picks the engine (``auto``: OpenVINO, then ONNX Runtime, then torch, the first
that is installed and passes the check), ``model.precision`` the arithmetic (``auto``: bf16 where
the CPU has it and it passes, else fp32; ``int8`` only when asked). The runtime's model is converted
from the same torch weights at first use, on the first batch of the project's own images, and kept
under ``<data_dir>/runtimes/<backbone>-<runtime>-<precision>/`` (the backbone's name carries its
weights) with ``check.json``: the smallest cosine between the runtime's and torch fp32's embedding
over the check images. fp32 and bf16 must reach :data:`MIN_COSINE`; int8 (post-training
quantization with nncf, calibrated on the project's images, checked on images held aside) must
reach :data:`MIN_COSINE_INT8` or is refused. An fp32/bf16 embedding is interchangeable with
torch's, so it keeps the backbone's cache name; int8 embeddings are cached under ``<name>+int8``.

``model.device``: ``cuda`` (or ``auto`` where a GPU is visible) runs torch on the GPU, in half
precision where the same check holds; without a GPU it falls back to the CPU and says why.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

from backend.model.backbones import Backbone, BackboneUnavailableError, TorchBackbone
from backend.model.cache import safe_name
from backend.settings import ModelSettings

log = logging.getLogger(__name__)

# OpenVINO and nncf send usage telemetry (from ``import openvino`` on) unless the package
# ``openvino_telemetry`` is missing, when both use their own no-op stand-ins. Nothing about a
# project is to leave the machine, so the import is made to fail for this process.
if "openvino_telemetry" not in sys.modules:
    sys.modules["openvino_telemetry"] = None  # type: ignore[assignment]

MIN_COSINE = 0.999
MIN_COSINE_INT8 = 0.99
#: Images the int8 conversion needs: calibration set + check set held aside.
INT8_CALIBRATION = 96
INT8_CHECK = 32
RUNTIMES = ("openvino", "onnxruntime", "torch")


class PrecisionRefused(BackboneUnavailableError):
    """A converted model's embeddings are too far from torch fp32's (see ``check.json``)."""


def resolve_device(setting: str) -> str:
    """``cpu`` or ``cuda`` for ``model.device``; a CUDA request without a GPU falls back to the
    CPU with a logged reason."""
    if setting == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if setting == "cuda":
        log.warning(
            "model.device is cuda but torch sees no CUDA device (torch.cuda.is_available() is "
            "False: no GPU, no driver, or a CPU-only torch build); running on the CPU"
        )
    return "cpu"


def cosines(a: NDArray[np.floating[Any]], b: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """Row-wise cosine similarity of two (n, d) arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    cos: NDArray[np.float64] = np.sum(a64 * b64, axis=1) / np.maximum(norms, 1e-12)
    return cos


@dataclass(frozen=True)
class Check:
    """The conversion check: the smallest and mean cosine to torch fp32 over ``images`` images."""

    runtime: str
    precision: str
    min_cosine: float
    mean_cosine: float
    images: int
    threshold: float
    seconds: float

    @property
    def passed(self) -> bool:
        return self.min_cosine >= self.threshold


class _Engine:
    """One compiled model: (b, S, S, 3) uint8 in, (b, dim) float32 out."""

    def run(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        raise NotImplementedError


class _TorchEngine(_Engine):
    def __init__(self, base: TorchBackbone, device: str, half: bool) -> None:
        self.base, self.device, self.half = base, device, half
        # A copy: moving or halving the module in place would change the torch fp32 reference.
        self.module = copy.deepcopy(base.module).to(device)
        if half:
            self.module = self.module.half()

    def run(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        tensor = self.base.to_tensor(batch).to(self.device)
        if self.half:
            tensor = tensor.half()
        with torch.inference_mode():
            out = self.module(tensor.contiguous(memory_format=torch.channels_last))
        return np.asarray(out.float().cpu().numpy(), dtype=np.float32)


class _OpenVinoEngine(_Engine):
    """OpenVINO on the CPU in throughput mode: each batch is split over the streams OpenVINO
    chose for the threads it has, and the parts run at once (on 2 threads, two streams of one
    thread each embed 10 % more images per second than one stream of two, with the same
    numbers)."""

    def __init__(self, path: Path, precision: str, threads: int) -> None:
        import openvino as ov

        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "THROUGHPUT",
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(str(path / "model.xml"), "CPU", config)
        streams = int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self.requests = [self.compiled.create_infer_request() for _ in range(max(1, streams))]
        self._lock = threading.Lock()

    def run(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        parts = np.array_split(batch, min(len(self.requests), max(1, len(batch))))
        with self._lock:  # the requests belong to one caller at a time
            busy = self.requests[: len(parts)]
            for request, part in zip(busy, parts, strict=True):
                request.start_async({0: np.ascontiguousarray(part)})
            for request in busy:
                request.wait()
            out = [np.array(r.get_output_tensor(0).data, dtype=np.float32) for r in busy]
        return np.concatenate([o.reshape(len(p), -1) for o, p in zip(out, parts, strict=True)])


class _OnnxEngine(_Engine):
    def __init__(self, path: Path, base: TorchBackbone, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(path / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        self.base = base

    def run(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        x = self.base.to_tensor(batch).contiguous().numpy()
        return np.asarray(self.session.run(None, {"pixels": x})[0], dtype=np.float32)


def _openvino_available() -> bool:
    return importlib.util.find_spec("openvino") is not None


def _onnx_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def _bf16_supported() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def _convert_openvino(
    base: TorchBackbone, out: Path, calibration: NDArray[np.uint8] | None
) -> None:
    """Torch module -> OpenVINO IR with uint8 NHWC input and the normalization inside."""
    import openvino as ov

    size = base.image_size
    module = base.module.to("cpu").float().eval()
    with torch.inference_mode(), warnings.catch_warnings():
        # Conversion traces the module; torch warns that tracing is deprecated and about traced
        # constants, neither of which applies to a fixed inference graph.
        warnings.simplefilter("ignore")
        model = ov.convert_model(
            module,
            example_input=torch.zeros(1, 3, size, size),
            input=[(-1, 3, size, size)],
        )
    ppp = ov.preprocess.PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean(
        [255.0 * m for m in base.mean]
    ).scale([255.0 * s for s in base.std])
    model = ppp.build()
    if calibration is not None:
        import nncf

        model = nncf.quantize(
            model,
            nncf.Dataset([calibration[i : i + 1] for i in range(len(calibration))]),
            subset_size=len(calibration),
            fast_bias_correction=True,
        )
    ov.save_model(model, str(out / "model.xml"), compress_to_fp16=False)


def _convert_onnx(base: TorchBackbone, out: Path) -> None:
    size = base.image_size
    module = base.module.to("cpu").float().eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _export_onnx(module, size, out)


def _export_onnx(module: torch.nn.Module, size: int, out: Path) -> None:
    torch.onnx.export(
        module,
        (torch.zeros(1, 3, size, size),),
        str(out / "model.onnx"),
        input_names=["pixels"],
        output_names=["embedding"],
        dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}},
        dynamo=False,
    )


class RuntimeBackbone:
    """A :class:`TorchBackbone`'s preprocessing with its forward pass on a checked runtime.

    Conversion and the check happen on the first :meth:`embed_pixels` call (the first batch of
    images is the check set), or are read from the runtime cache.

    Args:
        base: the torch backbone (its weights are what is converted).
        settings: ``runtime``, ``precision``, ``device`` and ``num_threads``.
        root: the runtime cache (``<data_dir>/runtimes``).
    """

    def __init__(self, base: TorchBackbone, settings: ModelSettings, root: Path) -> None:
        self.base = base
        self.settings = settings
        self.root = Path(root)
        self.device = resolve_device(settings.device)
        self.dim = base.dim
        self.image_size = base.image_size
        self.name = base.name + ("+int8" if settings.precision == "int8" else "")
        self.engine: _Engine | None = None
        self.check: Check | None = None
        self._lock = threading.Lock()

    @property
    def min_images(self) -> int:
        """Images :meth:`embed_pixels` wants in its first batch (int8 calibrates on them)."""
        return INT8_CALIBRATION + INT8_CHECK if self.settings.precision == "int8" else 1

    def pixels(self, image: Image.Image) -> NDArray[np.uint8]:
        return self.base.pixels(image)

    def embed_pixels(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        with self._lock:
            if self.engine is None:
                self.engine, self.check = self._choose(batch)
            engine = self.engine
        return engine.run(batch)

    # ------------------------------------------------------------------ choosing

    def _candidates(self) -> list[tuple[str, str]]:
        """(runtime, precision) pairs to try, best first, for the device and the settings."""
        runtime, precision = self.settings.runtime, self.settings.precision
        if self.device == "cuda":
            return _cuda_candidates(precision)
        if precision == "int8":
            return _int8_candidates(runtime)
        runtimes = [runtime] if runtime != "auto" else list(RUNTIMES)
        out: list[tuple[str, str]] = []
        for name in filter(lambda name: _installed(name, asked=runtime), runtimes):
            if name == "openvino" and precision in ("auto", "bf16") and _bf16_supported():
                out.append(("openvino", "bf16"))
            if name == "torch" or precision in ("auto", "fp32"):
                out.append((name, "fp32"))
        return out

    def _choose(self, batch: NDArray[np.uint8]) -> tuple[_Engine, Check | None]:
        """The first candidate that converts and passes its check (torch fp32 needs none)."""
        reasons = []
        for runtime, precision in self._candidates():
            if runtime == "torch" and precision == "fp32":
                log.info("backbone %s: torch fp32 on %s", self.base.name, self.device)
                return _TorchEngine(self.base, self.device, half=False), None
            try:
                return self._prepare(runtime, precision, batch)
            except PrecisionRefused as exc:
                log.warning("%s", exc)
                reasons.append(str(exc))
        raise PrecisionRefused("; ".join(reasons) or "no runtime available")

    def _key(self, runtime: str, precision: str) -> Path:
        return self.root / safe_name(f"{self.base.name}-{runtime}-{precision}")

    def _prepare(
        self, runtime: str, precision: str, batch: NDArray[np.uint8]
    ) -> tuple[_Engine, Check]:
        folder = self._key(runtime, precision)
        threshold = MIN_COSINE_INT8 if precision == "int8" else MIN_COSINE
        check_path = folder / "check.json"
        if check_path.exists():
            check = Check(**json.loads(check_path.read_text()))
            if not check.passed:
                raise PrecisionRefused(_refusal(self.base.name, check))
            log.info(
                "backbone %s: %s %s from the runtime cache (%s)",
                self.base.name,
                runtime,
                precision,
                _describe(check),
            )
            return self._engine(runtime, precision, folder), check
        started = time.perf_counter()
        held, calibration = batch, None
        if precision == "int8":
            if len(batch) < INT8_CALIBRATION + INT8_CHECK:
                raise PrecisionRefused(
                    f"model.precision int8 calibrates on {INT8_CALIBRATION} of the project's "
                    f"images and checks on {INT8_CHECK} more; only {len(batch)} are here"
                )
            calibration, held = batch[:INT8_CALIBRATION], batch[INT8_CALIBRATION:]
        if runtime != "torch":
            folder.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
            try:
                if runtime == "openvino":
                    _convert_openvino(self.base, staging, calibration)
                else:
                    _convert_onnx(self.base, staging)
                engine = self._engine(runtime, precision, staging)
                check = self._measure(engine, runtime, precision, held, threshold, started)
                (staging / "check.json").write_text(json.dumps(asdict(check)))
                _publish(staging, folder)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            engine = self._engine(runtime, precision, folder)
        else:
            engine = _TorchEngine(self.base, self.device, half=precision == "fp16")
            check = self._measure(engine, runtime, precision, held, threshold, started)
        if not check.passed:
            raise PrecisionRefused(_refusal(self.base.name, check))
        log.info(
            "backbone %s: converted to %s %s, %s",
            self.base.name,
            runtime,
            precision,
            _describe(check),
        )
        return engine, check

    def _engine(self, runtime: str, precision: str, folder: Path) -> _Engine:
        threads = self.settings.num_threads
        if runtime == "openvino":
            return _OpenVinoEngine(folder, precision, threads)
        return _OnnxEngine(folder, self.base, threads)

    def _measure(
        self,
        engine: _Engine,
        runtime: str,
        precision: str,
        held: NDArray[np.uint8],
        threshold: float,
        started: float,
    ) -> Check:
        reference = self.base.embed_pixels(held)  # torch fp32 on the CPU
        got = engine.run(held)
        cos = cosines(reference, got)
        check = Check(
            runtime=runtime,
            precision=precision,
            min_cosine=float(cos.min()),
            mean_cosine=float(cos.mean()),
            images=len(held),
            threshold=threshold,
            seconds=round(time.perf_counter() - started, 2),
        )
        return check


def _describe(check: Check) -> str:
    return (
        f"cosine to torch fp32 min {check.min_cosine:.5f} mean {check.mean_cosine:.5f} on "
        f"{check.images} images (needs >= {check.threshold})"
    )


def _refusal(name: str, check: Check) -> str:
    return f"backbone {name} on {check.runtime} {check.precision} refused: {_describe(check)}"


def _publish(staging: Path, folder: Path) -> None:
    """Move a finished conversion into place; a concurrent one that won is kept."""
    final = Path(tempfile.mkdtemp(prefix=".ready-", dir=folder.parent))
    for entry in staging.iterdir():
        os.replace(entry, final / entry.name)
    try:
        os.replace(final, folder)
    except OSError:
        shutil.rmtree(final, ignore_errors=True)  # another process published the same key


class Engines:
    """Converted backbones kept for the life of their owner, so each is compiled once.

    A long-lived process holds one (the model registry of ``labelloop serve`` for ``/predict``,
    the cycle runner for cycles); a one-shot command passes none and builds what it needs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loaded: dict[tuple[object, ...], RuntimeBackbone] = {}

    def runtime(self, base: TorchBackbone, settings: ModelSettings, data_dir: Path) -> Backbone:
        """:func:`for_inference` of ``base``, built on first use and then kept."""
        if _plain_torch(settings):
            return base
        key = (
            base.name,
            settings.runtime,
            settings.precision,
            settings.device,
            settings.num_threads,
            str(data_dir),
        )
        with self._lock:
            wrapped = self._loaded.get(key)
            if wrapped is None:
                wrapped = self._loaded[key] = RuntimeBackbone(base, settings, data_dir / "runtimes")
            return wrapped


def _plain_torch(settings: ModelSettings) -> bool:
    return (
        settings.runtime == "torch"
        and settings.precision in ("auto", "fp32")
        and resolve_device(settings.device) == "cpu"
    )


def for_inference(
    base: TorchBackbone, settings: ModelSettings, data_dir: Path, engines: Engines | None = None
) -> Backbone:
    """The backbone featurization should run: ``base`` itself for ``runtime: torch`` on the CPU
    at fp32, else a :class:`RuntimeBackbone` over it (kept in ``engines`` when given)."""
    if engines is not None:
        return engines.runtime(base, settings, data_dir)
    if _plain_torch(settings):
        return base
    return RuntimeBackbone(base, settings, data_dir / "runtimes")


def _cuda_candidates(precision: str) -> list[tuple[str, str]]:
    if precision == "int8":
        raise PrecisionRefused("model.precision int8 runs on the CPU only (OpenVINO)")
    if precision == "auto":
        return [("torch", "fp16"), ("torch", "fp32")]
    return [("torch", "fp16" if precision == "bf16" else precision)]


def _int8_candidates(runtime: str) -> list[tuple[str, str]]:
    if runtime not in ("auto", "openvino") or not _openvino_available():
        raise PrecisionRefused(
            "model.precision int8 needs model.runtime openvino (or auto) with the "
            "openvino and nncf packages installed"
        )
    if importlib.util.find_spec("nncf") is None:
        raise PrecisionRefused(
            "model.precision int8 needs the extra: pip install 'labelloop[int8]'"
        )
    return [("openvino", "int8")]


def _installed(name: str, *, asked: str) -> bool:
    """Whether runtime ``name`` can run here; refused outright when it is the one ``asked`` for."""
    if name == "openvino" and not _openvino_available():
        if asked == "openvino":
            raise BackboneUnavailableError("model.runtime openvino: package not installed")
        return False
    if name == "onnxruntime" and not _onnx_available():
        if asked == "onnxruntime":
            raise BackboneUnavailableError(
                "model.runtime onnxruntime needs the extra: pip install 'labelloop[onnx]'"
            )
        return False
    return True
