"""The RL batch source: rollouts from the current policy, scored, filtered and turned into advantages.

:class:`Rollouts` samples a batch from the policy, scores it with the reward (counting oracle
calls), applies the diversity filter, computes advantages, watches the guard rails (diversity
collapse, KL over budget) and hands the trainer the batch for the policy's loss. Its whole
state is checkpointed, so a resumed run draws exactly the rollouts it would have drawn.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from genforge import GenforgeError
from genforge.config import RLConfig
from genforge.families.base import StopTraining
from genforge.metrics.optimization import top_k_auc, top_k_mean
from genforge.rl import algorithms as alg
from genforge.rl.diversity import DiversityFilter
from genforge.rl.rewards import Reward
from genforge.rl.specs import rl_spec


def policy_device(policy) -> torch.device:
    return next(policy.parameters()).device


class Rollouts:
    """The RL batch source. An optimizer step draws ``grad_accum`` micro-batches, each one
    rollout of ``batch_size`` samples; the same rollouts serve ``updates_per_rollout``
    optimizer steps, then new ones are drawn."""

    def __init__(self, policy, reward: Reward, settings: RLConfig, batch_size: int, seed: int,
                 modality: str, dfilter: DiversityFilter | None, grad_accum: int = 1):
        self.policy, self.reward, self.rl = policy, reward, settings
        self.batch_size, self.modality, self.filter = batch_size, modality, dfilter
        self.grad_accum = grad_accum
        # Group baselines compare samples of one prompt; with a single prompt that is the batch.
        single = policy.rl_prompt_count() == 1
        self.group = 1 if settings.algo == "reinforce" else batch_size if single else settings.group_size
        if self.group < 2 and settings.algo != "reinforce":
            raise GenforgeError(f"{settings.algo} compares samples of one prompt with each other; --batch-size "
                                f"{batch_size} leaves none to compare (use at least 2)")
        if batch_size % self.group:
            raise GenforgeError(f"--batch-size {batch_size} is not a multiple of --group-size {self.group}: "
                                f"each prompt is sampled group-size times (e.g. --batch-size "
                                f"{max(1, batch_size // self.group) * self.group})")
        self.seed, self._generator = seed, None
        self.order = torch.Generator().manual_seed(seed + 1)  # prompt order and DDPO timesteps
        self.perm: list[int] = []
        self.cached: list[dict[str, torch.Tensor]] = []  # this step's rollouts (grad_accum of them)
        self.served = 0  # micro-batches served from them
        self.kl_coef = settings.kl_coef
        self.low_diversity = self.high_kl = 0
        self.exhausted = False

    @property
    def generator(self) -> torch.Generator:
        """The rollouts' random stream, made on first use on the device the trainer moved the
        policy to (a CPU generator cannot drive sampling on a GPU)."""
        if self._generator is None:
            self._generator = torch.Generator(device=policy_device(self.policy)).manual_seed(self.seed)
        return self._generator

    def _next_prompt(self) -> int:
        if not self.perm:
            self.perm = torch.randperm(self.policy.rl_prompt_count(), generator=self.order).tolist()
        return self.perm.pop()

    def next(self) -> dict[str, torch.Tensor]:
        """Micro-batch i of an optimizer step is rollout i % grad_accum; after
        grad_accum x updates_per_rollout micro-batches (that many optimizer steps), new rollouts."""
        if self.served == self.grad_accum * self.rl.updates_per_rollout:
            self.cached, self.served = [], 0
        i = self.served % self.grad_accum
        if i == len(self.cached):  # drawn during the first step, all from the same weights
            self.cached.append(self._collect())
        self.served += 1
        return self.cached[i]

    def _collect(self) -> dict[str, torch.Tensor]:
        rl = self.rl
        if self.exhausted:
            raise StopTraining(f"oracle budget spent: {self.reward.calls} calls (max_oracle_calls "
                               f"{rl.max_oracle_calls})", {"oracle_calls": self.reward.calls})
        t0 = time.perf_counter()
        rows = [p for p in (self._next_prompt() for _ in range(self.batch_size // self.group))
                for _ in range(self.group)]
        roll = self.policy.rollout_batch(rows, self.generator)
        t_rollout = time.perf_counter() - t0
        total, applies, means = self.reward(roll.samples, self.policy.rl_columns(rows))
        t_reward = time.perf_counter() - t0 - t_rollout
        if not applies.any():
            raise StopTraining(f"no reward applied to any of the {len(rows)} samples of this rollout (every "
                               "reward returned None), so there is nothing to learn from; check the "
                               "reward", {"reward_applies": 0.0, "oracle_calls": float(self.reward.calls)})
        filtered, penalized = self.filter(roll.samples, total) if self.filter else (total, 0.0)
        adv = alg.advantages(filtered, applies, "grpo" if rl.algo == "ddpo" else rl.algo, self.group)
        diversity = self.policy.rl_diversity(roll.samples)
        kl = float(roll.kl.mean())
        stats = {"reward": float(total[applies].mean()) if applies.any() else 0.0,
                 **{f"reward_{k}": v for k, v in means.items() if math.isfinite(v)},
                 "kl": kl, **({"kl_k1": float(roll.kl_k1.mean())} if roll.kl_k1 is not None else {}),
                 "kl_coef": self.kl_coef, **diversity, "oracle_calls": float(self.reward.calls),
                 "rollout_s": t_rollout, "reward_s": t_reward, "reward_applies": float(applies.float().mean())}
        if self.filter is not None:
            stats["filtered"] = penalized
        if self.reward.cache:
            stats.update(oracle_summary(self.reward, rl.max_oracle_calls))
        self._guard(diversity, kl, stats)
        if rl.kl_target is not None:
            self.kl_coef = alg.adapt_kl_coef(self.kl_coef, kl, rl.kl_target)
        batch = {**roll.tensors, "advantages": adv.to(roll.kl.device),
                 "kl_coef": torch.tensor(stats["kl_coef"], device=roll.kl.device)}
        if rl.algo == "ddpo":
            active = self.policy.rl_active_steps(roll.tensors["sigmas"])
            k = max(1, math.ceil(rl.timestep_fraction * len(active)))
            pick = torch.randperm(len(active), generator=self.order)[:k].sort().values
            batch["timesteps"] = torch.tensor([active[i] for i in pick.tolist()])
        batch.update({f"log_{k}": torch.tensor(float(v)) for k, v in stats.items()})
        if rl.max_oracle_calls is not None and self.reward.calls >= rl.max_oracle_calls:
            self.exhausted = True  # train on this batch; stop before the next rollout
        return batch

    def _guard(self, diversity: dict[str, float], kl: float, stats: dict[str, float]) -> None:
        rl = self.rl
        name = rl_spec(self.modality).primary
        value = diversity[name]
        self.low_diversity = self.low_diversity + 1 if rl.min_diversity is not None and value < rl.min_diversity else 0
        self.high_kl = self.high_kl + 1 if rl.kl_budget is not None and kl > rl.kl_budget else 0
        if self.low_diversity >= rl.guard_patience:
            raise StopTraining(f"diversity collapsed: {name} {value:.3f} < min_diversity {rl.min_diversity} "
                               f"for {rl.guard_patience} rollouts in a row", stats)
        if self.high_kl >= rl.guard_patience:
            raise StopTraining(f"KL {kl:.3f} nats over kl_budget {rl.kl_budget} for {rl.guard_patience} "
                               "rollouts in a row", stats)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "order": self.order.get_state(), "perm": self.perm,
                "cached": self.cached, "served": self.served, "kl_coef": self.kl_coef,
                "low_diversity": self.low_diversity, "high_kl": self.high_kl, "exhausted": self.exhausted,
                "reward": self.reward.state_dict(),
                "filter": self.filter.state_dict() if self.filter else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())  # generator states are CPU byte tensors
        self.order.set_state(state["order"])
        cached = state["cached"]  # older checkpoints hold one rollout, or None
        self.cached = [cached] if isinstance(cached, dict) else list(cached or [])
        self.perm, self.served = list(state["perm"]), int(state["served"])
        self.kl_coef, self.exhausted = float(state["kl_coef"]), bool(state["exhausted"])
        self.low_diversity, self.high_kl = int(state["low_diversity"]), int(state["high_kl"])
        self.reward.load_state_dict(state["reward"])
        if self.filter is not None and state["filter"] is not None:
            self.filter.load_state_dict(state["filter"])


def oracle_scores(reward: Reward) -> list[float]:
    """The weighted total of every distinct sample scored, in call order."""
    return [reward.total(values) for values in reward.scored.values()]


def oracle_summary(reward: Reward, max_calls: int | None) -> dict[str, float]:
    """PMO's numbers (Gao et al. 2022): top-1/10/100 means, and the top-10 AUC over the budget.
    Only the first ``max_calls`` scorings count: the last rollout may overshoot the budget (it is
    scored whole, for its update), but as in PMO what lies past the budget earns nothing."""
    scores = oracle_scores(reward)
    if max_calls is not None:
        scores = scores[:max_calls]
    out = {f"top{k}": top_k_mean(scores, k) for k in (1, 10, 100)}
    if max_calls is not None:
        out["auc_top10"] = top_k_auc(scores, 10, max_calls)
    return out
