"""Batching of text requests for one run: a thread drives the run's continuous batch
(:mod:`genforge.serve.decoder`): a job that arrives joins the running batch at the next decode
step, a job that ends leaves it, so no request waits for another's batch to finish.

Reproducibility is kept per request, not per batch: each request's rows are drawn with its own
settings (temperature, top-k, top-p), its own ``logits_hook`` and its own
``generator_for(device, seed)``, exactly as often as alone (once per step while it runs; never
after it ends). So a request gets the tokens it gets alone, up to the floating-point rounding of
a left-padded batch; the tests check equality on a tiny model, a mid-decode join included.

Events reach the HTTP side through ``Job.put``: a thread-safe queue plus ``notify``, which the
app points at its event loop (``loop.call_soon_threadsafe``) so a streamed answer needs no
worker thread per token.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable, Iterator
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
    # The place for a per-request logits hook (the text watermark, genforge.watermark.text): as
    # ``sampling.text.stream``'s, (rows, V) logits and (rows, T) history (left padding -1) ->
    # (rows, V) logits, applied to this job's rows only, before its temperature/top-k/top-p.
    logits_hook: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    notify: Callable[[bool], None] | None = None  # called after each event; True after the last
    steps: int = 0  # decode steps drawn for this job (a cancelled job stops: tested)

    def put(self, event) -> None:
        self.events.put(event)
        if self.notify is not None:
            self.notify(event is END or isinstance(event, BaseException))

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
    characters (byte-level BPE may end mid-character) and up to the first stop string. The last
    (longest stop - 1) characters are held back until the row ends, as they may begin a stop
    string (vLLM's stop buffer): an emitted piece is never taken back, so it must never be one."""

    def __init__(self, job: Job, tokenizer):
        self.job, self.tok = job, tokenizer
        self.new: list[list[int]] = [[] for _ in job.prompts]
        self.emitted = [""] * len(job.prompts)
        self.done = [False] * len(job.prompts)
        self.steps, self.finished = 0, False
        self.hold = max([len(s) - 1 for s in job.settings["stop"]] + [0])

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
            self._emit(i, text if self.done[i] else text[:max(0, len(text) - self.hold)])
        if all(self.done) or self.steps >= self.job.settings["max_new_tokens"] or self.job.cancelled.is_set():
            self.finish()

    def _emit(self, i: int, text: str) -> None:
        if len(text) > len(self.emitted[i]) and not self.job.cancelled.is_set():
            self.job.put((i, text[len(self.emitted[i]):]))
            self.emitted[i] = text

    def finish(self) -> None:
        if self.finished:
            return
        for i in range(len(self.new)):  # what a non-streamed answer holds, incomplete tail included
            self._emit(i, self.text(i)[0])
        self.finished = True
        self.job.put(END)


class RunWorker:
    """A run's queue of waiting jobs and the one thread that serves them, started at the first
    job; subclasses give ``_loop`` (text: continuous batching; images: compatible draws)."""

    thread_name = "worker"

    def __init__(self, entry, max_rows: int = 64, max_jobs: int | None = None):
        self.entry, self.max_rows, self.max_jobs = entry, max_rows, max_jobs
        self.waiting: collections.deque = collections.deque()
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None

    def submit(self, job):
        with self.cond:
            self.waiting.append(job)
            if self.thread is None:
                self.thread = threading.Thread(target=self._loop, name=f"{self.thread_name}-{self.entry.id}",
                                               daemon=True)
                self.thread.start()
            self.cond.notify()
        return job

    def _loop(self) -> None:
        raise NotImplementedError


class Batcher(RunWorker):
    """One per text run: a thread that admits waiting jobs in arrival order into the run's
    continuous batch (at most ``max_rows`` rows, ``max_jobs`` jobs) and steps it under the run's
    lock, one decode step at a time, so other draws of the run interleave between steps.
    ``max_jobs=1`` serves requests one at a time (batching off, for comparison)."""

    thread_name = "batcher"

    def __init__(self, entry, max_rows: int = 64, max_jobs: int | None = None):
        super().__init__(entry, max_rows, max_jobs)
        self.decoder = None  # the running batch, once the thread has started
        # what the batch has done (tests, the load benchmark): steps, most jobs at once, and jobs
        # that joined while others were decoding
        self.stats = {"steps": 0, "peak_jobs": 0, "joined_running": 0}

    def _take(self, decoder) -> list[Job]:
        """Waiting jobs that fit now, in arrival order (the first that does not fit waits, and so
        does everyone behind it: no overtaking). Cancelled ones end without a draw."""
        jobs, rows, running = [], decoder.rows, len(decoder.running)
        while self.waiting:
            job = self.waiting[0]
            if job.cancelled.is_set():
                self.waiting.popleft().put(END)
                continue
            if (running or jobs) and rows + len(job.prompts) > self.max_rows:
                break
            if self.max_jobs is not None and running + len(jobs) >= self.max_jobs:
                break
            jobs.append(self.waiting.popleft())
            rows += len(job.prompts)
        return jobs

    def _loop(self) -> None:
        from genforge.serve.decoder import Decoder

        run = self.entry.run
        decoder = self.decoder = Decoder(run.model, run.tokenizer, capacity=self.max_rows)
        while True:
            with self.cond:
                while not self.waiting and not decoder.running:
                    self.cond.wait()
                jobs = self._take(decoder)
            try:
                with self.entry.lock, torch.inference_mode():
                    if jobs and decoder.running:
                        self.stats["joined_running"] += len(jobs)
                    for job in jobs:
                        admit(decoder, job, self.entry.run.tokenizer)
                    self.stats["peak_jobs"] = max(self.stats["peak_jobs"], len(decoder.running))
                    if decoder.running:
                        decoder.step()
                        self.stats["steps"] += 1
            except Exception as e:  # every running client gets the error, the thread lives on
                decoder.fail(e)


def admit(decoder, job: Job, tokenizer) -> None:
    """Add ``job`` to ``decoder``'s batch; a job that cannot start gets its error alone."""
    try:
        decoder.admit(_Rows(job, tokenizer))
    except Exception as e:
        job.put(e)


def run_alone(entry, job: Job) -> Job:
    """Decode one job in the calling thread, with no other job in its batch: the reference a
    batched request must match."""
    from genforge.serve.decoder import Decoder

    with entry.lock, torch.inference_mode():
        decoder = Decoder(entry.run.model, entry.run.tokenizer, capacity=len(job.prompts))
        admit(decoder, job, entry.run.tokenizer)
        try:
            while decoder.running:
                decoder.step()
        except Exception as e:
            decoder.fail(e)
    return job
