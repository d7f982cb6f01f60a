"""The soft red/green-list text watermark and its z-test (Kirchenbauer et al. 2023, arXiv 2301.10226).

Generation (the paper's Algorithm 2): at each step a keyed hash of the previous ``context`` token
ids splits the vocabulary into a green list (a fraction ``gamma``) and a red list; ``delta`` is added
to the green logits before temperature/top-k/top-p, so green tokens become likelier wherever the
model has entropy to spare. Detection needs only the key, the tokenizer and the text: count the
green tokens among T scored tokens and test them one-sided (section 4's
``z = (|s|_G - gamma T) / sqrt(T gamma (1 - gamma))`` is reported; the p-value is exact, and with a
human-text reference conditioned on the key: genforge.watermark.text_null says why). Each distinct
(context, token) pair is counted once ("ignore repeated n-grams", as the follow-up paper,
arXiv 2306.04634, and transformers' WatermarkDetector do): repeated text is not independent
evidence, and counting it inflates z on repetitive human text.

The green lists come from a vectorized 32-bit integer hash (multiply-xorshift rounds, constants
from Thomas Mueller's "hash-prospector" family) of HMAC-derived key words and token ids, kept in
int64 with every product below 2^63: pure integer tensor ops, so the lists are identical on CPU
and CUDA, across processes and batch shapes (no torch RNG involved). It is a keyed mixing
function, not a cryptographic PRF: like the paper's own LeftHash, a patient attacker with many
marked samples can estimate green lists (the paper's section 7 on spoofing); the key protects
against casual forgery and keeps detection to its holder.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from genforge import GenforgeError
from genforge.watermark.keys import derive

_M32 = 0xFFFFFFFF
_MUL = 0x45D9F3B  # < 2^27: x < 2^32 times it stays below 2^59, no int64 overflow on any device
DEFAULT_GAMMA, DEFAULT_DELTA, DEFAULT_CONTEXT, DEFAULT_THRESHOLD = 0.25, 2.0, 1, 4.0
MAX_DELTA = 100.0
MAX_CONTEXT = 64


def check_params(gamma: float, delta: float, context: int) -> None:
    if not (math.isfinite(gamma) and 0 < gamma < 1):
        raise GenforgeError(f"watermark gamma (green fraction) must be in (0, 1), got {gamma}")
    if not (math.isfinite(delta) and 0 <= delta <= MAX_DELTA):  # more overflows the logits (NaN draws)
        raise GenforgeError(f"watermark delta (green logit bias) must be in [0, {MAX_DELTA:g}] (a bias of "
                            f"{MAX_DELTA:g} already makes a green token certain), got {delta}")
    if not 1 <= context <= MAX_CONTEXT:  # each step hashes this many ids per row: 2**31 took the server down
        raise GenforgeError(f"watermark context must be 1 to {MAX_CONTEXT} tokens (a few), got {context}")


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit mixer on int64 tensors holding values in [0, 2^32)."""
    x = (((x >> 16) ^ x) * _MUL) & _M32
    x = (((x >> 16) ^ x) * _MUL) & _M32
    return (x >> 16) ^ x


def key_words(key: bytes) -> tuple[int, int, int]:
    """Three 32-bit words of the text sub-key (HMAC-SHA256(key, "text/v1")): never the raw key."""
    sub = derive(key, "text/v1")
    return tuple(int.from_bytes(sub[4 * i: 4 * i + 4], "little") for i in range(3))


def green_mask(words: tuple[int, int, int], context_ids: torch.Tensor, vocab_size: int,
               gamma: float) -> torch.Tensor:
    """Green lists for a batch of contexts: (N, c) long ids (-1 = no token there) -> (N, V) bool.

    Exactly ``int(gamma * V)`` tokens are green per context (the paper's greenlist size): the
    tokens with the smallest keyed scores, ties broken by id (stable sort), so the partition is
    the same on every device."""
    k0, k1, k2 = words
    h = torch.full(context_ids.shape[:1], k0, dtype=torch.long, device=context_ids.device)
    for j in range(context_ids.shape[1]):  # chained, so the order of the context matters
        h = _mix(h ^ _mix((context_ids[:, j] & _M32) ^ k1))
    vocab = torch.arange(vocab_size, device=context_ids.device)
    scores = _mix(h[:, None] ^ _mix(vocab ^ k2)[None, :])  # (N, V) in [0, 2^32)
    # A row's scores are distinct (v -> mix(h ^ mix(v ^ k2)) is a bijection of 32-bit words), so
    # the n smallest are those <= the n-th smallest: O(V) selection instead of a sort, same set
    # as the stable argsort's first n (tests check it against the sort).
    kth = scores.kthvalue(green_count(vocab_size, gamma), dim=-1, keepdim=True).values  # (N, 1)
    return scores <= kth


def green_count(vocab_size: int, gamma: float) -> int:
    return max(1, min(vocab_size - 1, int(gamma * vocab_size)))


def last_context(history: torch.Tensor, context: int) -> torch.Tensor:
    """The last ``context`` ids of each row of (B, T), left-filled with -1 when T < context."""
    if history.shape[1] >= context:
        return history[:, history.shape[1] - context:]
    fill = history.new_full((history.shape[0], context - history.shape[1]), -1)
    return torch.cat([fill, history], dim=1)


@dataclass(frozen=True)
class TextWatermark:
    """The logits hook of ``sampling.text.stream``: ``mark(logits (B, V), history (B, T)) -> (B, V)``.

    ``history`` is each row's ids so far, left padding as -1 (what ``stream`` passes). The key is
    kept out of ``repr`` so a logged hook never shows it."""

    key: bytes = field(repr=False)
    gamma: float = DEFAULT_GAMMA
    delta: float = DEFAULT_DELTA
    context: int = DEFAULT_CONTEXT

    def __post_init__(self):
        check_params(self.gamma, self.delta, self.context)

    @property
    def history_window(self) -> int:
        """The hook reads only each row's last ``context`` ids, row by row: a server may pass just
        those (left-filled with -1) and mark the rows of several requests in one call."""
        return self.context

    @functools.cached_property
    def _words(self) -> tuple[int, int, int]:  # the HMAC once per hook, not once per step
        return key_words(self.key)

    def __call__(self, logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        green = green_mask(self._words, last_context(history, self.context), logits.shape[-1], self.gamma)
        return logits + self.delta * green.to(logits.dtype)


def run_watermark(run_dir, gamma: float = DEFAULT_GAMMA, delta: float = DEFAULT_DELTA,
                  context: int = DEFAULT_CONTEXT) -> TextWatermark:
    """The hook that marks samples of the run in ``run_dir`` with its key (made at first use):
    ``generate_text(model, tokenizer, prompts, n, logits_hook=run_watermark(run.run_dir))``."""
    from genforge.watermark.keys import run_key

    check_params(gamma, delta, context)  # before a key is made for nothing
    return TextWatermark(run_key(run_dir), gamma, delta, context)


def p_value(z: float) -> float:
    """P(Z >= z) for a standard normal Z (the normal approximation of the binomial count)."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def detect_ids(ids: Sequence[int], key: bytes, vocab_size: int, gamma: float = DEFAULT_GAMMA,
               context: int = DEFAULT_CONTEXT, threshold: float = DEFAULT_THRESHOLD,
               reference=None) -> dict:
    """Score a token sequence: every token after its first ``context`` ids, each distinct
    (context, token) pair once; ids of -1 (characters outside the vocabulary) are never scored
    nor used as context.

    The p-value is exact, not the normal approximation: with ``reference`` (a
    :class:`~genforge.watermark.text_null.Reference` of human text) the null is also conditioned on
    this key (each pair green with the probability human text after that context would be: the
    key's luck on frequent bigrams, which made the plain z-test fire on up to 74% of human windows
    for one key, is taken out) and the larger of the two p-values is reported, with its z; without
    it, the binomial test at the green share alone (valid averaged over keys only).
    ``watermarked`` is p_value <= the normal tail of ``threshold`` (z > 4: 3.2e-5).
    Returns {watermarked, z, p_value, tokens, green, expected, threshold, gamma, null}."""
    import numpy as np

    from genforge.watermark.text_null import null_probs, upper_tail

    check_params(gamma, 0.0, context)
    if not (math.isfinite(threshold) and threshold > 0):  # at 0 or below, chance-level text is called marked
        raise GenforgeError(f"detection threshold must be a positive finite z-score (default {DEFAULT_THRESHOLD:g}), "
                            f"got {threshold}")
    if reference is not None and reference.context != context:
        raise GenforgeError(f"the reference counts contexts of {reference.context} tokens, the detector "
                            f"{context}; build the reference with the same context")
    scored = [tuple(ids[t - context: t + 1]) for t in range(context, len(ids))
              if min(ids[t - context: t + 1]) >= 0]
    pairs = sorted(set(scored))
    if pairs and max(max(p) for p in pairs) >= vocab_size:
        raise GenforgeError(f"token id {max(max(p) for p in pairs)} is outside the vocabulary of "
                            f"{vocab_size}; detect with the tokenizer of the run that wrote the text")
    seen: dict[tuple, int] = {}
    for p in scored:  # n_c: how often each context occurs, repeats included
        seen[p[:-1]] = seen.get(p[:-1], 0) + 1
    fraction = green_count(vocab_size, gamma) / vocab_size  # the exact green share, ~gamma
    words, green, probs, ctx_p = key_words(key), 0, [], {}
    for s in range(0, len(pairs), 256):  # (256, V) masks at a time bound memory on BPE vocabularies
        chunk = torch.tensor(pairs[s: s + 256], dtype=torch.long)
        mask = green_mask(words, chunk[:, :-1], vocab_size, gamma)
        green += int(mask.gather(1, chunk[:, -1:]).sum())
        if reference is None:
            continue
        for row, pair in zip(mask.numpy(), pairs[s: s + 256], strict=True):
            c = pair[:-1]
            if c not in ctx_p:
                ctx_p[c] = null_probs(reference, c, seen[c], row)
            probs.append(ctx_p[c])
    # The binomial test always; with a reference also the key-conditioned one, and the verdict takes
    # the larger p-value (reject only when both do): its level holds when either null is true, so
    # text unlike the reference (an untrained model's noise) cannot fire on the reference's account.
    tests = [np.full(len(pairs), fraction)] + ([np.asarray(probs)] if reference is not None else [])
    pv, z, expected = -1.0, 0.0, 0.0
    for ps in tests:
        e, var, tail = float(ps.sum()), float((ps * (1 - ps)).sum()), upper_tail(ps, green)
        if tail > pv:
            pv, z, expected = tail, (green - e) / math.sqrt(var) if var > 0 else 0.0, e  # 0: nothing to score
    return {"watermarked": bool(pairs) and pv <= p_value(threshold), "z": z, "p_value": pv,
            "tokens": len(pairs), "green": green, "expected": expected, "threshold": threshold,
            "gamma": gamma, "null": "reference" if reference is not None else "uniform"}


def encode_lenient(tokenizer, text: str) -> list[int]:
    """Token ids of ``text``; characters a character vocabulary lacks become -1 (not scored)
    instead of an error, since text to check may come from anywhere."""
    try:
        return tokenizer.encode(text)
    except GenforgeError:
        known: dict[str, int] = {}
        out = []
        for ch in text:
            if ch not in known:
                try:
                    ids = tokenizer.encode(ch)
                except GenforgeError:
                    ids = []
                known[ch] = ids[0] if len(ids) == 1 else -1
            out.append(known[ch])
        return out


def detect_text(text: str, tokenizer, key: bytes, gamma: float = DEFAULT_GAMMA,
                context: int = DEFAULT_CONTEXT, threshold: float = DEFAULT_THRESHOLD,
                reference=None) -> dict:
    """:func:`detect_ids` on ``text`` tokenized by the run's tokenizer."""
    return detect_ids(encode_lenient(tokenizer, text), key, tokenizer.vocab_size, gamma, context,
                      threshold, reference)
