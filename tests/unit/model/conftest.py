"""Fixtures for the model tests: fast settings, separable synthetic embeddings, tiny images."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backend.settings import ModelSettings


def fast_settings(**overrides: Any) -> ModelSettings:
    """Model settings small enough for CPU tests; override any field."""
    values: dict[str, Any] = {
        "max_epochs": 60,
        "committee_size": 3,
        "cv_folds": 3,
        "learning_rate": 0.05,
    }
    values.update(overrides)
    return ModelSettings(**values)


def blobs(
    n: int, n_classes: int = 4, dim: int = 16, *, spread: float = 4.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian blobs: (n, dim) float32 embeddings, (n,) labels and the (C, dim) centers."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=spread, size=(n_classes, dim))
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    points = centers[labels] + rng.normal(size=(n, dim))
    return points.astype(np.float32), labels, centers


def png_bytes(color: tuple[int, int, int], size: int = 40) -> bytes:
    """A solid-colour PNG with a darker square, so images of one colour still differ by size."""
    image = Image.new("RGB", (size, size), color)
    image.paste(tuple(c // 2 for c in color), (size // 4, size // 4, size // 2, size // 2))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def separable() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return blobs(200, seed=1)
