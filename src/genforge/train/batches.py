"""Batch sources: where the trainer's batches come from, with resumable state.

The trainer asks a source for one batch per micro-step and checkpoints its state;
it never looks inside. ``DatasetBatches`` draws from a dataset split; an RL
fine-tuner passes a source that rolls out the current policy instead.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from genforge.data.sampler import EpochSampler

Batch = dict[str, torch.Tensor]


class BatchSource(Protocol):
    def next(self) -> Batch:
        """The next batch (tensors on the CPU or the training device)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same sequence of batches after a resume."""

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class DatasetBatches:
    """Epoch-based batches of a split (``split.get(indices) -> Batch``), sharded by rank."""

    def __init__(self, split, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        self.split = split
        self.sampler = EpochSampler(len(split), batch_size, seed, rank, world)

    def next(self) -> Batch:
        return self.split.get(self.sampler.next_batch())

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
