"""The review decision of a cycle: which labeled items to accuse, with what evidence.

One place for the cycle (what goes into the review view) and the diagnosis (what the dashboard
lists and why some classes are not judged yet), so both always show the same flags.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from backend.settings import Settings
from strategies import Pool
from strategies.label_quality import (
    Crowd,
    Gate,
    LabelQuality,
    crowd_consensus,
    label_quality,
    multilabel_quality,
)

#: The review signal that decides with evidence (the others flag above a fixed alarm).
SUSPICION = "suspicion"


def review_signal(settings: Settings, pool: Pool) -> str:
    """The label-error signal configured for this pool."""
    return settings.strategy.review_signal


def gate_of(settings: Settings) -> Gate:
    strategy = settings.strategy
    return Gate(
        max_false_share=strategy.review_max_false_share,
        min_support=strategy.review_min_support,
        min_recall=strategy.review_min_recall,
        overwhelming=strategy.review_overwhelming,
    )


def decide(settings: Settings, pool: Pool) -> LabelQuality | None:
    """The label-quality decision for a pool with a model (multi-label: per tag), else None."""
    if pool.oos_probs is None or not pool.labeled.any():
        return None
    if pool.multilabel:
        if pool.targets is None:
            return None
        return multilabel_quality(
            pool.labeled,
            pool.targets,
            pool.oos_probs,
            embeddings=pool.embeddings,
            gate=gate_of(settings),
        )
    return label_quality(
        pool.labels, pool.oos_probs, embeddings=pool.embeddings, gate=gate_of(settings)
    )


def crowd_of(pool: Pool) -> Crowd | None:
    """Annotator reliability and the consensus, with the model's out-of-sample probabilities as
    the prior where they exist; None without several annotations on some item."""
    if pool.annotations is None or pool.multilabel or pool.n_classes is None:
        return None
    if not ((pool.annotations >= 0).sum(axis=1) >= 2).any():
        return None
    return crowd_consensus(pool.annotations, pool.n_classes, model_probs=pool.oos_probs)


def flag_scores(quality: LabelQuality) -> NDArray[np.float64]:
    """(n,) one score whose order is the suspicion and which exceeds 0.5 exactly where flagged."""
    return np.where(quality.flagged, quality.p_error, 0.5 * quality.p_error)


def gate_reasons(quality: LabelQuality, names: Sequence[str]) -> list[str]:
    """Why the model may not accuse labels of some classes yet, one sentence per class, plus what
    was held back (never a silent cap)."""
    out = [
        f"not enough evidence to judge labels of {names[c]!r}: {why}"
        for c, why in sorted(quality.class_reasons.items())
    ]
    if quality.held_back.get("class"):
        out.append(
            f"{quality.held_back['class']} label(s) look wrong but involve classes not judged yet"
        )
    if quality.held_back.get("share"):
        out.append(
            f"{quality.held_back['share']} more label(s) look wrong, left out to keep the expected "
            f"share of false flags under the setting"
        )
    return out
