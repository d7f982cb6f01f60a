"""Exponential moving average of weights (Polyak averaging), kept in fp32."""

from __future__ import annotations

import contextlib

import torch
from torch import nn


class EMA:
    """Averages the floating-point entries ``keys`` of ``module``'s state (frozen parts excluded)."""

    def __init__(self, module: nn.Module, decay: float, keys: list[str]):
        self.decay = decay
        state = module.state_dict()
        self.shadow = {k: state[k].detach().float().clone() for k in keys}

    def decay_at(self, step: int) -> float:
        """The decay used after optimizer step ``step`` (0-based): min(decay, (1 + t) / (10 + t)),
        the warm-up of TensorFlow's ExponentialMovingAverage (``num_updates``). Without it a
        0.999 average of a short run is mostly its first, untrained weights."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, module: nn.Module, step: int | None = None) -> None:
        """Average in ``module``'s weights after optimizer step ``step`` (None: no warm-up)."""
        current = module.state_dict()
        keys = list(self.shadow)
        decay = self.decay if step is None else self.decay_at(step)
        # shadow <- decay * shadow + (1 - decay) * weights, fused over all tensors.
        torch._foreach_lerp_([self.shadow[k] for k in keys],
                             [current[k].detach().float() for k in keys], 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            raise ValueError("EMA state does not match the averaged module")
        for k, v in state.items():
            self.shadow[k].copy_(v)

    @contextlib.contextmanager
    @torch.no_grad()
    def swapped_in(self, module: nn.Module):
        """Temporarily put the averaged weights into ``module`` (to evaluate what sampling uses)."""
        state = module.state_dict()
        raw = {k: state[k].detach().clone() for k in self.shadow}
        for k, v in self.shadow.items():
            state[k].copy_(v)
        try:
            yield module
        finally:
            for k, v in raw.items():
                state[k].copy_(v)
