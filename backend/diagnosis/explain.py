"""What drove a prediction: a gradient-based class activation map (Grad-CAM) on the backbone's
last convolution and a model-agnostic occlusion map, side by side, plus the labeled items
nearest in embedding space.

Written here rather than taken from pytorch-grad-cam or captum: both maps are a few lines over
the backbone and head we already hold, while those packages pull in torchvision (and OpenCV,
scikit-image or matplotlib for pytorch-grad-cam), which the default install must not need.

- Grad-CAM (Selvaraju et al.): the gradient of the predicted class's logit with respect to the
  backbone's last feature map (what it pools into the embedding), averaged per channel, weights
  those channels; the positive part
  of the weighted sum, upsampled to the image, is the map.
- Occlusion (Zeiler & Fergus): the image is covered patch by patch (a GRID x GRID grid) with the
  image's mean colour; the drop in the predicted class's log-odds (which, unlike
  its probability, does not saturate) beyond the median patch's drop is the map.
  One batch of GRID^2 + 1 forward passes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image
from torch import nn

from backend.model.backbones import TorchBackbone, resize_center_crop
from backend.model.calibration import probabilities
from backend.model.train import TrainedModel

GRID = 7
#: Side (px) of each panel of the explanation image.
PANEL = 224


@dataclass(frozen=True)
class Explanation:
    """Attributes:
    predicted: the predicted class index; confidence: its calibrated probability.
    gradcam, occlusion: (S, S) maps in [0, 1] over the backbone's input square.
    embedding: (d,) the image's features (for the nearest labeled items).
    """

    predicted: int
    confidence: float
    gradcam: NDArray[np.float64]
    occlusion: NDArray[np.float64]
    embedding: NDArray[np.float32]


def _logits(model: TrainedModel, features: torch.Tensor) -> torch.Tensor:
    mean = torch.from_numpy(np.asarray(model.feature_mean, dtype=np.float32))
    std = torch.from_numpy(np.asarray(model.feature_std, dtype=np.float32))
    return torch.as_tensor(model.head((features - mean) / std)[0])


def _probs(model: TrainedModel, logits: torch.Tensor) -> NDArray[np.float64]:
    raw = logits.detach().double().numpy()
    return probabilities(raw, model.temperature, multilabel=model.multilabel)


def _log_odds(logits: NDArray[np.float64], target: int) -> NDArray[np.float64]:
    """(b,) log-odds of ``target`` against the other classes: unlike its probability it does not
    saturate, so covering part of the evidence still shows."""
    others = np.delete(logits, target, axis=1)
    if others.shape[1] == 0:
        return logits[:, target]
    top = others.max(axis=1, keepdims=True)
    rest = top[:, 0] + np.log(np.exp(others - top).sum(axis=1))
    margin: NDArray[np.float64] = logits[:, target] - rest
    return margin


def _normalize(values: NDArray[np.float64]) -> NDArray[np.float64]:
    top = float(values.max()) if values.size else 0.0
    return values / top if top > 0 else np.zeros_like(values)


def grad_cam(
    backbone: TorchBackbone, model: TrainedModel, pixels: torch.Tensor
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float32]]:
    """(S, S) Grad-CAM of the predicted class, (C,) probabilities and (d,) features.

    The activations are the last 4-D output of any layer in the forward pass: the feature map
    the backbone pools into its embedding.
    """
    maps: list[torch.Tensor] = []

    def keep(_: nn.Module, __: object, output: object) -> None:
        if not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        if output.dim() == 4 and output.shape[-1] > 1:  # a map, not a pooled (b, C, 1, 1)
            output.retain_grad()
            maps.append(output)

    leaves = [m for m in backbone.module.modules() if not list(m.children())]
    handles = [m.register_forward_hook(keep) for m in leaves]
    try:
        with torch.enable_grad():
            features = backbone.module(pixels[None].contiguous())
            logits = _logits(model, features)
            probs = _probs(model, logits)[0]
            logits[0, int(probs.argmax())].backward()  # type: ignore[no-untyped-call]  # untyped in torch
    finally:
        for handle in handles:
            handle.remove()
    if not maps or maps[-1].grad is None:
        raise ValueError("the backbone has no feature map a gradient reaches")
    a, grad = maps[-1], maps[-1].grad
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * a).sum(dim=1, keepdim=True)).detach().float()
    size = pixels.shape[-1]
    cam = nn.functional.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)
    embedding = features.detach().float().numpy()[0]
    return _normalize(cam[0, 0].double().numpy()), probs, embedding


def occlusion(
    backbone: TorchBackbone, model: TrainedModel, pixels: torch.Tensor, target: int
) -> NDArray[np.float64]:
    """(S, S) drop of ``target``'s log-odds when each grid patch is greyed out."""
    size = pixels.shape[-1]
    edges = np.linspace(0, size, GRID + 1).round().astype(int)
    batch = [pixels]
    fill = pixels.mean(dim=(1, 2), keepdim=True)  # the image's own mean colour
    for i in range(GRID):
        for j in range(GRID):
            covered = pixels.clone()
            covered[:, edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = fill
            batch.append(covered)
    with torch.inference_mode():
        features = backbone.module(torch.stack(batch).contiguous())
        odds = _log_odds(_logits(model, features).double().numpy(), target)
    drops = odds[0] - odds[1:]
    # Relative to a typical patch: covering anything shifts the features a little, and only
    # what matters more than that is evidence.
    drops = np.maximum(drops - np.median(drops), 0.0).reshape(GRID, GRID)
    heat = np.zeros((size, size))
    for i in range(GRID):
        for j in range(GRID):
            heat[edges[i] : edges[i + 1], edges[j] : edges[j + 1]] = drops[i, j]
    return _normalize(heat)


def explain(backbone: TorchBackbone, model: TrainedModel, image: Image.Image) -> Explanation:
    """Both maps for the model's prediction on ``image``."""
    pixels = backbone.preprocess(image.convert("RGB"))
    cam, probs, embedding = grad_cam(backbone, model, pixels)
    predicted = int(probs.argmax())
    occluded = occlusion(backbone, model, pixels, predicted)
    return Explanation(predicted, float(probs[predicted]), cam, occluded, embedding)


def _overlay(square: Image.Image, heat: NDArray[np.float64]) -> Image.Image:
    """The image dimmed, with the map in red on top (stronger = redder)."""
    base = np.asarray(square.convert("RGB"), dtype=np.float64) * 0.45
    h = (
        np.asarray(
            Image.fromarray((heat * 255).astype(np.uint8)).resize(
                square.size, Image.Resampling.BILINEAR
            ),
            dtype=np.float64,
        )[..., None]
        / 255
    )
    red = np.concatenate((np.full_like(h, 255.0), np.zeros_like(h), np.zeros_like(h)), axis=2)
    return Image.fromarray(
        np.clip(base * (1 - 0.7 * h) + red * 0.7 * h + 40 * (1 - h), 0, 255).astype(np.uint8)
    )


def explanation_png(image: Image.Image, explanation: Explanation, image_size: int) -> bytes:
    """Three panels: the image as the model saw it, Grad-CAM, occlusion."""
    square = resize_center_crop(image.convert("RGB"), image_size).resize((PANEL, PANEL))
    panels = [
        square,
        _overlay(square, explanation.gradcam),
        _overlay(square, explanation.occlusion),
    ]
    out = Image.new("RGB", (3 * PANEL + 16, PANEL), "white")
    for k, panel in enumerate(panels):
        out.paste(panel, (k * (PANEL + 8), 0))
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def quadrant_mass(heat: NDArray[np.float64]) -> NDArray[np.float64]:
    """(4,) share of the map's mass in each quadrant: top-left, top-right, bottom-left, -right."""
    h, w = heat.shape
    parts = [
        heat[: h // 2, : w // 2],
        heat[: h // 2, w // 2 :],
        heat[h // 2 :, : w // 2],
        heat[h // 2 :, w // 2 :],
    ]
    total = float(heat.sum()) or 1.0
    return np.array([float(p.sum()) / total for p in parts])
