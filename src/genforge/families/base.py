"""The contract between a family and the generic trainer, the run loader and the CLI.

A family is an ``nn.Module`` subclass of :class:`GenerativeModel`. It owns its
losses and the order of its optimizer steps (``train_step``); the trainer owns
device, precision, accumulation, clipping, LR, EMA, logging, checkpoints and
DDP, and hands those to the family through a :class:`StepContext` (a family
never imports the trainer). Everything else a family tells the rest of genforge
is *declared* here, never probed with ``hasattr``:

- ``Config``            its pydantic model config ([model] in a preset);
- ``data_needs``        what the data layer must know from the model config (a GPT's context);
- ``optimizer_groups``  named optimizers, each overridable by ``[train.optim.<name>]``;
- ``frozen_parts``      pretrained pieces that are never trained, saved, EMA'd or DDP-wrapped;
- ``ema_target``        what EMA averages (a GAN: its generator);
- ``selection``         which evaluation metric picks ``checkpoints/best`` (None: keep none);
- ``sample_options``    extra ``genforge sample`` options (a diffusion sampler, steps, guidance),
                        and ``eval_options`` for ``genforge eval`` (a VAE's IWAE k);
- ``conditioning_classes``  how many class labels the model is conditioned on (0: none);
- ``prompt_conditioned``    whether an image family draws from text prompts (serve's accepts_prompt);
- ``policy_kind``       what `genforge rl` steers (token log-probs, Gaussian chain steps, or none).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel
from torch import nn

from genforge import GenforgeError
from genforge.data.spec import DataSpec

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Selection:
    """``checkpoints/best`` keeps the checkpoint whose evaluation ``metric`` is lowest (min) or
    highest (max); evaluated with the weights sampling uses (EMA when it is on)."""

    metric: str = "loss"
    mode: Literal["min", "max"] = "min"

    def better(self, new: float, old: float | None) -> bool:
        if old is None:
            return True
        return new < old if self.mode == "min" else new > old


@dataclass(frozen=True)
class SampleOption:
    """One ``genforge sample`` option a modality or family declares; the CLI exposes it and
    refuses it on runs it does not apply to. ``name`` is the keyword the sampler receives."""

    name: str
    help: str
    type: Any = str
    default: Any = None
    nargs: int | str | None = None
    choices: tuple | None = None
    flag: bool = False  # a switch: --name-with-dashes sets True
    repeat: bool = False  # may be given several times; the value is a list
    minimum: int | None = None  # the smallest value a number may take
    metavar: str | None = None
    const: Any = None  # with nargs="?": the value of the bare option (--privacy-filter alone)

    @property
    def cli(self) -> str:
        return "--" + self.name.replace("_", "-")


# One --prompt for every kind of run: text to continue (text runs) or a caption to draw
# (text-to-image runs). Declared once so the CLI has one definition.
PROMPT = SampleOption("prompt", "text runs: text to continue (default: a newline); text-to-image runs: "
                                "the caption to draw. Repeat for several prompts", str, metavar="TEXT",
                      repeat=True)


# Shared by the token modalities; None lets each pick its default (text 0.8, molecules 1.0:
# MOSES samples at the model's own distribution).
TEMPERATURE = SampleOption("temperature", "softmax temperature; 0 is greedy (default: 0.8 for text, "
                                          "1.0 for molecules)", float, metavar="T")


INTERP_POINTS = SampleOption("interp_points", "points on an interpolation path (default 8)", int, 8,
                             metavar="N", minimum=2)


@dataclass
class SamplingPlan:
    """What a family's own `genforge sample` options mean for one request (its
    :meth:`GenerativeModel.plan_sampling`), so a modality names no family's option."""

    options: dict[str, Any]  # keyword arguments for ``sample``, references already resolved
    count: int | None = None  # images drawn whatever --num-samples says (a GAN's seed path)
    one_row: bool = False  # a path: drawn in one call, laid out as one row
    per_step: bool = False  # ``sample`` takes ``callback(info)`` once per step (progress)
    on_step: Callable[[dict], None] | None = None  # the family's own per-step observer
    extras: Callable[[], dict[str, tuple[torch.Tensor, int]]] = dict
    """After sampling: extra grids to write beside the output, name suffix -> (images, nrow)."""


class Diverged(GenforgeError):
    """Raised by a family's ``train_step`` when training has failed beyond repair (a GAN's
    discriminator winning outright); the trainer adds the step and the last good checkpoint."""


class StopTraining(GenforgeError):
    """Raised by a family's ``train_step`` or a batch source to end training early and cleanly
    (an RL guard rail: diversity collapsed, KL over budget, oracle budget spent). The trainer
    logs ``metrics`` and the reason, checkpoints, and returns normally."""

    def __init__(self, reason: str, metrics: dict[str, float] | None = None):
        super().__init__(reason)
        self.reason, self.metrics = reason, metrics or {}


class StepContext(Protocol):
    """What the trainer offers a family inside one optimizer step."""

    global_step: int
    """Optimizer steps completed before this one (for lazy regularizers, schedules)."""

    def accumulate(self, micro_batches: list[Batch]) -> Iterable[Batch]:
        """Yield micro-batches; gradients are all-reduced only on the last (DDP)."""

    def forward(self, batch: Batch, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Call the (DDP-wrapped, compiled, autocast) model's forward."""

    def backward(self, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` scaled for gradient accumulation."""

    def step(self, optimizer: str) -> torch.Tensor:
        """Clip, set the LR, step one named optimizer, then clear every gradient of the model
        (so one optimizer's backward never leaks into another's step); return the grad norm."""

    def frozen(self, module: nn.Module) -> contextlib.AbstractContextManager:
        """Within the block, ``module``'s parameters take no gradient (a GAN's D while G steps)."""


# Drawing samples and held-out numbers: dropout off, batch-norm running statistics, whatever
# mode the caller left the model in (issue #16: previews ran with dropout on).
SAMPLING_METHODS = ("sample", "preview", "heldout_metrics")


def in_eval_mode(method):
    """``method`` run with the model in eval mode, the caller's mode restored afterwards."""
    if getattr(method, "in_eval_mode", False):
        return method

    @functools.wraps(method)
    def run(self, *args: Any, **kwargs: Any) -> Any:
        was_training = self.training
        if was_training:
            self.eval()
        try:
            return method(self, *args, **kwargs)
        finally:
            if was_training:
                self.train()

    run.in_eval_mode = True
    return run


class GenerativeModel(nn.Module):
    """Base class of every family. Subclasses set ``Config`` and implement ``forward``."""

    Config: type[BaseModel]
    selection: Selection | None = Selection("loss", "min")
    progress_keys: tuple[str, ...] = ("loss",)
    """Training metrics the progress bar shows (an RL policy: reward, KL, diversity)."""
    sample_options: tuple[SampleOption, ...] = ()
    eval_options: tuple[SampleOption, ...] = ()
    class_conditioning: str | None = None
    """The override that trains this family class-conditional (hints), e.g. "model.conditional=true"."""
    policy_kind: Literal["tokens", "gaussian_steps"] | None = None
    """How `genforge rl` steers it: per-token log-probs (``token_logprobs``: PPO/GRPO), per-step
    Gaussian log-probs of an ancestral sampling chain (DDPO), or None: no RL."""

    def __init__(self, config: BaseModel, spec: DataSpec):
        super().__init__()
        self.config = config
        self.spec = spec
        self.conditioning_classes = 0
        self.prompt_conditioned = False  # image families: sample(prompt=...) draws captions (text-to-image)

    @classmethod
    def data_needs(cls, config: BaseModel) -> dict[str, Any]:
        """What the data layer needs from this family's config, e.g. {"block_size": 64}."""
        return {}

    # -- parts -------------------------------------------------------------------------
    def frozen_parts(self) -> dict[str, nn.Module]:
        """Attribute name -> pretrained sub-module that is never trained, checkpointed, EMA'd or
        DDP-synchronized; the constructor rebuilds (reloads) it."""
        return {}

    def ema_target(self) -> nn.Module:
        """The sub-module whose weights EMA averages (a GAN returns its generator)."""
        return self

    def bind_data(self, data: Any) -> None:
        """The run's own data object (its splits, as this run drew them), handed over by the
        trainer before training. A family whose evaluation depends on the data beyond its spec
        keeps what it needs (the GAN: the extractor fitted on *this* test split). Default: nothing."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name in SAMPLING_METHODS:  # every family's, declared or inherited, runs in eval mode
            if name in cls.__dict__:
                setattr(cls, name, in_eval_mode(cls.__dict__[name]))

    def train(self, mode: bool = True) -> GenerativeModel:
        super().train(mode)
        for part in self.frozen_parts().values():
            part.eval()  # dropout and norm statistics of a pretrained part stay as shipped
        return self

    # -- training -----------------------------------------------------------------
    def forward(self, batch: Batch, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Training objective on one batch: a dict with at least ``loss`` (a scalar)."""
        raise NotImplementedError  # abstract: every family defines its objective

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        frozen = {id(p) for part in self.frozen_parts().values() for p in part.parameters()}
        return (p for p in self.parameters() if p.requires_grad and id(p) not in frozen)

    def optimizer_groups(self) -> dict[str, list[dict]]:
        """Optimizer name -> parameter groups. A group with ``"decay": False`` gets no weight
        decay; the others get the optimizer's ``weight_decay``. Default: one optimizer "main"
        where matrices decay and biases, norms and gains do not."""
        params = list(self.trainable_parameters())
        return {"main": [{"params": [p for p in params if p.dim() >= 2], "decay": True},
                         {"params": [p for p in params if p.dim() < 2], "decay": False}]}

    def train_step(self, micro_batches: list[Batch], ctx: StepContext) -> dict[str, torch.Tensor | float]:
        """One optimizer step. Values may stay 0-dim tensors: the trainer reads them
        (a GPU sync) only when it logs or checkpoints."""
        losses = []
        for batch in ctx.accumulate(micro_batches):
            out = ctx.forward(batch)
            ctx.backward(out["loss"])
            losses.append(out["loss"].detach())
        grad_norm = ctx.step("main")
        loss = losses[0] if len(losses) == 1 else torch.stack(losses).float().mean()
        return {"loss": loss, "grad_norm": grad_norm}

    # -- evaluation and samples ------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, batches: Iterable[Batch]) -> dict[str, float]:
        """Mean of the training objective's terms over validation batches."""
        sums: dict[str, float] = {}
        n = 0
        for batch in batches:
            for k, v in self(batch).items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
        return {k: v / max(n, 1) for k, v in sums.items()}

    @torch.no_grad()
    def heldout_metrics(self, batches: Iterable[Batch], generator: torch.Generator,
                        **options: Any) -> dict[str, float]:
        """Family-specific held-out numbers for ``genforge eval`` (a VAE's likelihood bound)."""
        return {}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, **options: Any) -> Any:
        """``n`` samples drawn with ``generator`` only (never the global RNG): an (n, C, H, W)
        tensor in ``spec.pixel_range`` for images, a list of token-id lists for sequences.
        ``options`` are the declared sample options (modality's and family's)."""
        raise NotImplementedError  # abstract: every family can sample

    @torch.no_grad()
    def preview(self, data: Any, generator: torch.Generator) -> Any:
        """A few samples for the run directory: a str for text, an (N,C,H,W) tensor for images."""
        return None

    def plan_sampling(self, options: dict[str, Any], num_samples: int | None, refs: Any) -> SamplingPlan:
        """`genforge sample`: resolve this family's own options into a :class:`SamplingPlan`.
        ``refs`` is the modality's resolver of references to data (images: ``refs.image(ref)``,
        ``refs.mask(ref)``), so a family never reads files. Default: options as given."""
        return SamplingPlan(dict(options))


class LatentVariableModel(GenerativeModel):
    """A family with an encoder and a decoder (the VAE): latent paths and attribute vectors."""

    sample_options = (
        SampleOption("interpolate", "decode the latent path between two examples (images: PNG/JPEG "
                                    "files, test:INDEX or val:INDEX; molecules: SMILES; music: MIDI files)", str, nargs=2, metavar=("A", "B")),
        INTERP_POINTS,
        SampleOption("interp_method", "spherical (default) or linear interpolation", str, "slerp",
                     choices=("slerp", "lerp")),
        SampleOption("attribute", "add the latent vector mean(TO) - mean(FROM) to test images of "
                                  "class FROM", str, nargs=2, metavar=("FROM", "TO")),
    )

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C, H, W) -> posterior mean and log-variance (B, L)."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Latents (B, L) -> images (B, C, H, W) in ``spec.pixel_range``."""
        raise NotImplementedError
