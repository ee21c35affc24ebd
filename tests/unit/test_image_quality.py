"""Planted answers: generated dark, bright, blurry, flat, grayscale and odd-shaped images are found
with their issue, and only those."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from backend.diagnosis.quality import ISSUES, image_quality, issue_masks, stats_matrix
from backend.loop.image_stats import STATS, ImageStatsRecorder, image_stats, load_stats
from backend.model.cache import content_hash
from backend.settings import ImageQualitySettings


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _photo(rng: np.random.Generator, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A colourful, textured, sharp image (random coloured blocks with edges)."""
    blocks = rng.integers(30, 225, (size[0] // 8, size[1] // 8, 3))
    return np.kron(blocks, np.ones((8, 8, 1))) + rng.normal(0, 8, (*size, 3))


def _planted() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    images = {f"ok{i}": _png(_photo(rng)) for i in range(12)}
    images["dark"] = _png(_photo(rng) * 0.12)
    images["bright"] = _png(255 - (255 - _photo(rng)) * 0.1)
    blurred = Image.fromarray(_photo(rng).clip(0, 255).astype(np.uint8))
    blurred = blurred.filter(ImageFilter.GaussianBlur(6))
    buffer = io.BytesIO()
    blurred.save(buffer, format="PNG")
    images["blurry"] = buffer.getvalue()
    images["flat"] = _png(np.full((96, 128, 3), 120.0) + rng.normal(0, 0.4, (96, 128, 3)))
    gray = _photo(rng).mean(axis=2, keepdims=True).repeat(3, axis=2)
    images["gray"] = _png(gray)
    images["wide"] = _png(_photo(rng, (48, 256)))
    images["tiny"] = _png(_photo(rng, (24, 32)))
    return images


EXPECTED = {
    "dark": {"dark"},
    "bright": {"bright"},
    "blurry": {"blurry"},
    "flat": {"low_information", "grayscale"},
    "gray": {"grayscale"},
    "wide": {"odd_aspect"},
    "tiny": {"odd_size"},
}


def test_each_planted_image_has_its_issue_and_the_others_none() -> None:
    images = _planted()
    names = list(images)
    stats = np.stack([image_stats(images[n]) for n in names])
    assert stats.shape == (len(names), len(STATS))
    masks = issue_masks(stats, ImageQualitySettings())
    found = {n: {ISSUES[k] for k in np.flatnonzero(masks[i])} for i, n in enumerate(names)}
    for name, issues in found.items():
        assert issues == EXPECTED.get(name, set()), (name, issues)


def test_grayscale_is_no_issue_in_a_grayscale_project() -> None:
    rng = np.random.default_rng(1)
    grays = [_png(_photo(rng).mean(axis=2, keepdims=True).repeat(3, axis=2)) for _ in range(8)]
    stats = np.stack([image_stats(g) for g in grays])
    assert not issue_masks(stats, ImageQualitySettings()).any()


def test_the_recorder_measures_each_content_once_and_saves(tmp_path: Path) -> None:
    images = _planted()
    path = tmp_path / "stats" / "p1.npz"
    recorder = ImageStatsRecorder(path)
    fetch = recorder.observing(images.__getitem__)
    for name in ("ok0", "dark", "dark"):
        assert fetch(name) == images[name]
    fetch_broken = recorder.observing(lambda ref: b"not an image")
    fetch_broken("x")  # featurization reports it; the recorder just skips it
    assert recorder.save() == 2 and recorder.save() == 0
    known = load_stats(path)
    assert set(known) == {content_hash(images["ok0"]), content_hash(images["dark"])}
    assert ImageStatsRecorder(path).known.keys() == known.keys()
    matrix = stats_matrix([content_hash(images["dark"]), None], known)
    assert matrix[0, 2] < 0.15 and np.isnan(matrix[1]).all()


def test_accuracy_is_reported_with_and_without_each_issue() -> None:
    images = _planted()
    names = list(images)
    stats = np.stack([image_stats(images[n]) for n in names])
    ids = np.arange(1, len(names) + 1, dtype=np.int64)
    labeled = np.ones(len(names), dtype=bool)
    correct = np.array([n != "dark" for n in names])  # the model fails on the dark image only
    quality = image_quality(ids, stats, ImageQualitySettings(), correct, labeled)
    dark = next(i for i in quality.issues if i.issue == "dark")
    assert dark.count == 1 and dark.accuracy == 0.0 and dark.accuracy_rest == 1.0
    assert dark.examples == [names.index("dark") + 1] and "brightness" in dark.example_reasons[0]
    assert quality.n_measured == len(names) and quality.n_flagged == len(EXPECTED)
    assert quality.flagged[0] == names.index("flat") + 1  # most issues first
