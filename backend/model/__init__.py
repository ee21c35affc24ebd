"""Image embeddings, trained heads, committees and calibrated probabilities.

The cycle calls, in order: :func:`build_backbone`, :func:`featurize` (through an
:class:`EmbeddingCache`), :func:`train_model` and :func:`save_checkpoint`; ``/predict`` gets the
project's current model from the serving registry (which loads it with :func:`load_checkpoint`),
then calls ``TrainedModel.predict_proba`` and :func:`predict_annotation`.
"""

from backend.model.annotation import predict_annotation
from backend.model.backbones import (
    Backbone,
    BackboneUnavailableError,
    TorchBackbone,
    build_backbone,
)
from backend.model.cache import EmbeddingCache, content_hash
from backend.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from backend.model.featurize import FeaturizeResult, featurize
from backend.model.finetune import fine_tune_backbone
from backend.model.train import TrainedModel, train_model

__all__ = [
    "Backbone",
    "BackboneUnavailableError",
    "CheckpointError",
    "EmbeddingCache",
    "FeaturizeResult",
    "TorchBackbone",
    "TrainedModel",
    "build_backbone",
    "content_hash",
    "featurize",
    "fine_tune_backbone",
    "load_checkpoint",
    "predict_annotation",
    "save_checkpoint",
    "train_model",
]
