"""The diagnosis builder: a cycle's arrays in, a typed
:class:`~backend.diagnosis.schema.Diagnosis` out.

Sections:

- ``classification``: confusion matrix (counts and row-normalized; rows = given label, columns =
  predicted) and per-class precision / recall / F1 / support, from the out-of-sample (cross-fitted)
  probabilities of the labeled items, so the numbers equal the model version's metrics.
- ``distribution``: labels per class and the imbalance ratio (largest / smallest non-empty class).
- ``label_errors``: labeled items the configured review signal (``strategy.review_signal``) ranks
  above its alarm level, most suspicious first, with the model's label and confidence. Tasks
  already reviewed (annotation confirmed or changed after they were flagged) are left out and
  counted in ``label_errors_reviewed``, as they leave the review view in Label Studio. In
  multi-label projects an entry names the most doubted tag (and ``classification`` is null: the
  per-tag scores are in ``per_class``).
- ``coverage``: under-covered clusters (see :mod:`strategies.coverage`) with typical unlabeled
  examples; ``outliers``: the items farthest from their cluster centre, relative to the cluster.
- ``map``: a 2-D projection of at most ``diagnosis.map_points`` items (label-error candidates
  and outliers always kept), columnar: UMAP fitted on at most 5,000 of them, PCA when umap-learn
  is missing, the map is small or ``diagnosis.map_projection`` is ``pca`` (it says which).
- ``drift``: a domain classifier (logistic regression on 32 principal components) telling labeled
  items from *new* items, the unlabeled tasks whose id is larger than the largest labeled task id
  (Label Studio ids grow with every import, so these were imported after everything labeled).
  Its stratified 5-fold cross-validated ROC AUC is 0.5 when new data looks like the labeled data;
  ``warning`` is set at ``diagnosis.drift_auc_warning`` or above. Active learning picks labeled
  items non-uniformly, which by itself can lift the AUC a little above 0.5.

Works before any model exists (cold start): classification and label errors are then null/empty.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from backend.diagnosis.duplicate_groups import find_duplicates
from backend.diagnosis.performance import class_curves, confused_pairs
from backend.diagnosis.projection import KeptMap, Method, project
from backend.diagnosis.quality import ISSUES, image_quality, issue_masks
from backend.diagnosis.schema import (
    Classification,
    ClassScores,
    Confusion,
    Coverage,
    CoverageCluster,
    Diagnosis,
    Distribution,
    Drift,
    EmbeddingMap,
    ImageQuality,
    LabelError,
    Outlier,
    Slices,
)
from backend.diagnosis.slice_report import slice_field, value_groups
from backend.loop.doubt import doubt_of  # the review view's wording, so both read the same
from backend.model.metrics import classification_metrics
from backend.settings import DiagnosisSettings
from strategies.coverage import Clustering, cluster_coverage, cluster_embeddings, outlier_scores

#: Fewest items on each side before the drift classifier is fit.
DRIFT_MIN_ITEMS = 10
#: Most items per side the drift classifier sees (a random subsample beyond that).
DRIFT_MAX_ITEMS = 2000
#: Principal components the drift classifier sees.
DRIFT_COMPONENTS = 32
#: Under-covered clusters listed, and example tasks shown per cluster.
COVERAGE_ROWS = 12
COVERAGE_EXAMPLES = 4
#: Outliers marked on the map and listed: at most this many, each at least OUTLIER_MIN_SCORE times
#: as far from its cluster centre as the cluster's median item.
OUTLIERS = 20
OUTLIER_MIN_SCORE = 1.5

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class DiagnosisInputs:
    """The arrays a diagnosis is computed from, one row per item (tasks with embeddings).

    Attributes:
        task_ids: (n,) task ids, ascending.
        embeddings: (n, d) feature vectors.
        labels: (n,) class index of each labeled item (its first positive label when multi-label),
            -1 for unlabeled.
        classes: the C label names.
        class_counts: (C,) labels given per class (a multi-label item counts for each label).
        clusters: (n,) cluster ids from the cycle, or None to cluster here.
        oos_probs: (n, C) out-of-sample probabilities (rows of labeled items used), or None
            before a model exists and for multi-label projects.
        error_scores: (n,) review-signal score (higher = label more suspicious), or None.
        error_alarm: score above which a labeled item is a label-error candidate.
        metrics: the model version's metrics (per-class scores of multi-label projects), or None.
        targets: (n, C) given 0/1 tags of a multi-label project (its label errors are about tags;
            no confusion matrix), None for single-label projects.
        reviewed: task ids an annotator already reviewed after they were flagged as label errors;
            never listed again.
        hashes: (n,) sha256 of each item's image bytes (None where unknown), for exact
            duplicates; None when not known at all.
        splits: (n,) each task's split (``diagnosis.split_field``), None when no task has one.
        slice_values: task data field -> (n,) each item's value (None where it has none).
        slices_configured: the fields are the admin's ``diagnosis.slice_fields`` (else offered).
        image_stats: (n, 7) image statistics (:data:`backend.loop.image_stats.STATS`; NaN rows
            where unmeasured), None when none were measured.
    """

    task_ids: IntArray
    embeddings: FloatArray
    labels: IntArray
    classes: tuple[str, ...]
    class_counts: IntArray
    clusters: IntArray | None = None
    oos_probs: FloatArray | None = None
    error_scores: FloatArray | None = None
    error_alarm: float = 0.0
    metrics: dict[str, Any] | None = None
    reviewed: frozenset[int] = frozenset()
    targets: IntArray | None = None
    hashes: tuple[str | None, ...] | None = None
    splits: tuple[str | None, ...] | None = None
    image_stats: FloatArray | None = None
    slice_values: Mapping[str, tuple[str | None, ...]] | None = None
    slices_configured: bool = False

    @property
    def labeled(self) -> NDArray[np.bool_]:
        return self.labels >= 0

    def label_names(self) -> list[str | None]:
        """(n,) the given label of each item (tags joined by ", "), None when unlabeled."""
        if self.targets is not None:
            return [
                ", ".join(self.classes[c] for c in np.flatnonzero(row)) if lab >= 0 else None
                for row, lab in zip(self.targets, self.labels, strict=True)
            ]
        return [self.classes[lab] if lab >= 0 else None for lab in self.labels.tolist()]


# ---------------------------------------------------------------- sections


def classification(
    labels: IntArray, oos_probs: FloatArray | None, classes: tuple[str, ...]
) -> Classification | None:
    """Confusion matrix (counts, row-normalized) and per-class scores of the labeled items."""
    labeled = labels >= 0
    if oos_probs is None or not labeled.any():
        return None
    metrics = classification_metrics(
        oos_probs[labeled], labels[labeled], classes=classes, multilabel=False
    )
    counts = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    normalized = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
    return Classification(
        accuracy=metrics["accuracy"],
        macro_f1=metrics["macro_f1"],
        per_class=per_class_scores(metrics["per_class"]),
        confusion=Confusion(counts=counts.tolist(), normalized=np.round(normalized, 4).tolist()),
    )


def per_class_scores(per_class: dict[str, dict[str, float]]) -> dict[str, ClassScores]:
    """The metrics' per-class dicts as :class:`ClassScores`."""
    return {name: ClassScores.model_validate(scores) for name, scores in per_class.items()}


def distribution(class_counts: IntArray, classes: tuple[str, ...]) -> Distribution:
    """Labels per class, imbalance ratio (largest / smallest non-empty class), empty classes."""
    counts = [int(c) for c in class_counts]
    present = [c for c in counts if c > 0]
    ratio = max(present) / min(present) if present else None
    missing = [name for name, c in zip(classes, counts, strict=True) if c == 0]
    return Distribution(
        counts=dict(zip(classes, counts, strict=True)), imbalance=ratio, empty=missing
    )


def _error_rows(inputs: DiagnosisInputs) -> tuple[IntArray, int]:
    """Rows above the alarm not yet reviewed, most suspicious first; and how many were reviewed."""
    scores = inputs.error_scores
    if scores is None or inputs.oos_probs is None:
        return np.zeros(0, dtype=np.int64), 0
    alarmed = inputs.labeled & (scores > inputs.error_alarm)
    reviewed = np.isin(inputs.task_ids, np.fromiter(inputs.reviewed, np.int64))
    rows = np.flatnonzero(alarmed & ~reviewed)
    return rows[np.argsort(-scores[rows], kind="stable")], int((alarmed & reviewed).sum())


def label_errors(inputs: DiagnosisInputs, *, limit: int) -> list[LabelError]:
    """Labeled items whose review score exceeds the alarm and that nobody reviewed yet, most
    suspicious first."""
    rows, _ = _error_rows(inputs)
    scores, probs = inputs.error_scores, inputs.oos_probs
    if scores is None or probs is None:
        return []
    doubt = doubt_of(inputs.classes, inputs.labels, probs, inputs.targets)
    out = []
    for row in rows[:limit]:
        d = doubt(int(row))
        if d is None:  # only when probabilities are missing, which they are not here
            continue
        out.append(
            LabelError(
                task=int(inputs.task_ids[row]),
                given=d.given,
                model=d.predicted,
                confidence=round(d.confidence, 4),
                score=round(float(scores[row]), 4),
                reason=d.reason,
            )
        )
    return out


def clustering_of(
    embeddings: FloatArray, clusters: IntArray | None, *, rng: np.random.Generator
) -> Clustering:
    """The cycle's clusters with their centres and distances (k-means here when there are none)."""
    if clusters is None or embeddings.shape[0] == 0:
        return cluster_embeddings(embeddings, rng=rng)
    k = int(clusters.max()) + 1
    sums = np.zeros((k, embeddings.shape[1]))
    np.add.at(sums, clusters, embeddings)
    centers = sums / np.maximum(np.bincount(clusters, minlength=k), 1)[:, None]
    distances = np.linalg.norm(embeddings - centers[clusters], axis=1)
    return Clustering(clusters.astype(np.int64), centers, distances.astype(np.float64))


def coverage(clustering: Clustering, labeled: NDArray[np.bool_], task_ids: IntArray) -> Coverage:
    """Clusters with fewer labels than their size deserves, with typical unlabeled examples."""
    table = cluster_coverage(clustering.labels, labeled)
    rows = []
    for row in (r for r in table if r.under_coverage > 1.0):
        members = np.flatnonzero((clustering.labels == row.cluster) & ~labeled)
        typical = members[np.argsort(clustering.distances[members], kind="stable")]
        rows.append(
            CoverageCluster(
                cluster=row.cluster,
                size=row.size,
                labeled=row.labeled,
                share=round(float(row.share), 4),
                under_coverage=round(float(row.under_coverage), 3),
                examples=[int(t) for t in task_ids[typical[:COVERAGE_EXAMPLES]]],
            )
        )
        if len(rows) == COVERAGE_ROWS:
            break
    return Coverage(n_clusters=len(table), under_covered=rows)


def top_outliers(
    scores: FloatArray, inputs: DiagnosisInputs, clusters: IntArray, *, limit: int
) -> list[Outlier]:
    """The ``limit`` items with the highest outlier score."""
    rows = np.argsort(-scores, kind="stable")[:limit]
    rows = rows[scores[rows] >= OUTLIER_MIN_SCORE]
    return [
        Outlier(
            task=int(inputs.task_ids[r]),
            score=round(float(scores[r]), 3),
            cluster=int(clusters[r]),
            label=inputs.classes[inputs.labels[r]] if inputs.labels[r] >= 0 else None,
        )
        for r in rows
    ]


def _subsample(
    n: int,
    keep: NDArray[np.bool_],
    max_points: int,
    rng: np.random.Generator,
    prefer: NDArray[np.bool_] | None = None,
) -> IntArray:
    """Sorted indices: every ``keep`` item (up to the cap), then ``prefer`` items (the kept map's,
    so the map stays the same from one cycle to the next), then random others to ``max_points``."""
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    forced = np.flatnonzero(keep)[:max_points]
    chosen = [forced]
    room = max_points - len(forced)
    if prefer is not None and room > 0:
        preferred = np.flatnonzero(prefer & ~keep)
        chosen.append(rng.permutation(preferred)[:room])
        room -= len(chosen[-1])
    if room > 0:
        taken = np.zeros(n, dtype=bool)
        taken[np.concatenate(chosen)] = True
        rest = np.flatnonzero(~taken)
        chosen.append(rng.choice(rest, size=min(len(rest), room), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def embedding_map(
    inputs: DiagnosisInputs,
    clusters: IntArray,
    marks: tuple[NDArray[np.bool_], NDArray[np.bool_]],
    *,
    max_points: int,
    method: Method,
    rng: np.random.Generator,
    kept: KeptMap | None = None,
) -> EmbeddingMap:
    """A 2-D projection (UMAP or PCA, :mod:`backend.diagnosis.projection`) of at most
    ``max_points`` items, columnar (one list per field). ``kept``: where the project's UMAP fit
    is kept between cycles (shown again while it still holds, replaced when fitted again)."""
    errors, outliers = marks
    fit = kept.load() if kept is not None and method == "umap" else None
    prefer = np.isin(inputs.task_ids, fit.task_ids) if fit is not None else None
    rows = _subsample(len(inputs.task_ids), errors | outliers, max_points, rng, prefer)
    seed = int(rng.integers(2**31 - 1))
    shown = project(
        inputs.embeddings[rows],
        method=method,
        first=(errors | outliers)[rows],
        seed=seed,
        task_ids=inputs.task_ids[rows],
        kept=fit,
    )
    if kept is not None and shown.fit is not None and not shown.reused:
        kept.save(shown.fit)
    xy = shown.xy
    return EmbeddingMap(
        n_total=len(inputs.task_ids),
        projection=shown.method,
        projection_note=shown.note,
        fitted_on=shown.fitted,
        explained_variance=shown.explained_variance,
        task=inputs.task_ids[rows].tolist(),
        x=np.round(xy[:, 0], 4).tolist(),
        y=np.round(xy[:, 1], 4).tolist(),
        label=inputs.labels[rows].tolist(),
        cluster=clusters[rows].tolist(),
        error=errors[rows].astype(int).tolist(),
        outlier=outliers[rows].astype(int).tolist(),
    )


def _sample(rows: IntArray, size: int, rng: np.random.Generator) -> IntArray:
    return rows if len(rows) <= size else np.sort(rng.choice(rows, size=size, replace=False))


def domain_drift(
    embeddings: FloatArray,
    labeled: NDArray[np.bool_],
    task_ids: IntArray,
    *,
    threshold: float,
    rng: np.random.Generator,
) -> Drift:
    """Cross-validated AUC of a classifier telling labeled from new items (module docstring)."""
    newest = int(task_ids[labeled].max()) if labeled.any() else None
    new = ~labeled & (task_ids > (newest if newest is not None else np.iinfo(np.int64).max))
    n_labeled, n_new = int(labeled.sum()), int(new.sum())
    unmeasured = Drift(
        auc=None,
        threshold=threshold,
        warning=False,
        n_labeled=n_labeled,
        n_new=n_new,
        newest_labeled_task=newest,
        reason=f"needs at least {DRIFT_MIN_ITEMS} labeled and {DRIFT_MIN_ITEMS} new items",
    )
    if min(n_labeled, n_new) < DRIFT_MIN_ITEMS:
        return unmeasured
    a = _sample(np.flatnonzero(labeled), DRIFT_MAX_ITEMS, rng)
    b = _sample(np.flatnonzero(new), DRIFT_MAX_ITEMS, rng)
    x = embeddings[np.concatenate((a, b))]
    y = np.concatenate((np.zeros(len(a)), np.ones(len(b))))
    # One PCA (unsupervised: it never sees which side an item is on) keeps the fits fast on wide
    # embeddings and regularizes them.
    components = min(DRIFT_COMPONENTS, x.shape[1], len(y) // 2)
    x = PCA(components, random_state=0).fit_transform(StandardScaler().fit_transform(x))
    classifier = make_pipeline(
        StandardScaler(), LogisticRegression(C=0.1, max_iter=500, class_weight="balanced")
    )
    folds = StratifiedKFold(5, shuffle=True, random_state=int(rng.integers(2**31 - 1)))
    with warnings.catch_warnings():
        # A not fully converged L2 fit still ranks well enough for an AUC estimate.
        warnings.simplefilter("ignore", ConvergenceWarning)
        auc = float(cross_val_score(classifier, x, y, cv=folds, scoring="roc_auc").mean())
    return unmeasured.model_copy(
        update={"auc": round(auc, 4), "warning": auc >= threshold, "reason": None}
    )


def performance(inputs: DiagnosisInputs) -> dict[str, Any]:
    """Per-class curves and confused pairs from the labeled items' out-of-sample probabilities."""
    probs, labeled = inputs.oos_probs, inputs.labeled
    if probs is None or not labeled.any():
        return {}
    if inputs.targets is not None:
        truth = np.asarray(inputs.targets)[labeled]
        return {"class_curves": class_curves(truth, probs[labeled], inputs.classes)}
    truth = np.eye(len(inputs.classes), dtype=np.int64)[inputs.labels[labeled]]
    return {
        "class_curves": class_curves(truth, probs[labeled], inputs.classes),
        "confused_pairs": confused_pairs(inputs.labels, probs, inputs.task_ids, inputs.classes),
    }


def quality_section(inputs: DiagnosisInputs, limits: DiagnosisSettings) -> ImageQuality | None:
    """Image-quality issues with the out-of-sample accuracy on the items that have them."""
    if inputs.image_stats is None:
        return None
    correct = None
    if inputs.oos_probs is not None and inputs.targets is None:
        correct = inputs.oos_probs.argmax(axis=1) == inputs.labels
    return image_quality(
        inputs.task_ids, inputs.image_stats, limits.image_quality, correct, inputs.labeled
    )


def slices_section(
    inputs: DiagnosisInputs, limits: DiagnosisSettings, *, rng: np.random.Generator
) -> Slices | None:
    """Per-slice accuracy and macro F1 of every slice field, and of each image-quality issue."""
    probs, labeled = inputs.oos_probs, inputs.labeled
    if probs is None or inputs.targets is not None or not labeled.any():
        return None
    y, pred = inputs.labels, probs.argmax(axis=1)
    fields = [
        slice_field(name, value_groups(values), labeled, y, pred, rng)
        for name, values in (inputs.slice_values or {}).items()
    ]
    if inputs.image_stats is not None:
        measured = labeled & ~np.isnan(inputs.image_stats).any(axis=1)
        masks = issue_masks(inputs.image_stats, limits.image_quality)
        groups = {
            name: masks[:, k] for k, name in enumerate(ISSUES) if (masks[:, k] & measured).any()
        }
        if groups:
            fields.append(slice_field("image quality", groups, measured, y, pred, rng))
    return Slices(configured=inputs.slices_configured, fields=fields)


# ---------------------------------------------------------------- the whole diagnosis


def compute_diagnosis(
    inputs: DiagnosisInputs,
    *,
    limits: DiagnosisSettings,
    rng: np.random.Generator,
    kept_map: KeptMap | None = None,
) -> Diagnosis:
    """Every section of the diagnosis (see the module docstring).

    Args:
        inputs: the cycle's arrays.
        limits: map size, table lengths and the drift warning threshold.
        rng: k-means (when clusters are missing), map subsample, PCA and drift folds.
        kept_map: where the project's map fit is kept between cycles (None: fitted every time).
    """
    x, labeled = inputs.embeddings, inputs.labeled
    clustering = clustering_of(x, inputs.clusters, rng=rng)
    outlier = outlier_scores(x, clustering=clustering)
    errors = label_errors(inputs, limit=limits.listed)
    outliers = top_outliers(outlier, inputs, clustering.labels, limit=min(OUTLIERS, limits.listed))
    error_mask = np.isin(inputs.task_ids, [e.task for e in errors])
    outlier_mask = np.isin(inputs.task_ids, [o.task for o in outliers])
    per_class = (inputs.metrics or {}).get("per_class")
    return Diagnosis(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        phase="model" if inputs.oos_probs is not None else "cold_start",
        classes=list(inputs.classes),
        n_items=len(inputs.task_ids),
        n_labeled=int(labeled.sum()),
        classification=None
        if inputs.targets is not None
        else classification(inputs.labels, inputs.oos_probs, inputs.classes),
        per_class=per_class_scores(per_class) if per_class else None,
        distribution=distribution(inputs.class_counts, inputs.classes),
        label_errors=errors,
        label_errors_reviewed=_error_rows(inputs)[1],
        coverage=coverage(clustering, labeled, inputs.task_ids),
        outliers=outliers,
        map=embedding_map(
            inputs,
            clustering.labels,
            (error_mask, outlier_mask),
            max_points=limits.map_points,
            method=limits.map_projection,
            rng=rng,
            kept=kept_map,
        ),
        drift=domain_drift(
            x, labeled, inputs.task_ids, threshold=limits.drift_auc_warning, rng=rng
        ),
        duplicates=find_duplicates(
            inputs.task_ids,
            x,
            inputs.label_names(),
            hashes=inputs.hashes,
            splits=inputs.splits,
            threshold=limits.near_duplicate_similarity,
            limit=limits.listed,
        ),
        image_quality=quality_section(inputs, limits),
        slices=slices_section(inputs, limits, rng=rng),
        **performance(inputs),
    )
