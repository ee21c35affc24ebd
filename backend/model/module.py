"""Lightning pieces: a stack of independent heads, the module that trains it, its data module.

Every head the cycle needs (one per cross-fitting fold, one per committee member, the main head)
is one slice of a :class:`StackedHead`, and all are trained together in one full-batch Lightning
run. Each head has its own sample weights (fold mask, bootstrap counts), its own class weights and
its own validation set, and Adam(W) updates every weight element on its own, so a head's result
depends only on its own data: fold k's head never sees fold k's labels.
"""

from __future__ import annotations

import math
from typing import Literal

import lightning as L
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
)

HeadKind = Literal["linear", "mlp"]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Loader = DataLoader[tuple[torch.Tensor, ...]]


def _uniform(shape: tuple[int, ...], fan_in: int, generator: torch.Generator) -> nn.Parameter:
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.rand(shape, generator=generator) * 2 * bound - bound)


def _dropout(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    keep = torch.rand(x.shape, generator=generator) >= p
    return x * keep / (1.0 - p)


class StackedHead(nn.Module):
    """H independent heads over the same embeddings: (n, d) -> (H, n, C) logits.

    ``linear`` drops input features (one mask shared by all heads) then applies a linear map;
    ``mlp`` is linear -> ReLU -> dropout -> linear. Every parameter has the head index first.
    """

    def __init__(
        self,
        in_dim: int,
        n_out: int,
        n_heads: int,
        *,
        kind: HeadKind = "linear",
        hidden_dim: int = 256,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.kind: HeadKind = kind
        self.dropout, self.n_heads = dropout, n_heads
        self.in_dim, self.n_out, self.hidden_dim = in_dim, n_out, hidden_dim
        gen = torch.Generator().manual_seed(seed)
        if kind == "linear":
            self.w_out = _uniform((n_heads, in_dim, n_out), in_dim, gen)
        else:
            self.w_hidden = _uniform((n_heads, in_dim, hidden_dim), in_dim, gen)
            self.b_hidden = _uniform((n_heads, hidden_dim), in_dim, gen)
            self.w_out = _uniform((n_heads, hidden_dim, n_out), hidden_dim, gen)
        self.b_out = _uniform((n_heads, n_out), self.w_out.shape[1], gen)

    def _drop(self, x: torch.Tensor, mc: torch.Generator | None) -> torch.Tensor:
        if self.dropout <= 0.0:
            return x
        if mc is not None:
            return _dropout(x, self.dropout, mc)
        return F.dropout(x, self.dropout, training=self.training)

    def forward(self, x: torch.Tensor, mc_generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits (H, n, C); ``mc_generator`` turns dropout on (MC dropout) with its own RNG."""
        n, heads = x.shape[0], self.n_heads
        if self.kind == "linear":
            x = self._drop(x, mc_generator)
            flat = self.w_out.permute(1, 0, 2).reshape(self.in_dim, heads * self.n_out)
            return (x @ flat).view(n, heads, self.n_out).transpose(0, 1) + self.b_out[:, None]
        flat = self.w_hidden.permute(1, 0, 2).reshape(self.in_dim, heads * self.hidden_dim)
        hidden = (x @ flat).view(n, heads, self.hidden_dim).transpose(0, 1)
        hidden = self._drop(F.relu(hidden + self.b_hidden[:, None]), mc_generator)
        return torch.baddbmm(self.b_out[:, None], hidden, self.w_out)

    def standardizing(self, mean: torch.Tensor, scale: torch.Tensor) -> StackedHead:
        """A copy in eval mode that takes raw inputs ``x`` and returns what this stack returns for
        ``(x - mean) / scale`` with dropout off: the standardization is folded into the first
        layer (weights divided by ``scale``, ``mean / scale`` times them taken off the bias), so
        predicting a pool skips two passes over its embeddings. Computed in float64."""
        out = self.select(list(range(self.n_heads)))
        shift = (mean.double() / scale.double()).view(1, -1, 1)
        inv = (1.0 / scale.double()).view(1, -1, 1)
        first_w, first_b = ("w_out", "b_out") if self.kind == "linear" else ("w_hidden", "b_hidden")
        w = getattr(out, first_w).detach().double()
        b = getattr(out, first_b).detach().double()
        with torch.no_grad():
            getattr(out, first_w).copy_((w * inv).float())
            getattr(out, first_b).copy_((b - (w * shift).sum(dim=1)).float())
        return out.eval()

    def select(self, heads: list[int]) -> StackedHead:
        """A new stack holding copies of the given heads."""
        out = StackedHead(
            self.in_dim,
            self.n_out,
            len(heads),
            kind=self.kind,
            hidden_dim=self.hidden_dim,
            dropout=self.dropout,
        )
        index = torch.tensor(heads, dtype=torch.long)
        out.load_state_dict({k: v.detach()[index].clone() for k, v in self.state_dict().items()})
        return out


def per_head_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    weights: torch.Tensor,
    class_weights: torch.Tensor,
    *,
    multilabel: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted loss sums and weight sums per head.

    Args:
        logits: (H, b, C).
        y: (b,) class indices, or (b, C) {0, 1} floats when ``multilabel``.
        weights: (H, b) sample weights (0 = not this head's item).
        class_weights: (H, C) class weights, or positive-class weights when ``multilabel``.

    Returns:
        (H,) weighted loss sums and (H,) weight sums; their ratio is each head's mean loss.
    """
    heads = logits.shape[0]
    if multilabel:
        target = y.expand(heads, *y.shape)
        element = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        scale = 1.0 + (class_weights[:, None, :] - 1.0) * target
        loss = (element * scale).mean(dim=2)
        w = weights
    else:
        flat = logits.reshape(-1, logits.shape[2])
        loss = F.cross_entropy(flat, y.repeat(heads), reduction="none").view(heads, -1)
        w = weights * class_weights.gather(1, y.expand(heads, -1))
    return (loss * w).sum(dim=1), w.sum(dim=1)


class HeadModule(L.LightningModule):
    """Trains an injected :class:`StackedHead`; the sum of per-head mean losses is optimised."""

    def __init__(
        self,
        net: StackedHead,
        class_weights: torch.Tensor,
        *,
        multilabel: bool,
        learning_rate: float,
        weight_decay: float,
    ) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("class_weights", class_weights)
        self.multilabel = multilabel
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self._val_sums = torch.zeros(net.n_heads)
        self._val_weights = torch.zeros(net.n_heads)
        self.val_losses = torch.full((net.n_heads,), math.inf)

    def model_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y, w = batch
        weights = self.get_buffer("class_weights")
        return per_head_loss(self.net(x), y, w.T, weights, multilabel=self.multilabel)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        sums, counts = self.model_step(batch)
        return (sums / counts.clamp_min(1e-12)).sum()

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(self.net.n_heads)
        self._val_weights = torch.zeros(self.net.n_heads)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        sums, counts = self.model_step(batch)
        self._val_sums += sums.detach()
        self._val_weights += counts.detach()

    def on_validation_epoch_end(self) -> None:
        has_val = self._val_weights > 0
        means = self._val_sums / self._val_weights.clamp_min(1e-12)
        self.val_losses = torch.where(has_val, means, torch.full_like(means, math.inf))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )


class PerHeadEarlyStopping(L.Callback):
    """Per-head early stopping: a head stops counting once it has not improved for ``patience``
    epochs, and keeps the weights of its best epoch up to then; the run ends when every head has
    stopped. A head's result therefore never depends on how long the other heads train. Heads
    without a validation set keep their last weights."""

    def __init__(self, patience: int) -> None:
        super().__init__()
        self.patience = patience
        self.best = torch.empty(0)
        self.stale = torch.empty(0, dtype=torch.long)
        self.improved_once = torch.empty(0, dtype=torch.bool)
        self.snapshot: dict[str, torch.Tensor] = {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, HeadModule) or trainer.sanity_checking:
            return
        losses = pl_module.val_losses
        if self.best.numel() != losses.numel():
            self.best = torch.full_like(losses, math.inf)
            self.stale = torch.zeros_like(losses, dtype=torch.long)
            self.improved_once = torch.zeros_like(losses, dtype=torch.bool)
        improved = (losses < self.best - 1e-6) & (self.stale < self.patience)
        self.best = torch.where(improved, losses, self.best)
        self.stale = torch.where(improved, 0, self.stale + 1).clamp_max(self.patience)
        self.improved_once |= improved
        for key, value in pl_module.net.state_dict().items():
            saved = self.snapshot.setdefault(key, value.detach().clone())
            saved[improved] = value.detach()[improved]
        if bool((self.stale >= self.patience).all()):
            trainer.should_stop = True

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, HeadModule) or not self.snapshot:
            return
        keep = self.improved_once
        with torch.no_grad():
            for key, value in pl_module.net.state_dict().items():
                value[keep] = self.snapshot[key][keep]


class EmbeddingDataModule(L.LightningDataModule):
    """Embeddings, targets and per-head weights; full batch unless ``n > batch_size``.

    Args:
        x: (n, d) standardised embeddings.
        y: (n,) class indices or (n, C) {0, 1} floats.
        train_weights: (n, H) per-head training weights.
        val_weights: (n, H) per-head validation masks (all zero: no validation).
        batch_size: rows per step.
        seed: shuffles mini-batches reproducibly.
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        train_weights: torch.Tensor,
        val_weights: torch.Tensor,
        *,
        batch_size: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.train_weights, self.val_weights = train_weights, val_weights
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    @property
    def has_validation(self) -> bool:
        return bool((self.val_weights > 0).any())

    def setup(self, stage: str) -> None:
        rows = (self.train_weights > 0).any(dim=1)
        self.train_set = TensorDataset(self.x[rows], self.y[rows], self.train_weights[rows])
        rows = (self.val_weights > 0).any(dim=1)
        self.val_set = TensorDataset(self.x[rows], self.y[rows], self.val_weights[rows])

    def _loader(self, data: TensorDataset | None, shuffle: bool) -> Loader:
        if data is None:
            raise RuntimeError("setup() has not run")
        order: Sampler[int]
        if shuffle:
            order = RandomSampler(data, generator=torch.Generator().manual_seed(self.seed))
        else:
            order = SequentialSampler(data)
        # Whole index batches: one tensor gather per step instead of n __getitem__ calls.
        batches = BatchSampler(order, batch_size=max(1, self.batch_size), drop_last=False)
        return DataLoader(data, sampler=batches, batch_size=None)

    def train_dataloader(self) -> Loader:
        return self._loader(self.train_set, shuffle=len(self.x) > self.batch_size)

    def val_dataloader(self) -> Loader:
        return self._loader(self.val_set, shuffle=False)
