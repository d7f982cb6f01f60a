"""The step context the trainer hands to ``family.train_step`` (the contract is
``genforge.families.base.StepContext``): forward under DDP/compile/autocast, backward scaled for
accumulation, one optimizer step (clip, scheduled LR, step, clear every gradient), frozen parts.
It reads the trainer's state (``self.t``) and owns none.
"""

from __future__ import annotations

import contextlib

import torch


class StepContext:
    """Handed to ``family.train_step``; see ``genforge.families.base.StepContext``."""

    def __init__(self, trainer):
        self.t = trainer
        self.n_micro = 1

    @property
    def global_step(self) -> int:
        return self.t.step

    def accumulate(self, micro_batches):
        self.n_micro = len(micro_batches)
        last = len(micro_batches) - 1
        for i, batch in enumerate(micro_batches):
            if self.t.ddp is not None:  # all-reduce gradients on the last micro-batch only
                self.t.ddp.require_backward_grad_sync = i == last
            yield batch

    def forward(self, batch, **kwargs):
        with self.t.autocast():
            return self.t.wrapped(batch, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.n_micro if self.n_micro > 1 else loss).backward()

    def step(self, optimizer: str) -> torch.Tensor:
        t = self.t
        if optimizer not in t.optimizers:
            raise KeyError(f"no optimizer '{optimizer}'; the family declared {list(t.optimizers)}")
        opt, params = t.optimizers[optimizer], t.optimizer_params[optimizer]
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads, foreach=True)
        if t.tc.grad_clip > 0:
            # On the CPU reading the norm is free, so scale only when it is over the limit
            # (clip_grad_norm_ multiplies every gradient every step); on a GPU, stay sync-free.
            if t.device.type != "cpu" or float(norm) > t.tc.grad_clip:
                torch.nn.utils.clip_grads_with_norm_(params, t.tc.grad_clip, norm, foreach=True)
        scale = t.lr_factor()
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * scale
        opt.step()
        # Clear every gradient of the model, not only this optimizer's: a generator loss
        # backpropagated through the discriminator must not reach the discriminator's next step.
        for p in t.all_params:
            p.grad = None
        return norm.detach()

    @contextlib.contextmanager
    def frozen(self, module: torch.nn.Module):
        params = [p for p in module.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            yield module
        finally:
            for p in params:
                p.requires_grad_(True)
