"""The diffusion network: a UNet with time embedding, residual blocks, attention at low
resolution, and optional class or text conditioning.

Shape of Ho et al. 2020 (appendix B) with the refinements of Dhariwal & Nichol 2021: scale-shift
("adaptive group norm") time conditioning in every residual block and zero-initialized
output layers, so each block starts as the identity. Text enters by cross-attention to the
token embeddings of a frozen sentence encoder (Rombach et al. 2022, sec. 3.3), and its pooled
embedding joins the time embedding; class labels are an embedding added to it.

Shapes: B batch, C channels, H x W pixels, T context tokens, E context width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def groups_for(channels: int) -> int:
    for g in (32, 16, 8, 4, 2):
        if channels % g == 0 and channels // g >= 2:
            return g
    return 1


def timestep_features(c_noise: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features of the noise level (Vaswani et al. 2017, as in Ho et al. 2020):
    c_noise (B,) -> (B, dim). c_noise = log(sigma) / 4 lies in about [-2, 1.5]; ``scale``
    spreads it over the range the 1/10000^(i/half) frequencies resolve."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=c_noise.device) / half)
    angles = (scale * c_noise.float())[:, None] * freqs[None]
    return torch.cat([angles.cos(), angles.sin()], dim=1)


def zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GN -> SiLU -> conv -> (GN * (1 + scale) + shift from the embedding) -> SiLU -> dropout ->
    conv, plus a 1x1 skip when the width changes. (B, Cin, H, W), (B, D) -> (B, Cout, H, W)."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups_for(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(groups_for(cout), cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero(nn.Conv2d(cout, cout, 3, padding=1))
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions, then (text models) cross-attention from the
    positions to the context tokens. (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, channels: int, heads: int, context_dim: int = 0):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups_for(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero(nn.Linear(channels, channels))
        self.cross = context_dim > 0
        if self.cross:
            self.norm_x = nn.LayerNorm(channels)
            self.q = nn.Linear(channels, channels)
            self.kv = nn.Linear(context_dim, 2 * channels)
            self.proj_x = zero(nn.Linear(channels, channels))

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, heads, N, C/heads)
        b, n, c = t.shape
        return t.view(b, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q, k, v = (self._split(t) for t in self.qkv(tokens).chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h * w, c)
        seq = x.flatten(2).transpose(1, 2) + self.proj(out)  # (B, HW, C)
        if self.cross and context is not None:
            q = self._split(self.q(self.norm_x(seq)))
            k, v = (self._split(t) for t in self.kv(context).chunk(2, dim=-1))  # (B, heads, T, C/h)
            mask = None if context_mask is None else context_mask[:, None, None, :]  # (B, 1, 1, T)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            seq = seq + self.proj_x(out.transpose(1, 2).reshape(b, h * w, c))
        return seq.transpose(1, 2).reshape(b, c, h, w)


class UNet(nn.Module):
    """``net(x, c_noise, cond) -> F``: x (B, C, H, W), c_noise (B,) -> (B, C, H, W).

    ``channels`` gives the width of each resolution level (each level after the first halves
    H and W); ``attention`` says which levels get attention blocks. ``cond`` may hold
    ``labels`` (B,) long, ``context`` (B, T, E) with ``context_mask`` (B, T) bool and
    ``pooled`` (B, E), and ``uncond`` (B,) bool: rows to treat as unconditional (label
    dropout in training, the unconditional half of classifier-free guidance).
    """

    def __init__(self, in_channels: int, channels: tuple[int, ...] = (64, 128, 128), blocks: int = 2,
                 attention: tuple[bool, ...] = (False, True, True), heads: int = 4, dropout: float = 0.0,
                 num_classes: int = 0, context_dim: int = 0):
        super().__init__()
        if len(attention) != len(channels):
            raise ValueError(f"attention has {len(attention)} entries, channels {len(channels)}: one per level")
        self.levels = len(channels)
        emb_dim = 4 * channels[0]
        self.feature_dim = channels[0]
        self.time_mlp = nn.Sequential(nn.Linear(channels[0], emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.num_classes = num_classes
        if num_classes:
            self.label_emb = nn.Embedding(num_classes + 1, emb_dim)  # index K: "no label"
        self.context_dim = context_dim
        if context_dim:
            # Always attended, so a caption-free row (all tokens masked) still has a key.
            self.null_token = nn.Parameter(torch.randn(1, 1, context_dim) * 0.02)
            self.pooled_emb = nn.Linear(context_dim, emb_dim)

        def attn(ch, on):
            return AttentionBlock(ch, heads, context_dim) if on else None

        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [channels[0]], channels[0]
        for i, (width, on) in enumerate(zip(channels, attention, strict=True)):
            for _ in range(blocks):
                self.down.append(nn.ModuleList([ResBlock(ch, width, emb_dim, dropout), attn(width, on)]))
                ch = width
                skips.append(ch)
            if i < self.levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, dropout), AttentionBlock(ch, heads, context_dim),
                                  ResBlock(ch, ch, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for i in reversed(range(self.levels)):
            width, on = channels[i], attention[i]
            for _ in range(blocks + 1):
                self.up.append(nn.ModuleList([ResBlock(ch + skips.pop(), width, emb_dim, dropout),
                                              attn(width, on)]))
                ch = width
            if i > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                             nn.Conv2d(ch, ch, 3, padding=1)))
        self.out = nn.Sequential(nn.GroupNorm(groups_for(ch), ch), nn.SiLU(),
                                 zero(nn.Conv2d(ch, in_channels, 3, padding=1)))

    def _embedding(self, c_noise: torch.Tensor, cond: dict | None) -> tuple[torch.Tensor, tuple]:
        emb = self.time_mlp(timestep_features(c_noise, self.feature_dim).to(self.conv_in.weight.dtype))
        cond = cond or {}
        b = c_noise.shape[0]
        uncond = cond.get("uncond")
        if uncond is None:
            uncond = torch.zeros(b, dtype=torch.bool, device=c_noise.device)
        if self.num_classes:
            labels = cond.get("labels")
            if labels is None:  # an unconditional draw from a class-conditional model
                labels = torch.full((b,), self.num_classes, device=c_noise.device, dtype=torch.long)
            emb = emb + self.label_emb(torch.where(uncond, self.num_classes, labels.long()))
        context = mask = None
        if self.context_dim:
            null = self.null_token.expand(b, 1, -1)
            ctx = cond.get("context")
            if ctx is None:
                context, mask = null, torch.ones(b, 1, dtype=torch.bool, device=c_noise.device)
            else:
                keep = ~uncond
                context = torch.cat([null, ctx.to(null.dtype)], 1)  # (B, 1 + T, E)
                mask = torch.cat([torch.ones_like(keep)[:, None], cond["context_mask"] & keep[:, None]], 1)
                emb = emb + self.pooled_emb(cond["pooled"].to(emb.dtype)) * keep[:, None].to(emb.dtype)
        return emb, (context, mask)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, cond: dict | None = None) -> torch.Tensor:
        factor = 2 ** (self.levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"a {self.levels}-level UNet needs H and W divisible by {factor}, "
                             f"got {tuple(x.shape[-2:])}")
        emb, ctx = self._embedding(c_noise, cond)
        h = self.conv_in(x)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, nn.ModuleList):
                h = layer[0](h, emb)
                if layer[1] is not None:
                    h = layer[1](h, *ctx)
            else:
                h = layer(h)
            skips.append(h)
        h = self.mid[2](self.mid[1](self.mid[0](h, emb), *ctx), emb)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = layer[0](torch.cat([h, skips.pop()], 1), emb)
                if layer[1] is not None:
                    h = layer[1](h, *ctx)
            else:
                h = layer(h)
        return self.out(h)
