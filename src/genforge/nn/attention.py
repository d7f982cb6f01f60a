"""Causal self-attention with rotary embeddings and a preallocated KV cache.

Used unchanged by the GPT family (text and, later, SMILES). Shapes follow
nanoGPT's notation: B batch, T new tokens, L cached length, nh heads, hs head size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def rotary_table(length: int, head_size: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embeddings (Su et al., 2021, RoFormer), "rotate half" layout.

    Returns cos and signed sin, each (length, hs): [cos, cos] and [-sin, sin] over the
    two halves of the head dim, so that a rotation is two multiplies and an add.
    """
    inv_freq = 1.0 / base ** (torch.arange(0, head_size, 2).float() / head_size)
    angles = torch.outer(torch.arange(length).float(), inv_freq)  # (length, hs/2)
    return angles.cos().repeat(1, 2), torch.cat((-angles.sin(), angles.sin()), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin) per pair of halves; x (..., T, hs), cos/sin (T, hs)
    or (B, 1, T, hs). Queries and keys are rotated together to halve the kernel launches."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin


@dataclass
class KVCache:
    """Per-layer keys and values, preallocated: k[i], v[i] of shape (B, nh, max_len, hs).

    ``length`` tokens are filled. ``key_mask`` (B, 1, 1, max_len) is None unless
    prompts were left-padded, in which case it is False at padding positions.

    ``slot`` (B,) and ``step_mask`` (B, 1, 1, max_len), set together, select the static decode
    step (genforge.sampling.static_decode): each row writes its one new key/value at column
    slot[b] and its query attends over all max_len columns where step_mask is True, so every
    shape is the same at every step (a CUDA graph can replay it). ``length`` is then unused.
    """

    k: list[torch.Tensor]
    v: list[torch.Tensor]
    length: int = 0
    key_mask: torch.Tensor | None = None
    slot: torch.Tensor | None = None
    step_mask: torch.Tensor | None = None

    @classmethod
    def empty(cls, n_layer: int, batch: int, n_head: int, max_len: int, head_size: int,
              device, dtype) -> KVCache:
        shape = (batch, n_head, max_len, head_size)
        return cls([torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)],
                   [torch.empty(shape, device=device, dtype=dtype) for _ in range(n_layer)])

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int, dropout: float, bias: bool):
        super().__init__()
        assert n_embd % n_head == 0, "n_embd must be divisible by n_head"
        self.n_head, self.head_size = n_head, n_embd // n_head
        self.qkv = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.dropout = dropout
        self.resid_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_head, self.head_size).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        # split/unbind, not indexing: indexing makes backward allocate a zero-filled gradient
        # per slice and add into it (about 1 ms per step at 4x128 on a CPU).
        if rope is None:  # backward: one stack per layer (split, then unbind, would be two copies)
            q, k, v = qkv.unbind(0)  # (B, nh, T, hs) each
        else:
            qk, v = qkv.split((2, 1), 0)  # (2, B, nh, T, hs), (1, B, nh, T, hs)
            q, k = apply_rotary(qk, *rope).unbind(0)
            v = v.squeeze(0)
        mask, causal = None, True
        if cache is not None and cache.slot is not None:  # static step: T == 1, fixed shapes, no host sync
            at = cache.slot.view(B, 1, 1, 1).expand(B, self.n_head, 1, self.head_size)  # (B, nh, 1, hs)
            cache.k[layer].scatter_(2, at, k)
            cache.v[layer].scatter_(2, at, v)
            k, v = cache.k[layer], cache.v[layer]  # (B, nh, max_len, hs), unwritten columns masked
            mask, causal = cache.step_mask, False
        elif cache is not None:
            start = cache.length
            cache.k[layer][:, :, start : start + T] = k
            cache.v[layer][:, :, start : start + T] = v
            k, v = cache.k[layer][:, :, : start + T], cache.v[layer][:, :, : start + T]  # (B, nh, L, hs)
            if T == 1:  # one new query sees every cached key: only padding is masked, no per-step arange
                mask = cache.key_mask[..., : start + 1] if cache.key_mask is not None else None  # (B, 1, 1, L)
                causal = False
            elif cache.key_mask is not None or start > 0:
                # Explicit mask: queries at absolute rows start..start+T-1 see keys <= their row.
                rows = torch.arange(start, start + T, device=x.device)[:, None]
                mask = rows >= torch.arange(start + T, device=x.device)[None, :]  # (T, L)
                if cache.key_mask is not None:
                    mask = mask & cache.key_mask[..., : start + T]  # (B, 1, T, L)
                causal = False
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal and T > 1,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_dropout(self.proj(y))
