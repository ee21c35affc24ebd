"""``fine_tune`` mode: train the backbone itself, end to end with a linear head, with Lightning.

The returned backbone carries new weights and a new ``name`` (with a digest of the weights), so
embeddings cached for the old weights are never mixed with new ones. The loop then featurizes with
it and trains heads with :func:`backend.model.train.train_model` as usual.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from backend.model.backbones import TorchBackbone
from backend.model.calibration import TargetArray
from backend.model.engines import resolve_device
from backend.model.featurize import decode_image
from backend.model.train import quiet_trainer
from backend.settings import ModelSettings

ImageBatch = tuple[torch.Tensor, torch.Tensor]
BACKBONE_LR_FACTOR = 0.1  # pretrained layers move slower than the new head


class ImageBytesDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Decodes and preprocesses lazily, so a large set never sits in memory as tensors."""

    def __init__(
        self,
        fetchers: Sequence[Callable[[], bytes]],
        targets: torch.Tensor,
        preprocess: Callable[..., torch.Tensor],
    ) -> None:
        self.fetchers, self.targets, self.preprocess = fetchers, targets, preprocess

    def __len__(self) -> int:
        return len(self.fetchers)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.preprocess(decode_image(self.fetchers[index]())), self.targets[index]


class FineTuneModule(L.LightningModule):
    """Backbone + linear head trained together; both are injected."""

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        *,
        multilabel: bool,
        learning_rate: float,
        weight_decay: float,
    ) -> None:
        super().__init__()
        self.backbone, self.head = backbone, head
        self.multilabel = multilabel
        self.learning_rate, self.weight_decay = learning_rate, weight_decay

    def model_step(self, batch: ImageBatch) -> torch.Tensor:
        images, targets = batch
        logits = self.head(self.backbone(images))
        if self.multilabel:
            return F.binary_cross_entropy_with_logits(logits, targets)
        return F.cross_entropy(logits, targets)

    def training_step(self, batch: ImageBatch, batch_idx: int) -> torch.Tensor:
        return self.model_step(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        groups = [
            {"params": self.backbone.parameters(), "lr": self.learning_rate * BACKBONE_LR_FACTOR},
            {"params": self.head.parameters(), "lr": self.learning_rate},
        ]
        return torch.optim.AdamW(groups, weight_decay=self.weight_decay)


def fine_tune_backbone(
    backbone: TorchBackbone,
    fetchers: Sequence[Callable[[], bytes]],
    targets: TargetArray,
    *,
    n_classes: int,
    multilabel: bool,
    settings: ModelSettings,
    max_steps: int = -1,
) -> TorchBackbone:
    """Fine-tune a copy of ``backbone`` on labeled images; the original is left unchanged.

    Args:
        backbone: a torch backbone built with ``fine_tune=True`` (``small_cnn``, ``timm``, or
            ``efficientnet_lite0``, whose batch norms are folded away for speed otherwise).
        fetchers: one callable per labeled item returning its image bytes (items that failed
            featurization should be left out: a failing fetch here stops the run).
        targets: (n,) class indices or (n, C) {0, 1} when ``multilabel``.
        n_classes: C.
        multilabel: BCE over sigmoid outputs instead of cross-entropy.
        settings: ``batch_size``, ``max_epochs``, ``learning_rate``, ``weight_decay``, ``seed``;
            ``device`` (``cuda``, or ``auto`` where a GPU is visible, trains on the GPU).
        max_steps: stop after this many optimiser steps (-1: ``max_epochs`` decides).

    Returns:
        A backbone with the tuned weights and a new ``name``.
    """
    y = torch.from_numpy(np.asarray(targets).astype(np.float32 if multilabel else np.int64))
    data = ImageBytesDataset(fetchers, y, backbone.preprocess)
    loader = DataLoader(
        data,
        batch_size=settings.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(settings.seed),
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings.seed)
        trunk = copy.deepcopy(backbone.module).train()
        module = FineTuneModule(
            trunk,
            nn.Linear(backbone.dim, n_classes),
            multilabel=multilabel,
            learning_rate=settings.learning_rate,
            weight_decay=settings.weight_decay,
        )
        trainer = quiet_trainer(
            settings.max_epochs, accelerator=resolve_device(settings.device), max_steps=max_steps
        )
        trainer.fit(module, train_dataloaders=loader)
    # Back on the CPU whatever trained it: featurization moves it where model.device says.
    return backbone.with_weights(trunk.cpu().eval())
