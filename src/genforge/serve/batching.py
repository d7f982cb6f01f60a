"""Windowed batching of text requests: requests for the same run that arrive within
``window_s`` of each other are decoded together, one batched KV-cache decode
(``sampling.text.stream``) for all their rows.

Reproducibility is kept per request, not per batch: ``stream``'s ``pick`` hook samples each
request's rows with that request's own settings (temperature, top-k, top-p) and its own
``generator_for(device, seed)``, drawing exactly as often as the request alone would (once per
step while it runs; never after it ends). So a request gets the tokens it gets alone, up to
the floating-point rounding of a left-padded batch (masked padding columns add exact zeros,
but a longer reduction may round differently); the test checks equality on a tiny model.
This is simpler than vLLM's continuous batching (Kwon et al. 2023): a batch is formed once,
and a request arriving mid-decode waits for the next one.

Images and molecules are not batched across requests (each family draws a whole batch's noise
from one generator, so a shared call could not keep per-request seeds); each such request is
one draw under the run's lock.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

END = object()  # a job's last event


@dataclass
class Job:
    """One text request: its rows (prompts), settings and generator; events come back on
    ``events`` as (row index, new text) pairs, then ``END`` (or an exception)."""

    prompts: list[str]
    settings: dict[str, Any]  # max_new_tokens, temperature, top_k, top_p, stop
    generator: torch.Generator
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def pieces(self) -> Iterator[tuple[int, str]]:
        """The events as they come (blocks); raises the decode's exception if it failed."""
        while True:
            event = self.events.get()
            if event is END:
                return
            if isinstance(event, BaseException):
                raise event
            yield event

    def texts(self) -> list[str]:
        out = [""] * len(self.prompts)
        for i, piece in self.pieces():
            out[i] += piece
        return out


class _Rows:
    """The text of one job's rows as tokens arrive: pieces are emitted only when they are whole
    characters (byte-level BPE may end mid-character) and up to the first stop string."""

    def __init__(self, job: Job, tokenizer):
        self.job, self.tok = job, tokenizer
        self.new: list[list[int]] = [[] for _ in job.prompts]
        self.emitted = [""] * len(job.prompts)
        self.done = [False] * len(job.prompts)
        self.steps, self.finished = 0, False

    def text(self, i: int) -> tuple[str, bool]:
        from genforge.sampling.text import _cut_at_stop

        return _cut_at_stop(self.tok.decode(self.new[i]), self.job.settings["stop"])

    def add(self, tokens: list[int]) -> None:
        self.steps += 1
        for i, t in enumerate(tokens):
            if self.done[i]:
                continue
            self.new[i].append(t)
            text, self.done[i] = self.text(i)
            if text.endswith("\ufffd") and not self.done[i]:
                continue
            self._emit(i, text)
        if all(self.done) or self.steps >= self.job.settings["max_new_tokens"] or self.job.cancelled.is_set():
            self.finish()

    def _emit(self, i: int, text: str) -> None:
        if len(text) > len(self.emitted[i]) and not self.job.cancelled.is_set():
            self.job.events.put((i, text[len(self.emitted[i]):]))
            self.emitted[i] = text

    def finish(self) -> None:
        if self.finished:
            return
        for i in range(len(self.new)):  # what a non-streamed answer holds, incomplete tail included
            self._emit(i, self.text(i)[0])
        self.finished = True
        self.job.events.put(END)


def decode_jobs(model, tokenizer, jobs: list[Job]) -> None:
    """Decode every job's rows in one batch; each job gets its own events and its own draws."""
    from genforge.sampling.text import sample_next, stream

    states = [_Rows(j, tokenizer) for j in jobs]
    bounds, start = [], 0
    for j in jobs:
        bounds.append((start, start + len(j.prompts)))
        start += len(j.prompts)
    steps = max(j.settings["max_new_tokens"] for j in jobs)
    for state in states:
        if state.job.settings["max_new_tokens"] == 0:  # alone it draws nothing: no row, no draw
            state.finish()

    def pick(logits: torch.Tensor) -> torch.Tensor:  # (B, V) -> (B,)
        out = logits.argmax(-1)  # rows of ended jobs: any token, no draw from their generator
        for state, (a, b) in zip(states, bounds, strict=True):
            if not state.finished:
                s = state.job.settings
                out[a:b] = sample_next(logits[a:b], s["temperature"], s["top_k"], s["top_p"], state.job.generator)
        return out

    if steps > 0:
        ids = [tokenizer.encode(p) for j in jobs for p in j.prompts]
        for tokens, _ in stream(model, ids, steps, pick=pick):
            flat = tokens.tolist()
            for state, (a, b) in zip(states, bounds, strict=True):
                if not state.finished:
                    state.add(flat[a:b])
            if all(s.finished for s in states):
                break
    for state in states:
        state.finish()


class Batcher:
    """One per text run: a thread that takes waiting jobs in arrival order, waits ``window_s``
    after the first for others, and decodes up to ``max_rows`` rows at once under the run's
    lock. ``window_s=0, max_jobs=1`` serves requests one at a time (batching off)."""

    def __init__(self, entry, window_s: float = 0.01, max_rows: int = 64, max_jobs: int | None = None):
        self.entry, self.window_s, self.max_rows, self.max_jobs = entry, window_s, max_rows, max_jobs
        self.waiting: collections.deque[Job] = collections.deque()
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.batches: list[int] = []  # jobs per batch drawn so far (tests, the load benchmark)

    def submit(self, job: Job) -> Job:
        with self.cond:
            self.waiting.append(job)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name=f"batcher-{self.entry.id}", daemon=True)
                self.thread.start()
            self.cond.notify()
        return job

    def _take(self) -> list[Job]:
        with self.cond:
            jobs, rows = [], 0
            while self.waiting and (not jobs or rows + len(self.waiting[0].prompts) <= self.max_rows) \
                    and (self.max_jobs is None or len(jobs) < self.max_jobs):
                job = self.waiting.popleft()
                if not job.cancelled.is_set():
                    jobs.append(job)
                    rows += len(job.prompts)
                else:
                    job.events.put(END)
            return jobs

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.waiting:
                    self.cond.wait()
            if self.window_s > 0:
                time.sleep(self.window_s)  # let requests sent together arrive
            jobs = self._take()
            if not jobs:
                continue
            self.batches.append(len(jobs))
            run = self.entry.run
            try:
                with self.entry.lock, torch.inference_mode():
                    decode_jobs(run.model, run.tokenizer, jobs)
            except Exception as e:  # every waiting client gets the error, the thread lives on
                for job in jobs:
                    job.events.put(e)


def run_alone(entry, job: Job) -> Job:
    """Decode one job in the calling thread (no batcher): the reference a batch must match."""
    with entry.lock, torch.inference_mode():
        decode_jobs(entry.run.model, entry.run.tokenizer, [job])
    return job

