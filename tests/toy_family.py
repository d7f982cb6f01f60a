"""A tiny example family used by the contract tests: two optimizers, a frozen part and an
EMA target that is a sub-module, all declared, nothing in train/ changed for it.

It is also the worked example of docs/architecture.md ("adding a family"). Its data
are images; it learns an autoencoder through a frozen random projection (the stand-in
for a pretrained encoder) plus a critic, so both optimizers really step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from genforge.config import Strict
from genforge.families.base import GenerativeModel, SampleOption


class ToyConfig(Strict):
    hidden: int = Field(16, ge=1)
    code: int = Field(4, ge=1)


class Toy(GenerativeModel):
    Config = ToyConfig
    sample_options = (SampleOption("shift", "toy runs: add this to every pixel", float, 0.0, metavar="S"),)

    def __init__(self, config: ToyConfig, spec):
        super().__init__(config, spec)
        d = spec.shape[0] * spec.shape[1] * spec.shape[2]
        self.encoder = nn.Linear(d, config.code)  # "pretrained": rebuilt identically from a fixed seed
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.encoder.reset_parameters()
        self.generator = nn.Sequential(nn.Linear(config.code, config.hidden), nn.Tanh(),
                                       nn.Linear(config.hidden, d))
        self.critic = nn.Linear(d, 1)

    def frozen_parts(self):
        return {"encoder": self.encoder}

    def ema_target(self):
        return self.generator

    def optimizer_groups(self):
        return {"gen": [{"params": list(self.generator.parameters())}],
                "critic": [{"params": list(self.critic.parameters())}]}

    def forward(self, batch, part: str = "gen"):
        x = batch["x"].flatten(1)  # (B, d)
        recon = self.generator(self.encoder(x))  # (B, d)
        if part == "critic":
            loss = (self.critic(x) - 1).pow(2).mean() + self.critic(recon.detach()).pow(2).mean()
        else:
            loss = F.mse_loss(recon, x) + 0.01 * (self.critic(recon) - 1).pow(2).mean()
        return {"loss": loss}

    def train_step(self, micro_batches, ctx):
        for batch in ctx.accumulate(micro_batches):
            critic_loss = ctx.forward(batch, part="critic")["loss"]
            ctx.backward(critic_loss)
        ctx.step("critic")
        for batch in ctx.accumulate(micro_batches):
            with ctx.frozen(self.critic):
                gen_loss = ctx.forward(batch, part="gen")["loss"]
                ctx.backward(gen_loss)
        ctx.step("gen")
        return {"loss": gen_loss.detach(), "critic_loss": critic_loss.detach()}

    @torch.no_grad()
    def sample(self, n, generator, labels=None, shift: float = 0.0):
        device = self.critic.weight.device
        z = torch.randn(n, self.config.code, generator=generator, device=device)
        lo, hi = self.spec.pixel_range
        return (self.generator(z) + shift).clamp(lo, hi).reshape(n, *self.spec.shape)

    @torch.no_grad()
    def preview(self, data, generator):
        return self.sample(16, generator)
