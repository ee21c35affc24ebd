"""A stand-in for the few Label Studio calls one cycle makes, recording every push."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import numpy as np
from PIL import Image

from backend.diagnosis.record import record_diagnosis
from backend.labelstudio.client import LabelStudio
from backend.loop.contract import CycleContext, CycleResult
from backend.loop.cycle import run_cycle
from backend.runtime.lease import run_cycle_once
from backend.settings import ImageSettings, Settings
from backend.store.db import Store
from tests.conftest import SINGLE_CONFIG

CLASSES = ("cat", "dog", "bird")
FAST_MODEL = {
    "backbone": "small_cnn",
    "image_size": 32,
    "committee_size": 2,
    "cv_folds": 2,
    "max_epochs": 5,
    "calibrate": "false",
}


def png(seed: int, cls: int) -> bytes:
    """A 32x32 image: one bright channel per class plus noise, so the classes are learnable."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 80, size=(32, 32, 3), dtype=np.uint8)
    pixels[..., cls] += 150
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


@dataclass
class _Resolver:
    images: dict[str, bytes]

    def fetch(self, ref: str) -> bytes:
        return self.images[ref]

    def __enter__(self) -> _Resolver:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


MULTI_TAGS_CONFIG = SINGLE_CONFIG.replace('choice="single"', 'choice="multiple"')


def _annotation(ann_id: int, *labels: str) -> dict[str, Any]:
    result = {"from_name": "label", "to_name": "image", "type": "choices"}
    return {
        "id": ann_id,
        "completed_by": 1,
        "result": [{**result, "value": {"choices": list(labels)}}],
        "created_at": "2026-01-01T10:00:00Z",
        "updated_at": "2026-01-01T10:00:00Z",
    }


@dataclass
class FakeLabelStudio:
    """``n_tasks`` tasks of classes 0, 1, 2 in turn; the first ``n_labeled`` are annotated.

    ``multi``: a multi-label project (each task tagged with its class); ``wrong``: task index ->
    the tags given instead.
    """

    n_tasks: int = 30
    n_labeled: int = 12
    multi: bool = False
    wrong: dict[int, tuple[str, ...]] = field(default_factory=dict)
    task_data: dict[int, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    version: str | None = None

    def last_push(self) -> list[dict[str, Any]]:
        """The predictions of the version Label Studio was last told to serve."""
        return [p for p in self.predictions if p["model_version"] == self.version]

    def _tasks(self) -> list[dict[str, Any]]:
        return [
            {
                "id": 100 + i,
                "data": {"image": f"img://{i}"},
                "created_at": "2026-01-01T09:00:00Z",
                "updated_at": "2026-01-01T09:00:00Z",
                "annotations": [_annotation(1000 + i, *self.wrong.get(i, (CLASSES[i % 3],)))]
                if i < self.n_labeled
                else [],
            }
            for i in range(self.n_tasks)
        ]

    def get_project(self, project: int) -> dict[str, Any]:
        config = MULTI_TAGS_CONFIG if self.multi else SINGLE_CONFIG
        return {
            "id": project,
            "title": "fake",
            "label_config": config,
            "model_version": self.version or "",
        }

    def iter_tasks(
        self, project: int, *, updated_since: datetime | None = None
    ) -> Iterator[dict[str, Any]]:
        yield from self._tasks()

    def iter_task_stamps(
        self, project: int, *, updated_since: datetime | None = None
    ) -> Iterator[tuple[int, str | None]]:
        for task in self._tasks():
            yield int(task["id"]), task.get("updated_at")

    def image_resolver(self, images: ImageSettings) -> _Resolver:
        return _Resolver({f"img://{i}": png(i, i % 3) for i in range(self.n_tasks)})

    def import_predictions(self, project: int, predictions: list[dict[str, Any]]) -> int:
        self.calls.append(("import_predictions", project))
        self.predictions.extend(predictions)
        return len(predictions)

    def create_prediction(self, prediction: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create_prediction", prediction["task"]))
        self.predictions.append(prediction)
        return {"id": len(self.predictions)}

    def update_project(self, project: int, **fields: Any) -> dict[str, Any]:
        self.calls.append(("update_project", fields))
        if "model_version" in fields:
            if not any(p["model_version"] == fields["model_version"] for p in self.predictions):
                raise AssertionError("Label Studio refuses a model version without predictions")
            self.version = fields["model_version"]
        return {"id": project, "model_version": self.version}

    def model_versions(self, project: int) -> dict[str, int]:
        self.calls.append(("model_versions", project))
        counts: dict[str, int] = {}
        for p in self.predictions:
            counts[p["model_version"]] = counts.get(p["model_version"], 0) + 1
        return counts

    def delete_model_version(self, project: int, version: str) -> int:
        self.calls.append(("delete_model_version", version))
        before = len(self.predictions)
        self.predictions = [p for p in self.predictions if p["model_version"] != version]
        return before - len(self.predictions)

    def update_task_data(self, task: int, data: dict[str, Any]) -> None:
        self.calls.append(("update_task_data", task))
        self.task_data[task] = data

    def ensure_view(self, project: int, title: str, *args: Any, **kwargs: Any) -> int:
        self.calls.append(("ensure_view", title))
        return 1


def run_one_cycle(settings: Settings, store: Store, ls: FakeLabelStudio, project: int = 7) -> None:
    def runner(ctx: CycleContext, project_id: int) -> CycleResult:
        ls_client = cast(LabelStudio, ls)
        return run_cycle(ctx, settings, store, ls_client, project_id, diagnose=record_diagnosis)

    run = run_cycle_once(store, runner, project, trigger="manual")
    assert run is not None
    assert run.state == "succeeded", run.error
