"""Image quality: the issues that each image's statistics reveal (dark, bright, blurry, low
information, grayscale among colour, odd size, odd aspect ratio), and how the model does on the
items that have them.

The statistics are measured at featurization time and kept per project
(:mod:`backend.loop.image_stats`); the diagnosis reads them by image content.

Size and aspect issues are relative to the project's own images (the median), so a data set of
small square images is not "odd"; grayscale is an issue only where most images are in colour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from backend.diagnosis.schema import ImageQuality, QualityIssue
from backend.loop.image_stats import STATS
from backend.settings import ImageQualitySettings

#: Joins one item's issues in words (the image-quality view counts them by it).
REASON_SEP = "; "
ISSUES = ("dark", "bright", "blurry", "low_information", "grayscale", "odd_size", "odd_aspect")
#: Example tasks shown per issue.
EXAMPLES = 6


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
        REASON_SEP.join(_describe(ISSUES[k], stats[i]) for k in np.flatnonzero(masks[i]))
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
