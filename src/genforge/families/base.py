"""The contract between a family and the generic trainer.

A family is an ``nn.Module`` subclass of :class:`GenerativeModel`. It owns its
losses and the order of its optimizer steps (``train_step``); the trainer owns
device, precision, accumulation, clipping, LR, EMA, logging, checkpoints and
DDP, and hands those to the family through a *step context* (duck-typed: a
family never imports the trainer). The default ``train_step`` suits any family
with one loss and one optimizer; a GAN overrides it to step two optimizers, RL
runs its own sample-then-update loop around the same pieces.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

import torch
from pydantic import BaseModel
from torch import nn

from genforge.data.spec import DataSpec

Batch = dict[str, torch.Tensor]


class StepContext(Protocol):
    """What the trainer offers a family inside one optimizer step."""

    def accumulate(self, micro_batches: list[Batch]) -> Iterable[Batch]:
        """Yield micro-batches; gradients are all-reduced only on the last (DDP)."""

    def forward(self, batch: Batch, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Call the (DDP-wrapped, compiled, autocast) model's forward."""

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` scaled for gradient accumulation."""

    def step(self, optimizer: str) -> torch.Tensor:
        """Clip, set the LR, step and zero one named optimizer; return the grad norm (0-dim)."""


class GenerativeModel(nn.Module):
    """Base class of every family. Subclasses set ``Config`` and implement ``forward``."""

    Config: type[BaseModel]

    def __init__(self, config: BaseModel, spec: DataSpec):
        super().__init__()
        self.config = config
        self.spec = spec

    # -- training -----------------------------------------------------------------
    def forward(self, batch: Batch, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Training objective on one batch: a dict with at least ``loss`` (a scalar)."""
        raise NotImplementedError  # abstract: every family defines its objective

    def optimizer_groups(self, weight_decay: float) -> dict[str, list[dict]]:
        """Optimizer name -> parameter groups. Matrices decay; biases, norms and gains do not."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        return {"main": [{"params": decay, "weight_decay": weight_decay},
                         {"params": no_decay, "weight_decay": 0.0}]}

    def train_step(self, micro_batches: list[Batch], ctx: StepContext) -> dict[str, torch.Tensor | float]:
        """One optimizer step. Values may stay 0-dim tensors: the trainer reads them
        (a GPU sync) only when it logs or checkpoints."""
        total = 0.0
        for batch in ctx.accumulate(micro_batches):
            out = ctx.forward(batch)
            ctx.backward(out["loss"])
            total = total + out["loss"].detach().float()
        grad_norm = ctx.step("main")
        return {"loss": total / len(micro_batches), "grad_norm": grad_norm}

    def ema_target(self) -> nn.Module:
        """The sub-module whose weights EMA averages (a GAN returns its generator)."""
        return self

    # -- evaluation and samples ------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """Mean of the training objective's terms over held-out batches."""
        sums: dict[str, float] = {}
        n = 0
        for batch in batches:
            for k, v in self(batch).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    @torch.no_grad()
    def preview(self, data: Any, generator: torch.Generator) -> Any:
        """A few samples for the run directory: a str for text, an (N,C,H,W) tensor for images."""
        return None
