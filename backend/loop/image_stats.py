"""Image statistics at featurization time: cheap measures of each decoded image, once per content.

Statistics are measured on a copy of at most :data:`STATS_SIDE` pixels a side (JPEG decodes it
directly at a reduced scale), once per image content: the cycle's fetch is wrapped by an
:class:`ImageStatsRecorder`, which hashes the bytes it passes through and measures those it has
not seen. They are kept per project in ``<data_dir>/image_stats/p<project>.npz`` (sha256 ->
statistics), written atomically at the end of the featurize stage; the diagnosis reads them
(:mod:`backend.diagnosis.quality`).
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from backend.files import atomic_write
from backend.model.cache import content_hash
from backend.settings import Settings

log = logging.getLogger(__name__)

#: Longest side (px) of the copy the statistics are measured on.
STATS_SIDE = 256
#: The statistics, in column order.
STATS = ("width", "height", "brightness", "contrast", "sharpness", "entropy", "colorfulness")


def image_stats(data: bytes) -> NDArray[np.float64]:
    """(7,) statistics of one image (see :data:`STATS`): original width and height, mean and
    standard deviation of luma in [0, 1], sharpness (variance of the Laplacian of luma over the
    variance of luma: high-frequency share, so a dim or low-contrast image is not "blurry"), luma
    histogram entropy in bits (0-8) and Hasler-Suesstrunk colourfulness (0-255).

    Raises:
        OSError: the bytes are not an image PIL can decode.
    """
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        image.draft("RGB", (STATS_SIDE, STATS_SIDE))  # JPEG: decode at a reduced scale
        small = image.convert("RGB")
    small.thumbnail((STATS_SIDE, STATS_SIDE))
    rgb = np.asarray(small, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    lap = (
        -4 * luma[1:-1, 1:-1] + luma[:-2, 1:-1] + luma[2:, 1:-1] + luma[1:-1, :-2] + luma[1:-1, 2:]
    )
    counts = np.bincount(np.clip(luma, 0, 255).astype(np.int64).ravel(), minlength=256)
    p = counts[counts > 0] / counts.sum()
    rg, yb = r - g, 0.5 * (r + g) - b
    colorful = np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean())
    return np.array(
        [
            width,
            height,
            luma.mean() / 255,
            luma.std() / 255,
            lap.var() / max(luma.var(), 1.0) if lap.size else 0.0,
            float(-(p * np.log2(p)).sum()),
            colorful,
        ]
    )


def stats_path(settings: Settings, project_id: int) -> Path:
    return settings.store.data_dir / "image_stats" / f"p{project_id}.npz"


def load_stats(path: Path) -> dict[str, NDArray[np.float64]]:
    """sha256 -> statistics saved for a project (empty when none or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as saved:
            shas, values = saved["sha"], saved["stats"]
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError):
        log.warning("image statistics %s unreadable; measuring again", path.name)
        return {}
    if values.ndim != 2 or values.shape[1] != len(STATS):
        return {}
    return {str(sha): row for sha, row in zip(shas, values, strict=True)}


class ImageStatsRecorder:
    """Measures every image a fetch returns (once per content) and saves what it measured.

    Thread-safe: featurization fetches from a thread pool.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.known = load_stats(path)
        self.added = 0
        self._lock = threading.Lock()

    def observing(self, fetch: Callable[[str], bytes]) -> Callable[[str], bytes]:
        """``fetch`` that also records the statistics of what it returns."""

        def observed(ref: str) -> bytes:
            data = fetch(ref)
            self.observe(data)
            return data

        return observed

    def observe(self, data: bytes) -> None:
        sha = content_hash(data)
        with self._lock:
            if sha in self.known:
                return
        try:
            stats = image_stats(data)
        except (OSError, ValueError, Image.DecompressionBombError):
            return  # featurization reports the broken image
        with self._lock:
            self.known[sha] = stats
            self.added += 1

    def save(self) -> int:
        """Write the statistics if any were added; how many were."""
        with self._lock:
            if not self.added:
                return 0
            shas = np.array(list(self.known), dtype="U64")
            values = np.stack(list(self.known.values()))
            added, self.added = self.added, 0
        buffer = io.BytesIO()
        np.savez(buffer, sha=shas, stats=values)
        with atomic_write(self.path) as handle:
            handle.write(buffer.getvalue())
        return added
