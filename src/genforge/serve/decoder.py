"""Continuous (iteration-level) batching of text decoding: the batch is re-formed at every
decode step. Jobs that arrive are prefilled and join the running batch at the next step; a job
leaves the step after its last token, and its rows' cache columns are given back at once
(Orca's iteration-level scheduling, Yu et al., OSDI 2022; vLLM's continuous batching, Kwon et
al., SOSP 2023). Nobody waits for a whole batch to finish.

The KV cache (``nn.attention.KVCache``) has one length L for the whole batch, so rows of
different lengths share it right-aligned: row b holds its n_b tokens in columns
[L - n_b, L), its ``pad`` = L - n_b left columns masked out by ``key_mask``, and each new token
is at position ``L - pad`` (the row's own count, as if it were alone). Chosen over paging (vLLM)
for its plain tensors, and over realigning the whole cache at every change, which the profile
under 32 streams showed costing a fifth of the decode thread: :class:`SharedCache` is one
buffer of ``capacity`` rows; live rows are its first R rows, which the model reads and writes
through views (no copy per step). A joining job is prefilled alone (the exact computation it
gets alone) and its rows are copied in right-aligned to L (the live rows shift right only when
the newcomer is wider than L); a leaving row's slot is filled by the last live row (one row
copied); only when L reaches the window are the columns every row pads dropped (one shift,
rare). Masked columns hold finite stale values or zeros, never garbage: a masked key still
meets a 0 weight in ``attn @ v``, and 0 * NaN would not be 0.

Exactness per request, not per batch: each job samples its own rows with its own settings,
its own ``logits_hook`` (the text watermark's place) and its own generator, once per step from
its first step to its last, exactly as ``sampling.text.stream`` draws for it alone; a job's
rows stay together until the job ends (one multinomial over its rows, as alone). The work is
per step, not per row: jobs that share settings are filtered and drawn in one pass
(``sampling.text.sample_rows``: multinomial's exponential race, each job's noise from its own
generator) and jobs with equal row-wise hooks (the watermark of one run key) are marked in one
call on their last ids; under 32 streams the per-job loop had cost more than the model's
forward (benchmarks/profile_serve_decode.py). What a row
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


class SharedCache:
    """One KV buffer (capacity, nh, block, hs) per layer; live rows are rows [0, R), right-aligned
    to ``length`` with ``pad`` (R,) masked columns each."""

    def __init__(self, like):
        self.big = like  # a KVCache whose rows are all free
        self.rows, self.length = 0, 0
        self.pad = torch.zeros(like.k[0].shape[0], dtype=torch.long, device=like.k[0].device)
        self._mask: tuple | None = None  # (the key_mask for the live rows or None,) until pad changes

    @property
    def capacity(self) -> int:
        return self.big.k[0].shape[0]

    def _layers(self):
        return (*self.big.k, *self.big.v)

    def _shift(self, by: int) -> None:
        """Move the live rows ``by`` columns right (> 0) or left (< 0, dropping padding)."""
        R, L = self.rows, self.length
        for t in self._layers():  # (capacity, nh, max_len, hs); clone: the ranges overlap
            if by > 0:
                t[:R, :, by:L + by] = t[:R, :, :L].clone()
            else:
                t[:R, :, :L + by] = t[:R, :, -by:L].clone()
        self.pad[:R] += by
        self.length = L + by
        self._mask = None

    def add(self, cache, pad: torch.Tensor, rows: list[int]) -> None:
        """Copy ``rows`` of a prefilled ``cache`` (pad (B,)) in as new live rows."""
        idx = torch.as_tensor(rows, device=pad.device)
        width = int((cache.length - pad[idx]).max())  # the longest new row's tokens
        if width > self.length:
            self._shift(width - self.length)
        R, L, n = self.rows, self.length, len(rows)
        if R + n > self.capacity:  # grow (rare: the batcher's max_rows sets the capacity)
            self.big.k = [torch.cat([t, torch.zeros_like(t[:R + n - self.capacity])]) for t in self.big.k]
            self.big.v = [torch.cat([t, torch.zeros_like(t[:R + n - self.capacity])]) for t in self.big.v]
            self.pad = torch.cat([self.pad, torch.zeros(R + n - len(self.pad), dtype=torch.long, device=pad.device)])
        for mine, theirs in zip(self._layers(), (*cache.k, *cache.v), strict=True):
            mine[R:R + n, :, L - width:L] = theirs[idx][:, :, cache.length - width:cache.length]
        self.pad[R:R + n] = pad[idx] + (L - cache.length)
        self.rows = R + n
        self._mask = None

    def clear(self) -> None:
        """No live rows (after a failed step)."""
        self.rows, self.length, self._mask = 0, 0, None

    def remove(self, gone: list[int]) -> list[tuple[int, int]]:
        """Free live rows ``gone``: each hole below the new count takes a row from the tail.
        Returns the moves (from, to), so the caller can follow its rows."""
        keep = self.rows - len(gone)
        holes = sorted(b for b in gone if b < keep)
        tail = [b for b in range(keep, self.rows) if b not in set(gone)]
        if holes:
            src, dst = torch.as_tensor(tail, device=self.pad.device), torch.as_tensor(holes, device=self.pad.device)
            for t in self._layers():
                t[dst, :, :self.length] = t[src, :, :self.length]
            self.pad[dst] = self.pad[src]
        self.rows = keep
        self._mask = None
        if keep == 0:
            self.length = 0
        return list(zip(tail, holes, strict=True))

    def make_room(self) -> None:
        """Room for one more column: at the window's end, drop the columns every row pads."""
        if self.length >= self.big.max_len:
            self._shift(-int(self.pad[:self.rows].min()))

    def view(self):
        """The live rows as a KVCache the model writes through (views into the buffer)."""
        from genforge.nn.attention import KVCache

        R = self.rows
        view = KVCache([t[:R] for t in self.big.k], [t[:R] for t in self.big.v], self.length)
        if self._mask is None:  # built when the rows change, not at every step
            pad, mask = self.pad[:R], None
            if bool((pad > 0).any()):
                cols = torch.arange(self.big.max_len, device=pad.device)
                mask = (cols[None, :] >= pad[:, None])[:, None, None, :]  # (R, 1, 1, max_len)
            self._mask = (mask,)
        view.key_mask = self._mask[0]
        return view


class Decoder:
    """The running batch of one text run. ``admit(job)`` prefills a job (it draws from the next
    ``step``); ``step()`` draws one token for every running job, lets ended jobs leave and
    computes the next logits. Not thread-safe: one thread (the run's batcher) drives it.
    ``capacity``: the cache rows allocated at the first job (the batcher's max_rows)."""

    def __init__(self, model, tokenizer, capacity: int = 64):
        self.model, self.tokenizer, self.capacity = model, tokenizer, capacity
        self.block = model.config.block_size
        self.device = next(model.parameters()).device
        self.running: list[_Live] = []
        self.cache: SharedCache | None = None  # the rows holding <= block tokens
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
            if self.cache is None:
                self.cache = SharedCache(self.model.new_cache(max(self.capacity, len(fits))))
                for t in self.cache._layers():
                    t.zero_()  # never garbage in a masked column
            self.cache.add(cache, pad, fits)
            self.slots += [(live, i) for i in fits]

    def step(self) -> None:
        """One token for every running job, then the next logits for the jobs still running."""
        for live in self.running:
            if live.job.cancelled.is_set():  # the client went away: no more draws for it
                live.state.finish()
        jobs = [live for live in self.running if not live.state.finished]
        if jobs:
            tokens = self._draw(jobs)
            for live, drawn in zip(jobs, tokens, strict=True):
                live.job.steps += 1
                for h, t in zip(live.history, drawn, strict=True):
                    h.append(t)
                live.state.add(drawn)
        self.running = [live for live in self.running if not live.state.finished]
        alive = {id(live) for live in self.running}
        # Rows leave the cache when their job ended or they pass the window (then windowed).
        gone = [b for b, (live, i) in enumerate(self.slots)
                if id(live) not in alive or len(live.history[i]) > self.block]
        if gone:
            for src, dst in self.cache.remove(gone):
                self.slots[dst] = self.slots[src]
            del self.slots[len(self.slots) - len(gone):]
        self._next_logits()

    def _draw(self, jobs: list[_Live]) -> list[list[int]]:
        """Each job's new token per row, as alone: its hook, then its settings and generator.
        Per step, not per row: jobs whose hooks are equal and row-wise (``history_window``, the
        text watermark) are marked in one call, and jobs that share their settings are sampled
        in one pass (``sample_rows``, each job drawing from its own generator)."""
        from genforge.sampling.text import sample_rows

        logits = torch.cat([live.logits for live in jobs])  # (N, V), the jobs' rows in order (a copy)
        spans, start = [], 0
        for live in jobs:
            spans.append(range(start, start + len(live.history)))
            start += len(live.history)
        hooked: dict[object, list[int]] = {}  # hook (or a job's own, not row-wise) -> job indices
        for j, live in enumerate(jobs):
            hook = live.job.logits_hook
            if hook is not None:
                hooked.setdefault(hook if _row_wise(hook) else (j,), []).append(j)  # equal hooks: one call
        for members in hooked.values():
            hook = jobs[members[0]].job.logits_hook
            idx = [r for j in members for r in spans[j]]
            if _row_wise(hook):
                n = hook.history_window
                ctx = _hook_contexts([jobs[j].history for j in members], n, self.device)
            else:  # an opaque hook sees its job's rows and whole history, as alone
                ctx = jobs[members[0]].seen(self.device)
            if len(idx) == start:  # every row (the usual case: one key for the run)
                logits = hook(logits, ctx)
            else:  # in place: the rows are ours (cat copied them)
                rows = torch.as_tensor(idx, device=self.device)
                logits[rows] = hook(logits[rows], ctx)
        groups: dict[tuple, list[int]] = {}
        for j, live in enumerate(jobs):
            s = live.job.settings
            groups.setdefault((s["temperature"], s["top_k"], s["top_p"]), []).append(j)
        out = [None] * start
        for (temperature, top_k, top_p), members in groups.items():
            idx = [r for j in members for r in spans[j]]
            part = logits if len(idx) == start else logits[torch.as_tensor(idx, device=self.device)]
            drawn = sample_rows(part, temperature, top_k, top_p,
                                [(len(spans[j]), jobs[j].job.generator) for j in members]).tolist()
            for r, t in zip(idx, drawn, strict=True):
                out[r] = t
        return [out[span.start:span.stop] for span in spans]

    def _next_logits(self) -> None:
        from genforge.sampling.text import _prefill

        order = [(live, i) for live in self.running for i in range(len(live.history))]
        if not order:
            return
        where = {(id(live), i): b for b, (live, i) in enumerate(self.slots)}  # row -> output row
        outs = []
        if self.slots:  # one cached step: each row's newest token at its own position
            self.cache.make_room()
            view = self.cache.view()
            last = torch.tensor([[live.history[i][-1]] for live, i in self.slots], device=self.device)
            positions = (view.length - self.cache.pad[:len(self.slots)])[:, None]  # (R, 1)
            outs.append(self.model.logits(last, view, positions)[:, -1])
            self.cache.length = view.length
        windowed = [(live, i) for live, i in order if (id(live), i) not in where]
        if windowed:  # past the context window: re-read the last block_size tokens, as stream()
            for live, i in windowed:
                where[(id(live), i)] = len(where)
            x = torch.tensor([live.history[i][-self.block:] for live, i in windowed], device=self.device)
            outs.append(_prefill(self.model, x, torch.zeros(len(windowed), dtype=torch.long, device=self.device))[1])
        out = outs[0] if len(outs) == 1 else torch.cat(outs)  # (rows, V): cached rows, then windowed
        src = [where[(id(live), i)] for live, i in order]
        if src != list(range(len(src))):  # rows out of job order (cache moves, windowed rows)
            out = out[torch.as_tensor(src, device=self.device)]
        start = 0
        for live in self.running:  # views: the next step concatenates them back in one copy
            live.logits = out[start:start + len(live.history)]
            start += len(live.history)

    def fail(self, error: BaseException) -> None:
        """Every running job gets ``error``; the batch is empty afterwards."""
        for live in self.running:
            live.job.put(error)
        self.running, self.slots = [], []
        if self.cache is not None:
            self.cache.clear()


def _row_wise(hook) -> bool:
    """A hook that declares it reads only each row's last ``history_window`` ids, row by row
    (and is hashable, so equal hooks can share a call)."""
    if not isinstance(getattr(hook, "history_window", None), int):
        return False
    try:
        hash(hook)
    except TypeError:
        return False
    return True


def _hook_contexts(histories: list[list[list[int]]], n: int, device) -> torch.Tensor:
    """(rows, n): each row's last n ids, left-filled with -1 (what ``stream``'s padded history
    shows in those columns), for the jobs' ``histories`` in order."""
    return torch.tensor([[-1] * (n - len(h)) + h[-n:] for rows in histories for h in rows],
                        dtype=torch.long, device=device)
