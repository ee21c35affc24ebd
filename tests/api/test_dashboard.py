"""The diagnosis JSON, the dashboard page and thumbnails, on a small trained project (no LS)."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from backend.api.app import create_app
from backend.diagnosis.forecast import forecast
from backend.diagnosis.page import SECTIONS, Pages
from backend.diagnosis.record import diagnosis_path
from backend.diagnosis.schema import Diagnosis
from backend.diagnosis.view import diagnosis_view
from backend.store import repo
from tests.conftest import ADMIN
from tests.diagnosis_project import LS_PUBLIC, PLANTED, PROJECT, DiagnosedProject, build


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DiagnosedProject]:
    built = build(tmp_path_factory.mktemp("dashboard"))
    yield built
    built.store.dispose()


@pytest.fixture
def diag_app(project: DiagnosedProject) -> Flask:
    # No worker, no scheduler: nothing to stop, and the module's store outlives the app.
    return create_app(project.settings, store=project.store, upgrade=False)


@pytest.fixture
def diag_client(diag_app: Flask) -> FlaskClient:
    client = diag_app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = ADMIN["Authorization"]
    return client


def test_diagnosis_json_equals_the_models_metrics(
    project: DiagnosedProject, diag_client: FlaskClient
) -> None:
    body = diag_client.get(f"/api/projects/{PROJECT}/diagnosis").get_json()
    metrics = project.trained.model.metrics
    result = body["classification"]
    assert result["confusion"]["counts"] == metrics["confusion_matrix"]
    assert result["per_class"] == metrics["per_class"]
    assert result["accuracy"] == pytest.approx(metrics["accuracy"])
    for counts, shares in zip(
        result["confusion"]["counts"], result["confusion"]["normalized"], strict=True
    ):
        assert shares == pytest.approx([c / sum(counts) for c in counts], abs=1e-4)
    assert body["classes"] == ["cat", "dog", "bird"]
    assert body["n_items"] == 45 and body["n_labeled"] == 30
    assert body["distribution"]["counts"] == {"cat": 9, "dog": 10, "bird": 11}
    assert body["distribution"]["imbalance"] == pytest.approx(11 / 9)


def test_label_errors_are_the_planted_ones_with_ls_links(diag_client: FlaskClient) -> None:
    body = diag_client.get(f"/api/projects/{PROJECT}/diagnosis").get_json()
    errors = {e["task"]: e for e in body["label_errors"]}
    assert set(PLANTED) <= set(errors)
    for task, wrong in PLANTED.items():
        row = errors[task]
        assert row["given"] == wrong and row["model"] != wrong and 0.5 < row["confidence"] <= 1
        assert row["ls_url"] == f"{LS_PUBLIC}/projects/{PROJECT}/data?task={task}"
        assert row["thumbnail"] == f"/dashboard/{PROJECT}/thumb/{task}.png"
    marked = {t for t, e in zip(body["map"]["task"], body["map"]["error"], strict=True) if e}
    assert marked == set(errors)


def test_map_coverage_drift_and_learning_curve(
    project: DiagnosedProject, diag_client: FlaskClient
) -> None:
    body = diag_client.get(f"/api/projects/{PROJECT}/diagnosis").get_json()
    m = body["map"]
    assert sorted(m["task"]) == list(range(1, 46)) and len(m["x"]) == len(m["y"]) == 45
    assert [lab >= 0 for lab in m["label"]] == [t <= 30 for t in m["task"]]
    for row in body["coverage"]["under_covered"]:
        assert row["under_coverage"] > 1 and row["labeled"] < row["size"]
        assert all(t > 30 for t in row["examples"])  # examples are unlabeled items
    drift = body["drift"]
    assert drift["n_labeled"] == 30 and drift["n_new"] == 15 and drift["newest_labeled_task"] == 30
    assert 0.0 <= drift["auc"] <= 1.0 and drift["threshold"] == 0.75
    assert drift["warning"] == (drift["auc"] >= 0.75)
    curve = body["learning_curve"]
    assert curve[0]["train_accuracy"] == project.trained.model.metrics["train_accuracy"]
    assert 0.9 <= curve[0]["train_accuracy"] <= 1.0  # the planted errors are few
    gap = body["fit_gap"]
    assert gap["gap"] == pytest.approx(curve[0]["train_accuracy"] - curve[0]["accuracy"], abs=1e-4)
    assert [p["version"] for p in curve] == [project.trained.version]
    assert curve[0]["n_labels"] == 30 and curve[0]["accuracy"] == pytest.approx(
        project.trained.model.metrics["accuracy"]
    )


def test_class_curves_and_confused_pairs_follow_the_planted_errors(
    diag_client: FlaskClient,
) -> None:
    body = diag_client.get(f"/api/projects/{PROJECT}/diagnosis").get_json()
    curves = {c["name"]: c for c in body["class_curves"]}
    assert set(curves) == {"cat", "dog", "bird"}
    for c in curves.values():
        assert 0.5 < c["roc_auc"] <= 1.0 and 0.0 < c["average_precision"] <= 1.0
    pairs = {(p["a"], p["b"]): p for p in body["confused_pairs"]}
    # Task 2 (a cat labeled dog) and 13 (a dog labeled bird): the model says cat and dog.
    assert pairs[("cat", "dog")]["b_as_a"] >= 1 and 2 in pairs[("cat", "dog")]["examples_b_as_a"]
    assert pairs[("dog", "bird")]["b_as_a"] >= 1
    html = diag_client.get(f"/dashboard/{PROJECT}").get_data(as_text=True)
    assert html.count('<tr data-class="') == 3 and 'data-a="cat" data-b="dog"' in html


def test_duplicates_of_the_planted_errors_are_conflicting_groups(
    diag_client: FlaskClient,
) -> None:
    body = diag_client.get(f"/api/projects/{PROJECT}/diagnosis").get_json()
    dup = body["duplicates"]
    # Each colour class is one noisy image drawn many times: near-duplicates of each other.
    conflicting = {t for g in dup["conflicting"] for t in g["tasks"]}
    assert set(PLANTED) <= conflicting and dup["n_conflicting"] == len(dup["conflicting"]) >= 2
    for group in dup["groups"]:
        assert group["kind"] == "near" and group["similarity"] >= dup["threshold"]
    html = diag_client.get(f"/dashboard/{PROJECT}").get_data(as_text=True)
    assert html.count('data-conflicting="1"') == dup["n_conflicting"]


def test_image_quality_is_measured_for_every_image(diag_client: FlaskClient) -> None:
    body = diag_client.get(f"/api/projects/{PROJECT}/diagnosis").get_json()
    quality = body["image_quality"]
    assert quality["n_measured"] == 45
    issues = {i["issue"]: i for i in quality["issues"]}
    assert set(issues) == {
        "dark",
        "bright",
        "blurry",
        "low_information",
        "grayscale",
        "odd_size",
        "odd_aspect",
    }
    # Same-size colour images: no size, aspect or grayscale issue.
    for name in ("odd_size", "odd_aspect", "grayscale"):
        assert issues[name]["count"] == 0
    assert quality["n_flagged"] == len(quality["flagged"])
    html = diag_client.get(f"/dashboard/{PROJECT}").get_data(as_text=True)
    assert html.count('<tr data-issue="') == 7


def test_slices_are_offered_from_task_data_and_add_up(diag_client: FlaskClient) -> None:
    body = diag_client.get(f"/api/projects/{PROJECT}/diagnosis").get_json()
    slices = body["slices"]
    assert not slices["configured"]
    source = next(f for f in slices["fields"] if f["field"] == "source")
    rows = {r["value"]: r for r in source["slices"]}
    assert set(rows) == {"cam-a", "cam-b"} and rows["cam-a"]["support"] == 15
    accuracy = body["classification"]["accuracy"]
    mean = (rows["cam-a"]["accuracy"] + rows["cam-b"]["accuracy"]) / 2  # equal supports
    assert mean == pytest.approx(accuracy, abs=1e-3)
    html = diag_client.get(f"/dashboard/{PROJECT}").get_data(as_text=True)
    assert 'data-field="source"' in html and html.count('<tr data-slice="cam-') == 2


def test_forecast_renders_targets(project: DiagnosedProject) -> None:
    view = diagnosis_view(project.settings, project.store, PROJECT)
    assert view is not None and view.forecast is None  # one model version: no fit
    points = [
        view.learning_curve[0].model_copy(update={"n_labels": n, "accuracy": 0.95 - 1.6 / n**0.5})
        for n in (20, 40, 60, 80, 100)
    ]
    fitted = forecast(points)
    assert fitted is not None
    html = Pages().dashboard(view.model_copy(update={"forecast": fitted}), PROJECT)
    assert html.count("<li data-accuracy=") == len(fitted.targets) >= 2
    assert "more labels to reach" in html
    assert re.search(r'<p id="forecast-basis">On cross-validated accuracy', html)
    levelled = fitted.model_copy(update={"basis": "audit", "audit_offset": 0.042, "audit_n": 57})
    html = Pages().dashboard(view.model_copy(update={"forecast": levelled}), PROJECT)
    assert "scored +4.2 points against its cross-validated accuracy on 57 uniformly" in html


def test_explanation_page_and_image_are_cached_per_task_and_version(
    project: DiagnosedProject, diag_client: FlaskClient
) -> None:
    page = diag_client.get(f"/dashboard/{PROJECT}/explain/2")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    # Task 2 is a red (cat) image labeled dog: the model says cat, its neighbours are cats.
    assert '<b id="predicted">cat</b>' in html and '<b id="given">dog</b>' in html
    neighbours = re.findall(r'<figure data-task="(\d+)">.*?<figcaption>(\w+) ', html)
    assert len(neighbours) == 6 and sum(label == "cat" for _, label in neighbours) >= 5
    assert "2" not in {t for t, _ in neighbours}
    image = diag_client.get(f"/dashboard/{PROJECT}/explain/2.png")
    assert image.status_code == 200 and image.mimetype == "image/png"
    with Image.open(io.BytesIO(image.get_data())) as shown:
        assert shown.size == (3 * 224 + 16, 224)
    image.close()
    cached = list((project.settings.store.data_dir / "explain" / f"p{PROJECT}").glob("2-*"))
    assert {p.suffix for p in cached} == {".png", ".json"}
    assert project.trained.version.replace(":", "_") in cached[0].name
    before = {p: p.stat().st_mtime_ns for p in cached}
    assert diag_client.get(f"/dashboard/{PROJECT}/explain/2").status_code == 200
    assert {p: p.stat().st_mtime_ns for p in cached} == before  # served from the cache
    dashboard = diag_client.get(f"/dashboard/{PROJECT}").get_data(as_text=True)
    assert f'href="/dashboard/{PROJECT}/explain/2"' in dashboard
    missing = diag_client.get(f"/dashboard/{PROJECT}/explain/9999")
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"


def test_no_diagnosis_yet_is_a_json_404(diag_client: FlaskClient) -> None:
    response = diag_client.get("/api/projects/999/diagnosis")
    assert response.status_code == 404
    assert response.get_json()["error"] == "not_found"


def test_dashboard_before_the_first_cycle_says_what_comes_and_when(
    project: DiagnosedProject, diag_client: FlaskClient
) -> None:
    with project.store.session() as session:
        repo.ensure_project(session, 8)  # connected, no cycle yet
    response = diag_client.get("/dashboard/8")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "No diagnosis yet" in html and "unknown-project" not in html
    retrain_after = project.settings.loop.retrain_after
    assert f"after {retrain_after} new or changed annotations" in html
    assert "Start training" in html and "labelloop cycle --project 8" in html
    for section in SECTIONS:
        assert f"<li>{section.title}</li>" in html
    assert "<script" not in html
    assert diag_client.get("/api/projects/8/diagnosis").status_code == 404
    unknown = diag_client.get("/dashboard/999").get_data(as_text=True)
    assert "has not seen project 999" in unknown and "labelloop connect --project 999" in unknown


def test_page_shows_every_section_with_cells_and_links(diag_client: FlaskClient) -> None:
    response = diag_client.get(f"/dashboard/{PROJECT}")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    body = diag_client.get(f"/api/projects/{PROJECT}/diagnosis").get_json()
    cells = re.findall(r'data-true="(\d+)" data-pred="(\d+)" data-count="(\d+)"', html)
    assert {(int(i), int(j)): int(c) for i, j, c in cells} == {
        (i, j): c
        for i, row in enumerate(body["classification"]["confusion"]["counts"])
        for j, c in enumerate(row)
    }
    for task in PLANTED:
        assert f'href="{LS_PUBLIC}/projects/{PROJECT}/data?task={task}"' in html
    for section in ("Drift", "Embedding map", "Under-covered", "Outliers", "Learning curve"):
        assert section in html
    assert "<script" not in html


def test_user_text_is_escaped(project: DiagnosedProject) -> None:
    view = diagnosis_view(project.settings, project.store, PROJECT)
    assert view is not None
    evil = '<script>alert("x")</script>'
    first = view.label_errors[0].model_copy(update={"reason": evil})
    view = view.model_copy(
        update={
            "classes": [evil, "dog", "bird"],
            "label_errors": [first, *view.label_errors[1:]],
            "distribution": view.distribution.model_copy(update={"counts": {evil: 1}}),
        }
    )
    html = Pages().dashboard(view, PROJECT)
    assert "<script" not in html and "&lt;script&gt;" in html


def test_reviewed_label_errors_are_named_on_the_page(project: DiagnosedProject) -> None:
    view = diagnosis_view(project.settings, project.store, PROJECT)
    assert view is not None
    assert view.label_errors_reviewed == 0
    assert "already reviewed" not in Pages().dashboard(view, PROJECT)
    view = view.model_copy(update={"label_errors_reviewed": 2})
    html = Pages().dashboard(view, PROJECT)
    assert "2 more the model doubts were already reviewed" in html
    view = view.model_copy(update={"label_errors": []})
    assert "2 more the model doubts were already reviewed" in Pages().dashboard(view, PROJECT)


def test_thumbnail_is_a_small_cached_png(
    project: DiagnosedProject, diag_client: FlaskClient
) -> None:
    response = diag_client.get(f"/dashboard/{PROJECT}/thumb/2.png")
    assert response.status_code == 200 and response.mimetype == "image/png"
    with Image.open(io.BytesIO(response.get_data())) as image:
        assert image.format == "PNG" and max(image.size) <= 96
    cached = list((project.settings.store.data_dir / "thumbs" / f"p{PROJECT}").glob("2-*.png"))
    assert len(cached) == 1
    response.close()


def test_thumbnail_of_unknown_task_or_other_project_is_404(diag_client: FlaskClient) -> None:
    for url in (f"/dashboard/{PROJECT}/thumb/9999.png", "/dashboard/1/thumb/2.png"):
        response = diag_client.get(url)
        assert response.status_code == 404 and response.get_json()["error"] == "not_found"


def test_diagnosis_file_is_written_atomically(project: DiagnosedProject) -> None:
    path: Path = diagnosis_path(project.settings, PROJECT)
    assert path.exists()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_saved_file_is_the_typed_diagnosis_and_the_api_its_view(
    project: DiagnosedProject, diag_client: FlaskClient
) -> None:
    saved = Diagnosis.model_validate_json(diagnosis_path(project.settings, PROJECT).read_text())
    assert saved.project == PROJECT and saved.model_version == project.trained.version
    assert all(e.ls_url is None for e in saved.label_errors)  # links are the view's
    body = diag_client.get(f"/api/projects/{PROJECT}/diagnosis").get_json()
    assert Diagnosis.model_validate(body).label_errors[0].task == saved.label_errors[0].task
    assert set(body) == set(Diagnosis.model_fields)


def test_a_saved_file_of_another_format_reads_as_none_until_the_next_cycle(
    project: DiagnosedProject, tmp_path: Path
) -> None:
    settings = project.settings.model_copy(
        update={"store": project.settings.store.model_copy(update={"data_dir": tmp_path})}
    )
    path = diagnosis_path(settings, PROJECT)
    path.parent.mkdir(parents=True)
    path.write_text('{"format": 1, "classes": []}')
    assert diagnosis_view(settings, project.store, PROJECT) is None


def test_every_section_says_how_to_read_it(diag_client: FlaskClient) -> None:
    html = diag_client.get(f"/dashboard/{PROJECT}").get_data(as_text=True)
    for section in SECTIONS:
        found = re.search(rf'<section id="{section.id}">\s*<h2>[^<]+</h2>\s*<p class="how">', html)
        assert found, section.id


def test_selection_section_shows_audit_accuracy_and_trusted_arms(
    project: DiagnosedProject, diag_client: FlaskClient
) -> None:
    from backend.store.models import Cycle

    audit = {"n": 30, "correct": 24, "accuracy": 0.8, "low": 0.66, "high": 0.89, "confidence": 0.9}
    arms = [
        {"arm": "random", "share": 0.1, "trusted": False, "p_better": 0.5, "wins": 0.0,
         "comparisons": 0.0, "reason": "the reference"},
        {"arm": "margin", "share": 0.9, "trusted": True, "p_better": 0.93, "wins": 6.0,
         "comparisons": 7.0, "reason": "won 6.0 of 7.0 recent comparisons with random; trusted"},
    ]  # fmt: skip
    metrics = {
        "accuracy": 0.61,
        "audit_accuracy": audit,
        "audit_accuracy_crossfit": None,
        "selection": {"mode": "adaptive", "arms": arms},
    }
    with project.store.session() as session:
        row = Cycle(project_id=PROJECT, trigger="manual", state="succeeded", metrics=metrics)
        session.add(row)
        session.flush()
        cycle_id = row.id
    try:
        html = diag_client.get(f"/dashboard/{PROJECT}").get_data(as_text=True)
        body = diag_client.get(f"/api/projects/{PROJECT}/diagnosis").get_json()
    finally:
        with project.store.session() as session:
            session.delete(session.get(Cycle, cycle_id))
    assert body["selection"]["audit"]["accuracy"] == 0.8
    assert body["selection"]["crossval_accuracy"] == 0.61
    assert "Audit accuracy (prequential, 30 audit labels): <b>80.0 %</b>" in html
    assert "Cross-validated accuracy on the chosen labels: 61.0 %" in html
    assert re.search(r"<td>margin</td><td>90 %</td><td>yes</td>", html)
