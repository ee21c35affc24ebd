"""Generated image sets that break selection strategies the way real projects do.

- ``nuisance``: the class is a small shape (circle, square, triangle, cross); the strongest visual
  factor is the background (stripes, checks, blotches or dots in random colours), with clutter
  lines on top, both drawn independently of the class. EfficientNet-Lite0's embedding clusters
  follow the background more than the class (k-means, 10 clusters: NMI 0.44 with the background,
  0.34 with the class).
- ``rare``: five shape classes, one of them 4 % of the items, and a rare style (6 % of the items,
  any class: dark background and thin outline) independent of the class.

Each is deterministic for its seed and needs no download. Images are 64 px RGB PNGs.

And ``digits``: scikit-learn's 8 x 8 handwritten digits, which ship inside the package, rendered as
RGB PNGs (the demo's project and simulate's ``digits`` set).
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageDraw

SIZE = 64
SHAPES = ("circle", "square", "triangle", "cross", "diamond")
GENERATED = ("nuisance", "rare")


@dataclass(frozen=True)
class Generated:
    """Rendered images with their true class (and the nuisance factor, for diagnosis).

    Attributes:
        classes: class names in label-index order.
        images: PNG bytes per item.
        y: (n,) true class index.
        nuisance: (n,) the background (``nuisance``) or style (``rare``) index of each item.
    """

    classes: tuple[str, ...]
    images: tuple[bytes, ...]
    y: NDArray[np.int64]
    nuisance: NDArray[np.int64]


def _shape(
    draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, **style: object
) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), **style)  # type: ignore[arg-type]
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), **style)  # type: ignore[arg-type]
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], **style)  # type: ignore[arg-type]
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx - r, cy), (cx, cy + r), (cx + r, cy)], **style)  # type: ignore[arg-type]
    else:  # cross
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), **style)  # type: ignore[arg-type]
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), **style)  # type: ignore[arg-type]


def texture(kind: int, rng: np.random.Generator) -> Image.Image:
    """A 64 px background of one of four textures (stripes, checks, blotches, dots), random
    colours, orientation and scale: what a pretrained backbone sees first."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
    if kind == 0:  # stripes
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 12)
        field = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0
    elif kind == 1:  # checks
        cell = rng.integers(5, 11)
        field = ((xx // cell + yy // cell) % 2) == 0
    elif kind == 2:  # blotches: smoothed noise
        coarse = rng.random((8, 8))
        field = np.kron(coarse, np.ones((8, 8))) > 0.5
    else:  # dots
        step = rng.integers(7, 12)
        field = ((xx % step) < 3) & ((yy % step) < 3)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    pixels = np.where(field[..., None], a, b).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def _render(
    shape: str,
    background: tuple[int, int, int] | Image.Image,
    *,
    rng: np.random.Generator,
    clutter: int,
    outline_only: bool = False,
) -> bytes:
    if isinstance(background, Image.Image):
        image = background
    else:
        image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    for _ in range(clutter):  # clutter lines, the same for every class
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, SIZE, 4))
        shade = tuple(int(v) for v in rng.integers(0, 256, 3))
        draw.line((x0, y0, x1, y1), fill=shade, width=int(rng.integers(1, 3)))
    r = float(rng.uniform(6, 10))
    cx, cy = (float(v) for v in rng.uniform(r + 2, SIZE - r - 2, 2))
    if outline_only:
        _shape(draw, shape, cx, cy, r, outline=(235, 235, 235), width=1)
    else:
        _shape(draw, shape, cx, cy, r, fill=(245, 245, 245), outline=(20, 20, 20))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def nuisance_set(n: int = 1200, *, seed: int = 0, n_classes: int = 4) -> Generated:
    """``n`` images, ``n_classes`` balanced shape classes on class-independent backgrounds."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % n_classes).astype(np.int64)
    background = rng.integers(0, 4, n)
    images = tuple(
        _render(
            SHAPES[int(c)],
            texture(int(b), rng),
            rng=rng,
            clutter=int(rng.integers(0, 4)),
        )
        for c, b in zip(y, background, strict=True)
    )
    return Generated(SHAPES[:n_classes], images, y, background.astype(np.int64))


def rare_set(
    n: int = 1000,
    *,
    seed: int = 0,
    shares: Sequence[float] = (0.3, 0.27, 0.22, 0.17, 0.04),
    rare_style: float = 0.06,
) -> Generated:
    """``n`` images of five shape classes in ``shares`` (the last rare) and a rare style."""
    rng = np.random.default_rng(seed)
    counts = np.floor(np.asarray(shares) * n).astype(int)
    counts[0] += n - counts.sum()
    y = rng.permutation(np.repeat(np.arange(len(shares)), counts)).astype(np.int64)
    style = (rng.random(n) < rare_style).astype(np.int64)
    images = tuple(
        _render(
            SHAPES[int(c)],
            (25, 25, 35) if s else _jitter((170, 170, 175), rng),
            rng=rng,
            clutter=int(rng.integers(0, 3)),
            outline_only=bool(s),
        )
        for c, s in zip(y, style, strict=True)
    )
    return Generated(SHAPES[: len(shares)], images, y, style)


def _jitter(colour: tuple[int, int, int], rng: np.random.Generator) -> tuple[int, int, int]:
    shifted = np.clip(np.asarray(colour) + rng.integers(-20, 21, 3), 0, 255)
    return (int(shifted[0]), int(shifted[1]), int(shifted[2]))


def generate(name: str, *, n: int | None = None, seed: int = 0) -> Generated:
    """The generated set ``name`` (one of :data:`GENERATED`)."""
    if name == "nuisance":
        return nuisance_set(n or 1200, seed=seed)
    if name == "rare":
        return rare_set(n or 1000, seed=seed)
    raise ValueError(f"unknown generated set {name!r}; known: {GENERATED}")


def pixel_features(images: Sequence[bytes], *, side: int = 16) -> NDArray[np.float64]:
    """(n, side * side * 3) raw pixels in [0, 1], downsampled: a cheap embedding for tests."""
    rows = []
    for png in images:
        with Image.open(io.BytesIO(png)) as image:
            small = image.convert("RGB").resize((side, side), Image.Resampling.BILINEAR)
            rows.append(np.asarray(small, dtype=np.float64).reshape(-1) / 255.0)
    return np.stack(rows)


def digit_images(count: int, *, size: int = 96, seed: int = 0) -> Iterator[tuple[str, bytes, int]]:
    """(file name, PNG bytes, true digit) for ``count`` digits, in a fixed shuffled order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))[:count]
    for i in order:
        pixels = (255 - digits.images[i] * 255 / 16).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(pixels, "L").resize((size, size), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        yield f"digit_{i:04d}.png", buffer.getvalue(), int(digits.target[i])
