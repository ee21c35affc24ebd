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

from backend.app import create_app
from backend.dashboard_page import render_page
from backend.diagnostics import diagnosis_path, diagnosis_view
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
    return diag_app.test_client()


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
    assert [p["version"] for p in curve] == [project.trained.version]
    assert curve[0]["n_labels"] == 30 and curve[0]["accuracy"] == pytest.approx(
        project.trained.model.metrics["accuracy"]
    )


def test_no_diagnosis_yet_is_a_json_404(diag_client: FlaskClient) -> None:
    for url in ("/api/projects/999/diagnosis", "/dashboard/999"):
        response = diag_client.get(url)
        assert response.status_code == 404
        assert response.get_json()["error"] == "not_found"


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
    view["classes"] = [evil, "dog", "bird"]
    view["label_errors"][0]["reason"] = evil
    view["distribution"]["counts"] = {evil: 1}
    html = render_page(view, PROJECT)
    assert "<script" not in html and "&lt;script&gt;" in html


def test_reviewed_label_errors_are_named_on_the_page(project: DiagnosedProject) -> None:
    view = diagnosis_view(project.settings, project.store, PROJECT)
    assert view is not None
    assert view["label_errors_reviewed"] == 0
    assert "already reviewed" not in render_page(view, PROJECT)
    view["label_errors_reviewed"] = 2
    html = render_page(view, PROJECT)
    assert "2 more the model doubts were already reviewed" in html
    view["label_errors"] = []
    assert "2 more the model doubts were already reviewed" in render_page(view, PROJECT)


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
