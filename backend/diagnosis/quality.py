"""Image quality at featurization time: cheap statistics of each decoded image, the issues they
reveal (dark, bright, blurry, low information, grayscale among colour, odd size, odd aspect
ratio), and how the model does on the items that have them.

Statistics are measured on a copy of at most :data:`STATS_SIDE` pixels a side (JPEG decodes it
directly at a reduced scale), once per image content: the cycle's fetch is wrapped by an
:class:`ImageStatsRecorder`, which hashes the bytes it passes through and measures those it has
not seen. They are kept per project in ``<data_dir>/image_stats/p<project>.npz`` (sha256 ->
statistics), written atomically at the end of the featurize stage.

Size and aspect issues are relative to the project's own images (the median), so a data set of
small square images is not "odd"; grayscale is an issue only where most images are in colour.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from backend.diagnosis.schema import ImageQuality, QualityIssue
from backend.files import atomic_write
from backend.model.cache import content_hash
from backend.settings import ImageQualitySettings, Settings

log = logging.getLogger(__name__)

#: Longest side (px) of the copy the statistics are measured on.
STATS_SIDE = 256
#: The statistics, in column order.
STATS = ("width", "height", "brightness", "contrast", "sharpness", "entropy", "colorfulness")
ISSUES = ("dark", "bright", "blurry", "low_information", "grayscale", "odd_size", "odd_aspect")
#: Example tasks shown per issue.
EXAMPLES = 6


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


def stats_matrix(
    hashes: Sequence[str | None], known: dict[str, NDArray[np.float64]]
) -> NDArray[np.float64]:
    """(n, 7) statistics of each item (NaN rows where its image was never measured)."""
    out = np.full((len(hashes), len(STATS)), np.nan)
    for row, sha in enumerate(hashes):
        if sha is not None and sha in known:
            out[row] = known[sha]
    return out


def issue_masks(stats: NDArray[np.float64], limits: ImageQualitySettings) -> NDArray[np.bool_]:
    """(n, 7) which item has which issue (columns as :data:`ISSUES`); unmeasured rows: none."""
    measured = ~np.isnan(stats).any(axis=1)
    out = np.zeros((len(stats), len(ISSUES)), dtype=bool)
    if not measured.any():
        return out
    s = stats[measured]
    width, height, bright, _, sharp, entropy, colour = s.T
    area, aspect = np.log(width * height), np.log(width / height)
    colour_project = np.median(colour) >= limits.colour_project_above
    out[measured] = np.column_stack(
        (
            bright < limits.dark_below,
            bright > limits.bright_above,
            sharp < limits.blurry_below,
            entropy < limits.low_information_below,
            (colour < limits.grayscale_below) & colour_project,
            np.abs(area - np.median(area)) > np.log(limits.odd_size_factor) * 2,
            np.abs(aspect - np.median(aspect)) > np.log(limits.odd_aspect_factor),
        )
    )
    return out


def _describe(issue: str, row: NDArray[np.float64]) -> str:
    width, height, bright, _, sharp, entropy, colour = row
    return {
        "dark": f"dark (brightness {bright:.2f})",
        "bright": f"over-exposed (brightness {bright:.2f})",
        "blurry": f"blurry (sharpness {sharp:.3f})",
        "low_information": f"low information (entropy {entropy:.1f} bits)",
        "grayscale": f"grayscale (colourfulness {colour:.1f})",
        "odd_size": f"odd size ({width:.0f}x{height:.0f})",
        "odd_aspect": f"odd aspect ratio ({width / height:.2f})",
    }[issue]


def reasons(stats: NDArray[np.float64], masks: NDArray[np.bool_]) -> list[str]:
    """(n,) the issues of each item in words ("" for none)."""
    return [
        "; ".join(_describe(ISSUES[k], stats[i]) for k in np.flatnonzero(masks[i]))
        for i in range(len(stats))
    ]


def image_quality(
    task_ids: NDArray[np.int64],
    stats: NDArray[np.float64],
    limits: ImageQualitySettings,
    correct: NDArray[np.bool_] | None,
    labeled: NDArray[np.bool_],
) -> ImageQuality:
    """Counts, examples and out-of-sample accuracy with / without each issue.

    Args:
        task_ids: (n,) task ids.
        stats: (n, 7) statistics (NaN rows: unmeasured).
        limits: the thresholds.
        correct: (n,) whether the out-of-sample prediction equals the given label (labeled items
            of single-label projects), None without a model.
        labeled: (n,) which items are labeled.
    """
    masks = issue_masks(stats, limits)
    words = reasons(stats, masks)
    issues = []
    for k, name in enumerate(ISSUES):
        hit = masks[:, k]
        with_it, without = hit & labeled, ~hit & labeled & ~np.isnan(stats).any(axis=1)
        accuracy = rest = None
        if correct is not None and with_it.any():
            accuracy = round(float(correct[with_it].mean()), 4)
            rest = round(float(correct[without].mean()), 4) if without.any() else None
        rows = np.flatnonzero(hit)[:EXAMPLES]
        issues.append(
            QualityIssue(
                issue=name,
                count=int(hit.sum()),
                labeled=int(with_it.sum()),
                accuracy=accuracy,
                accuracy_rest=rest,
                examples=[int(t) for t in task_ids[rows]],
                example_reasons=[words[r] for r in rows],
            )
        )
    flagged = masks.any(axis=1)
    order = np.flatnonzero(flagged)
    order = order[np.argsort(-masks[order].sum(axis=1), kind="stable")]
    return ImageQuality(
        n_measured=int((~np.isnan(stats).any(axis=1)).sum()),
        n_flagged=int(flagged.sum()),
        issues=issues,
        flagged=[int(t) for t in task_ids[order]],
        flagged_reasons=[words[r] for r in order],
    )
