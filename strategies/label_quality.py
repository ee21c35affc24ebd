"""One calibrated suspicion per labeled item, and the decision to flag it only with evidence.

Sources of evidence about each labeled item's given label, each out-of-sample for that item:

- the model's cross-fitted probabilities;
- its labeled nearest neighbours in embedding space (leave-one-out kNN vote, model-free, in the
  spirit of kNN label-quality scores);
- optionally a second model family, e.g. the out-of-bag votes of a bootstrap committee.

They are pooled log-linearly (one weight per source, fitted by the likelihood of the given labels,
so the pooled probabilities are calibrated to what annotators answer). The pooled distribution is
what annotators would say; the label noise is then taken out by a noise model fitted by EM
(``P(given | true)``, a C x C matrix with a prior of 95 % correct labels), which gives each item's
posterior over its true class and so ``P(given label is wrong)``. Those probabilities are held to
the noise model's own count: where they add up to more wrong labels than ``T`` implies (hard items
whose model evidence merely points elsewhere, as when the queue chose the labels for their
difficulty), their log-odds are shifted down until the two agree (:func:`consistent_error`).

The decision: an item is flagged when it is more likely wrong than right and the expected share of
false flags among everything flagged stays under ``max_false_share``. Classes the labels cannot
judge yet (too few labels, or the classes' out-of-sample recall too low) only yield flags whose
evidence is overwhelming, and each such class carries a reason in words.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from strategies.base import FloatArray, IntArray, Signal

#: Neighbours per labeled item for the kNN vote.
KNN_K = 10
#: Prior of the noise model: pseudo-counts of correct vs wrong labels per class (95 % correct).
NOISE_PRIOR = (19.0, 1.0)
#: Factors on the pooled log-probabilities tried by :func:`sharpened_posterior`.
SHARPNESS = (1.0, 1.5, 2.0, 3.0)
_WEIGHT_GRID = np.round(np.linspace(0.0, 2.0, 11), 2)
_EM_ITERATIONS = 30
_FLOOR = 1e-9


@dataclass(frozen=True)
class Gate:
    """Settings of the decision (see :func:`label_quality`)."""

    max_false_share: float = 0.2
    min_support: int = 10
    min_recall: float = 0.5
    overwhelming: float = 0.99


@dataclass(frozen=True)
class LabelQuality:
    """The suspicion of every item and the decision.

    Attributes:
        p_error: (n,) probability that the given label is wrong (0 for unlabeled items).
        suggested: (n,) most probable true class (-1 for unlabeled items).
        flagged: (n,) True = goes into the review view.
        judged: (C,) classes the labels can judge; ``class_reasons`` says why not for the others.
        class_reasons: class index -> why its labels cannot be judged yet.
        support, recall: (C,) labeled items per class and their out-of-sample recall.
        weights: pooling weight per evidence source (model, neighbours, committee...).
        expected_false_share: expected share of false flags among the flagged items.
        expected_errors: expected number of wrong labels among all labeled items.
        held_back: items more likely wrong than right but left out, by why ("class", "share").
    """

    p_error: NDArray[np.float64]
    suggested: IntArray
    flagged: NDArray[np.bool_]
    judged: NDArray[np.bool_]
    class_reasons: dict[int, str]
    support: IntArray
    recall: NDArray[np.float64]
    weights: tuple[float, ...]
    expected_false_share: float
    expected_errors: float
    held_back: dict[str, int] = field(default_factory=dict)


def knn_label_probs(
    embeddings: FloatArray, labels: IntArray, n_classes: int, *, k: int = KNN_K
) -> NDArray[np.float64]:
    """Leave-one-out vote of each labeled item's ``k`` most similar labeled items (cosine).

    Args:
        embeddings: (n, d) feature vectors.
        labels: (n,) given class, -1 unlabeled (unlabeled rows get the uniform distribution and
            never vote).
        n_classes: C.

    Returns:
        (n, C) float64 vote shares, smoothed by one pseudo-vote spread over the classes.
    """
    n = labels.shape[0]
    out = np.full((n, n_classes), 1.0 / n_classes)
    rows = np.flatnonzero(labels >= 0)
    k = min(k, rows.shape[0] - 1)
    if k < 1:
        return out
    z = np.asarray(embeddings[rows], dtype=np.float64)
    z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    given = labels[rows]
    chunk = max(1, 4_000_000 // max(1, rows.shape[0]))
    for start in range(0, rows.shape[0], chunk):
        sim = z[start : start + chunk] @ z.T
        local = np.arange(sim.shape[0])
        sim[local, start + local] = -np.inf  # never one's own vote
        nearest = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        votes = np.zeros((sim.shape[0], n_classes))
        np.add.at(votes, (np.repeat(local, k), given[nearest].ravel()), 1.0)
        out[rows[start : start + chunk]] = (votes + 1.0 / n_classes) / (k + 1.0)
    return out


def _pooled(logs: list[NDArray[np.float64]], weights: tuple[float, ...]) -> NDArray[np.float64]:
    z = np.zeros_like(logs[0])
    for weight, log_probs in zip(weights, logs, strict=True):
        z += weight * log_probs
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    out: NDArray[np.float64] = p / p.sum(axis=1, keepdims=True)
    return out


def pool_evidence(
    sources: list[FloatArray], given: IntArray
) -> tuple[NDArray[np.float64], tuple[float, ...]]:
    """Log-linear pooling of (m, C) probability sources, weights fitted by the likelihood of
    ``given`` on a grid (0 to 2 in steps of 0.2 per source).

    Returns:
        (m, C) pooled probabilities and the weights.
    """
    logs = [np.log(np.maximum(np.asarray(s, dtype=np.float64), _FLOOR)) for s in sources]
    rows = np.arange(given.shape[0])
    best: tuple[float, tuple[float, ...]] = (np.inf, (1.0,) + (0.0,) * (len(logs) - 1))
    for grid_point in itertools.product(_WEIGHT_GRID, repeat=len(logs)):
        weights = tuple(float(w) for w in grid_point)
        if not any(weights):
            continue
        pooled = _pooled(logs, weights)
        nll = float(-np.log(np.maximum(pooled[rows, given], _FLOOR)).mean())
        if nll < best[0] - 1e-12:
            best = (nll, weights)
    return _pooled(logs, best[1]), best[1]


def _prior_counts(n_classes: int, prior: tuple[float, float]) -> NDArray[np.float64]:
    """(C, C) pseudo-counts of the noise model: ``prior`` = (correct, wrong) per class, the wrong
    ones spread evenly over the other classes."""
    correct, wrong = prior
    alpha = np.full((n_classes, n_classes), wrong / max(n_classes - 1, 1))
    np.fill_diagonal(alpha, correct)
    return alpha


def _refit(
    posterior: NDArray[np.float64], onehot: NDArray[np.float64], alpha: NDArray[np.float64]
) -> NDArray[np.float64]:
    """The EM step for ``T``: counts of (true, given) pairs under the posterior plus ``alpha``."""
    counts: NDArray[np.float64] = (posterior.T @ onehot + alpha) / (
        posterior.sum(axis=0)[:, None] + alpha.sum(axis=1, keepdims=True)
    )
    return counts


def noise_posterior(
    pooled: FloatArray, given: IntArray, *, prior: tuple[float, float] = NOISE_PRIOR
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Posterior over each item's true class, with the annotators' noise taken out.

    ``pooled`` estimates what an annotator answers, ``q = p_true @ T`` with ``T[j, c] =
    P(given c | true j)``. EM alternates: the true-class prior ``q @ inv(T)`` (clipped to the
    simplex), the posterior ``prior * T[:, given]``, and ``T`` from the posteriors plus
    ``prior`` pseudo-counts (correct, wrong) per class, wrong ones spread evenly.

    Returns:
        (m, C) posterior over the true class and the (C, C) noise matrix.
    """
    alpha = _prior_counts(pooled.shape[1], prior)
    transition = alpha / alpha.sum(axis=1, keepdims=True)
    onehot = np.eye(pooled.shape[1])[given]
    posterior = np.asarray(pooled, dtype=np.float64)
    for _ in range(_EM_ITERATIONS):
        clean = pooled @ np.linalg.inv(transition)
        clean = np.maximum(clean, _FLOOR * pooled)
        clean /= clean.sum(axis=1, keepdims=True)
        posterior = clean * transition[:, given].T
        posterior /= np.maximum(posterior.sum(axis=1, keepdims=True), _FLOOR)
        transition = _refit(posterior, onehot, alpha)
    return posterior, transition


def mixture_posterior(
    prior_probs: FloatArray, given: IntArray, *, prior: tuple[float, float] = NOISE_PRIOR
) -> tuple[NDArray[np.float64], NDArray[np.float64], float]:
    """Posterior over each item's true class when ``prior_probs`` is the prior over it.

    The annotator answers ``c`` with probability ``T[j, c] = P(given c | true j)``, so
    ``P(given | item) = prior_probs @ T``; EM alternates the posterior ``prior_probs *
    T[:, given]`` and ``T`` from the posteriors plus ``prior`` pseudo-counts, as
    :func:`noise_posterior` does, but never deconvolves the item's evidence (``q @ inv(T)``
    clipped to the simplex). That deconvolution leaves the given class nothing wherever its
    probability is below the noise level, so labels the evidence merely doubts (the hard items
    the queue chose for their doubt) read as near-certain errors, and the noise matrix fitted
    from those posteriors counts far more wrong labels than there are; the posterior here keeps
    a doubted label's own share of the evidence.

    Returns:
        (m, C) posterior over the true class, the (C, C) noise matrix and the log-likelihood of
        the given labels under the model.
    """
    alpha = _prior_counts(prior_probs.shape[1], prior)
    transition = alpha / alpha.sum(axis=1, keepdims=True)
    onehot = np.eye(prior_probs.shape[1])[given]
    clean = np.asarray(prior_probs, dtype=np.float64)
    for _ in range(_EM_ITERATIONS):
        posterior = _normalized(clean * transition[:, given].T)
        transition = _refit(posterior, onehot, alpha)
    joint = clean * transition[:, given].T
    evidence = np.maximum(joint.sum(axis=1), _FLOOR)
    return _normalized(joint), transition, float(np.log(evidence).sum())


def _deconvolved_likelihood(pooled: FloatArray, given: IntArray, transition: FloatArray) -> float:
    """Log-likelihood of the given labels under :func:`noise_posterior`'s model."""
    clean = np.maximum(pooled @ np.linalg.inv(transition), _FLOOR * pooled)
    clean /= clean.sum(axis=1, keepdims=True)
    return float(np.log(np.maximum((clean * transition[:, given].T).sum(axis=1), _FLOOR)).sum())


def _normalized(joint: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-300)
    return out


def sharpened_posterior(
    pooled: FloatArray, given: IntArray
) -> tuple[NDArray[np.float64], float, NDArray[np.float64]]:
    """The noise model at the sharpness, and of the family, that best explain the given labels.

    Pooling fitted by the plain likelihood of noisy labels is too soft: it must also give the
    wrong labels some probability. Under the noise model they are explained by ``T`` instead, so
    the pooled log-probabilities are scaled by a factor in :data:`SHARPNESS`. Two readings of
    the sharpened distribution are tried at each factor: the prior over each item's true class
    (:func:`mixture_posterior`), or what annotators answer, with the noise taken out
    (:func:`noise_posterior`). The first keeps a doubted label its own share of the evidence,
    which is what labels chosen for their doubt need; the second explains heavy, structured
    noise (classes swapped in pairs) that a prior which already holds the swaps cannot. The
    pair whose noise model gives the given labels the highest marginal likelihood is kept.

    Returns:
        (m, C) posterior over the true class, the chosen factor and its (C, C) noise matrix.
    """
    logs = np.log(np.maximum(pooled, _FLOOR))
    best: tuple[float, float, NDArray[np.float64], NDArray[np.float64]] | None = None
    for factor in SHARPNESS:
        sharp = _pooled([logs], (factor,))
        posterior, transition, score = mixture_posterior(sharp, given)
        if best is None or score > best[0]:
            best = (score, factor, posterior, transition)
        posterior, transition = noise_posterior(sharp, given)
        score = _deconvolved_likelihood(sharp, given, transition)
        if score > best[0]:
            best = (score, factor, posterior, transition)
    if best is None:  # SHARPNESS is never empty
        raise ValueError("no sharpness factor to try")
    return best[2], best[1], best[3]


def consistent_error(
    posterior: FloatArray, given: IntArray, transition: FloatArray
) -> NDArray[np.float64]:
    """(m,) ``P(given label is wrong)``, held to the number of wrong labels the noise model implies.

    The noise matrix counts the wrong labels it expects, ``sum_i (1 - T[g_i, g_i])``, from
    every label together (and its prior). The posterior's own count, ``sum_i P(wrong_i)``, can be
    far larger: taking the noise out of the pooled evidence (``q @ inv(T)``) leaves the given class
    nothing wherever its pooled probability is below the noise level, which on items that are
    merely hard (labels the queue chose for their doubt, classes the model still confuses) reads
    as a near-certain error. Where the posterior counts more, every item's log-odds of being wrong
    are lowered by one shift that makes the two counts agree: the order stays the posterior's,
    the decision's expected false share becomes honest. The shift never goes so far that fewer
    labels stay more likely wrong than right than the ``floor(count)`` the noise model expects
    wrong (unless ties make that many impossible to single out): spreading the count over the
    many mildly doubted labels alone could otherwise push even the clearest errors under 0.5
    while the prior still dominates the count (few labels per class). Where the posterior counts
    no more, it is kept as it is.

    Args:
        posterior: (m, C) posterior over the true class; given: (m,) the given classes.
        transition: (C, C) the noise matrix ``P(given | true)`` fitted with it.
    """
    rows = np.arange(given.shape[0])
    right = posterior[rows, given]
    wrong = 1.0 - right
    expected = float((1.0 - np.diag(transition))[given].sum())
    if wrong.sum() <= expected:
        return np.asarray(wrong, dtype=np.float64)
    others = np.where(np.eye(posterior.shape[1], dtype=bool)[given], 0.0, posterior).sum(axis=1)
    log_odds = np.log(np.maximum(others, 1e-300)) - np.log(np.maximum(right, 1e-300))
    low, high = 0.0, max(0.0, float(log_odds.max())) + 50.0
    for _ in range(60):  # bisection on the shift: the count falls as the shift grows
        shift = 0.5 * (low + high)
        if _sigmoid(log_odds - shift).sum() > expected:
            low = shift
        else:
            high = shift
    accused = int(np.floor(expected))  # those stay above 0.5: at most the shift to the next one
    ranked = np.sort(log_odds)[::-1]
    if 0 < accused < ranked.shape[0] and ranked[accused - 1] > ranked[accused]:
        high = min(high, max(0.0, float(ranked[accused])))
    return _sigmoid(log_odds - high)


def _sigmoid(z: NDArray[np.float64]) -> NDArray[np.float64]:
    out: NDArray[np.float64] = 0.5 * (1.0 + np.tanh(0.5 * z))
    return out


def flag_decision(
    p_error: FloatArray, eligible: NDArray[np.bool_], *, max_false_share: float
) -> tuple[NDArray[np.bool_], float]:
    """The most suspicious eligible items, each more likely wrong than right, as many as keep
    the expected share of false flags (mean of ``1 - p_error``) at or under ``max_false_share``.

    Returns:
        (n,) flags and the expected false share among them (0 when none).
    """
    candidates = np.flatnonzero(eligible & (p_error > 0.5))
    order = candidates[np.argsort(-p_error[candidates], kind="stable")]
    false_share = np.cumsum(1.0 - p_error[order]) / np.arange(1, order.shape[0] + 1)
    ok = np.flatnonzero(false_share <= max_false_share + 1e-12)
    n = int(ok[-1]) + 1 if ok.shape[0] else 0
    flagged = np.zeros(p_error.shape[0], dtype=bool)
    flagged[order[:n]] = True
    return flagged, float(false_share[n - 1]) if n else 0.0


def class_evidence(
    pooled: FloatArray, given: IntArray, n_classes: int, gate: Gate
) -> tuple[IntArray, NDArray[np.float64], NDArray[np.bool_], dict[int, str]]:
    """Per class: support, out-of-sample recall of the pooled prediction, whether it can be
    judged, and for the others why not (in words, class named by index)."""
    support = np.bincount(given, minlength=n_classes).astype(np.int64)
    hits = np.bincount(given, weights=pooled.argmax(axis=1) == given, minlength=n_classes)
    recall = np.divide(hits, support, out=np.zeros(n_classes), where=support > 0)
    reasons: dict[int, str] = {}
    for c in range(n_classes):
        if support[c] < gate.min_support:
            reasons[c] = f"{support[c]} labels (needs {gate.min_support})"
        elif recall[c] < gate.min_recall:
            reasons[c] = f"out-of-sample recall {recall[c]:.0%} (needs {gate.min_recall:.0%})"
    judged = np.array([c not in reasons for c in range(n_classes)], dtype=bool)
    return support, recall, judged, reasons


def label_quality(
    labels: IntArray,
    oos_probs: FloatArray,
    *,
    embeddings: FloatArray | None = None,
    extra: list[FloatArray] | None = None,
    strata: IntArray | None = None,
    gate: Gate | None = None,
) -> LabelQuality:
    """Calibrated suspicion of every labeled item and which ones to flag.

    Args:
        labels: (n,) given class, -1 unlabeled.
        oos_probs: (n, C) out-of-sample probabilities (rows of labeled items are used).
        embeddings: (n, d) feature vectors for the neighbours' vote; None = model only.
        extra: more (n, C) out-of-sample sources (e.g. out-of-bag committee votes).
        strata: (n,) how each item came to be labeled (e.g. 0 = chosen by the queue, 1 = random
            audit): pooling weights and the noise model are fitted per stratum with at least 30
            labeled items, since items the queue chose are harder and the model disagrees with
            their correct labels more often.
        gate: decision settings.

    Returns:
        the :class:`LabelQuality`.
    """
    gate = gate or Gate()
    n, n_classes = oos_probs.shape
    rows = np.flatnonzero(labels >= 0)
    if rows.shape[0] == 0:
        return _nothing_labeled(n, n_classes, gate)
    given = labels[rows]
    sources: list[FloatArray] = [oos_probs[rows]]
    if embeddings is not None:
        sources.append(knn_label_probs(embeddings, labels, n_classes)[rows])
    sources += [np.asarray(s)[rows] for s in extra or []]
    pooled = np.empty((rows.shape[0], n_classes))
    posterior = np.empty((rows.shape[0], n_classes))
    wrong = np.empty(rows.shape[0])
    plain = np.empty(rows.shape[0])  # unsharpened: the bar for classes not judged
    weights: tuple[float, ...] = ()
    for members in _strata_rows(strata[rows] if strata is not None else None, rows.shape[0]):
        part, weights = pool_evidence([s[members] for s in sources], given[members])
        pooled[members] = part
        sharp, _, transition = sharpened_posterior(part, given[members])
        posterior[members] = sharp
        wrong[members] = consistent_error(sharp, given[members], transition)
        soft = noise_posterior(part, given[members])[0]
        plain[members] = 1.0 - soft[np.arange(members.shape[0]), given[members]]
    p_error = np.zeros(n)
    suggested = np.full(n, -1, dtype=np.int64)
    if rows.shape[0]:
        p_error[rows] = wrong
        suggested[rows] = posterior.argmax(axis=1)
    support, recall, judged, reasons = class_evidence(pooled, given, n_classes, gate)
    eligible = np.zeros(n, dtype=bool)
    eligible[rows] = True
    strong = np.zeros(n, dtype=bool)
    strong[rows] = plain >= gate.overwhelming
    fair = eligible & judged[np.maximum(labels, 0)] & judged[np.maximum(suggested, 0)]
    flagged, share = flag_decision(
        p_error,
        fair | strong,
        max_false_share=gate.max_false_share,
    )
    likely = eligible & (p_error > 0.5)
    held = {
        "class": int((likely & ~fair & ~flagged).sum()),
        "share": int((likely & fair & ~flagged).sum()),
    }
    return LabelQuality(
        p_error=p_error,
        suggested=suggested,
        flagged=flagged,
        judged=judged,
        class_reasons=reasons,
        support=support,
        recall=recall,
        weights=weights,
        expected_false_share=share,
        expected_errors=float(p_error.sum()),
        held_back=held,
    )


def _nothing_labeled(n: int, n_classes: int, gate: Gate) -> LabelQuality:
    reasons = {c: f"0 labels (needs {gate.min_support})" for c in range(n_classes)}
    return LabelQuality(
        p_error=np.zeros(n),
        suggested=np.full(n, -1, dtype=np.int64),
        flagged=np.zeros(n, dtype=bool),
        judged=np.zeros(n_classes, dtype=bool),
        class_reasons=reasons,
        support=np.zeros(n_classes, dtype=np.int64),
        recall=np.zeros(n_classes),
        weights=(),
        expected_false_share=0.0,
        expected_errors=0.0,
    )


def _strata_rows(strata: IntArray | None, m: int) -> list[IntArray]:
    if strata is None:
        return [np.arange(m)]
    groups = [np.flatnonzero(strata == s) for s in np.unique(strata)]
    small = [g for g in groups if g.shape[0] < 30]
    out = [g for g in groups if g.shape[0] >= 30]
    if small:
        out.append(np.concatenate(small))
    return out


def suspicion_scores(
    labels: IntArray,
    oos_probs: FloatArray,
    embeddings: FloatArray | None = None,
    targets: IntArray | None = None,
) -> NDArray[np.float64]:
    """(n,) probability the given label is wrong where flagged (> 0.5), half of it elsewhere, so
    the order is the suspicion's and the alarm at 0.5 is the decision (default :class:`Gate`).

    Args:
        labels: (n,) given class, -1 unlabeled; multi-label: >= 0 marks labeled.
        oos_probs: (n, C) out-of-sample probabilities.
        embeddings: (n, d) for the neighbours' evidence; None = the model's alone.
        targets: (n, C) 0/1 given labels of a multi-label pool (:func:`multilabel_quality`).
    """
    if targets is not None:
        quality = multilabel_quality(labels >= 0, targets, oos_probs, embeddings=embeddings)
    else:
        quality = label_quality(labels, oos_probs, embeddings=embeddings)
    return np.where(quality.flagged, quality.p_error, 0.5 * quality.p_error)


SUSPICION = Signal(
    "suspicion",
    "review",
    suspicion_scores,
    "calibrated probability the label is wrong (out-of-sample model + labeled neighbours), "
    "above 0.5 only where flagged with evidence (multi-label: per tag)",
    alarm=0.5,
)


@dataclass(frozen=True)
class Crowd:
    """Consensus of several annotators, weighed by how reliable each one is (CROWDLAB-style).

    Attributes:
        consensus: (n, C) posterior over each item's true class (uniform rows for items nobody
            labeled).
        reliability: (A,) estimated accuracy of each annotator.
        annotations: (A,) labels each annotator gave.
        agreement: (A,) share of an annotator's labels equal to the consensus label (NaN for
            annotators without labels).
    """

    consensus: NDArray[np.float64]
    reliability: NDArray[np.float64]
    annotations: IntArray
    agreement: NDArray[np.float64]


def crowd_consensus(
    annotations: IntArray,
    n_classes: int,
    *,
    model_probs: FloatArray | None = None,
    iterations: int = 20,
) -> Crowd:
    """Per-annotator reliability estimated jointly with the consensus (one-coin Dawid-Skene, the
    model's out-of-sample probabilities as the prior over each item's class when given, as
    CROWDLAB combines them).

    Each annotator is right with probability ``a`` and otherwise picks another class uniformly;
    the consensus is the posterior ``prior * prod_a (a if vote == c else (1 - a) / (C - 1))``,
    and ``a`` the posterior-weighted share of their votes that match, with one pseudo-vote each
    way (Beta(2, 1) prior: annotators are assumed better than chance).

    Args:
        annotations: (n, A) class per annotator, -1 where none.
        n_classes: C.
        model_probs: (n, C) out-of-sample probabilities, or None (uniform prior).

    Returns:
        the :class:`Crowd`.
    """
    n, n_annotators = annotations.shape
    voted = annotations >= 0
    votes = np.where(voted, annotations, 0)
    prior = (
        np.full((n, n_classes), 1.0 / n_classes)
        if model_probs is None
        else np.maximum(np.asarray(model_probs, dtype=np.float64), _FLOOR)
    )
    reliability = np.full(n_annotators, 0.8)
    onehot = np.eye(n_classes)[votes] * voted[..., None]  # (n, A, C)
    consensus = prior
    for _ in range(iterations):
        right = np.log(np.maximum(reliability, _FLOOR))
        wrong = np.log(np.maximum((1.0 - reliability) / max(n_classes - 1, 1), _FLOOR))
        # log-likelihood of the votes for each class: right where the vote is c, wrong elsewhere
        log_post = np.log(prior) + np.einsum("nac,a->nc", onehot, right - wrong)
        log_post += (voted * wrong[None, :]).sum(axis=1, keepdims=True)
        log_post -= log_post.max(axis=1, keepdims=True)
        consensus = np.exp(log_post)
        consensus /= consensus.sum(axis=1, keepdims=True)
        matched = np.einsum("nac,nc->a", onehot, consensus)
        reliability = np.clip((matched + 2.0) / (voted.sum(axis=0) + 3.0), 1e-3, 1 - 1e-3)
    label = consensus.argmax(axis=1)
    counts = voted.sum(axis=0).astype(np.int64)
    same = ((annotations == label[:, None]) & voted).sum(axis=0)
    agreement = np.where(counts > 0, same / np.maximum(counts, 1), np.nan)
    return Crowd(consensus, reliability, counts, agreement)


def multilabel_quality(
    labeled: NDArray[np.bool_],
    targets: IntArray,
    probs: FloatArray,
    *,
    embeddings: FloatArray | None = None,
    gate: Gate | None = None,
) -> LabelQuality:
    """The same decision per tag: each tag some labeled items have and some lack is a binary
    problem ("has the tag") judged by :func:`label_quality` with its own gate; an item's
    suspicion is that of its most doubted tag, flagged when that tag's decision flags it.

    Args:
        labeled: (n,) True for labeled items.
        targets: (n, C) given tags, 0 or 1.
        probs: (n, C) out-of-sample per-tag probabilities.

    Returns:
        a :class:`LabelQuality` whose ``suggested`` is the doubted tag per item and whose
        ``class_reasons``, ``judged``, ``support`` and ``recall`` are per tag (support: items
        with the tag).
    """
    n, n_tags = probs.shape
    p_error = np.zeros((n, n_tags))
    flagged = np.zeros((n, n_tags), dtype=bool)
    reasons: dict[int, str] = {}
    judged = np.zeros(n_tags, dtype=bool)
    held = {"class": 0, "share": 0}
    recall = np.zeros(n_tags)
    for tag in range(n_tags):
        given = np.where(labeled, targets[:, tag], -1).astype(np.int64)
        if given[labeled].min(initial=1) == given[labeled].max(initial=0):
            reasons[tag] = "every labeled item has it, or none"
            continue
        binary = np.stack((1.0 - probs[:, tag], probs[:, tag]), axis=1)
        quality = label_quality(given, binary, embeddings=embeddings, gate=gate)
        p_error[:, tag], flagged[:, tag] = quality.p_error, quality.flagged
        judged[tag], recall[tag] = quality.judged.all(), quality.recall[1]
        if not judged[tag]:
            reasons[tag] = "; ".join(
                f"{'with' if c else 'without'} it: {why}"
                for c, why in quality.class_reasons.items()
            )
        for key, value in quality.held_back.items():
            held[key] += value
    doubted = p_error.argmax(axis=1)
    rows = np.arange(n)
    any_flag = flagged[rows, doubted] | flagged.any(axis=1)
    worst = np.where(any_flag, np.where(flagged, p_error, 0.0).max(axis=1), p_error.max(axis=1))
    doubted = np.where(any_flag, np.where(flagged, p_error, -1.0).argmax(axis=1), doubted)
    share = float((1.0 - worst[any_flag]).mean()) if any_flag.any() else 0.0
    return LabelQuality(
        p_error=np.where(labeled, worst, 0.0),
        suggested=np.where(labeled, doubted, -1).astype(np.int64),
        flagged=any_flag & labeled,
        judged=judged,
        class_reasons=reasons,
        support=(targets * labeled[:, None]).sum(axis=0).astype(np.int64),
        recall=recall,
        weights=(),
        expected_false_share=share,
        expected_errors=float(np.where(labeled, worst, 0.0).sum()),
        held_back=held,
    )
