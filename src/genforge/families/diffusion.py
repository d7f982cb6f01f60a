"""Diffusion: start from noise and refine it step by step (Sohl-Dickstein et al. 2015; Ho et al.
2020), unconditional, class-conditional or text-conditional.

The family composes four swappable pieces (see ``genforge.diffusion``), each chosen by config:
the network (``nn.unet.UNet``), the parameterization and loss weighting
(``model.parameterization``, ``model.loss_weighting``), the training noise distribution
(``model.training_noise``) and, at sampling time, the schedule and the sampler
(``--schedule``, ``--sampler``, ``--sampling-steps``). Conditioning is dropped for
``cond_dropout`` of the training rows, so one network is both conditional and unconditional
and classifier-free guidance (``--guidance``) works. Text captions are encoded by a frozen
all-MiniLM-L6-v2 (``nn.text_encoder``): a frozen part, neither trained, saved nor EMA'd.

Images arrive in ``spec.pixel_range``; inside, the model works on [-1, 1].
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from genforge import GenforgeError
from genforge.config import Strict
from genforge.data.images import from_signed, to_signed
from genforge.diffusion import schedules
from genforge.diffusion.denoisers import denoise, diffusion_loss, with_known_region
from genforge.diffusion.likelihood import ode_bits_per_dim
from genforge.diffusion.samplers import SAMPLERS
from genforge.families.base import PROMPT, Batch, GenerativeModel, SampleOption, SamplingPlan
from genforge.nn.unet import UNet
from genforge.watermark.treering import DETERMINISTIC_SAMPLERS

# Classifier-free guidance scales in use run from 1 to about 20 (Ho & Salimans 2022 sweep 0-4;
# Stable Diffusion's default is 7.5); far above, the guided prediction only saturates, and at
# 1e308 it overflows to inf and the images come out NaN with no error.
GUIDANCE_MAX = 100.0


class DiffusionConfig(Strict):
    channels: tuple[int, ...] = (64, 128, 128)
    """UNet width per resolution level; each level after the first halves H and W."""
    blocks: int = Field(2, ge=1)
    """Residual blocks per level (the decoder has one more)."""
    attention: tuple[bool, ...] = (False, True, True)
    """Attention (and, for text, cross-attention) at each level; one entry per level."""
    heads: int = Field(4, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    parameterization: Literal["eps", "x0", "v", "edm"] = "edm"
    """What the network predicts: noise, data, velocity, or EDM preconditioning (Karras et al. 2022)."""
    sigma_data: float = Field(0.5, gt=0.0)
    """Data standard deviation assumed by EDM preconditioning and the likelihood's prior."""
    loss_weighting: Literal["native", "min-snr"] = "native"
    """native: the parameterization's own loss; min-snr: min(SNR, gamma) (Hang et al. 2023)."""
    min_snr_gamma: float = Field(5.0, gt=0.0)
    training_noise: Literal["lognormal", "linear", "cosine"] = "lognormal"
    """Noise levels seen in training: EDM's log-normal, or the 1000 levels of a linear/cosine DDPM schedule."""
    lognormal_mean: float = -1.2
    lognormal_std: float = Field(1.2, gt=0.0)
    conditioning: Literal["none", "class", "text"] = "none"
    """class: class labels; text: captions built from class names, encoded by all-MiniLM-L6-v2."""
    cond_dropout: float = Field(0.1, ge=0.0, le=1.0)
    """Fraction of training rows whose condition is dropped (for classifier-free guidance)."""
    sampler: Literal["ddpm", "ddim", "euler", "heun", "heun-churn", "dpmpp-2m", "dpmpp-2m-sde"] = "dpmpp-2m"
    """Default sampler of `genforge sample`, `eval` and previews."""
    sampling_steps: int = Field(20, ge=1)
    schedule: Literal["karras", "linear", "cosine"] = "karras"
    """Default sampling schedule."""
    guidance: float = Field(2.0, ge=0.0)
    """Default classifier-free guidance scale for conditional models (1: no guidance)."""

    @model_validator(mode="after")
    def _check(self) -> DiffusionConfig:
        if len(self.attention) != len(self.channels) or not self.channels or min(self.channels) < 1:
            raise ValueError("channels must be positive widths, with one attention flag per level")
        if any(c % self.heads for c, on in zip(self.channels, self.attention, strict=True) if on):
            raise ValueError(f"widths of attention levels must be divisible by heads={self.heads}")
        if self.loss_weighting == "min-snr" and self.parameterization == "edm":
            raise ValueError("min-snr weighting is defined for eps, x0 and v; EDM has its own weighting")
        return self


STEP_OPTIONS = (
    SampleOption("sampler", "diffusion: ddpm, ddim, euler, heun, heun-churn (Karras et al. 2022, "
                 "stochastic), dpmpp-2m or dpmpp-2m-sde (Lu et al. 2022, stochastic) (default: the run's)",
                 str, choices=tuple(SAMPLERS)),
    SampleOption("sampling_steps", "diffusion: sampler steps (default: the run's, e.g. 20)", int,
                 metavar="N", minimum=1),
    SampleOption("schedule", "diffusion: karras, linear or cosine sigmas (default: the run's)", str,
                 choices=schedules.SCHEDULES),
    SampleOption("guidance", "diffusion: classifier-free guidance scale (default: the run's; 1 = none)",
                 float, metavar="W"),
    SampleOption("eta", "diffusion: DDIM stochasticity in [0, 1] (default 0)", float, metavar="ETA"),
)


class Diffusion(GenerativeModel):
    Config = DiffusionConfig
    class_conditioning = "model.conditioning=class"
    policy_kind = "gaussian_steps"  # RL: DDPO on the ancestral chain
    sample_options = (
        *STEP_OPTIONS,
        PROMPT,
        SampleOption("init", "diffusion: start from this image (PNG/JPEG, test:INDEX or val:INDEX) "
                             "and re-noise it (SDEdit)", str, metavar="IMAGE"),
        SampleOption("strength", "diffusion --init: how much to re-noise, 0 (keep) to 1 (ignore "
                                 "the image); default 0.6", float, metavar="S"),
        SampleOption("mask", "diffusion --init: inpaint where this mask is white (PNG), or "
                             "left|right|top|bottom|center", str, metavar="MASK"),
        SampleOption("trajectory", "diffusion: also write each step's denoised estimate of the first "
                                   "8 samples (rows) as FILE-trajectory.png", flag=True),
    )
    eval_options = (
        *STEP_OPTIONS,
        SampleOption("bpd_steps", "diffusion: Heun steps of the probability-flow ODE for bits/dim "
                                  "(default 40; 0 skips it)", int, metavar="N", minimum=0),
        SampleOption("bpd_images", "diffusion: test images for bits/dim (default 200)", int, metavar="N",
                     minimum=1),
    )

    def __init__(self, config: DiffusionConfig, spec):
        super().__init__(config, spec)
        if spec.modality != "image" or spec.shape is None or len(spec.shape) != 3:
            raise GenforgeError("the diffusion family models images (C, H, W); pick an image dataset")
        c = config
        self.C, self.H, self.W = spec.shape
        factor = 2 ** (len(c.channels) - 1)
        if self.H % factor or self.W % factor:
            raise GenforgeError(f"{self.H}x{self.W} images do not halve {len(c.channels) - 1} times; use "
                                f"fewer model.channels levels (H and W must be divisible by {factor})")
        if c.conditioning != "none" and spec.num_classes < 2:
            raise GenforgeError(f"model.conditioning={c.conditioning} needs class labels, but dataset "
                                f"'{spec.name}' has none; use labelled data or model.conditioning=none")
        self.K = spec.num_classes if c.conditioning != "none" else 0
        self.conditioning_classes = self.K
        self.prompt_conditioned = c.conditioning == "text"
        context_dim = 0
        if c.conditioning == "text":
            from genforge.data.captions import class_captions
            from genforge.nn.text_encoder import SentenceEncoder

            self.text_encoder = SentenceEncoder()
            context_dim = self.text_encoder.dim
            self._register_captions(class_captions(spec.name, list(spec.class_names)))
        self.net = UNet(self.C, c.channels, c.blocks, c.attention, c.heads, c.dropout,
                        num_classes=self.K if c.conditioning == "class" else 0, context_dim=context_dim)
        if c.training_noise == "lognormal":
            self.sigma_min, self.sigma_max = 0.002, 80.0  # EDM's range (Karras et al. 2022, table 1)
        else:
            levels = schedules.vp_sigmas(c.training_noise)
            self.sigma_min, self.sigma_max = float(levels[0]), min(float(levels[-1]), 160.0)
            self.register_buffer("train_sigmas", levels.float(), persistent=False)

    # -- pieces --------------------------------------------------------------------------
    def frozen_parts(self) -> dict[str, nn.Module]:
        return {"text_encoder": self.text_encoder} if self.config.conditioning == "text" else {}

    def ema_target(self) -> nn.Module:
        return self.net

    def _register_captions(self, per_class: list[list[str]]) -> None:
        """Encode every training caption once (the encoder is frozen): tokens (N, T, E), masks
        (N, T), pooled (N, E), and a (K, M) table of each class's caption rows."""
        flat = [cap for caps in per_class for cap in caps]
        tokens, mask, pooled = self.text_encoder(flat)
        m = max(len(caps) for caps in per_class)
        table, counts, row = torch.zeros(len(per_class), m, dtype=torch.long), [], 0
        for k, caps in enumerate(per_class):
            table[k, : len(caps)] = torch.arange(row, row + len(caps))
            counts.append(len(caps))
            row += len(caps)
        for name, value in {"caption_tokens": tokens, "caption_mask": mask, "caption_pooled": pooled,
                            "caption_table": table, "caption_counts": torch.tensor(counts)}.items():
            self.register_buffer(name, value, persistent=False)  # rebuilt from the encoder, never saved
        self.class_prompts = [caps[0] for caps in per_class]

    def _to_model(self, x: torch.Tensor) -> torch.Tensor:
        return to_signed(x, self.spec.pixel_range)

    def from_model_units(self, x: torch.Tensor) -> torch.Tensor:
        return from_signed(x, self.spec.pixel_range)

    def denoiser(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict | None) -> torch.Tensor:
        """D(x, sigma, cond) -> x0_hat, all in model units ([-1, 1] data)."""
        return denoise(self.net, self.config.parameterization, x, sigma, cond, self.config.sigma_data)

    def _training_sigmas(self, n: int, device, generator=None) -> torch.Tensor:
        c = self.config
        if c.training_noise == "lognormal":  # ln sigma ~ N(P_mean, P_std^2) (EDM, table 1)
            z = torch.randn(n, device=device, generator=generator)
            return (c.lognormal_mean + c.lognormal_std * z).exp()
        t = torch.randint(0, len(self.train_sigmas), (n,), device=device, generator=generator)
        return self.train_sigmas[t]

    def _condition(self, labels: torch.Tensor | None, n: int, device, drop: float = 0.0,
                   generator=None) -> dict | None:
        """The network's cond dict for class labels (B,): labels themselves, or (text) one of
        each class's captions at random. ``drop``: fraction of rows made unconditional."""
        if not self.K:
            return None
        if labels is None:
            raise GenforgeError("this diffusion model is conditional: pass class labels or a prompt")
        labels = labels.to(device).long()
        cond: dict = {"uncond": torch.rand(n, device=device, generator=generator) < drop}
        if self.config.conditioning == "class":
            cond["labels"] = labels
            return cond
        pick = (torch.rand(n, device=device, generator=generator) * self.caption_counts[labels]).long()
        rows = self.caption_table[labels, pick]
        cond.update(context=self.caption_tokens[rows], context_mask=self.caption_mask[rows],
                    pooled=self.caption_pooled[rows])
        return cond

    def encode_prompts(self, prompts: list[str]) -> dict:
        """Captions -> the cond dict of a text model."""
        tokens, mask, pooled = self.text_encoder(prompts)
        return {"context": tokens, "context_mask": mask, "pooled": pooled,
                "uncond": torch.zeros(len(prompts), dtype=torch.bool, device=tokens.device)}

    # -- objective -----------------------------------------------------------------------
    def _loss(self, batch: Batch, generator=None, drop: float = 0.0) -> torch.Tensor:
        c = self.config
        x0 = self._to_model(batch["x"])  # (B, C, H, W) in [-1, 1]
        b = x0.shape[0]
        sigma = self._training_sigmas(b, x0.device, generator)
        noise = torch.randn(x0.shape, device=x0.device, generator=generator)
        cond = self._condition(batch.get("y"), b, x0.device, drop, generator)
        gamma = c.min_snr_gamma if c.loss_weighting == "min-snr" else None
        return diffusion_loss(self.net, c.parameterization, x0, sigma, noise, cond, c.sigma_data, gamma).mean()

    def forward(self, batch: Batch, **kwargs) -> dict[str, torch.Tensor]:
        return {"loss": self._loss(batch, drop=self.config.cond_dropout if self.training else 0.0)}

    @torch.no_grad()
    def evaluate(self, batches) -> dict[str, float]:
        """Validation loss with noise levels and noise drawn from a fixed seed per batch, so that
        checkpoints are compared on the same draws (the random-sigma loss is otherwise noisy)."""
        total, n = 0.0, 0
        for i, batch in enumerate(batches):
            device = batch["x"].device
            g = torch.Generator(device=device).manual_seed(1000 + i)
            total += float(self._loss(batch, generator=g))
            n += 1
        return {"loss": total / max(n, 1)}

    # -- sampling ------------------------------------------------------------------------
    def _resolve(self, sampler, sampling_steps, schedule, guidance, eta):
        c = self.config
        sampler = sampler or c.sampler
        steps = sampling_steps or c.sampling_steps
        schedule = schedule or c.schedule
        guidance = c.guidance if guidance is None else guidance
        if not 0 <= guidance <= GUIDANCE_MAX:  # NaN fails too
            raise GenforgeError(f"--guidance must be between 0 and {GUIDANCE_MAX:g}, got {guidance}")
        if eta is not None and sampler != "ddim":
            raise GenforgeError(f"--eta applies to the ddim sampler, not {sampler}")
        if eta is not None and not 0 <= eta <= 1:
            raise GenforgeError(f"--eta must be in [0, 1], got {eta}")
        if sampler not in SAMPLERS:
            raise GenforgeError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")
        if schedule not in schedules.SCHEDULES:
            raise GenforgeError(f"unknown schedule '{schedule}'; choose one of {', '.join(schedules.SCHEDULES)}")
        return sampler, steps, schedule, guidance, eta

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, labels: torch.Tensor | None = None,
               sampler: str | None = None, sampling_steps: int | None = None, schedule: str | None = None,
               guidance: float | None = None, eta: float | None = None, prompt: list[str] | None = None,
               init: torch.Tensor | None = None, strength: float | None = None,
               mask: torch.Tensor | None = None, trajectory: bool = False, callback=None,
               noise_mark=None) -> torch.Tensor:
        """n images (n, C, H, W) in pixel_range.

        ``labels`` (n,) condition a class or text model (text: the class's first caption);
        ``prompt`` (captions, cycled over the n images) conditions a text model. ``init`` (C, H, W) in pixel_range
        starts from that image noised to ``strength`` (SDEdit); ``mask`` (1, H, W) in {0, 1}
        regenerates only where it is 1 (inpainting). Both work with every sampler.
        ``callback(info)`` is called once per step (``samplers.py``: progress, trajectories);
        ``trajectory`` is the CLI's switch for one, resolved by :meth:`plan_sampling`.
        ``noise_mark`` maps the unit initial noise (n, C, H, W) to a watermarked one (Tree-Ring,
        ``watermark/treering.py``); it needs pure noise, so not with ``init``.
        """
        guidance_given = guidance is not None
        sampler, steps, schedule, guidance, eta = self._resolve(sampler, sampling_steps, schedule, guidance, eta)
        device = next(self.net.parameters()).device
        cond = self._sampling_condition(n, labels, prompt, device)
        if guidance_given and cond is None:
            raise GenforgeError("--guidance needs a class- or text-conditional model; this one is "
                                "unconditional")
        sigmas = schedules.sampling_sigmas(schedule, steps, self.sigma_min, self.sigma_max)
        denoiser = self.denoiser
        shape = (n, self.C, self.H, self.W)
        if (strength is not None or mask is not None) and init is None:
            raise GenforgeError("--strength and --mask edit an image: give it with --init")
        if init is not None and noise_mark is not None:
            raise GenforgeError("a noise watermark (Tree-Ring) marks pure initial noise; --init starts "
                                "from an image, so it cannot carry one")
        if init is not None:
            known = self._to_model(init.to(device)).expand(shape)
            if mask is not None:
                denoiser = with_known_region(self.denoiser, known, mask.to(device).float())
                strength = 1.0 if strength is None else strength
            strength = 0.6 if strength is None else strength
            if not 0 <= strength <= 1:
                raise GenforgeError(f"--strength must be in [0, 1], got {strength}")
            sigmas = schedules.truncate_for_strength(sigmas, strength)
            x = known + float(sigmas[0]) * torch.randn(shape, device=device, generator=generator)
        else:
            noise = torch.randn(shape, device=device, generator=generator)
            x = float(sigmas[0]) * (noise if noise_mark is None else noise_mark(noise))
        extra = {"eta": eta} if eta is not None else {}
        # no progress bar here: the CLI passes one as ``callback`` (plan_sampling: per_step)
        x = SAMPLERS[sampler](denoiser, x, sigmas, cond=cond, guidance=guidance if cond else 1.0,
                              generator=generator, callback=callback, **extra)
        return self.from_model_units(x)

    def _sampling_condition(self, n: int, labels, prompt: list[str] | None, device) -> dict | None:
        if prompt:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if self.config.conditioning != "text":
                raise GenforgeError("--prompt needs a text-conditional diffusion model "
                                    "(model.conditioning=text)")
            if not all(p.strip() for p in prompts):
                raise GenforgeError("--prompt is empty; describe the image to draw")
            cond = self.encode_prompts(prompts)
            rows = torch.arange(n, device=device) % len(prompts)
            return {k: v.to(device)[rows] for k, v in cond.items()}
        if not self.K:
            return None
        if labels is None:
            labels = torch.arange(n, device=device) % self.K
        labels = torch.as_tensor(labels, device=device).long().reshape(-1)
        if labels.numel() != n or labels.min() < 0 or labels.max() >= self.K:
            raise GenforgeError(f"need {n} class labels in 0..{self.K - 1}")
        if self.config.conditioning == "class":
            return {"labels": labels, "uncond": torch.zeros(n, dtype=torch.bool, device=device)}
        rows = self.caption_table[labels, 0]  # each class's first caption, "a <name>"
        return {"context": self.caption_tokens[rows], "context_mask": self.caption_mask[rows],
                "pooled": self.caption_pooled[rows], "uncond": torch.zeros(n, dtype=torch.bool, device=device)}

    def plan_sampling(self, options, num_samples, refs) -> SamplingPlan:
        """--init/--mask references become tensors (``refs``: the image modality's resolver);
        --trajectory keeps each step's denoised estimate of the first batch's first 8 samples
        and adds them as FILE-trajectory.png, one row per sample, noise to image."""
        options = dict(options)
        if options.get("init") is not None:
            options["init"] = refs.image(options["init"])
        if options.get("mask") is not None:
            options["mask"] = refs.mask(options["mask"])
        # Tree-Ring needs x_T to decide the image: a deterministic sampler from pure noise
        sampler, eta = options.get("sampler") or self.config.sampler, options.get("eta")
        if refs is not None and options.get("init") is None and not eta and sampler in DETERMINISTIC_SAMPLERS:
            options["noise_mark"] = refs.noise_mark((self.C, self.H, self.W))
        plan = SamplingPlan(options, per_step=True)
        if options.pop("trajectory", False):
            frames: list[torch.Tensor] = []  # (8, C, H, W) per step, model units

            def keep(info):
                if len(frames) < info["steps"]:  # the first batch only
                    frames.append(info["denoised"][:8].cpu())

            def grid():  # (rows * steps, C, H, W) in pixel range
                return {"trajectory": (self.from_model_units(torch.stack(frames, 1)).flatten(0, 1), len(frames))}

            plan.on_step, plan.extras = keep, grid
        return plan

    @torch.no_grad()
    def preview(self, data, generator: torch.Generator) -> torch.Tensor:
        """64 samples; a conditional model shows one row per class (K rows of K)."""
        if self.K:
            k = min(self.K, 10)
            labels = torch.arange(k, device=next(self.net.parameters()).device).repeat_interleave(k)
            return self.sample(k * k, generator, labels)
        return self.sample(64, generator)

    # -- likelihood ----------------------------------------------------------------------
    def heldout_metrics(self, batches, generator: torch.Generator, bpd_steps: int = 40,
                        bpd_images: int = 200) -> dict[str, float]:
        """Bits/dim on test images through the probability-flow ODE (``diffusion.likelihood``),
        conditioned on the true class for conditional models (an upper bound in expectation)."""
        if bpd_steps <= 0:
            return {}
        sigmas = schedules.likelihood_sigmas(bpd_steps, self.sigma_min, self.sigma_max)  # bpd_steps Heun steps
        total, n = 0.0, 0
        for batch in batches:
            x = self._to_model(batch["x"])[: bpd_images - n]
            if x.shape[0] == 0:
                break
            y = batch.get("y")
            # the generator, not the global RNG, picks a text model's caption per image
            cond = self._condition(y[: x.shape[0]], x.shape[0], x.device, generator=generator) if self.K else None
            bits = ode_bits_per_dim(self.denoiser, x, sigmas, generator, cond, sigma_data=self.config.sigma_data)
            total += float(bits.sum())
            n += x.shape[0]
        return {"bits_per_dim": total / n, "bpd_images": float(n), "bpd_steps": float(bpd_steps)}
