"""A small trained project with a diagnosis, built without Label Studio (tests of the dashboard).

Three colour classes with data: URL images; tasks 1-30 are labeled (two planted label errors),
tasks 31-45 are unlabeled and newer than every labeled one (the "new" data of the drift check).
The real cycle stages run: featurize (with the image statistics), train, score, record (activate
+ diagnosis); only the push to Label Studio is left out.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from backend.diagnosis.record import write_diagnosis
from backend.labelstudio.images import ImageResolver
from backend.loop import ingest
from backend.loop.contract import Trained
from backend.loop.embed import embed_tasks
from backend.loop.fit import activate_version, train_stage
from backend.loop.image_stats import ImageStatsRecorder, stats_path
from backend.loop.score import build_pool, score_stage
from backend.loop.sync import load_snapshot
from backend.settings import Settings
from backend.store import repo
from backend.store.db import Store
from tests.conftest import SINGLE_CONFIG, SMALL_MODEL, make_settings

PROJECT = 7
LS_PUBLIC = "http://ls.example.test:8080"
COLORS = {"cat": (220, 30, 30), "dog": (30, 30, 220), "bird": (30, 200, 30)}
#: task id -> the wrong label it is given
PLANTED = {2: "dog", 13: "bird"}


@dataclass(frozen=True)
class DiagnosedProject:
    settings: Settings
    store: Store
    trained: Trained
    truth: dict[int, str]


def data_url(color: tuple[int, int, int], seed: int) -> str:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.normal(0, 12, (24, 24, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _annotation(ann_id: int, label: str) -> dict[str, object]:
    value = {"choices": [label]}
    result = [{"from_name": "label", "to_name": "image", "type": "choices", "value": value}]
    return {"id": ann_id, "completed_by": 1, "result": result, "created_at": "2026-01-01T10:00:00Z"}


def seed(store: Store) -> dict[int, str]:
    truth = {}
    names = list(COLORS)
    with store.session() as session:
        project = repo.ensure_project(session, PROJECT)
        ingest.set_label_config(session, project, SINGLE_CONFIG)
        for task_id in range(1, 46):
            label = names[(task_id - 1) // 10 % 3] if task_id <= 30 else names[task_id % 3]
            truth[task_id] = label
            image = data_url(COLORS[label], task_id)
            data = {"image": image, "source": "cam-a" if task_id % 2 else "cam-b"}
            ingest.upsert_task(session, project, {"id": task_id, "data": data})
            if task_id <= 30:
                given = PLANTED.get(task_id, label)
                ingest.upsert_annotation(
                    session, project, task_id, _annotation(100 + task_id, given)
                )
    return truth


def project_settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        label_studio={"public_url": LS_PUBLIC},
        model=SMALL_MODEL,
    )


def build(tmp_path: Path) -> DiagnosedProject:
    """Seed, run the cycle's stages without Label Studio, and write the diagnosis."""
    settings = project_settings(tmp_path)
    store = Store(settings.store.url)
    store.upgrade()
    truth = seed(store)
    snap = load_snapshot(store, PROJECT)
    stats = ImageStatsRecorder(stats_path(settings, PROJECT))
    with ImageResolver(settings.label_studio, settings.images) as resolver:
        fetch = stats.observing(resolver.fetch)
        result, backbone = embed_tasks(settings, store, snap.tasks, fetch)
    stats.save()
    trained = train_stage(settings, store, PROJECT, snap, result.embeddings, backbone)
    if trained is None:
        raise RuntimeError("the test project did not train")
    scored = score_stage(settings, build_pool(snap, result.embeddings, trained))
    activate_version(settings, store, PROJECT, trained.version)
    counts, _ = write_diagnosis(
        settings, PROJECT, snap, result.embeddings, scored, trained, store=store
    )
    if counts.get("diagnosis") != 1:
        raise RuntimeError(f"diagnosis not written: {counts}")
    return DiagnosedProject(settings, store, trained, truth)
