"""Run directories and atomic, verified checkpoints. Imports no trainer: serving reads these.

Layout of a run directory::

    config.json            the resolved config of the newest checkpoint (a convenience copy)
    spec.json              the DataSpec; tokenizer.json for text; data.json for images
    metrics.jsonl          one JSON object per logged step or evaluation
    samples/ plots/        previews written during training, loss curves
    checkpoints/step_N/    model.safetensors, ema.safetensors, state.pt, config.json, manifest.json
    checkpoints/best-step_N/   the checkpoint chosen by the family's selection metric
    checkpoints/latest     name of the newest complete step_N folder
    checkpoints/best       name of the current best-step_N folder
    .lock                  held (flock) by the one process training into the folder

Every checkpoint carries the config it was trained with, so ``load_run`` rebuilds
the model from the checkpoint it loads, never from a config.json that a later
``--resume`` with other settings may have changed. ``manifest.json`` holds the
sha256 of every file; loading verifies it, so flipped bytes behind an intact
safetensors header are an error, not blank samples.

A checkpoint is written into a hidden temporary folder, its files fsynced, renamed
into place, and only then named by ``latest``/``best`` (pointer files replaced with
``os.replace``), so a crash at any moment leaves the previous checkpoint intact and
pointed to. Re-saving the step ``latest`` names (a resumed run's first save) moves the old
folder aside (``.old-NAME-PID``), renames the new one in, then deletes the old; a crash in
between is repaired by the next read or save. Frozen parts (``model.frozen_parts()``) are
rebuilt by the family and never written. Claiming a run folder (the lock, what ``--overwrite``
may replace) lives in ``genforge.rundir`` and is re-exported here.
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
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genforge import GenforgeError, __version__
from genforge.atomic import atomic_write_text, fsync_dir  # noqa: F401  (re-exported)
from genforge.data.locate import sha256_file
from genforge.rundir import (  # noqa: F401  (re-exported: the run folder's claim and lock)
    RUN_FILES,
    RUN_FOLDERS,
    RunLock,
    check_overwritable,
    claim_run_dir,
    clear_run_dir,
    foreign_entries,
    is_empty_dir,
    release_claim,
)

WEIGHTS, EMA_WEIGHTS, STATE, CONFIG, MANIFEST = (
    "model.safetensors", "ema.safetensors", "state.pt", "config.json", "manifest.json")


# --------------------------------------------------------------------------- RNG state


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


# --------------------------------------------------------------------------- what is saved


def _frozen_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    return tuple(f"{name}." for name in model.frozen_parts())


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without frozen parts, each storage once.

    Tied weights (GPT's lm_head and token embedding) share one storage; safetensors
    refuses to write a tensor twice, so later names of a storage are dropped and
    restored by loading into the model, which ties them again."""
    frozen = _frozen_prefixes(model)
    out, seen = {}, set()
    for key, tensor in model.state_dict().items():
        if key.startswith(frozen):
            continue
        ident = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if ident in seen:
            continue
        seen.add(ident)
        out[key] = tensor.detach().contiguous()
    return out


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, ema_state: dict | None,
                    train_state: dict[str, Any], config: dict[str, Any], keep: int = 2,
                    best: bool = False) -> Path:
    """Write checkpoints/step_N (then point ``latest`` at it), or best-step_N (then ``best``)."""
    folder = Path(run_dir) / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"best-step_{step:07d}" if best else f"step_{step:07d}"
    tmp = folder / f".tmp-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    for trash in folder.glob(".old-*"):  # left by a crash mid-replace: restore or drop
        if not (folder / trash.name[len(".old-"):].rsplit("-", 1)[0]).is_dir():
            _recover(folder, trash.name[len(".old-"):].rsplit("-", 1)[0])
        shutil.rmtree(trash, ignore_errors=True)
    tmp.mkdir()
    meta = {"genforge_version": __version__, "step": str(step)}
    save_file(trainable_state(model), str(tmp / WEIGHTS), metadata=meta)
    if ema_state is not None:
        save_file({k: v.contiguous() for k, v in ema_state.items()}, str(tmp / EMA_WEIGHTS), metadata=meta)
    torch.save({"step": step, **train_state}, tmp / STATE)
    (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "genforge_version": __version__,
                                            "sha256": files}, indent=2))
    for path in tmp.iterdir():  # data on disk before the rename makes the folder visible
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(tmp)
    final = folder / name
    trash = None
    if final.exists():  # only when re-saving the same step (a resumed run's first save)
        # `latest` may name this folder: move it aside (one rename), put the new one in its place
        # (another), and only then delete the old one, so a crash between any two steps leaves
        # either the old or the new checkpoint under the name `latest` points to.
        trash = folder / f".old-{name}-{os.getpid()}"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(final, trash)
    os.replace(tmp, final)
    fsync_dir(folder)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    pointer = "best" if best else "latest"
    previous = _read_pointer(folder, pointer)
    atomic_write_text(folder / pointer, name)
    if best:
        if previous is not None and previous != final:
            shutil.rmtree(previous, ignore_errors=True)
    else:
        old = sorted(p for p in folder.glob("step_*") if p.is_dir())[:-keep] if keep > 0 else []
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
    return final


def _read_pointer(folder: Path, pointer: str) -> Path | None:
    path = folder / pointer
    if path.is_file():
        target = folder / path.read_text().strip()
        if not target.is_dir():
            target = _recover(folder, target.name)
        if target is not None and target.is_dir():
            return target
    return None


def _recover(folder: Path, name: str) -> Path | None:
    """After a crash between moving checkpoint ``name`` aside and renaming its replacement in,
    put the old one back (or, on a read-only folder, read it where it is)."""
    for trash in sorted(folder.glob(f".old-{name}-*")):
        if (trash / MANIFEST).is_file():
            try:
                os.replace(trash, folder / name)
                return folder / name
            except OSError:
                return trash
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = Path(run_dir) / "checkpoints"
    found = _read_pointer(folder, "latest")
    if found is not None:
        return found
    steps = sorted(p for p in folder.glob("step_*") if p.is_dir()) if folder.is_dir() else []
    return steps[-1] if steps else None


def best_checkpoint(run_dir: Path) -> Path | None:
    return _read_pointer(Path(run_dir) / "checkpoints", "best")


def require_checkpoint(run_dir: Path, which: str = "latest") -> Path:
    """which: 'latest', 'best' (chosen by the family's selection metric), 'auto' (best if kept,
    else latest), or the name of a checkpoint folder (e.g. step_0000500)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise GenforgeError(f"run directory '{run_dir}' does not exist")
    if not run_dir.is_dir():
        raise GenforgeError(f"'{run_dir}' is a file, not a run directory; pass the folder that "
                            "`genforge train` printed")
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        if (run_dir / "config.json").is_file():  # a run still starting, or killed before its first checkpoint
            raise GenforgeError(f"'{run_dir}' has no checkpoint yet (its run is starting, or stopped before the "
                                "first one): nothing to load or resume; to start it again, use --overwrite")
        raise GenforgeError(f"'{run_dir}' has no checkpoints: not a genforge run directory, or not "
                            "trained yet")
    if which not in ("latest", "best", "auto"):
        path = folder / which
        if not (path / WEIGHTS).is_file():
            names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise GenforgeError(f"no checkpoint '{which}' in {folder}; choose one of: {', '.join(names)}")
        return path
    best = best_checkpoint(run_dir)
    if which == "best" and best is None:
        raise GenforgeError(f"run '{run_dir}' has no best checkpoint (kept at evaluations when the "
                            "family selects on a metric); use --checkpoint latest")
    if which in ("best", "auto") and best is not None:
        return best
    path = latest_checkpoint(run_dir)
    if path is None:
        raise GenforgeError(f"run '{run_dir}' has no checkpoint yet; train it first")
    return path


# --------------------------------------------------------------------------- loading


def _corrupt(path: Path, why: str) -> GenforgeError:
    return GenforgeError(f"checkpoint {path} is corrupt or unreadable ({why}); delete that "
                         "checkpoint folder to fall back to an earlier one")


def verify_checkpoint(ckpt: Path) -> dict[str, Any]:
    """Check every file against manifest.json; return the manifest."""
    try:
        manifest = json.loads((ckpt / MANIFEST).read_text())
        expected = manifest["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise _corrupt(ckpt, f"no readable {MANIFEST}: {e}") from None
    for name, digest in expected.items():
        path = ckpt / name
        if not path.is_file():
            raise _corrupt(ckpt, f"{name} is missing")
        if sha256_file(path) != digest:
            raise _corrupt(ckpt, f"{name} does not match its sha256 in {MANIFEST}")
    return manifest


def checkpoint_config(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise _corrupt(ckpt, f"{CONFIG}: {e}") from None


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise _corrupt(path.parent, str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def _load_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], expected: set[str],
                 source: Path) -> None:
    """Load ``tensors`` into ``module``; every key in ``expected`` must be present, nothing else."""
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise GenforgeError(f"checkpoint {source} does not match the model (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}); was it trained with other model settings?")
    try:
        result = module.load_state_dict(tensors, strict=False)
    except RuntimeError as e:  # shape mismatch
        raise GenforgeError(f"checkpoint {source} does not match the model "
                            f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e}); "
                            "was it trained with other model settings?") from None
    assert not result.unexpected_keys  # checked above


def load_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """The trained (non-frozen) weights, all of them, into ``model``."""
    _load_strict(model, _read_tensors(ckpt / WEIGHTS), set(trainable_state(model)), ckpt / WEIGHTS)


def ema_keys(module: torch.nn.Module, frozen: tuple[str, ...] = ()) -> list[str]:
    """The floating-point entries of ``module``'s state that EMA averages (frozen parts excluded)."""
    return [k for k, v in module.state_dict().items() if v.is_floating_point() and not k.startswith(frozen)]


def load_ema_weights(model: torch.nn.Module, ckpt: Path) -> None:
    """EMA weights into ``model.ema_target()``, strictly: a GAN's generator, the whole GPT."""
    target = model.ema_target()
    frozen = _frozen_prefixes(model) if target is model else ()
    _load_strict(target, _read_tensors(ckpt / EMA_WEIGHTS), set(ema_keys(target, frozen)), ckpt / EMA_WEIGHTS)


def read_ema_state(ckpt: Path) -> dict[str, torch.Tensor] | None:
    """The raw EMA shadow of a checkpoint (None when it was trained without EMA)."""
    return _read_tensors(ckpt / EMA_WEIGHTS) if (ckpt / EMA_WEIGHTS).is_file() else None


def load_train_state(ckpt: Path) -> dict[str, Any]:
    try:
        return torch.load(ckpt / STATE, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged pickle
        raise _corrupt(ckpt, f"{STATE}: {e}") from None
