"""Training heads over embeddings: cross-fitting, committee, calibration, metrics.

One call, :func:`train_model`, fits in a single Lightning run (see :mod:`backend.model.module`):

- K cross-fitting heads, head k trained without fold k: the out-of-sample probabilities of fold k's
  items come from head k only, so no item is ever scored by a model that saw its label;
- M committee heads on bootstrap resamples with their own initialisation (``bootstrap`` mode), or
  none when the committee is MC dropout over the main head;
- the main head on all labels, which serves ``predict_proba``.

A temperature is then fit on the out-of-sample logits, and metrics are computed from them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from backend.model.calibration import (
    TargetArray,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    probabilities,
)
from backend.model.metrics import classification_metrics, multilabel_thresholds
from backend.model.module import (
    EmbeddingDataModule,
    HeadModule,
    PerHeadEarlyStopping,
    StackedHead,
)
from backend.settings import ModelSettings

#: Rows per forward pass when a trained head predicts a pool (:meth:`TrainedModel._chunked`).
INFERENCE_ROWS = 8192
#: Largest ``|mean / std|`` of an embedding dimension for which the heads take raw embeddings with
#: their standardization folded in (:meth:`TrainedModel._folds_standardization`).
FOLD_MAX_OFFSET = 100.0


@dataclass(frozen=True, eq=False)
class TrainedModel:
    """A trained head with everything the loop and the dashboard need.

    Attributes:
        classes: label names, in logit order.
        multilabel: sigmoid per label (True) or softmax over labels (False).
        head: the main head (a stack of one), trained on every label.
        committee: bootstrap members (a stack of M), or None for MC dropout over ``head``.
        committee_size: M, the number of committee members ``committee_proba`` returns.
        temperature: divides logits before softmax / sigmoid (1.0: not calibrated).
        feature_mean, feature_std: (d,) standardisation of embeddings, applied before the head.
        oos_probs: (n, C) calibrated out-of-sample probabilities of the training items, in the
            order they were passed.
        folds: (n,) the cross-fitting fold of each training item.
        fold_seen: (n, K) whether fold k's head used item i (for training or early stopping).
        thresholds: (C,) per-label decision thresholds when multilabel, else None.
        metrics: cross-validated metrics (see :func:`backend.model.metrics.classification_metrics`)
            plus ``ece_before``, ``ece_after``, ``temperature``, ``n_labels``, ``train_seconds``.
        backbone: name of the backbone whose embeddings the head expects.
        seed: the seed it was trained with (MC dropout draws from it too).
    """

    classes: tuple[str, ...]
    multilabel: bool
    head: StackedHead
    committee: StackedHead | None
    committee_size: int
    temperature: float
    feature_mean: NDArray[np.float32]
    feature_std: NDArray[np.float32]
    oos_probs: NDArray[np.float64]
    folds: NDArray[np.int64]
    fold_seen: NDArray[np.bool_]
    thresholds: NDArray[np.float64] | None
    metrics: dict[str, Any] = field(default_factory=dict)
    backbone: str = ""
    seed: int = 0

    def _inputs(
        self, embeddings: NDArray[np.floating[Any]], out: NDArray[np.float32]
    ) -> torch.Tensor:
        """The standardized embeddings as float32, written into ``out``."""
        np.subtract(np.asarray(embeddings, dtype=np.float32), self.feature_mean, out=out)
        np.divide(out, self.feature_std, out=out)
        return torch.from_numpy(out)

    def _chunked(
        self,
        embeddings: NDArray[np.floating[Any]],
        *forwards: Callable[[torch.Tensor], torch.Tensor],
        standardize: bool = True,
    ) -> list[NDArray[np.float64]]:
        """Each of ``forwards`` over the embeddings, :data:`INFERENCE_ROWS` rows at a time, joined
        along the item axis (the last but one). With ``standardize`` each chunk is standardized
        once for all of them (a 100,000 x 1280 pool standardized at once is two 0.5 GB
        temporaries, written to fresh memory: 1.6 s a call); without, the forwards take the raw
        rows (:meth:`_folded`)."""
        rows = min(max(embeddings.shape[0], 1), INFERENCE_ROWS)
        buffer = np.empty((rows, embeddings.shape[1]), dtype=np.float32) if standardize else None
        parts: list[list[NDArray[Any]]] = [[] for _ in forwards]
        for i in range(0, max(embeddings.shape[0], 1), INFERENCE_ROWS):
            chunk = embeddings[i : i + INFERENCE_ROWS]
            if buffer is not None:
                x = self._inputs(chunk, buffer[: chunk.shape[0]])
            else:
                x = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
            for forward, out in zip(forwards, parts, strict=True):
                out.append(np.array(forward(x).numpy()))  # a copy: the buffer is written again
        return [np.concatenate(out, axis=-2).astype(np.float64, copy=False) for out in parts]

    def _folds_standardization(self) -> bool:
        """Whether the heads may take raw embeddings with the standardization folded into their
        first layer (:meth:`StackedHead.standardizing`): bootstrap committees (MC dropout drops
        standardized inputs) and offsets small enough for float32 (``|mean / std| <=``
        :data:`FOLD_MAX_OFFSET`: a larger one is mostly cancelled in the folded bias)."""
        offset = np.abs(self.feature_mean / self.feature_std)
        return self.committee is not None and float(offset.max(initial=0.0)) <= FOLD_MAX_OFFSET

    def _folded(self, stack: StackedHead) -> Callable[[torch.Tensor], torch.Tensor]:
        folded = stack.standardizing(
            torch.from_numpy(np.asarray(self.feature_mean, dtype=np.float32)),
            torch.from_numpy(np.asarray(self.feature_std, dtype=np.float32)),
        )
        return folded

    def _head_logits(self, *, folded: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        head = self._folded(self.head) if folded else self.head.eval()
        return lambda x: head(x)[0]

    def _committee_logits(self, *, folded: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
        """The committee's (M, rows, C) logits of a chunk. Bootstrap members are separate heads;
        MC dropout runs the main head M times with dropout on, drawing masks from a generator
        seeded with ``seed`` here (same input, same output)."""
        if self.committee is not None:
            return self._folded(self.committee) if folded else self.committee.eval()
        gen = torch.Generator().manual_seed(self.seed)
        head = self.head.eval()
        return lambda x: torch.stack(
            [head(x, mc_generator=gen)[0] for _ in range(self.committee_size)]
        )

    def _probabilities(self, logits: NDArray[np.float64]) -> NDArray[np.float64]:
        return probabilities(logits, self.temperature, multilabel=self.multilabel)

    def logits(self, embeddings: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """(n, d) embeddings to (n, C) uncalibrated logits of the main head."""
        fold = self._folds_standardization()
        with torch.inference_mode():
            return self._chunked(embeddings, self._head_logits(folded=fold), standardize=not fold)[
                0
            ]

    def predict_proba(self, embeddings: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
        """(n, d) embeddings to (n, C) calibrated probabilities."""
        return self._probabilities(self.logits(embeddings))

    def committee_proba(self, embeddings: NDArray[np.floating[Any]]) -> NDArray[np.float32]:
        """(n, d) embeddings to (M, n, C) calibrated probabilities, one slice per member.

        float32: the committee is M times the size of the head's probabilities, and its signals
        (BALD, vote entropy, KL to the consensus) run compiled on float32
        (:mod:`strategies.kernels`)."""
        fold = self._folds_standardization()
        with torch.inference_mode():
            logits = self._chunked(
                embeddings, self._committee_logits(folded=fold), standardize=not fold
            )[0]
        return self._probabilities(logits).astype(np.float32)

    def pool_proba(
        self, embeddings: NDArray[np.floating[Any]]
    ) -> tuple[NDArray[np.float64], NDArray[np.float32]]:
        """:meth:`predict_proba` and :meth:`committee_proba` of the same embeddings (the same
        values), standardizing each chunk once for both, or neither where the heads fold the
        standardization in."""
        fold = self._folds_standardization()
        with torch.inference_mode():
            head, committee = self._chunked(
                embeddings,
                self._head_logits(folded=fold),
                self._committee_logits(folded=fold),
                standardize=not fold,
            )
        return self._probabilities(head), self._probabilities(committee).astype(np.float32)


@dataclass(frozen=True)
class HeadPlan:
    """Which items each head trains and validates on. Head order: folds, committee, main."""

    train_weights: NDArray[
        np.float64
    ]  # (n, H) sample weights (bootstrap counts for committee heads)
    val_weights: NDArray[np.float64]  # (n, H) 0/1 early-stopping masks
    folds: NDArray[np.int64]  # (n,)
    n_folds: int
    n_committee: int

    @property
    def main(self) -> int:
        return self.n_folds + self.n_committee

    @property
    def committee(self) -> list[int]:
        return list(range(self.n_folds, self.n_folds + self.n_committee))


def feature_scaling(
    embeddings: NDArray[np.floating[Any]],
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(d,) mean and scale that standardise embeddings before the head.

    Each dimension's variance is shrunk toward the mean variance (``var + mean(var)``): with a few
    labeled items many dimensions are (near) constant, and dividing by their tiny spread would
    blow up the same dimensions on unseen items.
    """
    mean = embeddings.mean(axis=0)
    var = embeddings.var(axis=0)
    scale = np.sqrt(var + max(float(var.mean()), 1e-12))
    return mean.astype(np.float32), scale.astype(np.float32)


def strata(targets: TargetArray, *, multilabel: bool) -> NDArray[np.int64]:
    """(n,) group of each item for stratified folds: its class, or its rarest positive label."""
    if not multilabel:
        return targets.astype(np.int64)
    freq = targets.sum(axis=0)
    rarity = np.where(targets > 0, freq[None, :], np.inf)
    none = targets.sum(axis=1) == 0
    return np.where(none, targets.shape[1], rarity.argmin(axis=1)).astype(np.int64)


def assign_folds(
    groups: NDArray[np.int64], n_folds: int, rng: np.random.Generator
) -> NDArray[np.int64]:
    """Stratified fold ids: each group is shuffled and dealt round-robin, continuing the deal
    across groups so every fold gets a near-equal share. Works for groups smaller than K."""
    folds = np.empty(len(groups), dtype=np.int64)
    offset = 0
    for group in np.unique(groups):
        members = rng.permutation(np.flatnonzero(groups == group))
        folds[members] = (offset + np.arange(len(members))) % n_folds
        offset += len(members)
    return folds


def plan_heads(
    folds: NDArray[np.int64],
    n_folds: int,
    n_committee: int,
    *,
    val_fraction: float,
    rng: np.random.Generator,
) -> HeadPlan:
    """Train/validation weights for K fold heads, M bootstrap heads and the main head."""
    n = len(folds)
    pools = [folds != k for k in range(n_folds)] + [np.ones(n, bool)] * (n_committee + 1)
    train = np.zeros((n, len(pools)))
    val = np.zeros((n, len(pools)))
    for h, pool in enumerate(pools):
        held = pool & (rng.random(n) < val_fraction)
        if held.sum() >= pool.sum() - 1:  # always leave something to train on
            held[:] = False
        fit = np.flatnonzero(pool & ~held)
        if n_folds <= h < n_folds + n_committee:
            train[:, h] = np.bincount(rng.choice(fit, size=len(fit)), minlength=n)
        else:
            train[fit, h] = 1.0
        val[held, h] = 1.0
    return HeadPlan(train, val, folds, n_folds, n_committee)


def class_weights(
    targets: TargetArray,
    weights: NDArray[np.float64],
    n_classes: int,
    *,
    multilabel: bool,
    balance: bool,
) -> NDArray[np.float64]:
    """(H, C) per-head class weights from each head's own training weights.

    Single-label: "balanced" weights total / (classes present * class total), 0 for absent classes.
    Multi-label: positive-class weights negatives / positives, clipped to [0.1, 10].
    """
    heads = weights.shape[1]
    if not balance:
        return np.ones((heads, n_classes))
    if multilabel:
        pos = weights.T @ targets
        neg = weights.sum(axis=0)[:, None] - pos
        ratio = np.divide(neg, pos, out=np.ones_like(pos), where=pos > 0)
        clipped: NDArray[np.float64] = np.clip(ratio, 0.1, 10.0)
        return clipped
    counts = weights.T @ np.eye(n_classes)[targets]
    present = (counts > 0).sum(axis=1, keepdims=True)
    total = counts.sum(axis=1, keepdims=True)
    weights_per_class: NDArray[np.float64] = np.divide(
        total, present * counts, out=np.zeros_like(counts), where=counts > 0
    )
    return weights_per_class


@contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """Run the block with at most ``n`` BLAS threads for numpy and scipy (0: leave as is).

    Like :func:`torch_threads` the limit is process-wide while the block runs.
    """
    if n <= 0:
        yield
        return
    with threadpool_limits(limits=n, user_api="blas"):
        yield


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads (0: leave as is), then restore.

    Heads are small matrices: one thread avoids the synchronisation cost of a thread team, which
    dominates on a busy machine (measured 2.5 s vs 20 s per cycle on 2 shared cores).
    torch's thread count is process-wide, so this is meant for the one cycle worker.
    """
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def quiet_trainer(max_epochs: int, accelerator: str = "cpu", **options: Any) -> L.Trainer:
    """A Trainer without loggers, progress bars or checkpoints (the loop keeps its own).

    Heads stay on the CPU (``accelerator`` default): they are small matrices over cached
    embeddings, for which a GPU's transfers cost more than the arithmetic.
    """
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        **options,
    )


def _trainer(settings: ModelSettings, validate: bool) -> L.Trainer:
    return quiet_trainer(
        settings.max_epochs,
        num_sanity_val_steps=0,
        limit_val_batches=None if validate else 0.0,
        callbacks=[PerHeadEarlyStopping(settings.patience)] if validate else [],
    )


def fit_heads(
    x: NDArray[np.floating[Any]],
    targets: TargetArray,
    plan: HeadPlan,
    *,
    n_classes: int,
    multilabel: bool,
    settings: ModelSettings,
) -> StackedHead:
    """Train every head of ``plan`` in one Lightning run; the global RNG is left untouched."""
    weights = class_weights(
        targets,
        plan.train_weights,
        n_classes,
        multilabel=multilabel,
        balance=settings.class_weighting,
    )
    y = torch.from_numpy(targets.astype(np.float32 if multilabel else np.int64))
    data = EmbeddingDataModule(
        torch.from_numpy(x.astype(np.float32)),
        y,
        torch.from_numpy(plan.train_weights.astype(np.float32)),
        torch.from_numpy(plan.val_weights.astype(np.float32)),
        batch_size=settings.train_batch_size,
        seed=settings.seed,
    )
    with torch.random.fork_rng(devices=[]), torch_threads(settings.train_num_threads):
        torch.manual_seed(settings.seed)  # dropout masks during training
        net = StackedHead(
            x.shape[1],
            n_classes,
            plan.train_weights.shape[1],
            kind=settings.head,
            hidden_dim=settings.hidden_dim,
            dropout=settings.dropout,
            seed=settings.seed,
        )
        module = HeadModule(
            net,
            torch.from_numpy(weights.astype(np.float32)),
            multilabel=multilabel,
            learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay,
        )
        _trainer(settings, data.has_validation).fit(module, datamodule=data)
    return net.eval()


def _validate(
    embeddings: NDArray[np.floating[Any]],
    targets: TargetArray,
    n_classes: int,
    multilabel: bool,
    folds: NDArray[np.int64] | None,
) -> None:
    if embeddings.ndim != 2 or len(embeddings) != len(targets):
        raise ValueError("embeddings must be (n, d) with one target per row")
    if len(targets) < 2:
        raise ValueError(f"need at least 2 labeled items to train, got {len(targets)}")
    if multilabel and (targets.ndim != 2 or targets.shape[1] != n_classes):
        raise ValueError(f"multi-label targets must be (n, {n_classes}) of 0/1")
    if folds is not None and (folds.shape != (len(targets),) or folds.min() < 0):
        raise ValueError("folds must be (n,) non-negative fold ids")
    if not multilabel and (targets.ndim != 1 or targets.min() < 0 or targets.max() >= n_classes):
        raise ValueError(f"single-label targets must be (n,) ints in [0, {n_classes})")


def _head_logits(net: StackedHead, x: NDArray[np.floating[Any]]) -> NDArray[np.float64]:
    """(heads, n, C) logits of every head."""
    with torch.inference_mode():
        return np.asarray(net(torch.from_numpy(x.astype(np.float32))).numpy(), dtype=np.float64)


def _train_accuracy(
    logits: NDArray[np.float64],
    targets: TargetArray,
    thresholds: NDArray[np.float64] | None,
    temperature: float,
) -> float:
    """Accuracy of the served head on the items it was trained on (exact set match when
    multi-label), to set beside the out-of-sample accuracy: a growing gap is overfitting."""
    if thresholds is None:
        return float((logits.argmax(axis=1) == targets).mean())
    probs = probabilities(logits, temperature, multilabel=True)
    return float(((probs >= thresholds[None, :]) == (targets > 0)).all(axis=1).mean())


def _plan(
    targets: TargetArray,
    folds: NDArray[np.int64] | None,
    *,
    multilabel: bool,
    settings: ModelSettings,
) -> HeadPlan:
    rng = np.random.default_rng(settings.seed)
    if folds is None:
        n_folds = min(settings.cv_folds, len(targets))
        folds = assign_folds(strata(targets, multilabel=multilabel), n_folds, rng)
    else:
        folds = np.asarray(folds, dtype=np.int64)
        n_folds = int(folds.max()) + 1
    bootstrap = settings.committee_size if settings.committee_mode == "bootstrap" else 0
    early = len(targets) >= settings.early_stopping_min_labels
    val_fraction = settings.val_fraction if early else 0.0
    return plan_heads(folds, n_folds, bootstrap, val_fraction=val_fraction, rng=rng)


def _calibrate_and_score(
    oos: NDArray[np.float64],
    targets: TargetArray,
    *,
    classes: Sequence[str],
    multilabel: bool,
    settings: ModelSettings,
) -> tuple[float, NDArray[np.float64], NDArray[np.float64] | None, dict[str, Any]]:
    """Temperature, calibrated probabilities, thresholds and metrics from out-of-sample logits."""
    temperature = 1.0
    if settings.calibrate:
        temperature = fit_temperature(oos, targets, multilabel=multilabel)
    probs = probabilities(oos, temperature, multilabel=multilabel)
    thresholds = None
    if multilabel:
        thresholds = multilabel_thresholds(probs, targets, default=settings.multilabel_threshold)
    metrics = classification_metrics(
        probs, targets, classes=classes, multilabel=multilabel, thresholds=thresholds
    )
    raw = probabilities(oos, 1.0, multilabel=multilabel)
    metrics.update(
        temperature=temperature,
        ece_before=expected_calibration_error(raw, targets, multilabel=multilabel),
        ece_after=expected_calibration_error(probs, targets, multilabel=multilabel),
        nll_before=negative_log_likelihood(oos, targets, 1.0, multilabel=multilabel),
        nll_after=negative_log_likelihood(oos, targets, temperature, multilabel=multilabel),
    )
    return temperature, probs, thresholds, metrics


def train_model(
    embeddings: NDArray[np.floating[Any]],
    targets: TargetArray,
    *,
    classes: Sequence[str],
    multilabel: bool,
    settings: ModelSettings,
    backbone: str = "",
    folds: NDArray[np.int64] | None = None,
) -> TrainedModel:
    """Train the main head, the committee and the cross-fitting heads; calibrate; score.

    Args:
        embeddings: (n, d) embeddings of the labeled items.
        targets: (n,) class indices, or (n, C) {0, 1} when ``multilabel``.
        classes: the C label names, in target-index order.
        multilabel: sigmoid outputs with per-label thresholds instead of softmax.
        settings: the model section of the settings.
        backbone: name of the backbone that made ``embeddings`` (recorded on the model).
        folds: (n,) fixed cross-fitting fold ids in [0, K) (e.g. to keep an item's fold stable
            across cycles); default: stratified folds drawn from ``settings.seed``.

    Raises:
        ValueError: shapes disagree, targets are out of range, or fewer than 2 labels.
    """
    started = time.perf_counter()
    targets = np.asarray(targets).astype(np.int64)
    _validate(embeddings, targets, len(classes), multilabel, folds)
    mean, std = feature_scaling(embeddings)
    x = (embeddings - mean) / std
    plan = _plan(targets, folds, multilabel=multilabel, settings=settings)
    folds, n_folds = plan.folds, plan.n_folds
    net = fit_heads(
        x, targets, plan, n_classes=len(classes), multilabel=multilabel, settings=settings
    )
    logits = _head_logits(net, x)
    temperature, oos_probs, thresholds, metrics = _calibrate_and_score(
        logits[folds, np.arange(len(folds))],
        targets,
        classes=classes,
        multilabel=multilabel,
        settings=settings,
    )
    metrics.update(
        n_labels=len(targets),
        n_folds=n_folds,
        train_seconds=time.perf_counter() - started,
        train_accuracy=_train_accuracy(logits[plan.main], targets, thresholds, temperature),
    )
    return TrainedModel(
        classes=tuple(classes),
        multilabel=multilabel,
        head=net.select([plan.main]),
        committee=net.select(plan.committee) if plan.n_committee else None,
        committee_size=settings.committee_size,
        temperature=temperature,
        feature_mean=mean,
        feature_std=std,
        oos_probs=oos_probs,
        folds=folds,
        fold_seen=(plan.train_weights[:, :n_folds] + plan.val_weights[:, :n_folds]) > 0,
        thresholds=thresholds,
        metrics=metrics,
        backbone=backbone,
        seed=settings.seed,
    )
