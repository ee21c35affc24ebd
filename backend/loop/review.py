"""The review decision of a cycle: which labeled items to accuse, with what evidence.

One place for the cycle (what goes into the review view) and the diagnosis (what the dashboard
lists and why some classes are not judged yet), so both always show the same flags.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from numpy.typing import NDArray

from backend.labelstudio.client import LabelStudio
from backend.loop.contract import CycleContext, Scored, Snapshot
from backend.loop.doubt import Doubt, doubt_of, given_labels, tag_names
from backend.loop.push import ReviewKind, Suspect, mark_reviewed, push_review, settled_tasks
from backend.settings import Settings
from backend.store.db import Store
from backend.store.models import Annotation
from strategies import REGISTRY, Pool
from strategies.base import Signal
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


def _describe(counts: Counter[str]) -> str:
    return ", ".join(f"{label} x{n}" for label, n in counts.most_common())


def _review_scores(
    settings: Settings,
    pool: Pool,
    info: Signal,
    quality: LabelQuality | None,
    crowd: Crowd | None,
) -> tuple[NDArray[np.float64], NDArray[np.int64] | None]:
    """(n,) the review signal's scores and, where the signal has one, (n,) the label it suggests."""
    if quality is not None:
        return flag_scores(quality), quality.suggested
    scores = info.score(pool, rng=np.random.default_rng(settings.model.seed))
    if crowd is None:
        return scores, None
    # Disagreements first where the reliability-weighted consensus (with the model) is least
    # sure; only items whose annotators actually disagree are flagged.
    ranked = np.where(scores > 0, 1.0 - crowd.consensus.max(axis=1) + 1e-6, 0.0)
    return ranked, crowd.consensus.argmax(axis=1)


def suspects(
    settings: Settings, snap: Snapshot, scored: Scored, kind: str, exclude: set[int]
) -> list[Suspect]:
    """Labeled tasks a review signal ranks above its alarm level, most suspicious first."""
    pool = scored.pool
    name = review_signal(settings, pool) if kind == "label_error" else "annotator_disagreement"
    info = REGISTRY[name]
    if info.unavailable(pool) is not None:
        return []  # e.g. annotator disagreement in a multi-label project, or no model yet
    quality = decide(settings, pool) if name == SUSPICION else None
    crowd = crowd_of(pool) if kind == "disagreement" else None
    scores, suggested = _review_scores(settings, pool, info, quality, crowd)
    labeled = np.flatnonzero(pool.labeled)
    alarm = info.alarm if info.alarm is not None else 0.0
    hits = [
        int(i)
        for i in labeled[np.argsort(-scores[labeled], kind="stable")]
        if scores[i] > alarm and int(scored.task_ids[i]) not in exclude
    ]
    by_task: dict[int, list[Annotation]] = {}
    for ann in snap.annotations:
        by_task.setdefault(ann.task_id, []).append(ann)
    doubt = doubt_of(snap.cfg.labels, pool.labels, pool.oos_probs, pool.targets)
    out = []
    for i in hits:
        task_id, d = int(scored.task_ids[i]), doubt(i)
        if kind == "label_error" and quality is not None and suggested is not None:
            if pool.targets is not None:
                d = _suspected_tag(snap.cfg.labels, pool.targets[i], int(suggested[i]), quality, i)
            else:
                d = _suspected(snap.cfg.labels, int(pool.labels[i]), int(suggested[i]), quality, i)
            reason = d.reason
        elif kind == "label_error":
            if d is None:  # every label-error signal needs out-of-sample probabilities
                raise ValueError(
                    f"{name} flagged task {task_id} with no out-of-sample probabilities"
                )
            reason = d.reason
        else:
            votes = Counter(a.labels[0] for a in by_task.get(task_id, []) if a.labels)
            reason = f"annotators chose {_describe(votes)}"
            if crowd is not None:
                top = int(crowd.consensus[i].argmax())
                reason += (
                    f"; consensus weighing annotator reliability and the model: "
                    f"{snap.cfg.labels[top]!r} ({crowd.consensus[i, top]:.0%})"
                )
            elif d is not None:
                reason += f"; model says {d.predicted!r} ({d.confidence:.0%})"
        given = d.given if d is not None else snap.cfg.labels[int(pool.labels[i])]
        predicted, confidence = (d.predicted, d.confidence) if d is not None else (None, None)
        value = float(quality.p_error[i]) if quality is not None else float(scores[i])
        out.append(Suspect(task_id, value, reason, given, predicted, confidence))
    return out


def _suspected(
    names: Sequence[str], given: int, suggested: int, quality: LabelQuality, row: int
) -> Doubt:
    """The doubt of the evidence-based decision: the true class it believes and how sure."""
    p = float(quality.p_error[row])
    reason = (
        f"labeled {names[given]!r}; the model and similar labeled items say "
        f"{names[suggested]!r}: {p:.0%} likely mislabeled"
    )
    return Doubt(reason, names[given], names[suggested], p)


def _suspected_tag(
    names: Sequence[str], tags: NDArray[np.int64], doubted: int, quality: LabelQuality, row: int
) -> Doubt:
    """The doubt of the per-tag decision: the doubted tag, given or not, and how sure."""
    p, name = float(quality.p_error[row]), names[doubted]
    given = tag_names(names, tags)
    if tags[doubted]:
        reason = f"tagged {name!r}; the model and similar labeled items say it is absent"
        predicted = tag_names(names, np.where(np.arange(len(tags)) == doubted, 0, tags))
    else:
        reason = f"not tagged {name!r}; the model and similar labeled items say it is present"
        predicted = tag_names(names, np.where(np.arange(len(tags)) == doubted, 1, tags))
    return Doubt(f"{reason}: {p:.0%} likely mislabeled", given, predicted, p)


def push_reviews(
    settings: Settings,
    store: Store,
    ls: LabelStudio,
    ctx: CycleContext,
    snap: Snapshot,
    scored: Scored,
) -> dict[str, int]:
    """The push stage's review side: mark the flags reviewers answered, then push this cycle's
    label-error and disagreement suspects (settled tasks left out); counts for the cycle record."""
    project_id, current = ctx.project_id, given_labels(snap)
    outcomes = mark_reviewed(store, project_id, current)
    counts: dict[str, int] = {f"review_{k}": v for k, v in outcomes.items()}
    kinds: tuple[ReviewKind, ...] = ("label_error", "disagreement")
    for kind in kinds:
        found = suspects(
            settings, snap, scored, kind, settled_tasks(store, project_id, kind, current)
        )
        explain = f"{settings.server.public_url}/dashboard/{project_id}/explain"
        found = [replace(f, explain_url=f"{explain}/{f.task_id}") for f in found]
        pushed = push_review(
            ls,
            store,
            project_id,
            kind,
            found,
            max_flags=settings.strategy.review_max_flags,
            image_key=snap.cfg.value_key,
            cycle_id=ctx.cycle_id,
        )
        counts.update({f"{kind}_{k}": v for k, v in pushed.items()})
    return counts
