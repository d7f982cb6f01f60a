"""GPT: a decoder-only transformer language model (Radford et al., 2018/2019).

Differences from GPT-2/nanoGPT, each a preset option, chosen because they train
better at small scale: rotary position embeddings instead of learned ones
(Su et al., 2021) and no biases in linear layers. ``pos_embedding="learned"``
and ``bias=true`` give the GPT-2 layout. Generation with a KV cache lives in
``genforge.sampling.text``; this file holds the network and its objective.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from genforge.config import Strict
from genforge.families.base import Batch, GenerativeModel
from genforge.nn.attention import CausalSelfAttention, KVCache, rotary_table


class GPTConfig(Strict):
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    """Context length in tokens."""
    dropout: float = 0.0
    bias: bool = False
    pos_embedding: Literal["rope", "learned"] = "rope"
    rope_base: float = 10000.0
    mlp_ratio: int = 4

    @model_validator(mode="after")
    def _check(self) -> GPTConfig:
        if min(self.n_layer, self.n_head, self.n_embd, self.block_size) < 1:
            raise ValueError("n_layer, n_head, n_embd and block_size must be positive")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}) "
                             "into an even head size")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        return self


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg.n_embd, cfg.n_head, cfg.dropout, cfg.bias)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        hidden = cfg.mlp_ratio * cfg.n_embd
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, hidden, bias=cfg.bias), nn.GELU(),
            nn.Linear(hidden, cfg.n_embd, bias=cfg.bias),
            nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity(),
        )

    def forward(self, x, rope, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), rope, cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(GenerativeModel):
    Config = GPTConfig
    policy_kind = "tokens"  # RL: PPO/GRPO on token_logprobs

    def __init__(self, config: GPTConfig, spec):
        super().__init__(config, spec)
        if spec.vocab_size is None:
            raise ValueError("GPT needs a token vocabulary (text or molecule data)")
        c = config
        self.tok_emb = nn.Embedding(spec.vocab_size, c.n_embd)
        self.pos_emb = nn.Embedding(c.block_size, c.n_embd) if c.pos_embedding == "learned" else None
        self.drop = nn.Dropout(c.dropout) if c.dropout > 0 else nn.Identity()  # Identity: fewer calls per token
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, bias=c.bias)
        self.lm_head = nn.Linear(c.n_embd, spec.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # weight tying (Press & Wolf, 2017)
        if c.pos_embedding == "rope":
            cos, sin = rotary_table(c.block_size, c.n_embd // c.n_head, c.rope_base)
            self.register_buffer("rope_cos", cos, persistent=False)  # (block_size, hs)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) at init.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 6N for the weights plus attention (PaLM paper, appendix B)."""
        c = self.config
        n = self.num_params() - (self.pos_emb.weight.numel() if self.pos_emb is not None else 0)
        return 6 * n + 12 * c.n_layer * c.n_embd * c.block_size

    # -- network ---------------------------------------------------------------------
    def logits(self, idx: torch.Tensor, cache: KVCache | None = None,
               positions: torch.Tensor | None = None) -> torch.Tensor:
        """idx (B, T) -> logits (B, T, V).

        With a cache, the T tokens continue the cached ones. ``positions`` (B, T)
        overrides the default positions (left-padded prompts start at 0 per row).
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if positions is None and start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        x = self.tok_emb(idx)  # (B, T, C)
        rope = None
        if self.pos_emb is not None:
            pos = positions if positions is not None else torch.arange(start, start + T, device=idx.device)
            x = x + self.pos_emb(pos)
        else:
            if positions is None:
                cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]  # (T, hs)
            else:
                cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]  # (B,1,T,hs)
            rope = (cos, sin)
        x = self.drop(x)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i)
        if cache is not None:
            cache.length = start + T
        return self.lm_head(self.ln_f(x))

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        c, p = self.config, self.tok_emb.weight
        return KVCache.empty(c.n_layer, batch, c.n_head, max_len or c.block_size,
                             c.n_embd // c.n_head, p.device, p.dtype)

    @classmethod
    def data_needs(cls, config: GPTConfig) -> dict:
        return {"block_size": config.block_size}

    # -- objective -------------------------------------------------------------------
    def forward(self, batch: Batch, **kwargs) -> dict[str, torch.Tensor]:
        """Next-token cross-entropy. ``batch["mask"]`` (B, T) bool, when present (padded
        sequences per example: molecules, RL prompts), keeps only real target tokens."""
        logits = self.logits(batch["x"])  # (B, T, V)
        losses = F.cross_entropy(logits.float().flatten(0, 1), batch["y"].flatten(), reduction="none")
        mask = batch.get("mask")
        if mask is None:
            return {"loss": losses.mean()}
        mask = mask.flatten().float()
        return {"loss": (losses * mask).sum() / mask.sum().clamp_min(1.0)}

    def token_logprobs(self, ids: torch.Tensor, mask: torch.Tensor | None = None, entropy: bool = False):
        """log p(ids[:, t+1] | ids[:, :t+1]) for every t: (B, T) -> (B, T-1), with gradients
        (policy-gradient RL differentiates it; wrap in torch.no_grad() to score only).
        ``mask`` (B, T) bool marks real tokens; log-probs of padded targets are 0. With
        ``entropy``, also the entropy (nats) of each next-token distribution: a pair of (B, T-1)."""
        logits = self.logits(ids[:, :-1]).float()  # (B, T-1, V)
        logprobs = torch.log_softmax(logits, -1)
        logp = logprobs.gather(-1, ids[:, 1:, None]).squeeze(-1)
        if mask is not None:
            logp = logp * mask[:, 1:].to(logp.dtype)
        if not entropy:
            return logp
        return logp, -(logprobs.exp() * logprobs).sum(-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, prompts: list[list[int]] | None = None,
               max_new_tokens: int | None = None, temperature: float = 1.0, top_k: int | None = None,
               top_p: float | None = None, logits_hook=None) -> list[list[int]]:
        """New token ids for each of ``prompts``, drawn with ``generator``; ``logits_hook`` (a
        genforge.watermark.text.TextWatermark) marks them. RL rollouts never pass one.

        On sequences per example (``spec.special_ids``: molecules) the default prompt is
        ``<bos>`` and each sample ends at its ``<eos>`` (kept); otherwise the default prompt is
        token 0. ``max_new_tokens`` defaults to what fits the context after the prompt."""
        from genforge.sampling.text import generate

        bos, eos = self.spec.special_ids.get("bos"), self.spec.special_ids.get("eos")
        prompts = prompts if prompts is not None else [[0 if bos is None else bos]] * n
        if max_new_tokens is None:
            max_new_tokens = self.config.block_size + 1 - max(map(len, prompts))
        out = generate(self, prompts, max_new_tokens, temperature, top_k, top_p,
                       generator=generator, eos_id=eos, logits_hook=logits_hook)
        return out.tokens

    @torch.no_grad()
    def preview(self, data, generator: torch.Generator) -> str:
        if self.spec.special_ids:  # sequences per example (molecules): several short ones, one per line
            return "\n".join(data.decode(t) for t in self.sample(8, generator, temperature=1.0))
        tokens = self.sample(1, generator, [data.prompt_ids()], max_new_tokens=200, temperature=0.8)
        return data.decode(tokens[0])
