"""Forced tokens: a ``logits_hook`` for ``sampling.text.stream`` that fixes some positions of the
generated sequence and lets the model choose the rest.

Used by music's ``--melody``: with the grid serialization (S, A, T, B at each 16th step) every
4th token is the soprano, so forcing those from a melody and sampling the other three is real
conditioning for a left-to-right model: at each step the model sees the soprano of that step
(and all earlier steps) before it chooses alto, tenor and bass, but never a *future* soprano
note, unlike Coconet's orderless infilling (Huang et al. 2017, "Counterpoint by Convolution"),
which sees the whole melody. After the last forced token the sequence is ended with ``eos_id``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class ForcedSlots:
    """``hook(logits (B, V), history (B, T)) -> logits (B, V)``: generated token k (0-based,
    counted after a prompt of ``prompt_len`` tokens) is ``forced[k // period]`` when
    ``k % period == slot``; the other tokens are sampled, never ``eos_id`` nor ``banned`` (e.g.
    ``<bos>``/``<pad>``, which a decoder would drop, shifting every later token's voice); after
    ``period * len(forced)`` tokens ``eos_id`` is forced. Every row shares one prompt length."""

    def __init__(self, forced: Sequence[int], period: int, slot: int, prompt_len: int, eos_id: int,
                 banned: Sequence[int] = ()):
        if not 0 <= slot < period:
            raise ValueError(f"slot {slot} is not inside a period of {period}")
        self.forced, self.period, self.slot = list(forced), period, slot
        self.prompt_len, self.eos_id = prompt_len, eos_id
        self.banned = sorted({eos_id, *banned})

    @property
    def length(self) -> int:
        """Tokens generated before the final ``eos``."""
        return self.period * len(self.forced)

    def __call__(self, logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        k = history.shape[1] - self.prompt_len  # index of the token about to be drawn
        if k >= self.length:
            token = self.eos_id
        elif k % self.period == self.slot:
            token = self.forced[k // self.period]
        else:
            out = logits.clone()
            out[:, self.banned] = float("-inf")  # the piece is not over before the melody is
            return out
        out = torch.full_like(logits, float("-inf"))
        out[:, token] = 0.0
        return out
