"""RL policies: a trained family's own model, taught by rewards.

:func:`policy_class` turns a family class into its RL subclass (``RLGPT``, ``RLDiffusion``)
by putting the mixin its ``policy_kind`` names in front of it (``tokens``: :class:`SequencePolicy`;
``gaussian_steps``: :class:`DiffusionPolicy`), so a new family joins RL by declaring that. The subclass keeps the family's network, state-dict keys,
sampling and preview, so an RL run's checkpoints are plain checkpoints of the base family:
``genforge sample`` and ``eval`` load them like any run. The mixin adds

- a frozen copy of the starting model (``reference``, a frozen part: never trained or saved),
  for the KL penalty;
- ``rollout_batch(rows, generator)``: samples from the current policy with everything the
  loss needs (token ids, action masks and log-probs; for diffusion the whole chain);
- ``forward`` on a batch carrying ``advantages``: the RL loss (the base objective otherwise,
  so validation loss still means what it meant);
- ``evaluate``: reward, KL and diversity of a fixed-seed rollout, and ``score`` = reward -
  select_kl_weight x KL, the selection metric of ``checkpoints/best``.

The generic trainer runs it all: checkpoints, exact resume, logging, signals.

On-policy exactness: rollout, reference and update compute log-probs with one function, in
one mode and one precision. The policy stays in eval mode for the whole run (dropout off:
``train()`` is a no-op), and log-probs and DDPO's step Gaussians are computed in fp32 with
autocast off, also inside the trainer's bf16 autocast. So on the first update after a
rollout the importance ratio is exactly 1, nothing is clipped and the KL to the (equal)
reference is exactly 0 (tested with a dropout base under autocast).

``kl`` is the per-sample sum of the k3 estimate the penalty uses (never negative; DDPO: the
exact Gaussian KL of its steps); ``kl_k1`` the plain log-ratio sum, for comparison.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from genforge import GenforgeError
from genforge.families.base import Selection
from genforge.rl import algorithms as alg
from genforge.rl.diversity import image_diversity
from genforge.rl.specs import rl_spec

EVAL_SEED = 4242
# DDPO's actions are the chain's steps down to this noise level (in [-1, 1] data units).
# Below it an ancestral step's standard deviation is tiny (Karras sigmas reach 0.002), so
# its log-probability ratio and the per-step KL blow up while the step only refines
# pixel noise; those last steps run deterministically (DDIM, eta = 0) and are not trained.
MIN_ACTION_SIGMA = 0.05


@dataclass
class Prompts:
    """Token prompts (ids), their text, and the columns rewards receive (one value per prompt:
    ``prompt`` itself and any other field of a prompt file)."""

    ids: list[list[int]]
    texts: list[str]
    columns: dict[str, list] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class RolloutBatch:
    samples: Any  # list[str] (text, SMILES) or (N, C, H, W) images in [0, 1]
    tensors: dict[str, torch.Tensor]  # what the loss needs
    kl: torch.Tensor  # (N,) KL(policy || reference) of each sample, nats (k3 sums; DDPO: exact)
    kl_k1: torch.Tensor | None = None  # (N,) the k1 (log-ratio) sums, token policies only


def fp32(device: torch.device):
    """Autocast off: log-probs are computed in fp32 in rollout and update alike."""
    return torch.autocast(device_type=device.type, enabled=False)


class PolicyMixin:
    """What both kinds of policy share; see the module docstring."""

    selection = Selection("score", "max")
    progress_keys = ("reward", "kl")

    def train(self, mode: bool = True):
        """Always eval mode: dropout off in rollout, reference and update, so the policy that is
        updated is the one that sampled (the trainer calls ``train()`` around every step)."""
        return super().train(False)

    def attach(self, reference: torch.nn.Module, reward, settings, data, prompts: Prompts | None) -> None:
        """Wire in the frozen reference, the reward, the RL settings (``RLConfig``) and data."""
        reference.requires_grad_(False)
        self.reference = reference.eval()
        self.reward, self.rl, self.rl_data, self.rl_prompts = reward, settings, data, prompts
        self.rl_spec = rl_spec(self.spec.modality)
        self.progress_keys = ("reward", "kl", self.rl_spec.primary)
        self.eval()
        self.rl_check()

    def rl_check(self) -> None:
        """Refuse settings that cannot work before any folder is written."""

    def frozen_parts(self):
        parts = dict(super().frozen_parts())
        reference = self._modules.get("reference")
        if reference is not None:
            parts["reference"] = reference
        return parts

    def train_step(self, micro_batches, ctx):
        stats: dict[str, list[torch.Tensor]] = {}
        for batch in ctx.accumulate(micro_batches):
            for out in self.rl_backward(batch, ctx):
                for k, v in out.items():
                    stats.setdefault(k, []).append(v.detach())
        grad_norm = ctx.step("main")
        logged = {k: torch.stack(v).float().mean() for k, v in stats.items()}
        for k, v in micro_batches[-1].items():  # the rollout's statistics, logged as they are
            if k.startswith("log_"):
                logged[k[4:]] = v
        return {**logged, "grad_norm": grad_norm}

    @torch.no_grad()
    def evaluate(self, batches) -> dict[str, float]:
        batches = list(batches)
        out = {f"heldout_{k}": v for k, v in super().evaluate(iter(batches)).items()}
        device = next(self.parameters()).device
        g = torch.Generator(device=device).manual_seed(EVAL_SEED)
        rows = [i % self.rl_prompt_count() for i in range(self.rl.eval_samples)]
        roll = self.rollout_batch(rows, g)
        total, applies, means = self.reward(roll.samples, self.rl_columns(rows), counted=False)
        out["reward"] = float(total[applies].mean()) if applies.any() else 0.0
        out.update({f"reward_{k}": v for k, v in means.items() if math.isfinite(v)})
        out["kl"] = float(roll.kl.mean())
        if roll.kl_k1 is not None:
            out["kl_k1"] = float(roll.kl_k1.mean())
        out.update(self.rl_diversity(roll.samples))
        out.update(self.rl_eval_extra(roll, batches))
        out["score"] = out["reward"] - self.rl.select_kl_weight * out["kl"]
        return out

    def rl_prompt_count(self) -> int:
        return len(self.rl_prompts) if self.rl_prompts is not None else 1

    def rl_columns(self, rows: list[int]) -> dict[str, list]:
        if self.rl_prompts is None or not self.rl_prompts.columns:
            return {}
        return {k: [v[i] for i in rows] for k, v in self.rl_prompts.columns.items()}

    def rl_eval_extra(self, roll: RolloutBatch, batches) -> dict[str, float]:
        return {}


class SequencePolicy(PolicyMixin):
    """Token policies (the GPT family on text or SMILES): REINFORCE, RLOO or GRPO.

    A rollout row is ``prompt + generated`` right-padded to the batch's longest; the action
    mask marks the generated tokens (EOS included: stopping is an action)."""

    def rl_check(self) -> None:
        self.rl_max_new_tokens()

    @staticmethod
    def rl_logprobs(model, ids: torch.Tensor, entropy: bool = False):
        """The one log-prob function of rollout, reference and update: (B, T) ids -> (B, T-1)
        log-probs (and entropies), fp32 whatever autocast the caller runs under."""
        with fp32(ids.device):
            return model.token_logprobs(ids, entropy=entropy)

    def rl_max_new_tokens(self) -> int:
        longest = max(len(p) for p in self.rl_prompts.ids)
        room = self.config.block_size + 1 - longest
        if self.rl.max_new_tokens is not None and self.rl.max_new_tokens > room:
            raise GenforgeError(f"max_new_tokens {self.rl.max_new_tokens} does not fit the context: prompts "
                                f"of {longest} tokens leave room for {room} (block_size "
                                f"{self.config.block_size})")
        if room < 1:
            raise GenforgeError(f"a prompt of {longest} tokens fills the model's context "
                                f"({self.config.block_size}); use shorter prompts")
        default = self.rl_spec.max_new_tokens
        return self.rl.max_new_tokens or (min(default, room) if default else room)

    @torch.no_grad()
    def rollout_batch(self, rows: list[int], generator: torch.Generator) -> RolloutBatch:
        from genforge.sampling.text import generate

        prompts = [self.rl_prompts.ids[i] for i in rows]
        budget = self.rl_max_new_tokens()
        eos = self.spec.special_ids.get("eos")
        gen = generate(self, prompts, budget, temperature=1.0, generator=generator, eos_id=eos)
        device = next(self.parameters()).device
        lengths = [len(p) + len(t) for p, t in zip(prompts, gen.tokens, strict=True)]
        ids = torch.full((len(rows), max(lengths)), self.spec.special_ids.get("pad", 0), dtype=torch.long)
        action = torch.zeros(len(rows), max(lengths) - 1, dtype=torch.bool)
        for i, (p, t) in enumerate(zip(prompts, gen.tokens, strict=True)):
            ids[i, : lengths[i]] = torch.tensor(p + t)
            action[i, len(p) - 1 : lengths[i] - 1] = True  # logits at t predict token t + 1
        ids, action = ids.to(device), action.to(device)
        old_logp = self.rl_logprobs(self, ids) * action
        ref_logp = self.rl_logprobs(self.reference, ids) * action
        # A SMILES prefix is part of the molecule a reward scores; a text prompt is not part of
        # the answer (rewards get it as the ``prompt`` column).
        whole = self.rl_spec.prompt_in_sample
        samples = [self.rl_data.decode(p + t if whole else t) for p, t in zip(prompts, gen.tokens, strict=True)]
        tensors = {"x": ids, "action": action, "old_logp": old_logp, "ref_logp": ref_logp}
        return RolloutBatch(samples, tensors, alg.sequence_kl(old_logp, ref_logp, action),
                            alg.sequence_kl_k1(old_logp, ref_logp, action))

    def forward(self, batch, **kwargs):
        if "advantages" not in batch:
            return super().forward(batch, **kwargs)
        ids, action = batch["x"], batch["action"]
        logp, entropy = self.rl_logprobs(self, ids, entropy=True)
        length = float(self.rl_max_new_tokens())
        pg, clip_frac = alg.clipped_policy_loss(logp, batch["old_logp"], batch["advantages"], action,
                                                self.rl.clip, length)
        kl = alg.kl_penalty(logp, batch["ref_logp"], action, length)
        ent = alg.entropy_bonus(entropy, action)
        loss = pg + batch["kl_coef"] * kl - self.rl.entropy_coef * ent
        return {"loss": loss, "pg_loss": pg, "kl_loss": kl, "entropy": ent, "clip_frac": clip_frac}

    def rl_backward(self, batch, ctx):
        out = ctx.forward(batch)
        ctx.backward(out["loss"])
        yield out

    def rl_diversity(self, samples) -> dict[str, float]:
        return self.rl_spec.diversity(samples)


class DiffusionPolicy(PolicyMixin):
    """DDPO (Black et al. 2023): the ancestral DDPM chain as a sequential decision process.

    Each step x_t -> x_{t-1} is Gaussian with a mean the network sets and a fixed standard
    deviation (``samplers.ancestral_step`` at eta = 1), so its log-probability is exact and
    differentiable; the last steps below MIN_ACTION_SIGMA are deterministic. A rollout keeps the chain (N, S+1, C, H, W), the old log-probs (N, S) and
    the reference model's step means; the loss is the clipped importance-weighted surrogate
    per step plus beta x the exact Gaussian KL to the reference step."""

    def attach(self, reference, reward, settings, data, prompts) -> None:
        if self.K:
            raise GenforgeError("DDPO here fine-tunes unconditional diffusion runs; this one is "
                                f"{self.config.conditioning}-conditional")
        super().attach(reference, reward, settings, data, prompts)

    def rl_sigmas(self, device) -> torch.Tensor:
        from genforge.diffusion import schedules

        sigmas = schedules.sampling_sigmas(self.config.schedule, self.rl.sampling_steps, self.sigma_min,
                                           self.sigma_max).to(device)
        # An ancestral step from s to s' has std s' sqrt(s^2 - s'^2) / s: zero where a level
        # repeats, and a zero-variance Gaussian has no log-density for DDPO to differentiate.
        repeats = (sigmas[:-1] <= sigmas[1:]).nonzero().flatten().tolist()
        if repeats or float(sigmas[-1]) < 0:
            raise GenforgeError(f"the {self.config.schedule} schedule at --sampling-steps {self.rl.sampling_steps} "
                                f"does not strictly decrease (step {repeats[0] if repeats else len(sigmas) - 1}), "
                                "so a DDPO step would have zero variance; choose other --sampling-steps")
        return sigmas

    def _step(self, net_owner, x, sigmas, t):
        """The step's Gaussian: ancestral (an action) down to MIN_ACTION_SIGMA, deterministic below."""
        from genforge.diffusion.samplers import ancestral_step

        s, s_next = float(sigmas[t]), float(sigmas[t + 1])
        with fp32(x.device):  # one precision in rollout and update, under any autocast
            x = x.float()
            level = torch.full((x.shape[0],), s, device=x.device, dtype=x.dtype)
            denoised = net_owner.denoiser(x, level, None).float()
            return ancestral_step(x, denoised, s, s_next, eta=1.0 if self._is_action(s, s_next) else 0.0)

    @staticmethod
    def _is_action(s: float, s_next: float) -> bool:
        """A random step: it ends at or above MIN_ACTION_SIGMA and its std is > 0 (s > s')."""
        return s_next >= MIN_ACTION_SIGMA and s > s_next

    @torch.no_grad()
    def rollout_batch(self, rows: list[int], generator: torch.Generator) -> RolloutBatch:
        from genforge.data.images import from_signed

        device = next(self.net.parameters()).device
        sigmas = self.rl_sigmas(device)
        steps = len(sigmas) - 1
        n = len(rows)
        x = float(sigmas[0]) * torch.randn((n, self.C, self.H, self.W), device=device, generator=generator)
        chain, old_logp, ref_means = [x], [], []
        kl = torch.zeros(n, device=device)
        active = set(self.rl_active_steps(sigmas))
        for t in range(steps):
            mean, std = self._step(self, x, sigmas, t)
            ref_mean, _ = self._step(self.reference, x, sigmas, t)
            if t in active:
                x = mean + std * torch.randn(mean.shape, device=device, generator=generator)
                old_logp.append(alg.gaussian_logprob(x, mean, std))
                kl += alg.gaussian_kl(mean, ref_mean, std)
            else:  # the last steps, down to sigma = 0, are deterministic: no action
                x = mean
                old_logp.append(torch.zeros(n, device=device))
            chain.append(x)
            ref_means.append(ref_mean)
        images = from_signed(x, (0.0, 1.0)).clamp(0, 1)
        tensors = {"x": images, "chain": torch.stack(chain, 1), "old_logp": torch.stack(old_logp, 1),
                   "ref_mean": torch.stack(ref_means, 1), "sigmas": sigmas}
        return RolloutBatch(images, tensors, kl)

    def rl_active_steps(self, sigmas: torch.Tensor) -> list[int]:
        """Steps with a random action (std > 0): those ending at sigma >= MIN_ACTION_SIGMA."""
        return [t for t in range(len(sigmas) - 1) if self._is_action(float(sigmas[t]), float(sigmas[t + 1]))]

    def forward(self, batch, timestep: int | None = None, **kwargs):
        if "advantages" not in batch:
            return super().forward(batch, **kwargs)
        t = int(timestep)
        chain, sigmas = batch["chain"], batch["sigmas"]
        mean, std = self._step(self, chain[:, t], sigmas, t)
        if not std > 0:  # only rl_active_steps are trained; never a zero-variance step
            raise GenforgeError(f"DDPO step {t} has zero variance and is not an action")
        logp = alg.gaussian_logprob(chain[:, t + 1].float(), mean, std)
        ones = torch.ones_like(logp)[:, None]
        pg, clip_frac = alg.clipped_policy_loss(logp[:, None], batch["old_logp"][:, t, None],
                                                batch["advantages"], ones, self.rl.clip, 1.0)
        kl = alg.gaussian_kl(mean, batch["ref_mean"][:, t].float(), std).mean()
        return {"loss": pg + batch["kl_coef"] * kl, "pg_loss": pg, "kl_loss": kl, "clip_frac": clip_frac}

    def rl_backward(self, batch, ctx):
        steps = batch["timesteps"].tolist()
        for t in steps:
            out = ctx.forward(batch, timestep=t)
            ctx.backward(out["loss"] / len(steps))
            yield out

    @functools.cached_property
    def _rl_reference_features(self) -> tuple[Any, torch.Tensor, float]:
        from genforge.metrics.extractor import load_extractor

        extractor = load_extractor(self.rl_data)
        real = self.rl_data.val.get(torch.arange(min(len(self.rl_data.val), 1000)))["x"]
        from genforge.data.images import to_unit

        feats, _ = extractor.run(to_unit(real, self.spec.pixel_range))
        return extractor, feats, float(torch.pdist(feats).mean())

    def rl_diversity(self, samples: torch.Tensor) -> dict[str, float]:
        extractor, _, spread = self._rl_reference_features
        feats, probs = extractor.run(samples.cpu())
        return image_diversity(feats, probs, spread)

    def rl_eval_extra(self, roll: RolloutBatch, batches) -> dict[str, float]:
        """FD and precision/recall of the evaluation samples against real validation images, in
        the fixed classifier's features (few samples: read it as a trend, not a benchmark FD)."""
        from genforge.metrics.frechet import frechet_distance
        from genforge.metrics.manifold import precision_recall

        extractor, real, _ = self._rl_reference_features
        feats, _ = extractor.run(roll.samples.cpu())
        out = {"fd": frechet_distance(real, feats)}
        out["precision"], out["recall"] = precision_recall(real, feats, k=3)
        return out


POLICIES = {"tokens": SequencePolicy, "gaussian_steps": DiffusionPolicy}


def policy_class(base: type) -> type:
    """The RL subclass of a family class: ``RL<Name>(mixin, base)``, the mixin named by the
    family's ``policy_kind`` (token log-probs: PPO/GRPO; Gaussian chain steps: DDPO)."""
    return _policy_class(base, POLICIES.get(base.policy_kind))


@functools.cache
def _policy_class(base: type, mixin: type | None) -> type:
    if mixin is None:
        raise GenforgeError(f"RL fine-tuning needs per-sample log-probs (gpt runs on text or SMILES; "
                            f"diffusion runs with DDPO); '{base.__name__}' declares no policy_kind")
    return type(f"RL{base.__name__}", (mixin, base), {"__module__": __name__})
