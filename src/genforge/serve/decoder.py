"""Continuous (iteration-level) batching of text decoding: the batch is re-formed at every
decode step. Jobs that arrive are prefilled and join the running batch at the next step; a job
leaves the step after its last token, and its rows' cache columns are given back at once
(Orca's iteration-level scheduling, Yu et al., OSDI 2022; vLLM's continuous batching, Kwon et
al., SOSP 2023). Nobody waits for a whole batch to finish.

The KV cache (``nn.attention.KVCache``) has one length L for the whole batch, so rows of
different lengths share it right-aligned: row b holds its n_b tokens in columns
[L - n_b, L), its ``pad`` = L - n_b left columns masked out by ``key_mask`` (zeros, never
garbage: a masked column still meets a 0 weight in ``attn @ v``), and each new token is at
position ``L - pad`` (the row's own count, as if it were alone). Chosen over paging: a joining
job is prefilled alone (the exact computation it gets alone) and its cache rows are copied in
right-aligned to ``max(L, its width)``; when rows leave, the cache is rebuilt without them and
shifted left by the smallest remaining pad, so L stays the longest live row and attention
never reads dead columns. Both are one copy of the cache (small next to a step for the models
served here); a paged cache (vLLM) would avoid the copy at the price of a custom kernel.

Exactness per request, not per batch: each job samples its own rows with its own settings,
its own ``logits_hook`` (the text watermark's place) and its own generator, once per step from
its first step to its last, exactly as ``sampling.text.stream`` draws for it alone; a job's
rows stay together until the job ends (one multinomial over its rows, as alone). What a row
sees is its own tokens at its own positions, so only floating-point rounding can differ from
alone (masked columns add exact zeros, but a longer reduction may round differently); the
tests check token equality, a mid-decode join included.

Past the context window a row falls back as ``stream`` does (nanoGPT's crop): once it holds
more than ``block_size`` tokens it leaves the cache and every step re-reads its last
``block_size`` tokens, batched with the other such rows (same width, no padding).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genforge import GenforgeError


@dataclass
class _Live:
    """A running job: its text state (``batching._Rows``), each row's prompt + new token ids,
    and the next-token logits of its rows (rows, V)."""

    state: object
    history: list[list[int]]
    logits: torch.Tensor | None = None

    @property
    def job(self):
        return self.state.job

    def seen(self, device) -> torch.Tensor:
        """(rows, T) history for a logits hook, left padding as -1 (``stream``'s convention)."""
        width = max(len(h) for h in self.history)
        out = torch.full((len(self.history), width), -1, dtype=torch.long, device=device)
        for i, h in enumerate(self.history):
            out[i, width - len(h):] = torch.as_tensor(h, device=device)
        return out


def assemble(model, parts, length: int):
    """A new cache holding, in order, the chosen rows of each part right-aligned to ``length``.

    ``parts``: (cache, pad (B,) long, rows (list of row indices)) each; a part's rows keep their
    last ``cache.length - pad`` columns (never fewer than that fit: callers choose ``length``
    >= every kept row's token count). Returns (cache or None, pad (R,)). Leaving, compaction
    (``length`` < L) and joining (``length`` >= L) are all this one copy."""
    from genforge.nn.attention import KVCache

    device = next(model.parameters()).device
    total = sum(len(rows) for _, _, rows in parts)
    if total == 0:
        return None, torch.zeros(0, dtype=torch.long, device=device)
    like = parts[0][0]
    shape = (total, like.k[0].shape[1], like.max_len, like.k[0].shape[3])  # (R, nh, max_len, hs)
    new = KVCache([torch.zeros(shape, dtype=like.k[0].dtype, device=device) for _ in like.k],
                  [torch.zeros(shape, dtype=like.k[0].dtype, device=device) for _ in like.k])
    pads, at = [], 0
    for cache, pad, rows in parts:
        if not rows:
            continue
        idx = torch.as_tensor(rows, device=device)
        keep = int((cache.length - pad[idx]).max())  # the longest kept row's tokens
        if keep > length:
            raise AssertionError(f"cache rows of {keep} tokens do not fit {length} columns")
        src = slice(cache.length - keep, cache.length)
        for new_layer, old_layer in ((new.k, cache.k), (new.v, cache.v)):
            for n_l, o_l in zip(new_layer, old_layer, strict=True):
                n_l[at:at + len(rows), :, length - keep:length] = o_l[idx][:, :, src]
        pads.append(pad[idx] + (length - cache.length))
        at += len(rows)
    pad = torch.cat(pads)
    new.length = length
    if bool((pad > 0).any()):
        cols = torch.arange(new.max_len, device=device)
        new.key_mask = (cols[None, :] >= pad[:, None])[:, None, None, :]  # (R, 1, 1, max_len)
    return new, pad


class Decoder:
    """The running batch of one text run. ``admit(job)`` prefills a job (it draws from the next
    ``step``); ``step()`` draws one token for every running job, lets ended jobs leave and
    computes the next logits. Not thread-safe: one thread (the run's batcher) drives it."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.block = model.config.block_size
        self.device = next(model.parameters()).device
        self.running: list[_Live] = []
        self.cache = None  # rows of ``running`` holding <= block tokens, in running order
        self.pad = torch.zeros(0, dtype=torch.long, device=self.device)
        self.slots: list[tuple[_Live, int]] = []  # cache row -> (job, row)

    @property
    def rows(self) -> int:
        return sum(len(live.history) for live in self.running)

    def admit(self, state) -> None:
        """Prefill a job's rows alone (``stream``'s first step: left-padded, cropped to the
        window) and add them to the batch; a job with nothing to draw ends at once."""
        from genforge.sampling.text import _prefill

        job = state.job
        if job.settings["max_new_tokens"] == 0:  # alone it draws nothing: no row, no draw
            state.finish()
            return
        ids = [self.tokenizer.encode(p) for p in job.prompts]
        if any(len(p) == 0 for p in ids):
            raise GenforgeError("every prompt needs at least one token")
        window = [p[-self.block:] for p in ids]
        width = max(len(p) for p in window)
        x = torch.zeros(len(window), width, dtype=torch.long, device=self.device)
        for i, p in enumerate(window):
            x[i, width - len(p):] = torch.as_tensor(p, device=self.device)
        pad = torch.tensor([width - len(p) for p in window], device=self.device)
        cache, logits = _prefill(self.model, x, pad)
        live = _Live(state, ids, logits)
        self.running.append(live)
        fits = [i for i, p in enumerate(ids) if len(p) <= self.block]  # longer: windowed from now
        if fits:
            length = max(self.cache.length if self.cache is not None else 0, width)
            mine = [(live, i) for i in fits]
            old = [(self.cache, self.pad, list(range(len(self.slots))))] if self.cache is not None else []
            self.cache, self.pad = assemble(self.model, [*old, (cache, pad, fits)], length)
            self.slots += mine

    def step(self) -> None:
        """One token for every running job, then the next logits for the jobs still running."""
        from genforge.sampling.text import sample_next

        for live in self.running:
            if live.job.cancelled.is_set():  # the client went away: no more draws for it
                live.state.finish()
                continue
            job, s = live.job, live.job.settings
            logits = live.logits if job.logits_hook is None else job.logits_hook(live.logits, live.seen(self.device))
            tokens = sample_next(logits, s["temperature"], s["top_k"], s["top_p"], job.generator).tolist()
            job.steps += 1
            for h, t in zip(live.history, tokens, strict=True):
                h.append(t)
            live.state.add(tokens)
        self.running = [live for live in self.running if not live.state.finished]
        alive = {id(live) for live in self.running}
        # Rows that stay in the cache: their job runs on and they are within the window.
        keep = [b for b, (live, i) in enumerate(self.slots)
                if id(live) in alive and len(live.history[i]) <= self.block]
        if len(keep) != len(self.slots) or (len(keep) and int(self.pad.min()) > 0):
            self._shrink(keep)
        self._next_logits()

    def _shrink(self, keep: list[int]) -> None:
        """Drop every cache row not in ``keep`` and shift left by the smallest pad left."""
        if not keep:
            self.cache, self.pad, self.slots = None, self.pad[:0], []
            return
        idx = torch.as_tensor(keep, device=self.device)
        length = int((self.cache.length - self.pad[idx]).max())
        self.cache, self.pad = assemble(self.model, [(self.cache, self.pad, keep)], length)
        self.slots = [self.slots[b] for b in keep]

    def _next_logits(self) -> None:
        from genforge.sampling.text import _prefill

        for live in self.running:
            live.logits = torch.empty(len(live.history), live.logits.shape[-1], dtype=live.logits.dtype,
                                      device=self.device)
        if self.slots:  # one cached step: each row's newest token at its own position
            last = torch.tensor([[live.history[i][-1]] for live, i in self.slots], device=self.device)
            positions = (self.cache.length - self.pad)[:, None]  # (R, 1)
            out = self.model.logits(last, self.cache, positions)[:, -1]
            for b, (live, i) in enumerate(self.slots):
                live.logits[i] = out[b]
        cached = {(id(live), i) for live, i in self.slots}
        windowed = [(live, i) for live in self.running for i in range(len(live.history))
                    if (id(live), i) not in cached]
        if windowed:  # past the context window: re-read the last block_size tokens, as stream()
            x = torch.tensor([live.history[i][-self.block:] for live, i in windowed], device=self.device)
            _, out = _prefill(self.model, x, torch.zeros(len(windowed), dtype=torch.long, device=self.device))
            for b, (live, i) in enumerate(windowed):
                live.logits[i] = out[b]

    def fail(self, error: BaseException) -> None:
        """Every running job gets ``error``; the batch is empty afterwards."""
        for live in self.running:
            live.job.put(error)
        self.running, self.cache, self.pad, self.slots = [], None, self.pad[:0], []
