"""The HTTP app: the contract's routes over :mod:`genforge.serve.engine` (docs/serve_api); the
bodies they take and the error body they answer with are serve/schemas.py.

Errors are always ``{"error": {"message", "type", "param"}}`` with a 4xx, never a traceback.
Generation runs in a worker thread, so the event loop keeps answering (health, 429s) while a
model draws; at most ``limits.max_queue`` requests are admitted at once and the rest get
429 with ``Retry-After`` instead of waiting in an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from genforge.serve import require_fastapi

require_fastapi()

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.concurrency import run_in_threadpool  # noqa: E402
from fastapi.exceptions import RequestValidationError  # noqa: E402
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402

from genforge import GenforgeError  # noqa: E402
from genforge.serve import checks, engine, responsible  # noqa: E402
from genforge.serve.batching import Batcher  # noqa: E402
from genforge.serve.events import sse, until_done_or_gone, waker  # noqa: E402
from genforge.serve.images import ImageBatcher, ImageJob, prepare  # noqa: E402
from genforge.serve.options import Limits, resolve  # noqa: E402
from genforge.serve.records import served_record  # noqa: E402
from genforge.serve.schemas import ERRORS, STREAMS, CompletionRequest, ImageRequest, SamplesRequest  # noqa: E402
from genforge.serve.uploads import take_init  # noqa: E402
from genforge.serve.wire import RequestError  # noqa: E402

STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/healthz", "/", "/favicon.ico")  # no key needed; /static/* too


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
           headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param}}, status, headers=headers)


def create_app(runs, api_key: str | None = None, limits: Limits | None = None,
               batching: bool = True, device: str = "auto") -> FastAPI:
    """The app over ``runs``: run directories (loaded and checked now, before any port opens) or
    entries already loaded (``engine.load_entries``). ``batching``: text requests for the same run
    share one continuous batch (serve/decoder.py); off, one at a time."""
    limits = limits or Limits()
    entries = runs if isinstance(runs, dict) else engine.load_entries([str(r) for r in runs], device)
    app = FastAPI(title="genforge", description="Samples from trained genforge runs.", version="1")
    app.state.entries, app.state.limits, app.state.active = entries, limits, 0
    app.state.batchers = {e.id: Batcher(e, limits.max_samples, max_jobs=None if batching else 1)
                          for e in entries.values() if e.modality == "text"}
    app.state.image_batchers = {e.id: ImageBatcher(e, limits.max_samples, max_jobs=None if batching else 1)
                                for e in entries.values() if e.modality == "image"}

    # -- errors: one JSON shape ---------------------------------------------------------
    @app.exception_handler(RequestError)
    async def _request_error(request, e: RequestError):
        retry = {"Retry-After": str(limits.retry_after_s)} if e.status == 429 else None
        return _error(e.status, str(e), e.kind, e.param, headers=retry)

    @app.exception_handler(GenforgeError)
    async def _genforge_error(request, e: GenforgeError):
        return _error(400, str(e))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, e: RequestValidationError):
        first = e.errors()[0]
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})")
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        given = request.headers.get("content-type")
        media = (given or "").split(";")[0].strip().lower()
        if not loc and not (media == "application/json" or media.endswith("+json")):  # e.g. `curl -d` alone
            return _error(422, "send the body as JSON with the header 'Content-Type: application/json' (got "
                               f"{repr(given) if given else 'no Content-Type'})")
        param = loc[0] if loc else None
        return _error(422, f"{'.'.join(loc) or 'body'}: {first.get('msg')}", param=param)

    @app.exception_handler(HTTPException)
    async def _http_error(request, e: HTTPException):
        message = str(e.detail)
        if e.status_code in (404, 405) and message in ("Not Found", "Method Not Allowed"):  # a route, not a model
            message = (f"{message}: {request.method} {request.url.path}; this server's routes are listed at /docs "
                       "(POST /v1/completions for text runs, /v1/images/generations for images, /v1/samples for any run)")
        return _error(e.status_code, message, "not_found_error" if e.status_code == 404 else "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal(request, e: Exception):  # never a traceback to the client
        return _error(500, f"internal error ({type(e).__name__})", "server_error")

    # -- key and body size, before any route ---------------------------------------------
    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if api_key and path not in OPEN_PATHS and not path.startswith("/static/"):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return _error(401, "missing or wrong API key: send 'Authorization: Bearer KEY'",
                              "authentication_error", headers={"WWW-Authenticate": "Bearer"})
        size = request.headers.get("content-length")
        cap = limits.body_limit(path)
        if size is not None and (not size.isdigit() or int(size) > cap):
            what = "max_body_bytes" if cap == limits.max_body_bytes else "max_file_bytes (in base64)"
            return _error(413, f"the body is {size} bytes, above this server's limit {what}={cap}")
        if size is None and request.method == "POST":
            return _error(411, "send a Content-Length (chunked bodies are not accepted)")
        return await call_next(request)

    def entry_for(model: str, modality: str | None = None) -> engine.Entry:
        if model not in entries:
            raise RequestError(f"unknown model '{model}'; this server has: {', '.join(entries)}", 404,
                               "model", "not_found_error")
        entry = entries[model]
        if modality is not None and entry.modality != modality:
            raise RequestError(f"model '{model}' is a {entry.modality} run; this endpoint serves "
                               f"{modality} runs", 400, "model")
        return entry

    def admit() -> None:
        if app.state.active >= limits.max_queue:
            raise RequestError(f"the queue is full ({limits.max_queue} requests, limit max_queue); "
                               f"retry in {limits.retry_after_s} s", 429, None, "rate_limit_error")
        app.state.active += 1

    def release() -> None:
        app.state.active -= 1

    async def run(fn, *args) -> Any:
        admit()
        try:
            return await run_in_threadpool(fn, *args)
        finally:
            release()

    async def watched(request: Request, fn, *args) -> Any:
        """``fn(*args, cancelled)`` in a worker thread, holding a queue slot until it ends; a client
        that disconnects first sets ``cancelled`` (a molecule or music draw stops at its next token)."""
        admit()
        cancelled, done = threading.Event(), asyncio.Event()
        try:
            work = asyncio.ensure_future(run_in_threadpool(fn, *args, cancelled))
            work.add_done_callback(lambda _: done.set())
            if not await until_done_or_gone(done, request.receive):
                cancelled.set()
                with contextlib.suppress(Exception):  # the draw ends at its next token; its 499 is not sent
                    await work
                raise RequestError("the client went away", 499)
            return work.result()
        finally:
            release()

    async def awaited(batcher, make_job, request: Request):
        """The job ``make_job()`` makes, submitted to ``batcher`` (serve/batching.py or
        serve/images.py) and awaited on the loop while it holds a queue slot. A client that
        disconnects first cancels it. Done, gone, refused or this handler cancelled: the job is
        marked cancelled (its rows stop decoding; a draw whose clients all left stops) and the
        slot released, whichever way it ends."""
        admit()
        done, job = asyncio.Event(), None
        try:
            job = make_job()
            job.notify = waker(asyncio.get_running_loop(), done, last_only=True)
            batcher.submit(job)
            if not await until_done_or_gone(done, request.receive):
                raise RequestError("the client went away", 499)
            return job
        finally:
            if job is not None:
                job.cancelled.set()
            release()

    async def texts(entry: engine.Entry, options: dict, seed: int, request: Request) -> list[str]:
        """A text job's answer, awaited on the loop; a client that disconnects first cancels it."""
        job = await awaited(app.state.batchers[entry.id], lambda: engine.text_job(entry, options, seed), request)
        return job.texts()  # every event is in its queue already: no wait

    async def draw_images(entry: engine.Entry, options: dict, seed: int, request: Request, record: dict,
                          init=(None, None)) -> dict:
        """An image request, drawn with compatible ones in one sampler call (serve/images.py);
        a client that disconnects first cancels it (a draw whose clients all left stops).
        ``init``: an uploaded image to edit and its sha256; ``record``: its PNGs' provenance."""
        from genforge.modalities import generator_for

        job = await awaited(app.state.image_batchers[entry.id], lambda: ImageJob(
            prepare(entry, options, *init, record=record), generator_for(entry.device, seed)[0]), request)
        if job.error is not None:
            raise job.error
        return job.result

    async def screened_texts(entry: engine.Entry, options: dict, seed: int, request: Request):
        """A text job's answer through the request's filters (serve/responsible.py)."""
        drawn = await texts(entry, options, seed, request)
        return await run_in_threadpool(responsible.screen_text, entry, options, drawn)

    def streamed(entry: engine.Entry, options: dict, seed: int, make_event, closing: list[str]) -> StreamingResponse:
        """SSE of a text job's pieces, pushed from the decode thread to the loop (serve/events.py);
        the queue slot is held until the stream ends or the client goes away (then the job is
        cancelled: its rows stop decoding)."""
        job = engine.text_job(entry, options, seed)  # a prompt it cannot read: a 400 before a slot is taken
        admit()
        wake = asyncio.Event()
        job.notify = waker(asyncio.get_running_loop(), wake)
        try:
            app.state.batchers[entry.id].submit(job)
        except BaseException:
            release()
            raise

        async def events():
            try:
                async for chunk in sse(job, wake, make_event, closing):
                    yield chunk
            finally:
                job.cancelled.set()
                release()

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})

    # -- routes ----------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz():
        return {"status": "ok", "models": len(entries)}

    @app.get("/", include_in_schema=False)
    async def page():
        index = STATIC / "index.html"
        if index.is_file():
            return FileResponse(index)
        return JSONResponse({"message": "genforge serve: the API is at /v1 (docs at /docs)"})

    if STATIC.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/v1/models", responses={401: ERRORS[401]})  # the key guards every /v1 route
    async def models():
        return {"object": "list", "data": [engine.describe(e, limits) for e in entries.values()]}

    @app.get("/report", response_class=HTMLResponse,  # the page is HTML, its refusals JSON
             responses={c: {"description": "refused", "content": {"application/json": {"schema": {
                 "$ref": "#/components/schemas/ErrorResponse"}}}} for c in (400, 401, 429)})
    async def report():
        """`genforge report` of the loaded runs (the page's Report tab shows it in a sandboxed
        iframe); built per request, so a run evaluated since start-up shows its new numbers. Seconds
        of CPU (its curves): it takes a queue slot like a generation."""
        from genforge.report_html import build_report

        dirs = [e.run.run_dir for e in entries.values()]
        return HTMLResponse(await run(build_report, dirs))

    @app.get("/v1/models/{model_id}", responses=ERRORS)
    async def model(model_id: str):
        return engine.describe(entry_for(model_id), limits)

    @app.post("/v1/samples", responses={**ERRORS, **STREAMS})
    async def samples(body: SamplesRequest, request: Request):
        entry = entry_for(body.model)
        given = {k: v for k, v in body.model_dump().items() if k not in ("model", "seed", "stream")}
        if isinstance(given.get("class_label"), int):  # an index; the run's option takes "3" or a name
            given["class_label"] = str(given["class_label"])
        options = resolve(entry, given, limits)
        init = take_init(entry, options, limits)  # an uploaded image: decoded, its digest in options
        seed = body.seed if body.seed is not None else engine.random_seed()
        record = served_record(entry, seed, options)
        common = {"model": entry.id, "seed": seed, "identity": engine.identity(entry), "options": options,
                  "provenance": record, "watermark": responsible.watermark_status(entry, options)}
        if body.stream:
            if entry.modality != "text":
                raise RequestError("'stream' applies to text runs only", 400, "stream")
            done = {"done": True, "seed": seed, "identity": engine.identity(entry), "options": options,
                    "provenance": record, "watermark": common["watermark"]}
            event = lambda i, piece: {"index": i, "token": piece}  # noqa: E731
            if not responsible.screens(entry, options):
                return streamed(entry, options, seed, event, [json.dumps(done), "[DONE]"])
            items, screening = await screened_texts(entry, options, seed, request)
            return StreamingResponse(responsible.replay(items, event, [json.dumps({**done, "screening": screening}),
                                                                       "[DONE]"]), media_type="text/event-stream")
        if entry.modality == "text":
            rows = [p for p in (options.get("prompt") or ["\n"]) for _ in range(options["num_samples"])]
            items, screening = await screened_texts(entry, options, seed, request)
            return {**common, "text": items, "prompts": rows} | ({"screening": screening} if screening else {})
        if entry.modality == "image":
            return {**common, **await draw_images(entry, options, seed, request, record, init)}
        result = await watched(request, engine.generate, entry, options, seed, limits)  # molecules, music
        return {**common, **result}

    @app.post("/v1/detect", response_model=checks.DetectResponse, responses=ERRORS)
    async def detect(body: checks.DetectRequest):
        """Is this text (or image) watermarked with the model's run key? The key is never returned."""
        entry = entry_for(body.model)
        return await run(checks.detect, entry, body, limits)

    @app.post("/v1/verify", response_model=checks.VerifyResponse, responses=ERRORS)
    async def verify(body: checks.VerifyRequest):
        """`genforge verify` of a file's bytes: its provenance record and C2PA credentials."""
        return await run(checks.verify, body, limits)

    @app.post("/v1/completions", responses={**ERRORS, **STREAMS})
    async def completions(body: CompletionRequest, request: Request):
        entry = entry_for(body.model, "text")
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        # OpenAI's default of 16 tokens, within this server's limit (absent must not be refused).
        max_tokens = body.max_tokens if body.max_tokens is not None else min(16, limits.max_tokens)
        given = {"prompt": prompts, "num_samples": body.n, "max_new_tokens": max_tokens,
                 "temperature": body.temperature, "top_p": body.top_p,
                 "stop": [body.stop] if isinstance(body.stop, str) else body.stop, "watermark": body.watermark}
        options = resolve(entry, given, limits)
        seed = body.seed if body.seed is not None else engine.random_seed()
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": entry.id, "system_fingerprint": entry.weights_sha256[:16]}
        if body.stream:
            def chunk(i, piece):
                return {**head, "choices": [{"text": piece, "index": i, "logprobs": None, "finish_reason": None}]}

            if not responsible.screens(entry, options):
                return streamed(entry, options, seed, chunk, ["[DONE]"])
            items, _ = await screened_texts(entry, options, seed, request)
            return StreamingResponse(responsible.replay(items, chunk, ["[DONE]"]), media_type="text/event-stream")
        items, screening = await screened_texts(entry, options, seed, request)
        tok = entry.run.tokenizer
        used = [len(tok.encode(t)) if isinstance(t, str) else 0 for t in items]
        # a blocked sample: no text, OpenAI's "content_filter" finish reason, and why
        choices = [{"text": t, "index": i, "logprobs": None,
                    "finish_reason": "length" if k >= options["max_new_tokens"] else "stop"}
                   if isinstance(t, str) else {"text": "", "index": i, "logprobs": None,
                                               "finish_reason": "content_filter", **t}
                   for i, (t, k) in enumerate(zip(items, used, strict=True))]
        prompt_tokens = body.n * sum(len(tok.encode(p)) for p in prompts)
        return {**head, "choices": choices, "seed": seed, "provenance": served_record(entry, seed, options),
                "watermark": responsible.watermark_status(entry, options),
                **({"screening": screening} if screening else {}), "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": sum(used),
                          "total_tokens": prompt_tokens + sum(used)}}

    @app.post("/v1/images/generations", responses=ERRORS)
    async def images(body: ImageRequest, request: Request):
        entry = entry_for(body.model, "image")
        if body.response_format != "b64_json":
            raise RequestError("response_format must be 'b64_json' (genforge serves no image URLs)", 400,
                               "response_format")
        c, h, w = entry.run.spec.shape
        if body.size is not None and body.size != f"{w}x{h}":
            raise RequestError(f"size must be '{w}x{h}' (this run's images) or absent, got '{body.size}'",
                               400, "size")
        given: dict[str, Any] = {"num_samples": body.n}
        if body.prompt.strip():
            if "prompt" in entry.options:
                given["prompt"] = [body.prompt]
            elif "class_label" in entry.options and getattr(entry.run.model, "conditioning_classes", 0):
                given["class_label"] = body.prompt  # a class name or index
            else:
                raise RequestError(f"model '{entry.id}' is unconditional and takes no prompt; send an "
                                   "empty prompt", 400, "prompt")
        options = resolve(entry, given, limits)
        seed = body.seed if body.seed is not None else engine.random_seed()
        record = served_record(entry, seed, options)
        result = await draw_images(entry, options, seed, request, record)
        return {"created": int(time.time()), "seed": seed, "provenance": record,
                "data": [{"b64_json": None, **b} if isinstance(b, dict) else {"b64_json": b} for b in result["images"]],
                "watermark": result.get("watermark") or responsible.watermark_status(entry, options),
                **({"screening": result["screening"]} if "screening" in result else {})}

    return app
