"""Run directories and atomic checkpoints.

Layout of a run directory::

    config.json            resolved run config (family, model, data, train)
    spec.json              the DataSpec; tokenizer.json for text
    metrics.jsonl          one JSON object per logged step or evaluation
    samples/               previews written during training
    checkpoints/step_N/    model.safetensors, ema.safetensors, state.pt
    checkpoints/latest     name of the newest complete checkpoint

A checkpoint is written into a hidden temporary folder, renamed into place,
and only then named in ``latest`` (itself replaced atomically), so a crash at
any moment leaves the previous checkpoint intact and pointed to.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from genforge import GenforgeError, __version__


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, ema_state: dict | None,
                    train_state: dict[str, Any], config: dict[str, Any], keep: int = 2,
                    name: str | None = None) -> Path:
    """Write checkpoints/step_N (and point `latest` at it), or checkpoints/<name> when named."""
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    named, name = name is not None, name or f"step_{step:07d}"
    tmp = folder / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    meta = {"genforge_version": __version__, "step": str(step), "config": json.dumps(config)}
    save_model(model, str(tmp / "model.safetensors"), metadata=meta)
    if ema_state is not None:
        save_file({k: v.contiguous() for k, v in ema_state.items()}, str(tmp / "ema.safetensors"),
                  metadata=meta)
    torch.save({"step": step, **train_state}, tmp / "state.pt")
    final = folder / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    if named:
        return final
    atomic_write_text(folder / "latest", name)
    old = sorted(p for p in folder.glob("step_*") if p.is_dir())[:-keep] if keep > 0 else []
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = run_dir / "checkpoints"
    pointer = folder / "latest"
    if pointer.is_file():
        path = folder / pointer.read_text().strip()
        if path.is_dir():
            return path
    found = sorted(p for p in folder.glob("step_*") if p.is_dir()) if folder.is_dir() else []
    return found[-1] if found else None


def require_checkpoint(run_dir: Path, which: str = "latest") -> Path:
    """which: 'latest', 'best' (lowest validation loss), or 'auto' (best if kept, else latest)."""
    if not run_dir.is_dir():
        raise GenforgeError(f"run directory '{run_dir}' does not exist")
    if not (run_dir / "config.json").is_file():
        raise GenforgeError(f"'{run_dir}' is not a genforge run directory (no config.json)")
    best = run_dir / "checkpoints" / "best"
    if which == "best" and not best.is_dir():
        raise GenforgeError(f"run '{run_dir}' has no best checkpoint (it is kept at evaluations "
                            "when train.keep_best is on); use --checkpoint latest")
    if which in ("best", "auto") and best.is_dir():
        return best
    path = latest_checkpoint(run_dir)
    if path is None:
        raise GenforgeError(f"run '{run_dir}' has no checkpoint yet; train it first")
    return path


def load_weights(model: torch.nn.Module, ckpt: Path, ema: bool = False) -> None:
    target = ckpt / ("ema.safetensors" if ema else "model.safetensors")
    try:
        if ema:
            model.load_state_dict(load_file(str(target)), strict=False)
        else:
            missing, unexpected = load_model(model, str(target), strict=False)
            if missing or unexpected:
                raise GenforgeError(f"checkpoint {target} does not match the model "
                                    f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    except (SafetensorError, OSError, RuntimeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise GenforgeError(f"checkpoint {target} is corrupt or unreadable ({first}); "
                            "delete that checkpoint folder to fall back to an earlier one") from None


def checkpoint_step(ckpt: Path) -> int:
    """The step a checkpoint was written at, read from the weights' metadata (no optimizer load)."""
    try:
        with safe_open(str(ckpt / "model.safetensors"), framework="pt") as f:
            return int(f.metadata()["step"])
    except (SafetensorError, OSError, KeyError, TypeError) as e:
        raise GenforgeError(f"checkpoint {ckpt} is corrupt or unreadable ({e}); "
                            "delete that checkpoint folder to fall back to an earlier one") from None


def load_train_state(ckpt: Path) -> dict[str, Any]:
    try:
        return torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged pickle
        raise GenforgeError(f"training state {ckpt / 'state.pt'} is corrupt or unreadable ({e})") from None
