"""Exponential moving average of weights (Polyak averaging), kept in fp32."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in module.state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        current = module.state_dict()
        keys = list(self.shadow)
        # shadow <- decay * shadow + (1 - decay) * weights, fused over all tensors.
        torch._foreach_lerp_([self.shadow[k] for k in keys],
                             [current[k].detach().float() for k in keys], 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)
