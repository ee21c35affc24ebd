"""The diagnosis as typed objects: what a cycle saves, the JSON API returns and the page shows.

A cycle builds a :class:`Diagnosis` (:func:`backend.diagnosis.compute.compute_diagnosis`) and saves
it as JSON; the API reads it back (validated against these models) and fills in what changes
between cycles: Label Studio links, thumbnail URLs and the learning curve. ``model_dump(mode=
"json")`` of a :class:`Diagnosis` is exactly the diagnosis JSON. A saved file whose ``format``
differs from :data:`FORMAT` is not read (the next cycle writes a new one).

Fields filled only when the diagnosis is viewed (``ls_url``, ``thumbnail``, ``example_links``,
``learning_curve``, ``label_studio_url``) are null/empty in the saved file.

Adding a section: a model here, a field on :class:`Diagnosis` (optional, default None, so older
code reading newer files and the reverse stay simple), a function in ``compute`` that fills it, and
a template in ``templates/sections/`` listed in ``page.SECTIONS``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

#: Version of the saved diagnosis; a file of another version is ignored until the next cycle.
FORMAT = 2


class _Model(BaseModel):
    # Unknown keys are an error: a typo in a builder fails its tests instead of vanishing.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClassScores(_Model):
    precision: float
    recall: float
    f1: float
    support: int


class Confusion(_Model):
    """Rows = given label, columns = predicted; ``normalized`` divides each row by its sum."""

    counts: list[list[int]]
    normalized: list[list[float]]


class Classification(_Model):
    """Scores of the labeled items from out-of-sample (cross-fitted) probabilities."""

    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassScores]
    confusion: Confusion


class Distribution(_Model):
    counts: dict[str, int]
    #: Largest over smallest non-empty class; None when no class has a label.
    imbalance: float | None
    empty: list[str]


class TaskRow(_Model):
    """A listed task; ``ls_url`` (opens it in Label Studio) and ``thumbnail`` are filled when the
    diagnosis is viewed."""

    task: int
    ls_url: str | None = None
    thumbnail: str | None = None


class LabelError(TaskRow):
    given: str
    model: str
    confidence: float
    score: float
    reason: str


class CoverageCluster(_Model):
    cluster: int
    size: int
    labeled: int
    share: float
    under_coverage: float
    #: Typical unlabeled members (task ids), closest to the cluster centre first.
    examples: list[int]
    example_links: list[str] = []


class Coverage(_Model):
    n_clusters: int
    under_covered: list[CoverageCluster]


class Outlier(TaskRow):
    score: float
    cluster: int
    label: str | None


class EmbeddingMap(_Model):
    """A 2-D projection, columnar: one list per field, one entry per drawn item.

    ``projection``: UMAP or PCA, ``projection_note`` why and on how many items it was fitted
    (``fitted_on``); ``explained_variance``: PCA's two axes' shares of the variance, or for UMAP
    the share kept by the principal components it ran on."""

    n_total: int
    projection: Literal["umap", "pca"] = "pca"
    projection_note: str = ""
    fitted_on: int = 0
    explained_variance: list[float]
    task: list[int]
    x: list[float]
    y: list[float]
    label: list[int]
    cluster: list[int]
    error: list[int]
    outlier: list[int]


class Drift(_Model):
    auc: float | None
    threshold: float
    warning: bool
    n_labeled: int
    n_new: int
    newest_labeled_task: int | None
    reason: str | None


class CurvePoint(_Model):
    """One model version: labels it was trained on against its out-of-sample scores, and its
    accuracy on its own training items (null for versions trained before it was recorded)."""

    version: str
    created_at: str
    n_labels: int
    accuracy: float | None
    macro_f1: float | None
    train_accuracy: float | None = None
    #: The version's accuracy on the labeled audit items (uniform draws from the pool, predicted
    #: out of sample) and how many there were; null before the audit sample had labels.
    audit_accuracy: float | None = None
    audit_n: int | None = None


class FitGap(_Model):
    """Training minus out-of-sample accuracy, now and at the first version; ``overfitting`` when
    the gap is large and has grown."""

    gap: float
    first_gap: float
    overfitting: bool


class ClassCurve(_Model):
    """One class against the rest: precision-recall and ROC curves as [x, y] points (recall,
    precision; false-positive rate, true-positive rate), with average precision and ROC AUC."""

    name: str
    index: int
    support: int
    average_precision: float
    roc_auc: float
    pr: list[list[float]]
    roc: list[list[float]]


class ConfusedPair(_Model):
    """Two classes the model mixes up: labeled items of ``a`` it calls ``b`` and the reverse,
    their share of the two classes' items, and the most confident mistakes of each direction."""

    a: str
    b: str
    a_as_b: int
    b_as_a: int
    share: float
    examples_a_as_b: list[int]
    examples_b_as_a: list[int]


class DuplicateGroup(_Model):
    """Items that are the same image (``exact``: same bytes) or nearly (``near``: embeddings at or
    above the similarity bar); ``similarity`` is the lowest near-duplicate link in the group."""

    id: int
    kind: Literal["exact", "near"]
    tasks: list[int]
    #: The given label of each task (None = unlabeled).
    labels: list[str | None]
    #: Each task's split when tasks carry one, else null.
    splits: list[str | None] | None
    conflicting: bool
    leak: bool
    similarity: float


class Duplicates(_Model):
    threshold: float
    n_groups: int
    n_exact: int
    #: Items in some group.
    n_items: int
    n_conflicting: int
    n_leaks: int
    has_splits: bool
    #: The groups listed: conflicting labels first, then leaks across splits, then the largest.
    groups: list[DuplicateGroup]
    #: Every group whose labels disagree (the Label Studio view holds their tasks).
    conflicting: list[DuplicateGroup]


class QualityIssue(_Model):
    """One image-quality issue: how many items have it, how many of those are labeled, the
    out-of-sample accuracy on them and on measured labeled items without it, and examples."""

    issue: str
    count: int
    labeled: int
    accuracy: float | None
    accuracy_rest: float | None
    examples: list[int]
    example_reasons: list[str]


class ImageQuality(_Model):
    #: Items whose image statistics are known (measured when their image was fetched).
    n_measured: int
    n_flagged: int
    issues: list[QualityIssue]
    #: Every item with an issue, most issues first, and its issues in words (the Label Studio
    #: view "labelloop: image quality" holds them).
    flagged: list[int]
    flagged_reasons: list[str]


class SliceRow(_Model):
    """One slice: labeled support, out-of-sample accuracy (exact 95 % interval), macro F1
    (95 % bootstrap interval), gap to the rest, and ``worse`` when significantly below it."""

    value: str
    support: int
    accuracy: float | None
    accuracy_low: float
    accuracy_high: float
    macro_f1: float | None
    f1_low: float | None
    f1_high: float | None
    gap: float | None
    p_value: float
    worse: bool


class SliceField(_Model):
    """The slices of one task data field (or "image quality": one slice per issue)."""

    field: str
    slices: list[SliceRow]


class Slices(_Model):
    #: The fields used: the admin's ``diagnosis.slice_fields``, else the offered ones.
    configured: bool
    fields: list[SliceField]


class ForecastTarget(_Model):
    """Labels still needed to reach ``accuracy``: the fitted curve's answer and an 80 % interval
    over bootstrap refits (``high`` null when over 10 % of refits never get there)."""

    accuracy: float
    more_labels: int | None
    low: int | None
    high: int | None
    #: Share of bootstrap refits that reach the target at all.
    reachable_share: float


class Forecast(_Model):
    """The learning curve ``acc(n) = plateau - b * n^-c`` fitted to the model versions so far."""

    n_points: int
    plateau: float
    plateau_low: float
    plateau_high: float
    b: float
    c: float
    labels_now: int
    fitted_now: float
    #: Expected accuracy gain of the next ``step`` labels; ``diminishing`` when it is small.
    gain_next: float
    step: int
    diminishing: bool
    targets: list[ForecastTarget]
    #: What the curve's level rests on: "cross-validated" (the labels the strategies chose, the
    #: hard items: it runs low) or "audit" (levelled by ``audit_offset``, the newest version's
    #: accuracy on ``audit_n`` audit items minus its cross-validated accuracy).
    basis: str = "cross-validated"
    audit_offset: float | None = None
    audit_n: int | None = None


class ReviewTally(_Model):
    """What reviewers did with the flags of one kind: changed the label (confirmed), saved it
    unchanged (rejected), not yet (pending), or the flag left the view unreviewed (withdrawn)."""

    confirmed: int
    rejected: int
    pending: int
    withdrawn: int
    precision: float | None


class ReviewAnnotator(_Model):
    """One annotator in a project with several annotations per task."""

    annotator: int
    annotations: int
    agreement: float | None  # share of their labels equal to the consensus
    reliability: float  # estimated accuracy, jointly with the consensus


class Review(_Model):
    """How the review queue decided, and how often reviewers agreed.

    ``gate``: sentences saying which classes cannot be judged yet and what was held back (never a
    silent cap); ``expected_false_share``: expected share of false flags among this cycle's label-
    error flags, against the setting ``max_false_share``; ``outcomes``: per kind of view.
    """

    signal: str
    flagged: int
    expected_false_share: float | None
    max_false_share: float
    gate: list[str]
    outcomes: dict[str, ReviewTally]
    annotators: list[ReviewAnnotator] = []


class Neighbour(_Model):
    """A labeled item near the explained one in embedding space, with its given label."""

    task: int
    label: str
    similarity: float


class TaskExplanation(_Model):
    """What the explanation page shows beside its image."""

    task: int
    model_version: str
    predicted: str
    confidence: float
    given: str | None
    neighbours: list[Neighbour]


class AuditEstimate(_Model):
    """Accuracy from audit items (uniform draws): ``correct`` of ``n``, exact (Clopper-Pearson)
    interval."""

    n: int
    correct: int
    accuracy: float
    low: float
    high: float
    confidence: float


class ArmBelief(_Model):
    """One arm of the adaptive selection: its share, whether it is trusted, and why."""

    arm: str
    share: float
    trusted: bool = False
    p_better: float = 0.5
    wins: float = 0.0
    comparisons: float = 0.0
    reason: str = ""


class Selection(_Model):
    """The last cycle's selection and the audit estimates beside the cross-validated accuracy."""

    mode: str
    arms: list[ArmBelief] = []
    audit: AuditEstimate | None = None
    audit_crossfit: AuditEstimate | None = None
    crossval_accuracy: float | None = None


class Diagnosis(_Model):
    format: int = FORMAT
    created_at: str
    phase: Literal["model", "cold_start"]
    project: int | None = None
    model_version: str | None = None
    classes: list[str]
    n_items: int
    n_labeled: int
    #: Null before a model exists and in multi-label projects (see ``per_class``).
    classification: Classification | None
    #: The model version's per-class (per-tag) scores, null before a model exists.
    per_class: dict[str, ClassScores] | None
    distribution: Distribution
    label_errors: list[LabelError]
    label_errors_reviewed: int
    coverage: Coverage
    outliers: list[Outlier]
    map: EmbeddingMap
    drift: Drift
    #: Per-class PR/ROC curves (empty before a model exists).
    class_curves: list[ClassCurve] = []
    #: Most confused class pairs, most mistakes first (single-label projects).
    confused_pairs: list[ConfusedPair] = []
    duplicates: Duplicates | None = None
    image_quality: ImageQuality | None = None
    slices: Slices | None = None
    review: Review | None = None
    # Filled when viewed.
    learning_curve: list[CurvePoint] = []
    fit_gap: FitGap | None = None
    forecast: Forecast | None = None
    selection: Selection | None = None
    label_studio_url: str | None = None
