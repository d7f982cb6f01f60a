"""Epoch-based, shardable, resumable sampling of example indices.

Each epoch is a fresh permutation of all examples drawn from ``seed + epoch``;
rank ``r`` of ``world`` takes every ``world``-th index starting at ``r``, so
under DDP no example is seen twice per epoch and ranks never overlap. The
state is two integers (epoch, cursor), which makes resume exact.
"""

from __future__ import annotations

import torch

from genforge import GenforgeError


class EpochSampler:
    def __init__(self, num_examples: int, batch_size: int, seed: int, rank: int = 0, world: int = 1):
        if num_examples < batch_size * world:
            # A GenforgeError, not ValueError: the CLI prints it as one line (exit 2), not a traceback.
            raise GenforgeError(
                f"the training split has {num_examples} examples, fewer than one batch "
                f"({batch_size} x {world} processes); lower train.batch_size"
            )
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world = rank, world
        self.epoch, self.cursor = 0, 0
        self._order: torch.Tensor | None = None

    @property
    def batches_per_epoch(self) -> int:
        return (self.n // self.world) // self.batch_size

    def _epoch_order(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        per_rank = self.n // self.world  # drop the tail so every rank runs the same steps
        return perm[self.rank :: self.world][:per_rank]

    def next_batch(self) -> torch.Tensor:
        if self.cursor >= self.batches_per_epoch:
            self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = self._epoch_order()
        start = self.cursor * self.batch_size
        self.cursor += 1
        return self._order[start : start + self.batch_size]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.cursor, self._order = int(state["epoch"]), int(state["cursor"]), None
