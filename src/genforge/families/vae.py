"""VAE: a convolutional variational autoencoder (Kingma & Welling 2014).

Encoder q(z|x) = N(mu(x), diag sigma^2(x)), prior p(z) = N(0, I), decoder p(x|z)
one of:

- ``bernoulli``: pixels binarized afresh at every step (dynamic binarization, the
  protocol behind published likelihoods such as Burda et al.'s 86.76 nats on MNIST);
- ``logistic``: a discretized logistic over the 256 pixel levels (Kingma et al. 2016,
  Salimans et al. 2017), a proper likelihood for 8-bit grayscale or colour images.

Variants, each a config option: beta-VAE (Higgins et al. 2017), conditional VAE
with one-hot class labels fed to encoder and decoder (Sohn et al. 2015), linear KL
warm-up (Bowman et al. 2016; Sonderby et al. 2016) and free bits (Kingma et al.
2016). Evaluation adds the importance-weighted bound (IWAE, Burda et al. 2016) and
active latent units. Latent paths (lerp/slerp) and attribute vectors work on
``encode``/``decode`` and live in ``genforge.sampling.images``.

Images arrive in ``spec.pixel_range``; inside, the model works on [0, 1].
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from genforge import GenforgeError
from genforge.config import Strict
from genforge.families.base import Batch, LatentVariableModel, SampleOption


class VAEConfig(Strict):
    latent_dim: int = 16
    channels: tuple[int, int] = (32, 64)
    """Widths of the two stride-2 conv layers (mirrored by the decoder)."""
    hidden: int = 256
    """Width of the fully connected layer between the conv stack and the latent."""
    likelihood: Literal["bernoulli", "logistic"] = "bernoulli"
    """bernoulli: dynamically binarized pixels; logistic: discretized logistic over 256 levels."""
    beta: float = 1.0
    """Weight of the KL term (beta-VAE; 1 is the ELBO)."""
    conditional: bool = False
    """Condition encoder and decoder on class labels (CVAE); needs labelled data."""
    kl_warmup_steps: int = 0
    """Ramp the KL weight linearly from 0 to beta over this many optimizer steps."""
    free_bits: float = 0.0
    """Nats per latent dimension below which the KL is not penalized (0 turns it off)."""

    @model_validator(mode="after")
    def _check(self) -> VAEConfig:
        if self.latent_dim < 1 or self.hidden < 1 or min(self.channels) < 1:
            raise ValueError("latent_dim, hidden and channels must be positive")
        if self.beta < 0 or self.free_bits < 0 or self.kl_warmup_steps < 0:
            raise ValueError("beta, free_bits and kl_warmup_steps must be >= 0")
        return self


def discretized_logistic_logp(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor,
                              bins: int = 256) -> torch.Tensor:
    """log P(x) per pixel for x in [-1, 1] on a grid of ``bins`` levels (Salimans et al. 2017, sec 2.1).

    P(x) = CDF((x + h - mean) / s) - CDF((x - h - mean) / s) with h half a bin; the
    lowest and highest levels take the whole tail. All shapes (B, C, H, W).
    """
    half = 1.0 / (bins - 1)
    centred = x - mean
    inv_s = torch.exp(-log_scale)
    upper, lower = inv_s * (centred + half), inv_s * (centred - half)
    log_cdf_upper = upper - F.softplus(upper)  # log sigmoid(upper): the x = -1 tail
    log_sf_lower = -F.softplus(lower)  # log(1 - sigmoid(lower)): the x = +1 tail
    delta = torch.sigmoid(upper) - torch.sigmoid(lower)
    # Where the bin mass underflows, use density * bin width at the bin centre instead.
    mid = inv_s * centred
    log_mid = mid - log_scale - 2.0 * F.softplus(mid) + math.log(2 * half)
    inner = torch.where(delta > 1e-5, torch.log(delta.clamp_min(1e-12)), log_mid)
    return torch.where(x < -1 + half, log_cdf_upper, torch.where(x > 1 - half, log_sf_lower, inner))


class VAE(LatentVariableModel):
    Config = VAEConfig
    class_conditioning = "model.conditional=true"
    sample_options = (
        *LatentVariableModel.sample_options,
        SampleOption("latent_temperature", "scale of the prior's standard deviation (default 1.0)",
                     float, 1.0, metavar="T"),
    )
    eval_options = (
        SampleOption("iwae_k", "importance samples of the NLL bound (default 100)", int, metavar="K",
                     minimum=1),
    )

    def __init__(self, config: VAEConfig, spec):
        super().__init__(config, spec)
        if spec.modality != "image" or spec.shape is None or len(spec.shape) != 3:
            raise GenforgeError("the vae family models images (C, H, W); pick an image dataset")
        if config.conditional and spec.num_classes < 2:
            raise GenforgeError(f"model.conditional=true needs class labels, but dataset '{spec.name}' "
                                "has none; use labelled data or set model.conditional=false")
        c = config
        self.C, self.H, self.W = spec.shape
        # Two stride-2 convolutions: pad H, W up to multiples of 4, crop the output back.
        self.Hp, self.Wp = -(-self.H // 4) * 4, -(-self.W // 4) * 4
        self.K = spec.num_classes if c.conditional else 0
        self.conditioning_classes = self.K
        c1, c2 = c.channels
        flat = c2 * (self.Hp // 4) * (self.Wp // 4)
        out_per_channel = 1 if c.likelihood == "bernoulli" else 2  # logits | (mean, log-scale)
        self.encoder = nn.Sequential(
            nn.Conv2d(self.C + self.K, c1, 4, 2, 1), nn.SiLU(),  # (B, c1, Hp/2, Wp/2)
            nn.Conv2d(c1, c2, 4, 2, 1), nn.SiLU(),  # (B, c2, Hp/4, Wp/4)
            nn.Flatten(), nn.Linear(flat, c.hidden), nn.SiLU(),
            nn.Linear(c.hidden, 2 * c.latent_dim),  # (B, 2L): mean and log-variance
        )
        self.decoder = nn.Sequential(
            nn.Linear(c.latent_dim + self.K, c.hidden), nn.SiLU(),
            nn.Linear(c.hidden, flat), nn.SiLU(),
            nn.Unflatten(1, (c2, self.Hp // 4, self.Wp // 4)),
            nn.ConvTranspose2d(c2, c1, 4, 2, 1), nn.SiLU(),
            nn.ConvTranspose2d(c1, self.C * out_per_channel, 4, 2, 1),  # (B, C*P, Hp, Wp)
        )
        # Optimizer steps taken, for the KL warm-up. A buffer, so checkpoints carry it and a
        # resumed run continues the schedule exactly (the trainer does not pass its step).
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))

    # -- pieces ------------------------------------------------------------------------
    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.spec.pixel_range
        return ((x.float() - lo) / (hi - lo)).clamp(0.0, 1.0)

    def _from_unit(self, x01: torch.Tensor) -> torch.Tensor:
        lo, hi = self.spec.pixel_range
        return x01 * (hi - lo) + lo

    def _onehot(self, y: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
        if not self.K:
            return None
        if y is None:
            raise GenforgeError("this VAE is conditional: pass class labels (batch['y'] or labels=...)")
        y = torch.as_tensor(y, device=device).long().reshape(-1)
        # Range checks read values (a GPU sync); training labels were checked when the data loaded.
        if y.numel() != n or (not self.training and (y.min() < 0 or y.max() >= self.K)):
            raise GenforgeError(f"need {n} class labels in 0..{self.K - 1}, got {y.tolist()[:8]}")
        return F.one_hot(y, self.K).float()

    def _encode01(self, x01: torch.Tensor, y: torch.Tensor | None):
        """x01 (B, C, H, W) in [0, 1] -> mean, log-variance (B, L)."""
        h = F.pad(x01, (0, self.Wp - self.W, 0, self.Hp - self.H))
        onehot = self._onehot(y, x01.shape[0], x01.device)
        if onehot is not None:  # labels as K constant channels (Sohn et al. 2015)
            h = torch.cat([h, onehot[:, :, None, None].expand(-1, -1, self.Hp, self.Wp)], 1)
        # fp32 from here: under bf16 autocast the KL and the reparameterization lose too much.
        mu, logvar = self.encoder(h).float().chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def _decode_params(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """z (B, L) -> decoder output (B, C*P, H, W): logits, or means and log-scales."""
        onehot = self._onehot(y, z.shape[0], z.device)
        if onehot is not None:
            z = torch.cat([z, onehot], 1)
        return self.decoder(z)[:, :, : self.H, : self.W]

    def _log_px(self, params: torch.Tensor, target01: torch.Tensor) -> torch.Tensor:
        """log p(x|z) summed over pixels: (B,). target01 is binary (bernoulli) or k/255."""
        params = params.float()  # a bin is 1/255 wide: bf16 (8-bit mantissa) cannot resolve it
        if self.config.likelihood == "bernoulli":
            ll = -F.binary_cross_entropy_with_logits(params, target01, reduction="none")
        else:
            mean, log_scale = params.chunk(2, dim=1)
            ll = discretized_logistic_logp(target01 * 2 - 1, mean, log_scale.clamp_min(-7.0))
        return ll.flatten(1).sum(1)

    def _mean01(self, params: torch.Tensor) -> torch.Tensor:
        """Decoder mean image in [0, 1]: pixel probabilities, or logistic means."""
        params = params.float()
        if self.config.likelihood == "bernoulli":
            return torch.sigmoid(params)
        return ((params.chunk(2, dim=1)[0] + 1) / 2).clamp(0.0, 1.0)

    def target(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """What the likelihood scores: binarized pixels ~ Bernoulli(x) for bernoulli, else x in [0, 1]."""
        x01 = self._unit(x)
        return torch.bernoulli(x01, generator=generator) if self.config.likelihood == "bernoulli" else x01

    def kl_weight(self) -> torch.Tensor:
        """beta, scaled by the linear warm-up while steps_done < kl_warmup_steps (0-dim tensor,
        computed on the model's device so that a GPU step never waits for it)."""
        c = self.config
        if c.kl_warmup_steps <= 0:
            return torch.tensor(c.beta, device=self.steps_done.device)
        return c.beta * (self.steps_done.float() / c.kl_warmup_steps).clamp(max=1.0)

    # -- objective ---------------------------------------------------------------------
    def forward(self, batch: Batch, **kwargs) -> dict[str, torch.Tensor]:
        target = self.target(batch["x"])  # (B, C, H, W)
        y = batch.get("y") if self.K else None
        mu, logvar = self._encode01(target, y)  # (B, L) each
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)  # reparameterization trick
        log_px = self._log_px(self._decode_params(z, y), target)  # (B,)
        kl_dims = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)  # KL(q || N(0, I)) per dim, (B, L)
        kl = kl_dims.sum(1)
        if self.config.free_bits > 0:
            # Free bits (Kingma et al. 2016, eq. 15): each dimension's batch-mean KL below
            # lambda costs nothing, so the encoder is not pushed to collapse it.
            kl_term = kl_dims.mean(0).clamp_min(self.config.free_bits).sum()
        else:
            kl_term = kl.mean()
        loss = -log_px.mean() + self.kl_weight() * kl_term
        return {"loss": loss, "elbo": (log_px - kl).mean().detach(), "recon": -log_px.mean().detach(),
                "kl": kl.mean().detach()}

    def train_step(self, micro_batches: list[Batch], ctx) -> dict[str, torch.Tensor | float]:
        """The default step, also reporting ELBO, reconstruction and KL; then count the step.
        Values stay 0-dim tensors: the trainer reads them only when it logs."""
        sums: dict[str, torch.Tensor] = {}
        for batch in ctx.accumulate(micro_batches):
            out = ctx.forward(batch)
            ctx.backward(out["loss"])
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
        grad_norm = ctx.step("main")
        self.steps_done += 1
        return {**{k: v / len(micro_batches) for k, v in sums.items()}, "kl_weight": self.kl_weight(),
                "grad_norm": grad_norm}

    # -- latent tools --------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) in pixel_range -> posterior mean and log-variance (B, L).

        A Bernoulli model saw binary images in training; its encoder is given the grey
        values here (their expectation), the usual deterministic choice for latent tools.
        """
        return self._encode01(self._unit(x), y)

    @torch.no_grad()
    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B, L) -> mean images (B, C, H, W) in pixel_range."""
        return self._from_unit(self._mean01(self._decode_params(z, y)))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.decode(self.encode(x, y)[0], y)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None,
               latent_temperature: float = 1.0) -> torch.Tensor:
        """n images (n, C, H, W) in pixel_range: decoder means at z ~ N(0, latent_temperature^2 I).

        A conditional model needs ``labels`` (n,); without them it cycles through the classes.
        """
        # z beyond ~100 prior standard deviations is far outside anything the decoder saw, and at
        # 1e308 it overflows: NaN images with no error
        if not 0 <= latent_temperature <= 100:  # NaN fails too
            raise GenforgeError(f"latent temperature must be between 0 and 100, got {latent_temperature}")
        device = self.steps_done.device
        if self.K and labels is None:
            labels = torch.arange(n, device=device) % self.K
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device) * latent_temperature
        return self.decode(z, labels)

    @torch.no_grad()
    def preview(self, data, generator: torch.Generator) -> torch.Tensor:
        """64 prior samples; a conditional model shows one row per class (K rows of K)."""
        if self.K:
            k = min(self.K, 10)
            labels = torch.arange(k, device=self.steps_done.device).repeat_interleave(k)
            return self.sample(k * k, generator, labels)
        return self.sample(64, generator)

    # -- likelihood ----------------------------------------------------------------------
    @torch.no_grad()
    def iwae_log_likelihood(self, target01: torch.Tensor, y: torch.Tensor | None = None, k: int = 100,
                            chunk: int = 50, generator: torch.Generator | None = None,
                            with_elbo: bool = False):
        """Importance-weighted bound on log p(x) (Burda et al. 2016, eq. 8), per image: (B,).

        L_k = log (1/k) sum_i p(x, z_i) / q(z_i | x), z_i ~ q(z | x). L_1 is the ELBO
        (in expectation); L_k increases with k towards log p(x). ``target01`` is what
        the likelihood scores: binary for bernoulli (see :meth:`target`), k/255 otherwise.
        ``with_elbo`` also returns the k-sample ELBO estimate mean_i log w_i from the same
        draws, which by Jensen's inequality never exceeds L_k.
        """
        mu, logvar = self._encode01(target01, y)  # (B, L)
        std = torch.exp(0.5 * logvar)
        b, dim = mu.shape
        log_w = []
        for s in range(0, k, chunk):
            m = min(chunk, k - s)
            eps = torch.randn(m, b, dim, generator=generator, device=mu.device)
            z = mu + std * eps  # (m, B, L)
            log_q = (-0.5 * eps.pow(2) - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)
            log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
            rep_y = None if y is None else y.repeat(m)
            params = self._decode_params(z.reshape(m * b, dim), rep_y)
            log_px = self._log_px(params, target01.repeat(m, 1, 1, 1)).reshape(m, b)
            log_w.append(log_px + log_pz - log_q)  # (m, B)
        log_w = torch.cat(log_w)  # (k, B)
        bound = torch.logsumexp(log_w, 0) - math.log(k)
        return (bound, log_w.mean(0)) if with_elbo else bound

    @torch.no_grad()
    def heldout_metrics(self, batches, generator: torch.Generator, iwae_k: int = 100) -> dict[str, float]:
        """On held-out batches: IWAE NLL (nats per image, bits per dimension), the ELBO averaged
        over the same k draws, and active units (Burda et al. 2016, sec. 5.1: dimensions whose posterior mean
        varies across images with variance > 0.01)."""
        nll, elbo, mus, n = 0.0, 0.0, [], 0
        for batch in batches:
            x = batch["x"]
            y = batch.get("y") if self.K else None
            target = self.target(x, generator)  # fixed binarization of the test set
            bound, elbo_k = self.iwae_log_likelihood(target, y, iwae_k, generator=generator, with_elbo=True)
            nll -= float(bound.sum())
            elbo += float(elbo_k.sum())
            mus.append(self._encode01(target, y)[0].cpu())
            n += x.shape[0]
        dims = self.C * self.H * self.W
        active = int((torch.cat(mus).var(0) > 0.01).sum()) if n > 1 else 0
        return {"nll_iwae_nats": nll / n, "nll_bits_per_dim": nll / n / (dims * math.log(2)),
                "elbo_nats": elbo / n, "iwae_k": float(iwae_k), "active_units": float(active),
                "latent_dim": float(self.config.latent_dim)}
