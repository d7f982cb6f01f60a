"""GAN: a generator and a discriminator in a minimax game (Goodfellow et al. 2014).

Networks: DCGAN-style (Radford et al. 2016) or residual (SNGAN, Miyato et al. 2018; BigGAN,
Brock et al. 2019) generator and discriminator, sized from the image shape (8x8 to 64x64,
any channel count). Losses: non-saturating (Goodfellow et al. 2014, sec. 3), hinge (Lim & Ye
2017; Miyato et al. 2018) or Wasserstein with gradient penalty (Gulrajani et al. 2017).
Regularizers: spectral normalization of the discriminator (Miyato et al. 2018), the R1
penalty on real data, applied lazily every k steps (Mescheder et al. 2018; Karras et al.
2020, sec. 3.1), DiffAugment on both real and fake images (Zhao et al. 2020) and the two
time-scale update rule (Heusel et al. 2017: ``train.optim.d.lr``). Conditional models use
conditional batch norm in the generator and a projection discriminator (Miyato & Koyama 2018).

A GAN has no meaningful validation loss, so evaluation scores a small fixed sample in the
dataset's fixed feature space (FD, class entropy, precision/recall) and ``best`` is the
lowest FD. Training stops with a clear message if the discriminator wins completely for
``divergence_patience`` steps in a row.

Images arrive in ``spec.pixel_range``; inside, the model works on [-1, 1].
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from genforge import GenforgeError
from genforge.config import Strict
from genforge.data.images import from_signed, to_signed, to_unit
from genforge.families.base import (
    INTERP_POINTS,
    Batch,
    Diverged,
    GenerativeModel,
    SampleOption,
    SamplingPlan,
    Selection,
)
from genforge.nn.gan_nets import Discriminator, Generator

AUGMENTS = ("translation", "cutout", "color")


class GANConfig(Strict):
    arch: Literal["dcgan", "resnet"] = "dcgan"
    z_dim: int = Field(64, ge=1)
    g_width: int = Field(64, ge=1)
    """Generator channels at full resolution; doubled at each lower resolution."""
    d_width: int = Field(64, ge=1)
    """Discriminator channels at full resolution; doubled at each lower resolution."""
    loss: Literal["ns", "hinge", "wgan-gp"] = "hinge"
    """ns: non-saturating; hinge; wgan-gp: Wasserstein with gradient penalty."""
    spectral_norm: bool = True
    """Spectral normalization on every discriminator layer."""
    gp_weight: float = Field(10.0, ge=0.0)
    """lambda of the WGAN-GP gradient penalty (wgan-gp only)."""
    r1_gamma: float = Field(0.0, ge=0.0)
    """gamma of the R1 penalty on real images; 0 turns it off."""
    r1_every: int = Field(16, ge=1)
    """Apply R1 every k discriminator steps, scaled by k (lazy regularization)."""
    diffaugment: str = ""
    """Comma-separated DiffAugment policies: translation, cutout, color ('' for none)."""
    conditional: bool = False
    """Class-conditional: conditional batch norm in G, projection D; needs labelled data."""
    d_steps: int = Field(1, ge=1)
    """Discriminator steps per generator step (on the same real batch, fresh fakes)."""
    eval_samples: int = Field(512, ge=16)
    """Generated images scored at each evaluation (against the validation batches)."""
    divergence_patience: int = Field(1000, ge=0)
    """Stop when D classifies every real and fake image right for this many steps in a row; 0: never."""

    @model_validator(mode="after")
    def _check(self) -> GANConfig:
        bad = [a for a in self.augments if a not in AUGMENTS]
        if bad:
            raise ValueError(f"unknown diffaugment policy {bad[0]!r}; choose from {', '.join(AUGMENTS)}")
        if self.loss != "wgan-gp" and self.gp_weight != 10.0:
            raise ValueError("gp_weight applies to loss=wgan-gp only")
        return self

    @property
    def augments(self) -> list[str]:
        return [a.strip() for a in self.diffaugment.split(",") if a.strip()]


# --------------------------------------------------------------------------- losses (pure)


def discriminator_loss(kind: str, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Mean D loss from logits (B,). ns: -log s(r) - log(1 - s(f)); hinge: relu(1 - r) + relu(1 + f);
    wgan-gp: f - r (the penalty is added separately)."""
    if kind == "ns":
        return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()
    if kind == "hinge":
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
    if kind == "wgan-gp":
        return fake_logits.mean() - real_logits.mean()
    raise ValueError(f"unknown GAN loss '{kind}'")


def generator_loss(kind: str, fake_logits: torch.Tensor) -> torch.Tensor:
    """Mean G loss: ns: -log s(f) (the non-saturating form); hinge and wgan-gp: -f."""
    if kind == "ns":
        return F.softplus(-fake_logits).mean()
    if kind in ("hinge", "wgan-gp"):
        return -fake_logits.mean()
    raise ValueError(f"unknown GAN loss '{kind}'")


def gradient_penalty(critic, real: torch.Tensor, fake: torch.Tensor, y=None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017, eq. 3): E (||grad_x critic(x_hat)||_2 - 1)^2 at random points
    x_hat on lines between real and fake images. Zero only where the critic is 1-Lipschitz there."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat, y).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018, eq. 9 without gamma/2): E ||grad_x D(x)||^2 on real images;
    ``real`` must require grad and ``real_logits`` be computed from it. Never negative."""
    (grad,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


# --------------------------------------------------------------------------- DiffAugment


def diff_augment(x: torch.Tensor, policies: list[str]) -> torch.Tensor:
    """Differentiable augmentations (Zhao et al. 2020, "Differentiable Augmentation for
    Data-Efficient GAN Training", sec. 3): the same kinds applied to real and fake images
    before D, so D cannot memorize a small training set. x (B, C, H, W) in [-1, 1]."""
    b, _, h, w = x.shape
    for policy in policies:
        if policy == "color":  # brightness, saturation, contrast, per image
            x = x + (torch.rand(b, 1, 1, 1, device=x.device) - 0.5)
            mean = x.mean(1, keepdim=True)
            x = (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device) * 2) + mean
            mean = x.mean((1, 2, 3), keepdim=True)
            x = (x - mean) * (torch.rand(b, 1, 1, 1, device=x.device) + 0.5) + mean
        elif policy == "translation":  # shift by up to 1/8 of the size, zero-padded
            dy, dx = (torch.randint(-(s // 8), s // 8 + 1, (b,), device=x.device) for s in (h, w))
            rows = (torch.arange(h, device=x.device)[None] - dy[:, None])  # (B, H)
            cols = (torch.arange(w, device=x.device)[None] - dx[:, None])  # (B, W)
            valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
            gathered = x[torch.arange(b, device=x.device)[:, None, None], :, rows.clamp(0, h - 1)[:, :, None],
                         cols.clamp(0, w - 1)[:, None, :]]  # (B, H, W, C)
            x = gathered.permute(0, 3, 1, 2) * valid[:, None].to(x.dtype)
        elif policy == "cutout":  # zero a square of half the size at a random place
            ch, cw = h // 2, w // 2
            cy = torch.randint(0, h - ch + 1, (b,), device=x.device)
            cx = torch.randint(0, w - cw + 1, (b,), device=x.device)
            ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
            inside = (((ys[None] >= cy[:, None]) & (ys[None] < cy[:, None] + ch))[:, :, None]
                      & ((xs[None] >= cx[:, None]) & (xs[None] < cx[:, None] + cw))[:, None, :])
            x = x * (~inside)[:, None].to(x.dtype)
    return x


# --------------------------------------------------------------------------- the family


class GAN(GenerativeModel):
    Config = GANConfig
    class_conditioning = "model.conditional=true"
    selection = Selection("fd", "min")
    sample_options = (
        SampleOption("truncation", "gan: resample latent entries beyond +-T (truncation trick; "
                                   "default: none)", float, metavar="T"),
        SampleOption("interpolate_seeds", "gan: the latent path between the latents of two seeds",
                     int, nargs=2, metavar=("A", "B")),
        INTERP_POINTS,
    )

    def __init__(self, config: GANConfig, spec):
        super().__init__(config, spec)
        if spec.modality != "image" or spec.shape is None or len(spec.shape) != 3:
            raise GenforgeError("the gan family models images (C, H, W); pick an image dataset")
        c, (_, h, w) = config, spec.shape
        if min(h, w) < 8 or max(h, w) > 256:
            raise GenforgeError(f"the gan family handles 8x8 to 256x256 images, got {h}x{w}")
        if c.conditional and spec.num_classes < 2:
            raise GenforgeError(f"model.conditional=true needs class labels, but dataset '{spec.name}' "
                                "has none; use labelled data or set model.conditional=false")
        self.K = spec.num_classes if c.conditional else 0
        self.conditioning_classes = self.K
        self.generator = Generator(c, spec.shape, self.K)
        self.discriminator = Discriminator(c, spec.shape, self.K)
        # Steps in a row in which D was right about every real and fake image (divergence watch);
        # a buffer, so a resumed run continues the count.
        self.register_buffer("d_wins_in_a_row", torch.zeros((), dtype=torch.long))
        self._extractor = None
        self._data = None  # the run's data (bind_data); its test split picks the extractor

    def ema_target(self) -> nn.Module:
        return self.generator

    def optimizer_groups(self) -> dict[str, list[dict]]:
        # GAN practice: no weight decay on either network (Radford et al. 2016; Brock et al. 2019).
        return {"d": [{"params": list(self.discriminator.parameters()), "decay": False}],
                "g": [{"params": list(self.generator.parameters()), "decay": False}]}

    # -- pieces --------------------------------------------------------------------------
    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        return to_signed(x, self.spec.pixel_range)

    def _from_model(self, x: torch.Tensor) -> torch.Tensor:
        return from_signed(x, self.spec.pixel_range)

    def latents(self, n: int, generator=None, truncation: float | None = None, device=None) -> torch.Tensor:
        """z ~ N(0, I) (n, z_dim); with ``truncation`` t, entries beyond +-t are redrawn until
        inside (the truncation trick, Brock et al. 2019, sec. 3.1): fidelity for variety."""
        device = device or self.d_wins_in_a_row.device
        z = torch.randn(n, self.config.z_dim, generator=generator, device=device)
        if truncation is not None:
            if not (math.isfinite(truncation) and truncation > 0):
                raise GenforgeError(f"--truncation must be a positive number, got {truncation}")
            for _ in range(100):
                out = z.abs() > truncation
                if not out.any():
                    break
                z = torch.where(out, torch.randn(z.shape, generator=generator, device=device), z)
            z = z.clamp(-truncation, truncation)
        return z

    def _labels(self, y: torch.Tensor | None, n: int, device) -> torch.Tensor | None:
        if not self.K:
            return None
        if y is None:
            return torch.randint(0, self.K, (n,), device=device)
        return y.to(device).long()

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.config.augments) if self.config.augments else x

    # -- objective -----------------------------------------------------------------------
    def forward(self, batch: Batch, part: str = "g", r1: bool = False) -> dict[str, torch.Tensor]:
        """``part="d"``: the discriminator's loss (+ GP, + lazy R1 when ``r1``); ``part="g"``:
        the generator's. Both report ``loss``."""
        c = self.config
        real = self._to_model(batch["x"])  # (B, C, H, W) in [-1, 1]
        b = real.shape[0]
        y = self._labels(batch.get("y"), b, real.device)
        fake = self.generator(self.latents(b, device=real.device), y)
        if part == "g":
            return {"loss": generator_loss(c.loss, self.discriminator(self._augment(fake), y))}
        if part != "d":
            raise ValueError(f"part must be 'd' or 'g', got {part!r}")
        fake = fake.detach()
        real_in = real.detach().requires_grad_(r1)
        real_logits = self.discriminator(self._augment(real_in), y)
        fake_logits = self.discriminator(self._augment(fake), y)
        loss = discriminator_loss(c.loss, real_logits, fake_logits)
        out = {"d_real": real_logits.detach().mean(), "d_fake": fake_logits.detach().mean(),
               "d_wins": ((real_logits > 0).all() & (fake_logits < 0).all()).detach()}
        if c.loss == "wgan-gp":
            gp = gradient_penalty(lambda x, yy: self.discriminator(self._augment(x), yy), real, fake, y)
            loss = loss + c.gp_weight * gp
            out["gp"] = gp.detach()
        if r1:  # lazy: every r1_every steps, times r1_every (Karras et al. 2020, sec. 3.1)
            penalty = r1_penalty(real_logits, real_in)
            loss = loss + c.r1_gamma / 2 * penalty * c.r1_every
            out["r1"] = penalty.detach()
        out["loss"] = loss
        return out

    def train_step(self, micro_batches: list[Batch], ctx) -> dict[str, torch.Tensor | float]:
        """D (``d_steps`` times), then G. Each step's backward runs with the other network frozen,
        and ``ctx.step`` clears every gradient, so neither optimizer sees the other's gradients."""
        c = self.config
        d_out: dict[str, torch.Tensor] = {}
        for _ in range(c.d_steps):
            r1 = c.r1_gamma > 0 and ctx.global_step % c.r1_every == 0
            for batch in ctx.accumulate(micro_batches):
                with ctx.frozen(self.generator):
                    d_out = ctx.forward(batch, part="d", r1=r1)
                    ctx.backward(d_out["loss"])
            d_norm = ctx.step("d")
        g_losses = []
        for batch in ctx.accumulate(micro_batches):
            with ctx.frozen(self.discriminator):
                g_out = ctx.forward(batch, part="g")
                ctx.backward(g_out["loss"])
                g_losses.append(g_out["loss"].detach())
        g_norm = ctx.step("g")
        # Divergence watch: count steps in a row where D is right about everything.
        self.d_wins_in_a_row.mul_(d_out["d_wins"].long()).add_(d_out["d_wins"].long())
        if c.divergence_patience and ctx.global_step % 50 == 0 and \
                int(self.d_wins_in_a_row) >= c.divergence_patience:
            raise Diverged(f"the discriminator has classified every real and fake image correctly for "
                           f"{int(self.d_wins_in_a_row)} steps in a row: the generator gets no useful "
                           "gradient. Try model.diffaugment=translation,cutout, a lower train.optim.d.lr, "
                           "or model.r1_gamma")
        g_loss = torch.stack(g_losses).mean()
        return {"loss": g_loss + d_out["loss"].detach(), "g_loss": g_loss, "d_loss": d_out["loss"].detach(),
                "d_real": d_out["d_real"], "d_fake": d_out["d_fake"], "g_grad_norm": g_norm,
                "d_grad_norm": d_norm, **({"r1": d_out["r1"]} if "r1" in d_out else {}),
                **({"gp": d_out["gp"]} if "gp" in d_out else {})}

    # -- health --------------------------------------------------------------------------
    def bind_data(self, data) -> None:
        """Selection scores in the extractor of *this run's* test split (found by its content
        hash, as `eval` and RL find theirs). Loading the dataset by name would give the default
        split, whose extractor, with another data.val_fraction, was trained on part of this
        run's test images."""
        if self._data is not data:
            self._data, self._extractor = data, None

    def extractor(self):
        """The fixed feature extractor of the bound data's test split (loaded once)."""
        if self._extractor is None:
            from genforge.metrics.extractor import load_extractor

            if self._data is None:
                raise GenforgeError("the gan's evaluation needs the run's data: call "
                                    "model.bind_data(data) first (the trainer does)")
            self._extractor = load_extractor(self._data)
        return self._extractor

    @torch.no_grad()
    def evaluate(self, batches) -> dict[str, float]:
        """FD, class entropy and precision/recall of ``eval_samples`` images from a fixed seed
        against the given (fixed) validation images, in the extractor's features, plus the
        discriminator's mean logits on both."""
        from genforge.metrics.classes import class_histogram, histogram_entropy
        from genforge.metrics.frechet import frechet_distance
        from genforge.metrics.manifold import precision_recall

        real = torch.cat([b["x"] for b in batches])
        device = real.device
        n = self.config.eval_samples
        g = torch.Generator(device=device).manual_seed(0)
        labels = torch.arange(n, device=device) % self.K if self.K else None
        fake = torch.cat([self.sample(min(256, n - s), g, None if labels is None else labels[s:s + 256])
                          for s in range(0, n, 256)])
        extractor = self.extractor()
        f_real, _ = extractor.run(to_unit(real, self.spec.pixel_range).cpu())
        f_fake, p_fake = extractor.run(to_unit(fake, self.spec.pixel_range).cpu())
        out = {"fd": frechet_distance(f_real, f_fake)}
        _, out["class_entropy_norm"] = histogram_entropy(class_histogram(p_fake))
        out["precision"], out["recall"] = precision_recall(f_real, f_fake, k=3)
        return out

    # -- sampling ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None,
               truncation: float | None = None, interpolate_seeds: tuple[int, int] | None = None,
               interp_points: int = 8) -> torch.Tensor:
        """n images (n, C, H, W) in pixel_range from the generator. A conditional model needs
        ``labels`` (n,), else cycles through the classes. ``interpolate_seeds`` (a, b) returns
        ``interp_points`` images on the spherical path between the latents of seeds a and b."""
        device = self.d_wins_in_a_row.device
        if interpolate_seeds is not None:
            from genforge.sampling.images import slerp

            za, zb = (self.latents(1, torch.Generator(device=device).manual_seed(int(s)), truncation, device)
                      for s in interpolate_seeds)
            t = torch.linspace(0, 1, interp_points, device=device)
            z = slerp(za[0], zb[0], t)  # (interp_points, z_dim)
            n = interp_points
            if self.K and labels is not None:
                labels = labels[:1].expand(n)
        else:
            z = self.latents(n, generator, truncation, device)
        if self.K:
            labels = torch.arange(n, device=device) % self.K if labels is None else labels.to(device).long()
        was_training = self.generator.training
        self.generator.eval()  # batch norm with running statistics: a sample never depends on its batch
        try:
            return self._from_model(self.generator(z, labels))
        finally:
            self.generator.train(was_training)

    @torch.no_grad()
    def preview(self, data, generator: torch.Generator) -> torch.Tensor:
        """64 samples; a conditional model shows one row per class (K rows of K)."""
        if self.K:
            k = min(self.K, 10)
            return self.sample(k * k, generator, torch.arange(k, device=self.d_wins_in_a_row.device).repeat_interleave(k))
        return self.sample(64, generator)

    def plan_sampling(self, options, num_samples, refs) -> SamplingPlan:
        """--interpolate-seeds: --interp-points images on one latent path, one row."""
        if not options.get("interpolate_seeds"):
            return SamplingPlan(dict(options))
        if num_samples is not None:
            raise GenforgeError("--interpolate-seeds draws --interp-points images; drop --num-samples")
        from genforge.data.grids import check_grid_size

        check_grid_size(options["interp_points"], "lower --interp-points (a path is one PNG row)")
        return SamplingPlan(dict(options), count=options["interp_points"], one_row=True)
