"""The models this process serves: one per project, loaded once and swapped under a lock."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.settings import ModelSettings
from backend.store import repo
from backend.store.db import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedModel:
    project_id: int
    version: str
    model: Any  # backend.model.TrainedModel


class ModelRegistry:
    """Per-project current model, reloaded when the store names a newer version.

    Readers get a consistent (version, model) pair; a new model is loaded outside the lock and then
    swapped in, so ``/predict`` never waits on a checkpoint being read.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._served: dict[int, ServedModel] = {}
        self._backbones: dict[tuple[str, str, int], Any] = {}

    def backbone(self, model_settings: ModelSettings) -> Any:
        """The feature extractor these settings name, built once per process on first use.

        Projects may use different backbones (per-project settings), so one is kept per kind.
        """
        key = (model_settings.backbone, model_settings.timm_name, model_settings.image_size)
        with self._lock:
            if key not in self._backbones:
                from backend.model.backbones import build_backbone

                self._backbones[key] = build_backbone(model_settings)
            return self._backbones[key]

    def current_version(self, project_id: int) -> str | None:
        with self._store.session() as session:
            row = repo.current_model(session, project_id)
            return row.version if row is not None else None

    def get(self, project_id: int) -> ServedModel | None:
        with self._store.session() as session:
            row = repo.current_model(session, project_id)
            wanted = (row.version, row.path) if row is not None else None
        if wanted is None:
            return None
        with self._lock:
            served = self._served.get(project_id)
        if served is not None and served.version == wanted[0]:
            return served
        from backend.model.checkpoint import load_checkpoint

        model = load_checkpoint(Path(wanted[1]))
        fresh = ServedModel(project_id, wanted[0], model)
        self.swap(fresh)
        log.info("project %d now serves model %s", project_id, fresh.version)
        return fresh

    def swap(self, served: ServedModel) -> None:
        with self._lock:
            self._served[served.project_id] = served
