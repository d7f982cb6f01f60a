"""`genforge serve` scheduling through the app and the engine: the queue limit (429 with
Retry-After) and its slots, continuous batching that is exact per request, batching off, and
cancellation of a request whose client went away. The routes themselves are in test_serve.py."""

from __future__ import annotations

import queue
import threading
import time

import pytest

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import capture_uvicorn, free_port, post  # noqa: E402

from genforge.cli import main  # noqa: E402
from genforge.serve.app import create_app  # noqa: E402
from genforge.serve.options import Limits  # noqa: E402


def test_queue_full_is_429_with_retry_after(serve_runs):
    entry = serve_runs["gpt"]
    with TestClient(create_app(serve_runs, limits=Limits(max_queue=1))) as c:
        results = []
        entry.lock.acquire()  # the model is busy: the first request is admitted and waits
        try:
            worker = threading.Thread(target=lambda: results.append(post(c, {"model": "gpt", "max_new_tokens": 2})))
            worker.start()
            deadline = time.monotonic() + 10
            while c.app.state.active < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            r = post(c, {"model": "gpt", "max_new_tokens": 2})
            assert r.status_code == 429 and r.headers["retry-after"] == "1"
            assert "max_queue" in r.json()["error"]["message"]
            assert c.get("/healthz").status_code == 200  # the event loop is free meanwhile
        finally:
            entry.lock.release()
        worker.join(30)
        assert results[0].status_code == 200 and c.app.state.active == 0


def test_the_report_takes_a_queue_slot(serve_runs):
    """GET /report draws every run's curves (seconds of CPU): past max_queue it is a 429 like a
    generation, not an unbounded backlog of worker threads."""
    with TestClient(create_app(serve_runs, limits=Limits(max_queue=1))) as c:
        c.app.state.active = 1  # a request is running
        r = c.get("/report")
        assert r.status_code == 429 and r.headers["retry-after"] == "1" and "max_queue" in r.json()["error"]["message"]
        c.app.state.active = 0
        assert c.get("/report").status_code == 200 and c.app.state.active == 0


def test_a_request_refused_while_its_job_is_made_frees_its_queue_slot(serve_runs, monkeypatch):
    """Admitted, then refused before its job reaches a batcher: the slot is released, so the
    next request is served (with max_queue=1 a leaked slot would make it a 429)."""
    from genforge.serve import engine
    from genforge.serve.wire import RequestError

    def refuse(*args):
        raise RequestError("refused while the job is made", 422)

    with TestClient(create_app(serve_runs, limits=Limits(max_queue=1))) as c:
        with monkeypatch.context() as mp:
            mp.setattr(engine, "text_job", refuse)
            r = post(c, {"model": "gpt", "max_new_tokens": 2})
        assert r.status_code == 422 and c.app.state.active == 0
        assert post(c, {"model": "gpt", "max_new_tokens": 2}).status_code == 200


def test_batched_requests_get_what_they_get_alone(serve_runs):
    """Jobs decoded in one batch (different prompts, lengths, settings, seeds) each get the
    tokens they get alone: each request's rows are drawn with its own generator."""
    from genforge.serve import engine
    from genforge.serve.batching import Batcher, run_alone
    from genforge.serve.options import resolve

    entry = serve_runs["gpt"]
    requests = [({"prompt": ["to"], "num_samples": 2, "max_new_tokens": 12}, 1),
                ({"prompt": ["to be or not", "t"], "num_samples": 1, "max_new_tokens": 5, "top_k": 3}, 2),
                ({"prompt": ["that is"], "num_samples": 1, "max_new_tokens": 20, "stop": ["q"], "top_p": 0.9}, 3),
                ({"prompt": ["be"], "num_samples": 1, "max_new_tokens": 0}, 4),
                ({"prompt": ["or"], "num_samples": 1, "max_new_tokens": 9, "temperature": 0}, 5)]
    resolved = [(resolve(entry, given, Limits()), seed) for given, seed in requests]
    alone = [run_alone(entry, engine.text_job(entry, o, s)).texts() for o, s in resolved]
    assert alone[3] == [""] and all(len(t) == 12 for t in alone[0])
    batcher = Batcher(entry)
    with entry.lock:  # the first job is taken and waits for the model; the others queue behind it
        first = batcher.submit(engine.text_job(entry, *resolved[0]))
        deadline = time.monotonic() + 10
        while batcher.waiting and time.monotonic() < deadline:
            time.sleep(0.005)
        jobs = [batcher.submit(engine.text_job(entry, o, s)) for o, s in resolved]
    got = [job.texts() for job in jobs]
    assert first.texts() == alone[0]
    assert batcher.stats["peak_jobs"] >= 2  # decoded together (the first joined by the rest)
    assert got == alone


def test_batching_off_serves_one_request_at_a_time(serve_runs):
    with TestClient(create_app(serve_runs, batching=False)) as c:
        bodies = [{"model": "gpt", "prompt": p, "max_new_tokens": 4, "seed": 0} for p in ("to", "be", "or")]
        threads = [threading.Thread(target=post, args=(c, b)) for b in bodies]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert c.app.state.batchers["gpt"].stats["peak_jobs"] == 1
        assert create_app(serve_runs).state.batchers["gpt"].max_jobs is None


def test_cli_no_batching_and_max_queue_reach_the_app(serve_runs, monkeypatch, capsys):
    calls = capture_uvicorn(monkeypatch)
    run_dir = str(serve_runs["gpt"].run.run_dir)
    assert main(["serve", run_dir, "--no-batching", "--max-queue", "32", "--port", str(free_port())]) == 0
    assert "batching off" in capsys.readouterr().out
    app = calls[-1][0].app
    assert app.state.limits.max_queue == 32 and app.state.batchers["gpt"].max_jobs == 1
    assert main(["serve", run_dir, "--port", str(free_port())]) == 0
    app = calls[-1][0].app
    assert app.state.limits.max_queue == Limits().max_queue and app.state.batchers["gpt"].max_jobs is None
    assert main(["serve", run_dir, "--max-queue", "0"]) == 2
    assert "--max-queue" in capsys.readouterr().err and len(calls) == 2


def test_a_cancelled_request_stops_decoding(serve_runs):
    """A client that goes away sets its job's ``cancelled``: a waiting job is never decoded, a
    running one stops at the next token."""
    from genforge.serve import engine
    from genforge.serve.batching import Batcher
    from genforge.serve.options import resolve

    entry = serve_runs["gpt"]
    options = resolve(entry, {"max_new_tokens": 1000}, Limits())
    batcher = Batcher(entry)
    with entry.lock:
        waiting = batcher.submit(engine.text_job(entry, options, 0))
        waiting.cancelled.set()
    assert waiting.texts() == [""]
    running = engine.text_job(entry, options, 0)

    class HangUp(queue.Queue):  # the client goes away as its first piece arrives
        def put(self, item, *args, **kwargs):
            super().put(item, *args, **kwargs)
            running.cancelled.set()

    running.events = HangUp()
    assert len(batcher.submit(running).texts()[0]) == 1  # one token (a char), not 1000
