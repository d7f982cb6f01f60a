"""What tests/test_serve.py and tests/test_serve_queue.py share: the tiny runs they serve
(trained once a session by the ``serve_runs`` fixture in conftest.py) and the request helpers."""

from __future__ import annotations

import base64
import importlib.util
import json
import socket
from pathlib import Path

GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
       "train.batch_size=4", "train.max_steps=3", "train.eval_every=0", "train.plot=false"]
VAE = ["model.latent_dim=4", "model.channels=[8, 8]", "model.hidden=32", "model.conditional=true",
       "train.batch_size=8", "train.max_steps=3", "train.eval_every=0", "train.plot=false"]
DIFFUSION = ["model.channels=[8, 16]", "model.heads=2", "model.sampling_steps=3", "model.conditioning=class",
             "train.batch_size=8", "train.max_steps=2", "train.eval_every=0", "train.plot=false"]
SMILES = ["CCO", "CCN", "CCC", "c1ccccc1", "CC(=O)O", "CCOC", "CNC", "C1CCCCC1", "CC(C)O", "OCCO"] * 4


def train_serve_runs(root: Path) -> dict:
    """Train gpt, vae and diffusion runs (a few steps each) under ``root``, plus a molecule run
    where RDKit is installed, and load them as the server does: {run name: entry}."""
    from genforge.cli import main
    from genforge.serve.engine import load_entries

    corpus = root / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 80)
    assert main(["train", "gpt-demo", f"data.name={corpus}", *GPT, "--run-dir", str(root / "gpt"),
                 "--no-progress"]) == 0
    assert main(["train", "vae-digits", *VAE, "--run-dir", str(root / "vae"), "--no-progress"]) == 0
    assert main(["train", "diffusion-digits", *DIFFUSION, "--run-dir", str(root / "diffusion"), "--no-progress"]) == 0
    dirs = [root / "gpt", root / "vae", root / "diffusion"]
    if importlib.util.find_spec("rdkit") is not None:  # a molecule run only where RDKit is installed
        mols = root / "mols.smi"
        mols.write_text("\n".join(SMILES) + "\n")
        assert main(["train", "gpt-demo", f"data.name={mols}", "data.val_fraction=0.1", *GPT[:3],
                     "model.block_size=24", *GPT[4:], "--run-dir", str(root / "mol"), "--no-progress"]) == 0
        dirs.append(root / "mol")
    return load_entries([str(d) for d in dirs], device="cpu")


def post(client, body, path="/v1/samples", headers=None):
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json", **(headers or {})})


def png_size(data: str) -> tuple[int, int]:
    """(width, height) from a base64 PNG's IHDR chunk, after checking the PNG signature."""
    raw = base64.b64decode(data)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture_uvicorn(monkeypatch) -> list:
    """`genforge serve` returns instead of serving: each call's uvicorn Config and the address of
    the socket it was handed (bound by the CLI, closed here)."""
    import uvicorn

    calls = []

    def run(self, sockets=None):
        calls.append((self.config, sockets[0].getsockname()[:2]))
        for sock in sockets:
            sock.close()

    monkeypatch.setattr(uvicorn.Server, "run", run)
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kw: calls.append(("uvicorn.run", kw)))  # never serves
    return calls
