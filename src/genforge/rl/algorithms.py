"""Policy-gradient pieces as pure functions over tensors: advantages, losses, KL estimates.

Each is small and separate so a user can swap one (a different baseline, another KL
estimator) without subclassing. Shapes: N samples (rollouts), T action steps (generated
tokens, or denoising steps for diffusion); ``mask`` (N, T) marks real actions.
"""

from __future__ import annotations

import math

import torch

ALGORITHMS = ("reinforce", "rloo", "grpo", "ddpo")


def advantages(rewards: torch.Tensor, applies: torch.Tensor, method: str, group_size: int = 1,
               eps: float = 1e-4) -> torch.Tensor:
    """(N,) rewards -> (N,) advantages. Samples come in consecutive groups of ``group_size``
    drawn from the same prompt; ``applies`` (N,) False marks samples no reward applied to,
    which get advantage 0 and are left out of every baseline.

    - ``reinforce``: r - mean(r) over the batch (REINFORCE with a baseline; Williams 1992).
    - ``rloo``: r_i - mean of the *other* samples of i's group (Kool et al. 2019; Ahmadian
      et al. 2024): an unbiased baseline.
    - ``grpo`` / ``ddpo``: (r - mean_group) / (std_group + eps), the group-normalized
      advantage of GRPO (Shao et al. 2024, eq. 3) and of DDPO's per-prompt statistics
      (Black et al. 2023). A group whose rewards are all equal carries no signal: 0.
    """
    r = rewards.double()
    w = applies.double()
    if method == "reinforce":
        base = (r * w).sum() / w.sum().clamp_min(1.0)
        return ((r - base) * w).float()
    if rewards.shape[0] % group_size:
        raise ValueError(f"{rewards.shape[0]} rewards do not split into groups of {group_size}")
    rg, wg = r.view(-1, group_size), w.view(-1, group_size)
    count = wg.sum(1, keepdim=True)
    total = (rg * wg).sum(1, keepdim=True)
    if method == "rloo":
        others = (count - wg).clamp_min(1.0)
        base = (total - rg * wg) / others
        adv = torch.where(count - wg > 0, rg - base, torch.zeros_like(rg))
        return (adv * wg).view(-1).float()
    if method in ("grpo", "ddpo"):
        mean = total / count.clamp_min(1.0)
        var = (((rg - mean) ** 2) * wg).sum(1, keepdim=True) / (count - 1).clamp_min(1.0)
        adv = (rg - mean) / (var.sqrt() + eps)
        return (adv * wg).view(-1).float()
    raise ValueError(f"unknown advantage method '{method}'; choose one of {', '.join(ALGORITHMS)}")


def clipped_policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                        mask: torch.Tensor, clip: float, length: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per action (Schulman et al. 2017, eq. 7), summed over each
    sample's actions and divided by a constant ``length`` (the generation budget) rather than
    the sample's own length, so short and long samples are not weighted differently (Liu et
    al. 2025, "Dr. GRPO"). On the first update after a rollout the ratio is 1 and the
    gradient is exactly REINFORCE's, -A grad log p.

    logp, old_logp, mask: (N, T); adv: (N,). Returns (loss, fraction of clipped actions).
    """
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    a = adv[:, None].to(logp.dtype)
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    loss = -(surrogate * m).sum() / (length * logp.shape[0])
    clipped = ((ratio - 1).abs() > clip).to(logp.dtype)
    clip_frac = (clipped * m).sum() / m.sum().clamp_min(1.0)
    return loss, clip_frac.detach()


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-action estimate of KL(policy || reference) from actions the policy drew:
    exp(q - p) - (q - p) - 1 with p = log pi, q = log pi_ref (Schulman 2020, "k3"):
    unbiased, never negative, and differentiable in p (GRPO's KL term, Shao et al. 2024, eq. 4)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def sequence_kl(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) KL(policy || reference) of each whole sample: the sum of :func:`kl_k3` over its
    actions, the estimate the penalty differentiates. Never negative, so the logged ``kl``,
    the KL budget and the adaptive controller never see a negative KL; in nats."""
    return (kl_k3(logp, ref_logp) * mask.to(logp.dtype)).sum(-1)


def sequence_kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N,) sum_t (log pi - log pi_ref) over each sample's actions ("k1"): unbiased for samples
    drawn from the policy but negative on some batches; logged as ``kl_k1`` beside ``kl``."""
    return ((logp - ref_logp) * mask.to(logp.dtype)).sum(-1)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, length: float) -> torch.Tensor:
    """Mean over samples of the summed k3 KL, scaled like :func:`clipped_policy_loss`."""
    return (kl_k3(logp, ref_logp) * mask.to(logp.dtype)).sum() / (length * logp.shape[0])


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) per generated action; the loss subtracts coef x this."""
    m = mask.to(entropy.dtype)
    return (entropy * m).sum() / m.sum().clamp_min(1.0)


def adapt_kl_coef(coef: float, kl: float, target: float, gain: float = 0.1) -> float:
    """Adaptive KL controller (Ziegler et al. 2019, sec. 2.2): e = clip(KL / target - 1, -0.2, 0.2),
    beta <- beta (1 + gain e). Beta rises while the measured KL is over ``target``."""
    error = max(-0.2, min(0.2, kl / target - 1.0))
    return coef * (1.0 + gain * error)


def gaussian_logprob(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; mean, std^2 I) summed over every dimension but the first: (B, ...) -> (B,).
    A DDPM/DDIM ancestral step is this Gaussian, so DDPO scores x_{t-1} under it. ``std``
    must be > 0: a zero-variance step is no action (its density is a delta)."""
    if not std > 0:
        raise ValueError(f"a Gaussian action needs std > 0, got {std}")
    d = x[0].numel()
    sq = ((x - mean) ** 2).flatten(1).sum(1)
    return -sq / (2 * std * std) - d * (math.log(std) + 0.5 * math.log(2 * math.pi))


def gaussian_kl(mean_p: torch.Tensor, mean_q: torch.Tensor, std: float) -> torch.Tensor:
    """KL(N(mean_p, std^2 I) || N(mean_q, std^2 I)) = |mean_p - mean_q|^2 / (2 std^2): (B, ...) -> (B,)."""
    if not std > 0:
        raise ValueError(f"a Gaussian action needs std > 0, got {std}")
    return ((mean_p - mean_q) ** 2).flatten(1).sum(1) / (2 * std * std)
