"""`genforge serve` on a real uvicorn server on 127.0.0.1: a client that closes its connection
early stops its generation (streamed and not), counted in model calls."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")

from genforge.cli import main  # noqa: E402
from genforge.serve.app import create_app  # noqa: E402
from genforge.serve.engine import load_entries  # noqa: E402

GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
       "train.batch_size=4", "train.max_steps=2", "train.eval_every=0", "train.plot=false"]
DIFFUSION = ["model.channels=[8, 16]", "model.heads=2", "model.sampling_steps=3", "model.conditioning=class",
             "train.batch_size=8", "train.max_steps=2", "train.eval_every=0", "train.plot=false"]


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A live server over a tiny GPT and a tiny diffusion run; yields (port, entries, app)."""
    import uvicorn

    root = tmp_path_factory.mktemp("live")
    corpus = root / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 40)
    assert main(["train", "gpt-demo", f"data.name={corpus}", *GPT, "--run-dir", str(root / "gpt"),
                 "--no-progress"]) == 0
    assert main(["train", "diffusion-digits", *DIFFUSION, "--run-dir", str(root / "diffusion"),
                 "--no-progress"]) == 0
    dirs = [root / "gpt", root / "diffusion"]
    if importlib.util.find_spec("rdkit") is not None:  # user SMILES files are checked with RDKit
        smiles = root / "m.smi"
        smiles.write_text("\n".join(["CCO", "CCN", "CCCC", "c1ccccc1", "CC(=O)O"] * 8) + "\n")
        assert main(["train", "gpt-demo", f"data.name={smiles}", "data.val_fraction=0.1", *GPT[:3],
                     "model.block_size=256", *GPT[4:], "--run-dir", str(root / "mol"), "--no-progress"]) == 0
        dirs.append(root / "mol")
    entries = load_entries([str(d) for d in dirs], device="cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(entries)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield port, entries, app
    server.should_exit = True
    thread.join(10)


class Counted:
    """Wraps a module method: counts calls and sleeps ``delay`` s in each, so a long generation
    is long whatever the machine's speed."""

    def __init__(self, obj, name: str, delay: float = 0.01):
        self.obj, self.name, self.inner, self.delay, self.calls = obj, name, getattr(obj, name), delay, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        time.sleep(self.delay)
        return self.inner(*args, **kwargs)

    def __enter__(self):
        setattr(self.obj, self.name, self)
        return self

    def __exit__(self, *exc):
        delattr(self.obj, self.name)  # back to the class's method


def wait_until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def settled(counter: Counted, quiet: float = 0.5) -> int:
    """The call count once it has stopped growing for ``quiet`` seconds."""
    while True:
        before = counter.calls
        time.sleep(quiet)
        if counter.calls == before:
            return before


def send(port: int, path: str, body: dict) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
    return sock


@pytest.mark.parametrize("stream", [False, True])
def test_a_text_client_that_goes_away_stops_its_decode(live, stream):
    port, entries, app = live
    body = {"model": "gpt", "prompt": "to", "max_new_tokens": 1000, "seed": 0, "stream": stream}
    with Counted(entries["gpt"].run.model, "logits") as calls:
        sock = send(port, "/v1/samples", body)
        if stream:
            seen = b""
            while b"data: " not in seen:  # the headers, then the first event
                chunk = sock.recv(4096)
                assert chunk, "the server closed the stream"
                seen += chunk
        wait_until(lambda: calls.calls >= 5)
        sock.close()
        total = settled(calls)
    assert total < 300, f"{total} decode steps after the client left (1000 asked)"
    assert not app.state.batchers["gpt"].decoder.running  # the job left the batch


def test_an_image_client_that_goes_away_stops_its_draw(live):
    port, entries, app = live
    body = {"model": "diffusion", "seed": 0, "num_samples": 2, "sampler": "euler", "sampling_steps": 200}
    with Counted(entries["diffusion"].run.model.net, "forward") as calls:
        sock = send(port, "/v1/samples", body)
        wait_until(lambda: calls.calls >= 5)
        sock.close()
        total = settled(calls)
    assert total < 100, f"{total} network calls after the client left (200 steps asked)"
    assert app.state.image_batchers["diffusion"].stats["steps"] < 100


def test_a_molecule_client_that_goes_away_stops_its_draw(live):
    """Molecules (and music) are drawn by the family's own sample(): a client that leaves ends it at
    the next token, and its queue slot is free again."""
    port, entries, app = live
    if "mol" not in entries:
        pytest.skip("RDKit is not installed (needed to train on a SMILES file)")
    model = entries["mol"].run.model
    eos = model.spec.special_ids["eos"]

    class NoEnd(Counted):  # no row draws <eos>: the draw runs all 256 tokens unless it is stopped
        def __call__(self, *args, **kwargs):
            out = super().__call__(*args, **kwargs)
            out[..., eos] = float("-inf")
            return out

    with NoEnd(model, "logits") as calls:
        sock = send(port, "/v1/samples", {"model": "mol", "seed": 0, "num_samples": 2})
        wait_until(lambda: calls.calls >= 5)
        sock.close()
        total = settled(calls)
    assert total < 100, f"{total} decode steps after the client left (256 asked)"
    wait_until(lambda: app.state.active == 0)
