"""Image requests: drawn alone, or several for the same run in one sampler call.

A family draws a whole batch's noise from the one generator it is given (``sample(n,
generator)``), so requests cannot simply be concatenated: request B's rows would take numbers
from request A's stream. :class:`RowGenerators` keeps per-request streams anyway without any
family knowing: the batched call gets a stand-in generator, and while the call runs a torch
function mode (a thread-local hook on every torch call) turns each draw made with it,
``torch.randn(N, ...)`` / ``rand`` / ``bernoulli`` / ``multinomial`` over the batch's N rows,
into one draw per request of its own rows with its own generator, in the order and shape it
makes alone, concatenated. So every request's noise is exactly what it gets alone, and since
the networks work per image (no batch statistics in eval), its pixels too (tested for every
image family: byte-identical PNGs). A draw the mode cannot split by rows (another shape, an
unknown random function) raises :class:`NotRowwise` and the requests are drawn one by one: a
new family is never batched wrongly, only not batched.

Requests are compatible when everything but their count, class and (single) prompt is equal;
the label and prompt of each row are passed explicitly, so conditioning is per request.

Watermarks (serve/responsible.py) keep this: Tree-Ring replaces ring coefficients of each row's
own 2-D spectrum (watermark/treering.mark_noise works per image, with the run's one key), so it
maps the concatenated noise row by row, and whether it is on is part of the compatibility key;
the post-hoc mark is applied per request to its own uint8 rows, with its own strength, in encode.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from genforge import GenforgeError
from genforge.serve.batching import RunWorker


class NotRowwise(RuntimeError):
    """A random draw that cannot be split into per-request rows (the batch is drawn one by one)."""


class RowGenerators(TorchFunctionMode):
    """Within ``with RowGenerators(generators, counts, device) as rows:``, a draw made with
    ``rows.key`` over sum(counts) rows draws each request's ``counts[i]`` rows with
    ``generators[i]``; any other use of ``rows.key`` raises :class:`NotRowwise`."""

    SIZED = (torch.randn, torch.rand)
    ROWWISE = (torch.bernoulli, torch.multinomial)  # input (N, ...) -> output (N, ...)

    def __init__(self, generators: list[torch.Generator], counts: list[int], device):
        super().__init__()
        self.generators, self.counts, self.total = generators, counts, sum(counts)
        self.key = torch.Generator(device=device)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if kwargs.get("generator") is not self.key:
            if any(a is self.key for a in args):
                raise NotRowwise(f"{getattr(func, '__name__', func)} takes the generator positionally")
            return func(*args, **kwargs)
        if "out" in kwargs:
            raise NotRowwise("a draw into out=")
        if func in self.SIZED:
            size = kwargs.pop("size", None)
            if size is None:
                size = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)) else args
            size = tuple(size)
            if not size or size[0] != self.total:
                raise NotRowwise(f"a draw of shape {size} over {self.total} rows")
            return torch.cat([func((n, *size[1:]), **{**kwargs, "generator": g})
                              for g, n in zip(self.generators, self.counts, strict=True)])
        if func in self.ROWWISE and args and isinstance(args[0], torch.Tensor) and args[0].shape[0] == self.total:
            out, at = [], 0
            for g, n in zip(self.generators, self.counts, strict=True):
                out.append(func(args[0][at:at + n], *args[1:], **{**kwargs, "generator": g}))
                at += n
            return torch.cat(out)
        raise NotRowwise(f"{getattr(func, '__name__', func)} with the batch's generator")


@dataclass(eq=False)  # identity: holds tensors
class Prepared:
    """One image request resolved for ``model.sample``: its count, labels (n,) or None, the
    family's keyword options, the prompt it cycles, its compatibility key (None: alone) and the
    provenance record its PNGs carry (serve/records.py)."""

    n: int
    labels: torch.Tensor | None
    options: dict[str, Any]
    prompts: list[str] | None
    per_step: bool
    key: str | None
    record: dict | None = None
    marker: Any = None  # watermark.image.ImageMarker of this request (responsible.image_marker)


def prepare(entry, options: dict[str, Any], init: torch.Tensor | None = None, init_sha: str | None = None,
            record: dict | None = None) -> Prepared:
    from genforge.modalities.image import ImageRefs, class_labels
    from genforge.serve.responsible import IMAGE_ONLY, SERVER_ONLY, image_marker
    from genforge.serve.wire import RequestError, from_library

    run, n = entry.run, options["num_samples"]
    family = {k: v for k, v in options.items()
              if k not in ("num_samples", "class_label", "init_image", *SERVER_ONLY, *IMAGE_ONLY)}
    marker = image_marker(entry, options)
    # As the CLI: the family asks refs for a Tree-Ring noise hook where x_T decides the image; an
    # edited upload starts from that image, not from pure noise, so it gets no refs (and no ring).
    refs = ImageRefs(run, marker.noise_mark) if init is None and marker.key is not None else None
    try:
        plan = run.model.plan_sampling(family, n, refs)  # served options never reference files
    except GenforgeError as e:
        raise from_library(e) from None
    prompts = plan.options.get("prompt")
    class_label = options.get("class_label")
    if prompts and class_label is not None:
        raise RequestError("give either 'prompt' or 'class_label', not both", 400, "class_label")
    try:
        labels = None if prompts else class_labels(run.model, run.spec, None if class_label is None else str(class_label), n)
    except GenforgeError as e:
        raise from_library(e) from None
    kwargs = dict(plan.options)
    if init is not None:
        kwargs["init"] = init
    # the noise hook is a new closure per request, but the same map (the run's one key): keyed by presence
    shared = {k: v for k, v in kwargs.items() if k not in ("prompt", "init", "noise_mark")}
    key = None
    if plan.count is None and not plan.one_row and (not prompts or len(prompts) == 1):
        key = json.dumps([sorted(shared.items()), prompts, init_sha, labels is None,
                          kwargs.get("noise_mark") is not None], default=str)
    return Prepared(n, labels, kwargs, prompts, plan.per_step, key, record, marker)


def sample(entry, prep: Prepared, generator, callback=None) -> torch.Tensor:
    """``model.sample`` for one prepared request (or a merged batch): (n, C, H, W)."""
    from genforge.serve.wire import from_library

    extra = {"callback": callback} if callback is not None and prep.per_step else {}
    try:
        return entry.run.model.sample(prep.n, generator, labels=prep.labels, **prep.options, **extra)
    except GenforgeError as e:
        raise from_library(e) from None


def encode(entry, x: torch.Tensor, prep: Prepared) -> dict[str, Any]:
    """(n, C, H, W) samples -> the grid and each image as base64 PNG, each carrying the request's
    provenance record (``prep.record``)."""
    from PIL import Image

    from genforge.data.grids import make_grid
    from genforge.modalities.image import from_uint8, to_uint8
    from genforge.serve.responsible import image_status, screen_images, with_screening
    from genforge.serve.wire import b64, from_library, png_bytes

    images = to_uint8(x.cpu(), entry.run.spec)  # (n, C, H, W) uint8
    marker = prep.marker
    if marker is not None:  # the post-hoc mark before PNG encoding and screening, as `genforge sample`
        try:
            images = marker.posthoc(images)
        except GenforgeError as e:  # a given watermark_strength these images cannot hold
            raise from_library(GenforgeError(str(e).replace("--no-watermark", '"watermark": false')), 422) from None
        if prep.record is not None:  # the PNGs' and the answer's record say which marks (one dict)
            prep.record["watermark"] = marker.record()
    images, screening = screen_images(entry, prep.record, images)  # blocked rows blanked (serve/responsible.py)
    singles = [png_bytes(Image.fromarray(img.permute(1, 2, 0).squeeze(-1).numpy()), prep.record) for img in images]
    prompts, y = prep.prompts, prep.labels
    captions = [prompts[i % len(prompts)] for i in range(prep.n)] if prompts else (None if y is None else y.tolist())
    grid = make_grid(from_uint8(images, entry.run.spec), entry.run.spec, captions)
    out = {"grid_png": b64(png_bytes(grid, prep.record)), "images": [b64(b) for b in singles]}
    if marker is not None and prep.record is not None:  # a served request (bare test entries have no record)
        out["watermark"] = image_status(entry, (prep.record or {}).get("options") or {}, marker)
    return with_screening(out, screening, "images")


def merged(preps: list[Prepared]) -> Prepared:
    """Compatible requests as one: rows concatenated, each row's label and prompt explicit."""
    first = preps[0]
    labels = None if first.labels is None else torch.cat([p.labels for p in preps])
    return Prepared(sum(p.n for p in preps), labels, dict(first.options), first.prompts, first.per_step, first.key)


@dataclass(eq=False)  # identity: holds tensors
class ImageJob:
    """One image request waiting for its draw; ``result`` or ``error`` once ``done``."""

    prep: Prepared
    generator: torch.Generator
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    notify: Any = None  # called once done (the app's loop waker)
    result: dict | None = None
    error: BaseException | None = None

    def finish(self, result=None, error=None) -> None:
        self.result, self.error = result, error
        self.done.set()
        if self.notify is not None:
            self.notify(True)


class Cancelled(Exception):
    """Every request of a draw has gone: stop at the next sampler step."""


class ImageBatcher(RunWorker):
    """One per image run: a thread that draws waiting requests, the first in line together with
    every waiting one compatible with it (up to ``max_rows`` rows), in one sampler call.
    ``max_jobs=1``: one at a time (batching off)."""

    thread_name = "images"

    def __init__(self, entry, max_rows: int = 64, max_jobs: int | None = None):
        super().__init__(entry, max_rows, max_jobs)
        self.stats = {"calls": 0, "peak_jobs": 0, "steps": 0}

    def _take(self) -> list[ImageJob]:
        with self.cond:
            while not self.waiting:
                self.cond.wait()
            first = self.waiting.popleft()
            jobs, rows = [first], first.prep.n
            if first.prep.key is not None and self.max_jobs != 1:
                for job in list(self.waiting):
                    if job.prep.key == first.prep.key and rows + job.prep.n <= self.max_rows \
                            and (self.max_jobs is None or len(jobs) < self.max_jobs):
                        self.waiting.remove(job)
                        jobs.append(job)
                        rows += job.prep.n
            return jobs

    def _loop(self) -> None:
        while True:
            jobs = [j for j in self._take() if not j.cancelled.is_set() or j.finish(error=Cancelled())]
            if not jobs:
                continue
            try:
                with self.entry.lock, torch.inference_mode():
                    self._draw(jobs)
            except BaseException as e:  # every waiting client gets the error, the thread lives on
                for job in jobs:
                    if not job.done.is_set():
                        job.finish(error=e)

    def _stop_if_gone(self, jobs):
        def callback(info) -> None:
            self.stats["steps"] += 1
            if all(j.cancelled.is_set() for j in jobs):
                raise Cancelled()
        return callback

    def _draw(self, jobs: list[ImageJob]) -> None:
        self.stats["calls"] += 1
        self.stats["peak_jobs"] = max(self.stats["peak_jobs"], len(jobs))
        if len(jobs) > 1:
            prep = merged([j.prep for j in jobs])
            rows = RowGenerators([j.generator for j in jobs], [j.prep.n for j in jobs], self.entry.device)
            try:
                with rows:
                    x = sample(self.entry, prep, rows.key, self._stop_if_gone(jobs))
            except NotRowwise:
                x = None  # this family draws in a way rows cannot split: one by one below
            if x is not None:
                at = 0
                for job in jobs:  # one request's refusal (e.g. its watermark_strength) is its own
                    try:
                        job.finish(encode(self.entry, x[at:at + job.prep.n], job.prep))
                    except Exception as e:
                        job.finish(error=e)
                    at += job.prep.n
                return
        for job in jobs:
            try:
                job.finish(encode(self.entry, sample(self.entry, job.prep, job.generator,
                                                     self._stop_if_gone([job])), job.prep))
            except Exception as e:
                job.finish(error=e)


def init_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
