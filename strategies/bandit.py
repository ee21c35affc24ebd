"""Online selection among a portfolio of arms, paid by what their labels do on the audit sample.

No fixed strategy wins on every data set, and random order is hard to beat with few labels. So
each cycle's queue is shared among *arms* (random, margin, entropy, TypiClust coverage and the
configured weighted combination) in proportions a bandit sets from what each arm's labels
measurably did.

Reward (our adaptation of Active Learning By Learning, Hsu and Lin 2015). ALBL pays the arm that
chose a query the model's accuracy afterwards, estimated without bias by importance weighting
its uniform queries. With a batch shared by arms, the model after the batch cannot tell the arms
apart, so each arm's labels are judged by a paired counterfactual instead: a proxy learner
(multinomial logistic regression on the embeddings) is fit on the labels the arms had in common
(``base``) and on ``base`` plus the first ``m`` labels of each arm (``m`` the smallest arm's count,
so every arm is judged on as many labels), and scored on the audit items (held out from every
fit; uniform draws from the pool, so the score is unbiased for the pool). When random has too few
labels of its own, the audit items not yet used (uniform draws too) stand in for them and the
arms are judged on the audit items used before: random needs no share of its own to be the
reference. An arm's labels are pooled over pushes until it holds ``MIN_JUDGED`` of them and the
reference as many (:func:`judge_pending`): judged one label against one, random's labels (the
audit items' own distribution) win well over half the time even against an arm that is better
with five or more, and that bias alone would hand random a share. An arm
*wins* a judgment when its labels lowered the audit Brier score more than random's labels did
(ties count half). Wins are scale-free, so judgments early (large gains) and late (small gains)
weigh alike.

Allocation. Each arm's chance of beating random in a judgment has a Beta posterior over its
discounted wins (``discount`` per push of age: the best arm changes as labels grow). Each cycle
the non-audit part of the batch is split by probability matching (Thompson sampling): the share of
an arm is how often it has the highest draw. With a batch of tens of labels and a tenth of it
audited, one judgment's comparisons rest on a few labels and a few audit items and are close to coin
flips, and probability matching on coin flips spreads the batch evenly over arms whatever they
are worth. So the configured combination (the *incumbent*, the measured default, which starts
trusted a little) keeps the batch until evidence says otherwise: another arm (a *challenger*)
competes for it only once its paired record against the incumbent (the same cycles, base and
audit items) makes it trusted to beat it; until then the challengers share a scouting part
(``explore``) by their Thompson draws, so they keep being judged; random takes everything but the
scouting part once it is trusted to beat every competing arm: never worse than random order.
Without an incumbent (no arm with a prior of its own) the arms and random (counting as
``0.5 + hurdle``: an arm must win more than half of its comparisons to take its place) share the
batch by probability matching alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np
from numpy.typing import NDArray
from scipy.stats import beta as beta_dist
from sklearn.linear_model import LogisticRegression

from strategies import REGISTRY
from strategies.audit import audit_slots, draw_audit
from strategies.base import Basis, FloatArray, IntArray, Pool, eligible, top_k
from strategies.coldstart import cold_start_order, reduce

#: The portfolio, in the order the dashboard lists it. "combined" is the configured weighting.
ARMS = ("random", "margin", "entropy", "typiclust", "combined")
AUDIT = "audit"
#: Prior Beta(wins, losses) of "beats random in a cycle": the configured combination starts
#: trusted a little (it is the measured default), the others even.
PRIOR: Mapping[str, tuple[float, float]] = MappingProxyType({"combined": (2.0, 1.0)})
EVEN_PRIOR = (1.0, 1.0)
DISCOUNT = 0.9
HURDLE = 0.05
#: Share of the batch random keeps whatever the evidence (none: the audit items are its reference).
RANDOM_FLOOR = 0.0
#: Share of the batch the challengers not yet trusted against the incumbent share (scouting).
EXPLORE = 0.1
DRAWS = 4000
#: An arm is *trusted* when the posterior probability that it beats random reaches this.
TRUST = 0.8
#: The proxy learner sees at most this many PCA components of the embeddings.
PROXY_DIMS = 32
#: The interleaved, recorded part of the queue spans this many batches; the rest follows the
#: arm with the largest share.
HORIZON_BATCHES = 3
#: An arm is judged once it holds this many labeled picks not judged yet, against as many
#: reference labels (random's picks or audit items): a comparison on one or two labels is a coin
#: flip tilted toward random (its labels are the audit items' own distribution).
MIN_JUDGED = 5


@dataclass(frozen=True)
class Reward:
    """One arm's result in one judgment.

    Attributes:
        cycle: an increasing push number the judgment is filed under (age = newest - cycle).
        arm: the arm's name.
        win: 1 if its labels helped the audit score more than random's, 0 if less, 0.5 tied.
        gain: decrease of the audit Brier score from its labels (per ``n`` labels).
        n: how many of its labels were judged.
    """

    cycle: int
    arm: str
    win: float
    gain: float
    n: int


@dataclass(frozen=True)
class Belief:
    """What the bandit thinks of one arm: posterior of beating random, its share, why."""

    arm: str
    wins: float
    comparisons: float
    p_better: float
    share: float
    trusted: bool
    reason: str


@dataclass(frozen=True)
class Allocation:
    """Shares of the non-audit batch per arm (sum 1) and the beliefs behind them."""

    shares: Mapping[str, float]
    beliefs: tuple[Belief, ...]


def posterior(
    rewards: Sequence[Reward], arm: str, *, discount: float = DISCOUNT
) -> tuple[float, float]:
    """Discounted (wins, comparisons) of ``arm`` over ``rewards``."""
    if not rewards:
        return 0.0, 0.0
    newest = max(r.cycle for r in rewards)
    mine = [r for r in rewards if r.arm == arm]
    weights = np.array([discount ** (newest - r.cycle) for r in mine])
    wins = np.array([r.win for r in mine])
    return float((weights * wins).sum()), float(weights.sum())


def paired(
    rewards: Sequence[Reward], arm: str, rival: str, *, discount: float = DISCOUNT
) -> tuple[float, float]:
    """Discounted (wins, comparisons) of ``arm`` against ``rival`` in the cycles both were judged.

    Both arms' gains of one cycle rest on the same base, the same ``m`` and the same audit
    items, so the larger gain wins (ties count half), as against random.
    """
    if not rewards:
        return 0.0, 0.0
    newest = max(r.cycle for r in rewards)
    theirs = {r.cycle: r.gain for r in rewards if r.arm == rival}
    wins = comparisons = 0.0
    for r in rewards:
        if r.arm != arm or r.cycle not in theirs:
            continue
        weight = discount ** (newest - r.cycle)
        diff = r.gain - theirs[r.cycle]
        wins += weight * (0.5 if abs(diff) < 1e-12 else float(diff > 0))
        comparisons += weight
    return wins, comparisons


def incumbent(available: Sequence[str]) -> str | None:
    """The arm trusted before any evidence: the available one with the strongest prior (the
    configured combination), or None when every available arm starts even."""
    favoured = [a for a in available if a != "random" and a in PRIOR]
    if not favoured:
        return None
    return max(favoured, key=lambda a: PRIOR[a][0] / sum(PRIOR[a]))


def _untrusted(
    rewards: Sequence[Reward], others: Sequence[str], leader: str | None, *, discount: float
) -> NDArray[np.bool_]:
    """(k,) True for each of ``others`` not yet trusted to beat the incumbent ``leader``."""
    challengers = np.zeros(len(others), dtype=bool)
    if leader is None:
        return challengers
    # Bonferroni: with k challengers, the chance that coin-flip evidence trusts any of them over
    # the incumbent stays near 1 - TRUST instead of growing with k.
    needed = 1.0 - (1.0 - TRUST) / max(1, len(others) - 1)
    for i, arm in enumerate(others):
        if arm != leader:
            wins, comparisons = paired(rewards, arm, leader, discount=discount)
            challengers[i] = beta_dist.sf(0.5, 1.0 + wins, 1.0 + comparisons - wins) < needed
    return challengers


def allocate(
    rewards: Sequence[Reward],
    available: Sequence[str],
    *,
    rng: np.random.Generator,
    discount: float = DISCOUNT,
    hurdle: float = HURDLE,
    random_floor: float = RANDOM_FLOOR,
    explore: float = EXPLORE,
    draws: int = DRAWS,
) -> Allocation:
    """Split the batch among the ``available`` arms (random is always one of them).

    Thompson sampling on each arm's posterior of beating random. When an *incumbent* is
    available (:func:`incumbent`, the configured combination), a *challenger* (any other
    non-random arm) competes with it for the batch only once its paired record against the
    incumbent makes it trusted to beat it (probability ``TRUST``, Bonferroni-corrected for the
    number of challengers); until then the challengers
    share ``explore`` of the batch, each as often as it has the highest draw among them, so that
    they keep being judged; random takes the rest once it is trusted to beat every competing arm
    (the probability that each competing arm's chance of beating random is below one half reaches
    ``TRUST``). Evidence that cannot tell the arms apart then leaves the batch with the incumbent
    instead of spreading it. Without an incumbent: probability matching among random (at
    ``0.5 + hurdle``) and every arm.

    Args:
        rewards: every recorded :class:`Reward` of the project (older ones discounted).
        available: arms the pool can run this cycle (margin needs a model, ...).
        rng: the Thompson draws.
        random_floor: share random keeps whatever the evidence.
        explore: share of the batch the challengers not yet trusted share.
    """
    others = [a for a in available if a != "random"]
    alpha, beta = np.ones(len(others)), np.ones(len(others))
    for i, arm in enumerate(others):
        a0, b0 = PRIOR.get(arm, EVEN_PRIOR)
        wins, comparisons = posterior(rewards, arm, discount=discount)
        alpha[i], beta[i] = a0 + wins, b0 + comparisons - wins
    samples = rng.beta(alpha, beta, size=(draws, len(others))) if others else np.zeros((draws, 0))
    leader = incumbent(others)
    challengers = _untrusted(rewards, others, leader, discount=discount)
    competing = np.where(challengers, -np.inf, samples)
    scouting = explore if challengers.any() else 0.0
    main = 1.0 - scouting
    if leader is None:  # probability matching, random counting as 0.5 + hurdle
        values = np.concatenate((np.full((draws, 1), 0.5 + hurdle), competing), axis=1)
        winners = np.bincount(values.argmax(axis=1), minlength=len(others) + 1) / draws
        random_share = max(random_floor, float(winners[0]))
    else:  # random takes over once it is trusted to beat every arm still competing
        worse = float(np.mean(competing.max(axis=1) < 0.5))
        random_share = main if worse >= TRUST else random_floor
        winners = np.bincount(competing.argmax(axis=1), minlength=len(others)) / draws
        winners = np.concatenate(([0.0], winners))
    rest = float(winners[1:].sum()) if random_share < main else 0.0
    shares = {"random": random_share if rest > 0 else main}
    if challengers.any():
        tried = np.bincount(samples[:, challengers].argmax(axis=1), minlength=challengers.sum())
        for arm, count in zip(np.asarray(others)[challengers], tried, strict=True):
            shares[str(arm)] = scouting * float(count) / draws
    for i, arm in enumerate(others):
        if not challengers[i]:
            share = (main - random_share) * float(winners[i + 1]) / rest if rest > 0 else 0.0
            shares[arm] = share
    if not challengers.any() and rest <= 0:
        shares["random"] = 1.0
    beliefs = [_belief("random", 0.0, 0.0, 0.5, shares["random"], "the reference")]
    for i, arm in enumerate(others):
        wins, comparisons = posterior(rewards, arm, discount=discount)
        p_better = float(beta_dist.sf(0.5, alpha[i], beta[i]))
        beliefs.append(_belief(arm, wins, comparisons, p_better, shares[arm], ""))
    return Allocation(shares, tuple(beliefs))


def _belief(
    arm: str, wins: float, comparisons: float, p_better: float, share: float, reason: str
) -> Belief:
    trusted = arm != "random" and p_better >= TRUST
    if not reason:
        record = f"won {wins:.1f} of {comparisons:.1f} recent comparisons with random"
        if comparisons < 1:
            record = "no comparison with random yet"
        verdict = "trusted" if trusted else "not trusted"
        reason = f"{record}; P(beats random) = {p_better:.2f}: {verdict}"
    return Belief(arm, wins, comparisons, p_better, share, trusted, reason)


def arm_orders(
    pool: Pool, combined: IntArray, *, rng: np.random.Generator, batch_size: int
) -> dict[str, IntArray]:
    """Each available arm's full order of the unlabeled items, best first.

    Args:
        pool: the validated pool.
        combined: (m,) the configured combination's order (:func:`strategies.combine.prioritize`).
        batch_size: items per batch (TypiClust's cluster count).
    """
    candidates = eligible(pool, "label")
    orders: dict[str, IntArray] = {"random": rng.permutation(candidates).astype(np.int64)}
    for name in ("margin", "entropy"):
        if REGISTRY[name].unavailable(pool) is None:
            scores = REGISTRY[name].score(pool, rng=rng)
            orders[name] = top_k(scores, candidates, candidates.shape[0], rng=rng).indices
    if pool.embeddings is not None and pool.probs is not None:
        # Before a model exists the combination *is* the TypiClust order: one arm, not two.
        orders["typiclust"] = cold_start_order(
            pool.embeddings, pool.labeled, batch_size=batch_size, rng=rng, basis=pool.basis
        )
    orders["combined"] = np.asarray(combined, dtype=np.int64)
    return orders


@dataclass(frozen=True)
class Interleaved:
    """The queue built from the arms.

    Attributes:
        order: (m,) every unlabeled item, label first first.
        arms: arm name of each of the first ``len(arms)`` positions ("audit" for audit items).
    """

    order: IntArray
    arms: tuple[str, ...]


def _slots(shares: Mapping[str, float], count: int) -> list[str]:
    """``count`` arm names in proportion to ``shares``, spread evenly (stride scheduling)."""
    names = [a for a, s in shares.items() if s > 0]
    weights = np.array([shares[a] for a in names])
    weights = weights / weights.sum()
    credit = np.zeros(len(names))
    out = []
    for _ in range(count):  # slots of the recorded horizon only, a few hundred
        credit += weights
        pick = int(np.argmax(credit))
        credit[pick] -= 1.0
        out.append(names[pick])
    return out


def interleave(
    orders: Mapping[str, IntArray],
    shares: Mapping[str, float],
    audit: IntArray,
    slots: NDArray[np.bool_],
) -> Interleaved:
    """Merge the arms' orders into one queue, audit items in the audit slots.

    The first ``len(slots)`` positions (the recorded horizon) are built slot by slot: an audit
    slot (:func:`strategies.audit.audit_slots`) takes the next audit item, the others go to the
    arms in proportion to ``shares``; each arm fills its slot with its best item not yet taken,
    and when every arm has run out the audit items left fill in. The rest of the queue follows
    the arm with the largest share.

    Args:
        orders: arm -> (m,) its order of the unlabeled items.
        shares: arm -> share of the non-audit slots (arms missing from ``orders`` are ignored).
        audit: (a,) the audit items, already drawn uniformly.
        slots: (h,) True where a position of the horizon is an audit slot.
    """
    shares = {a: s for a, s in shares.items() if a in orders and s > 0} or {"random": 1.0}
    taken = np.zeros(int(max((o.max(initial=-1) for o in orders.values()), default=-1)) + 1, bool)
    taken[audit] = True
    pointers = dict.fromkeys(orders, 0)
    audit_left = list(audit)[::-1]
    arm_slots = iter(_slots(shares, int(slots.shape[0])))
    order: list[int] = []
    arms: list[str] = []
    for is_audit in slots:  # the recorded horizon, a few hundred slots
        item: int | None = None
        if not is_audit:
            arm = next(arm_slots)
            item = _next_free(orders[arm], pointers, arm, taken)
            if item is None:
                arm, item = _any_free(orders, pointers, taken)
        if item is None and audit_left:
            arm, item = AUDIT, int(audit_left.pop())
        if item is None:
            break
        taken[item] = True
        order.append(item)
        arms.append(arm)
    lead = max(shares, key=lambda a: shares[a])
    rest = [int(i) for i in orders[lead] if not taken[i]]
    leftover = [int(i) for i in audit_left]
    return Interleaved(np.asarray(order + leftover + rest, dtype=np.int64), tuple(arms))


def _next_free(
    order: IntArray, pointers: dict[str, int], arm: str, taken: NDArray[np.bool_]
) -> int | None:
    p = pointers[arm]
    while p < order.shape[0] and taken[order[p]]:
        p += 1
    pointers[arm] = p
    return int(order[p]) if p < order.shape[0] else None


def _any_free(
    orders: Mapping[str, IntArray], pointers: dict[str, int], taken: NDArray[np.bool_]
) -> tuple[str, int | None]:
    for arm, order in orders.items():
        item = _next_free(order, pointers, arm, taken)
        if item is not None:
            return arm, item
    return "random", None


def proxy_features(
    embeddings: FloatArray, *, rng: np.random.Generator, basis: Basis | None = None
) -> NDArray[np.float64]:
    """(n, <= PROXY_DIMS) standardized PCA components of the embeddings (no labels used).

    The components are :func:`strategies.coldstart.reduce`'s: above its sample size the pool's
    shared ``basis`` where given, else fitted on a uniform sample (a fit on every item of a
    100,000 x 1,280 pool, in float64, cost 14 s of the cycle that judged a push).
    """
    x = reduce(embeddings, dims=PROXY_DIMS, rng=rng, basis=basis)
    spread = x.std(axis=0)
    out: NDArray[np.float64] = (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    return out


def _brier(
    x: NDArray[np.float64], y: IntArray, train: IntArray, test: IntArray, n_classes: int
) -> float:
    """Mean Brier score on ``test`` of a logistic regression fit on ``train``."""
    classes = np.unique(y[train])
    probs = np.zeros((test.shape[0], n_classes))
    if classes.shape[0] < 2:
        counts = np.bincount(y[train], minlength=n_classes) + 1.0  # add-one frequencies
        probs[:] = counts / counts.sum()
    else:
        model = LogisticRegression(max_iter=200).fit(x[train], y[train])
        probs[:, model.classes_] = model.predict_proba(x[test])
    truth = np.eye(n_classes)[y[test]]
    return float(((probs - truth) ** 2).sum(axis=1).mean())


def arm_rewards(
    x: NDArray[np.float64],
    y: IntArray,
    base: IntArray,
    picked: Mapping[str, IntArray],
    audit: IntArray,
    *,
    cycle: int,
    n_classes: int,
) -> list[Reward]:
    """Judge each arm's labels of one push against random's on the audit items.

    Args:
        x: (n, d) proxy features (:func:`proxy_features`).
        y: (n,) labels (only indices named below are read).
        base: labeled items every arm shares (audit items and the push's arm picks excluded).
        picked: arm -> its labeled picks of the push, in queue order; must include "random".
        audit: items the score is measured on (uniform draws, never trained on).
        cycle: the cycle number the rewards are filed under.
        n_classes: number of classes.

    Returns:
        One :class:`Reward` per non-random arm with picks (none without random picks or audit).
    """
    judged = {a: p for a, p in picked.items() if p.shape[0] > 0}
    if "random" not in judged or audit.shape[0] == 0 or len(judged) < 2:
        return []
    m = min(p.shape[0] for p in judged.values())
    reference = _brier(x, y, base, audit, n_classes)
    gains = {
        arm: (reference - _brier(x, y, np.concatenate((base, p[:m])), audit, n_classes)) / m
        for arm, p in judged.items()
    }
    out = []
    for arm, gain in gains.items():
        if arm == "random":
            continue
        diff = gain - gains["random"]
        win = 0.5 if abs(diff) < 1e-12 else float(diff > 0)
        out.append(Reward(cycle, arm, win, gain, m))
    return out


def judge_push(
    x: NDArray[np.float64],
    labels: IntArray,
    picked: Mapping[str, IntArray],
    audit: IntArray,
    *,
    cycle: int,
    n_classes: int,
    fresh: IntArray | None = None,
) -> list[Reward]:
    """Rewards of one push: ``picked`` (arm -> its labeled picks, in queue order) judged on
    ``audit`` (every labeled audit item), with every other labeled item as the shared base.

    Args:
        fresh: labeled audit items not used yet (a subset of ``audit``). When ``picked`` has no
            random picks they stand in for them (they are uniform draws from the pool too) and
            leave the items the arms are judged on, which are then the other audit items
            (uniform draws too, so still unbiased for the pool).
    """
    judged_on = np.asarray(audit, dtype=np.int64)
    own = picked.get("random")
    if fresh is not None and fresh.shape[0] > 0 and (own is None or own.shape[0] == 0):
        judged_on = np.setdiff1d(judged_on, fresh)
        picked = {**picked, "random": np.asarray(fresh, dtype=np.int64)}
    excluded = np.zeros(labels.shape[0], dtype=bool)
    excluded[audit] = True
    for rows in picked.values():
        excluded[rows] = True
    base = np.flatnonzero((labels >= 0) & ~excluded).astype(np.int64)
    return arm_rewards(x, labels, base, picked, judged_on, cycle=cycle, n_classes=n_classes)


def judge_pending(
    x: NDArray[np.float64],
    labels: IntArray,
    pending: Mapping[str, Sequence[int]],
    audit: IntArray,
    *,
    cycle: int,
    n_classes: int,
    min_labels: int = MIN_JUDGED,
) -> tuple[list[Reward], frozenset[str]]:
    """Judge the arms whose labeled picks, pooled over pushes until judged, are enough.

    Args:
        pending: arm -> its labeled picks not judged yet, oldest first (one per item, none an
            audit item); ``AUDIT`` -> the labeled audit items no judgment has used yet.
        audit: every labeled audit item (what the arms are judged on).
        min_labels: an arm is judged once it holds this many picks, and only when the reference
            (random's pending picks, else the pending audit items) holds as many.

    Returns:
        The rewards (filed under ``cycle``) and the keys of ``pending`` they consumed: the judged
        arms, random when its picks were the reference, and ``AUDIT`` (scored on or standing in
        for random). Each judged arm is compared on its oldest ``m`` picks (``m`` the smallest
        count, :func:`arm_rewards`); its newer ones are consumed with them, so that every
        judgment compares labels of the same pushes. Empty while no arm or no
        reference is ready; only ``AUDIT`` when every labeled audit item is pending (the first
        judgment: those become the items later ones are judged on, the arms' picks wait).
    """
    ready = {
        a: np.asarray(r, dtype=np.int64)
        for a, r in pending.items()
        if a not in ("random", AUDIT) and len(r) >= min_labels
    }
    own = np.asarray(pending.get("random", ()), dtype=np.int64)
    fresh = np.asarray(pending.get(AUDIT, ()), dtype=np.int64)
    if own.shape[0] >= min_labels:
        ready["random"] = own
    elif fresh.shape[0] < min_labels:
        return [], frozenset()
    if not ready.keys() - {"random"}:
        return [], frozenset()
    rewards = judge_push(x, labels, ready, audit, cycle=cycle, n_classes=n_classes, fresh=fresh)
    if not rewards:  # no earlier audit item to judge on: the reference's become the first
        return [], frozenset({AUDIT})
    return rewards, frozenset(ready) | {AUDIT}


def build_queue(
    pool: Pool,
    combined: IntArray,
    rewards: Sequence[Reward],
    *,
    rng: np.random.Generator,
    batch_size: int,
    audit_share: float,
    adaptive: bool,
) -> tuple[Interleaved, Allocation]:
    """This cycle's queue: audit items drawn uniformly, the rest shared among the arms.

    Args:
        pool: the validated pool.
        combined: (m,) the configured combination's order.
        rewards: every reward so far (ignored unless ``adaptive``).
        adaptive: share among the arms by :func:`allocate`; else the combination alone.
    """
    if adaptive:
        orders = arm_orders(pool, combined, rng=rng, batch_size=batch_size)
        allocation = allocate(rewards, list(orders), rng=rng)
    else:
        orders = {"combined": np.asarray(combined, dtype=np.int64)}
        allocation = Allocation({"combined": 1.0}, ())
    candidates = eligible(pool, "label")
    slots = audit_slots(
        min(candidates.shape[0], HORIZON_BATCHES * batch_size), batch_size, audit_share
    )
    audit = draw_audit(candidates, int(slots.sum()), rng=rng)
    built = interleave(orders, allocation.shares, audit, slots)
    return built, allocation
