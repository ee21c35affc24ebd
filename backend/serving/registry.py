"""The models this process serves: one per project, loaded once and swapped under a lock."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from backend.loop.contract import ServedModel
from backend.settings import ModelSettings
from backend.store import repo
from backend.store.db import Store

if TYPE_CHECKING:  # torch is imported when the first model is needed, not with the app
    from backend.model.backbones import Backbone
    from backend.model.engines import Engines

log = logging.getLogger(__name__)


class ModelRegistry:
    """Per-project current model, reloaded when the store names a newer version.

    Readers get a consistent (version, model) pair; a new model is loaded outside the lock and then
    swapped in, so ``/predict`` never waits on a checkpoint being read.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._served: dict[int, ServedModel] = {}
        self._backbones: dict[tuple[str, str, int], Backbone] = {}
        self._tuned: dict[str, Backbone] = {}  # fine-tuned backbones by name
        self._engines: Engines | None = None

    @property
    def engines(self) -> Engines:
        """The backbones' converted forms, compiled once per process (built on first use)."""
        with self._lock:
            if self._engines is None:
                from backend.model.engines import Engines

                self._engines = Engines()
            return self._engines

    def backbone(self, model_settings: ModelSettings) -> Backbone:
        """The feature extractor these settings name, built once per process on first use.

        Projects may use different backbones (per-project settings), so one is kept per kind.
        """
        key = (model_settings.backbone, model_settings.timm_name, model_settings.image_size)
        with self._lock:
            if key not in self._backbones:
                from backend.model.backbones import build_backbone

                self._backbones[key] = build_backbone(model_settings)
            return self._backbones[key]

    def backbone_for(
        self, model_settings: ModelSettings, name: str, data_dir: Path, project_id: int
    ) -> Backbone:
        """The backbone a served model was trained on: ``name``, fine-tuned (``+ft``) or not.

        A fine-tuned one is the settings' backbone with the project's saved weights, loaded once per
        name. When those cannot be found (or the settings now name another base backbone) the
        settings' backbone comes back; its name differs from ``name``, so callers can refuse.
        """
        base = self.backbone(model_settings)
        if "+ft" not in name or name.split("+ft")[0] != base.name:
            return base
        with self._lock:
            tuned = self._tuned.get(name)
        if tuned is not None:
            return tuned
        from backend.model.backbones import TorchBackbone, load_weights, weights_path

        if not isinstance(base, TorchBackbone):  # only torch backbones are fine-tuned
            return base
        path = weights_path(data_dir, project_id, name)
        if not path.exists():
            log.warning("project %d: no weights for backbone %s at %s", project_id, name, path)
            return base
        tuned = load_weights(base, path)
        if tuned.name != name:
            log.warning(
                "project %d: weights at %s are %s, not %s", project_id, path, tuned.name, name
            )
            return base
        with self._lock:
            self._tuned[name] = tuned
        return tuned

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
