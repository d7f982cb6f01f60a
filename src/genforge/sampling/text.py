"""Autoregressive decoding for token models: temperature, top-k, top-p, KV cache, stop strings.

A model used here exposes ``logits(idx, cache, positions)``, ``new_cache(B)``
and ``config.block_size`` (the GPT family does; a SMILES GPT reuses it). The
pure pieces (``filter_logits``, ``sample_next``) take and return tensors only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from genforge import GenforgeError
from genforge.sampling import static_decode


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """Scale by temperature, keep the top-k and the top-p nucleus (Holtzman et al., 2020); (B, V) -> (B, V)."""
    logits = logits / max(temperature, 1e-8)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p; the top token always stays.
        drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
        drop_sorted[..., 0] = False  # explicitly: a top_p below float32's range (1e-300) rounds to 0
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids; temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits.float(), temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample_rows(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                parts: Sequence[tuple[int, torch.Generator | None]]) -> torch.Tensor:
    """(N, V) logits of several requests' rows -> (N,) ids: for each part (its rows in order, n
    of them, and its generator) the ids ``sample_next`` draws for those rows alone, in one
    filtering pass for all N rows (a server's batch of requests that share their settings).

    ``torch.multinomial(p, 1, generator=g)`` is the exponential race argmax(p / q), q ~ Exp(1)
    drawn as ``empty_like(p).exponential_(generator=g)`` (ATen's Distributions.cpp, its
    n_sample == 1 path), so each part draws its own (n, V) q from its own generator, exactly as
    alone, and one division and argmax serve all rows; tests pin the equality."""
    if sum(n for n, _ in parts) != logits.shape[0]:
        raise GenforgeError(f"parts cover {sum(n for n, _ in parts)} rows, logits have {logits.shape[0]}")
    if temperature == 0:
        return logits.argmax(-1)
    if len(parts) == 1:
        return sample_next(logits, temperature, top_k, top_p, parts[0][1])
    probs = filter_logits(logits.float(), temperature, top_k, top_p).softmax(-1)  # (N, V)
    if not bool((probs.sum(-1) > 0).all()):  # NaN logits: multinomial's own check, once for all rows
        raise GenforgeError("probability tensor contains either `inf`, `nan` or element < 0")
    V = probs.shape[-1]
    q = torch.cat([torch.empty(n, V, dtype=probs.dtype, device=probs.device).exponential_(generator=g)
                   for n, g in parts])
    return (probs / q).argmax(-1)


def race_draw(temperature: float, top_k: int | None, top_p: float | None):
    """``sample_next`` without a host sync, for a captured decode step: (B, V) logits and
    q ~ Exp(1) (B, V) fp32 (drawn as multinomial draws it) -> (B,) the ids ``sample_next``
    draws (see ``sample_rows``); greedy ignores q. It skips multinomial's NaN check."""
    if temperature == 0:
        return lambda logits, q: logits.argmax(-1)

    def draw(logits: torch.Tensor, q: torch.Tensor | None) -> torch.Tensor:
        return (filter_logits(logits.float(), temperature, top_k, top_p).softmax(-1) / q).argmax(-1)

    return draw


def check_settings(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int) -> None:
    if not math.isfinite(temperature) or temperature < 0:
        raise GenforgeError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise GenforgeError(f"top-k must be >= 1, got {top_k}")
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise GenforgeError(f"top-p must be in (0, 1], got {top_p}")
    if max_new_tokens < 0:
        raise GenforgeError(f"max-new-tokens must be >= 0, got {max_new_tokens}")


@dataclass
class Generation:
    tokens: list[list[int]] = field(default_factory=list)  # new tokens per prompt
    logprobs: list[list[float]] = field(default_factory=list)  # log p(token) under the model at T=1


def _prefill(model, history: torch.Tensor, pad: torch.Tensor, cache=None):
    """Fresh cache (or ``cache``, empty) over ``history`` (B, T) whose row b starts with pad[b]
    padding columns."""
    B, T = history.shape
    cache = model.new_cache(B) if cache is None else cache
    positions = None
    if bool((pad > 0).any()):
        cols = torch.arange(cache.max_len, device=history.device)
        cache.key_mask = (cols[None, :] >= pad[:, None])[:, None, None, :]  # (B, 1, 1, max_len)
        positions = (torch.arange(T, device=history.device)[None, :] - pad[:, None]).clamp(min=0)
    logits = model.logits(history, cache, positions)[:, -1]
    return cache, logits


@torch.inference_mode()
def stream(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | None = None, use_cache: bool = True,
           pick: Callable[[torch.Tensor], torch.Tensor] | None = None,
           logits_hook: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
           static: bool | str = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (tokens (B,), logprobs (B,)) one step at a time for a batch of prompts.

    Prompts of unequal length are left-padded and masked. Within the context
    window each new token costs one cached step. Past it, every step re-reads
    the last ``block_size`` tokens (nanoGPT's crop), so the tokens are exactly
    those of ``use_cache=False``, which recomputes the cropped context every
    step: the reference the cache must match (tested past the window, with
    left-padded batches). A rolling cache would be faster there but would see
    a different context than the model was trained on.

    ``pick`` ((B, V) logits -> (B,) tokens) replaces ``sample_next``: the server's batches draw
    each request's rows with that request's own settings and generator.

    ``logits_hook`` ((B, V) logits, (B, T) history -> (B, V) logits) changes the logits before
    temperature/top-k/top-p and ``pick`` (the text watermark, genforge.watermark.text). ``history``
    holds each row's prompt and tokens so far with its left padding as -1, so a hook that reads
    only real ids sees the same row batched or alone. The yielded log-probs stay the model's own.

    ``static`` decodes within the window with the fixed-shape step of
    ``genforge.sampling.static_decode``, and past it with that module's fixed-shape re-read: on
    CUDA one captured graph replay per token (the draw inside it when there is no ``pick`` or
    hook); on a CPU the same steps eagerly, which is how the tests pin its tokens. Opt-in, not
    automatic on CUDA: it keeps a full KV cache and graphs per (model, batch size, settings)
    alive between calls, its first call per key pays the capture, and its masked full-window
    attention may round differently from the sliced one (and the graphs are not yet measured).
    ``static="compile"`` also passes the step through torch.compile first (fewer, fused kernels;
    tens of seconds of compiling per key).
    """
    check_settings(temperature, top_k, top_p, max_new_tokens)
    if static not in (False, True, "compile"):
        raise GenforgeError(f"static must be False, True or 'compile', got {static!r}")
    if static and not use_cache:
        raise GenforgeError("static decoding needs the KV cache (use_cache=True)")
    if not prompts or any(len(p) == 0 for p in prompts):
        raise GenforgeError("every prompt needs at least one token")
    block = model.config.block_size
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    # Prompts and every new token, written in place (no per-step torch.cat): (B, width + max_new_tokens).
    buffer = torch.zeros(len(prompts), width + max_new_tokens, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        buffer[i, width - len(p):width] = torch.as_tensor(list(p), device=device)
    history = buffer[:, :width]
    pad = torch.tensor([width - len(p) for p in prompts], device=device)
    seen = None  # (B, T) history for the hook, padding as -1 (never a token id): a view of seen_buf
    if logits_hook is not None:
        cols = torch.arange(buffer.shape[1], device=device)[None, :]
        seen_buf = buffer.masked_fill((cols < pad[:, None]) & (cols < width), -1)
        seen = seen_buf[:, :width]
    was_training = model.training
    model.eval()
    decoder = None
    fused = pick is None and logits_hook is None  # the static step may draw too: no Python per step
    try:
        cur_pad = (pad - max(width - block, 0)).clamp(min=0)  # padding inside the current window
        if static:
            settings = (temperature, top_k, top_p)
            draw, draw_key = (race_draw(*settings), settings) if fused else (None, None)
            key, decoder = static_decode.acquire(model, len(prompts), draw, draw_key,
                                                 needs_q=fused and temperature > 0, compile=static == "compile")
            cache, logits = _prefill(model, history[:, -block:], cur_pad, decoder.fresh_cache())
            decoder.begin(cache, cur_pad)
        else:
            cache, logits = _prefill(model, history[:, -block:], cur_pad)
        drawn_by_step = None  # (tokens, logprobs) the fused static step already drew
        for step in range(max_new_tokens):
            if drawn_by_step is not None:
                (token, logp), drawn_by_step = drawn_by_step, None
            else:
                drawn = logits if seen is None else logits_hook(logits, seen)
                token = sample_next(drawn, temperature, top_k, top_p, generator) if pick is None else pick(drawn)
                logp = torch.log_softmax(logits.float(), -1).gather(-1, token[:, None]).squeeze(-1)
            yield token, logp
            if step == max_new_tokens - 1:
                break  # no forward pass for a token nobody will draw
            T = width + step + 1
            buffer[:, T - 1] = token
            history = buffer[:, :T]
            if seen is not None:
                seen_buf[:, T - 1] = token
                seen = seen_buf[:, :T]
            if decoder is not None and decoder.length < block:
                out = decoder.step(model, token, generator)
                drawn_by_step, logits = (out, None) if fused else (None, out)
            elif decoder is None and use_cache and cache.length < block:
                positions = None
                if cache.key_mask is not None:
                    positions = (cache.length - cur_pad)[:, None]  # (B, 1)
                logits = model.logits(token[:, None], cache, positions)[:, -1]
            else:
                window = min(T, block)
                cur_pad = (pad - (T - window)).clamp(min=0)
                if decoder is not None:  # the same re-read with fixed shapes (T >= block here)
                    out = decoder.reread(model, history[:, -block:], cur_pad, generator)
                    drawn_by_step, logits = (out, None) if fused else (None, out)
                else:
                    cache, logits = _prefill(model, history[:, -window:], cur_pad)
    finally:
        model.train(was_training)
        if decoder is not None:
            static_decode.release(model, key, decoder)


def generate(model, prompts, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
             generator=None, use_cache=True, eos_id: int | None = None, logits_hook=None,
             static: bool | str = False, sync_every: int = 16) -> Generation:
    """New tokens and their log-probs per prompt. With ``eos_id``, a row ends at its first
    ``eos_id`` (kept, so its log-prob counts: the model chose to stop) and decoding stops
    once every row has ended; a row that never ends has ``max_new_tokens`` tokens.

    Tokens stay on the device until the end: the host looks at them only every ``sync_every``
    steps (to see whether every row has ended), not once per token, so a GPU's next step can be
    queued while the last one runs (a per-token ``.tolist()`` is a full device sync, which at
    batch 1 costs as much as a captured step). The result is the same for any ``sync_every``;
    only the work done past the last row's end, and so how far ``generator`` advances, differs."""
    if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
        raise GenforgeError(f"sync_every must be a positive integer, got {sync_every!r}")
    steps: list[tuple[torch.Tensor, torch.Tensor]] = []
    ended = None  # (B,) bool on the device: the row has drawn eos_id
    for tokens, logps in stream(model, prompts, max_new_tokens, temperature, top_k, top_p,
                                generator, use_cache, logits_hook=logits_hook, static=static):
        steps.append((tokens, logps))  # fresh tensors every step (the static step clones its graph's outputs)
        if eos_id is not None:
            ended = (tokens == eos_id) if ended is None else ended | (tokens == eos_id)
            if len(steps) % sync_every == 0 and bool(ended.all()):
                break
    out = Generation([[] for _ in prompts], [[] for _ in prompts])
    if not steps:
        return out
    all_tokens = torch.stack([t for t, _ in steps], 1).tolist()  # (B, steps): one transfer
    all_logps = torch.stack([lp for _, lp in steps], 1).tolist()
    for i, (row, lps) in enumerate(zip(all_tokens, all_logps, strict=True)):
        n = row.index(eos_id) + 1 if eos_id is not None and eos_id in row else len(row)
        out.tokens[i], out.logprobs[i] = row[:n], lps[:n]
    return out


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    hits = [text.index(s) for s in stop if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def generate_text(model, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                  temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                  stop: Sequence[str] = (), generator: torch.Generator | None = None,
                  logits_hook=None) -> list[str]:
    """Continue each prompt; a row ends at the first stop string (which is not included)."""
    ids = [tokenizer.encode(p) for p in prompts]
    new: list[list[int]] = [[] for _ in prompts]
    texts = [""] * len(prompts)
    done = [False] * len(prompts)
    for tokens, _ in stream(model, ids, max_new_tokens, temperature, top_k, top_p, generator,
                            logits_hook=logits_hook):
        for i, t in enumerate(tokens.tolist()):
            if done[i]:
                continue
            new[i].append(t)
            if stop:
                texts[i], done[i] = _cut_at_stop(tokenizer.decode(new[i]), stop)
        if all(done):
            break
    return [texts[i] if stop else tokenizer.decode(new[i]) for i in range(len(prompts))]


def stream_text(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, stop: Sequence[str] = (),
                generator: torch.Generator | None = None, logits_hook=None) -> Iterator[str]:
    """Yield the continuation of one prompt piece by piece, as tokens arrive."""
    new: list[int] = []
    emitted = ""
    for tokens, _ in stream(model, [tokenizer.encode(prompt)], max_new_tokens, temperature,
                            top_k, top_p, generator, logits_hook=logits_hook):
        new.append(int(tokens[0]))
        text = tokenizer.decode(new)
        if text.endswith("\ufffd"):  # an unfinished multi-byte character (byte-level BPE)
            continue
        text, stopped = _cut_at_stop(text, stop)
        if len(text) > len(emitted):
            yield text[len(emitted):]
            emitted = text
        if stopped:
            return
