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
between is repaired by the next read or save. Frozen parts (``model.frozen_parts()``) are rebuilt by the family and
never written.
"""

from __future__ import annotations

import contextlib
import fcntl
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

WEIGHTS, EMA_WEIGHTS, STATE, CONFIG, MANIFEST = (
    "model.safetensors", "ema.safetensors", "state.pt", "config.json", "manifest.json")


# --------------------------------------------------------------------------- atomic files


# --------------------------------------------------------------------------- the one writer


class RunLock:
    """An exclusive ``flock`` on RUN/.lock for as long as one process trains into the folder.

    The kernel drops the lock when the process dies, so a killed run never leaves a
    stale lock behind (a pid file would)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None
        self.created_file = False  # whether claim_run_dir made the .lock (a failed start removes it)

    def acquire(self) -> RunLock:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise GenforgeError(f"cannot write to run directory {self.path.parent} ({e.strerror}); "
                                "choose a writable --run-dir") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 32, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            self.fd = None
            raise GenforgeError(f"{self.path.parent} is being trained by process {holder}; wait for it "
                                "or choose another --run-dir") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(p.name != ".lock" for p in path.iterdir())


# What a genforge run folder holds (training, `rl`, `eval`, `plot` and default `sample` outputs).
# `--overwrite` clears a folder only when every entry is one of these, so it can never delete a
# user's files (`--run-dir ~/thesis --overwrite`) or sibling runs (`--run-dir base/..`).
RUN_FILES = frozenset({"config.json", "spec.json", "tokenizer.json", "data.json", "metrics.jsonl",
                       "eval.json", "oracle.csv", ".lock"})
RUN_FOLDERS = frozenset({"checkpoints", "samples", "plots", "reference", "tensorboard"})


def _is_run_entry(child: Path) -> bool:
    if child.is_symlink():
        return False  # never follow a link out of the run
    if child.is_dir():
        return child.name in RUN_FOLDERS or child.name == ".reference.tmp"
    # a hidden temporary of an atomic write interrupted by a crash (``.NAME.PID.tmp``)
    return child.name in RUN_FILES or (child.name.startswith(".") and child.name.endswith(".tmp"))


def foreign_entries(run_dir: Path) -> list[str]:
    """Names in ``run_dir`` that a genforge run does not write (sorted); [] for a run folder."""
    return sorted(c.name for c in Path(run_dir).iterdir() if not _is_run_entry(c))


def check_overwritable(run_dir: Path, flag: str = "--overwrite") -> None:
    """Refuse (before anything is deleted) to clear a folder that is not a genforge run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    foreign = foreign_entries(run_dir)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise GenforgeError(f"{flag} replaces only a genforge run folder, and '{run_dir}' holds other "
                            f"files ({shown}); nothing was deleted: choose another --run-dir")
    if not (run_dir / "checkpoints").is_dir() and not (run_dir / "config.json").is_file() \
            and not is_empty_dir(run_dir):
        raise GenforgeError(f"'{run_dir}' is not a genforge run (no config.json or checkpoints/); "
                            f"{flag} does not clear it: choose another --run-dir")


def claim_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> tuple[RunLock, bool]:
    """Lock ``run_dir`` for one training process: (the held lock, whether the folder was created).

    A new run needs an absent or empty folder unless ``overwrite``, which clears it only when
    it is a genforge run (:func:`check_overwritable`) and only once the lock proves nobody else
    is writing there; a resumed run needs checkpoints. Every writer of runs (`train`, `rl`)
    comes through here. On a refusal nothing is created or deleted (no stale ``.lock``)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise GenforgeError(f"run directory '{run_dir}' is a file; choose another --run-dir")
    if resume and not (run_dir / "checkpoints").is_dir():
        raise GenforgeError(f"cannot resume: '{run_dir}' is not a run directory with checkpoints")
    if not resume and run_dir.exists() and not is_empty_dir(run_dir):
        if not overwrite:
            raise GenforgeError(f"run directory '{run_dir}' is not empty; continue it with "
                                f"--resume {run_dir}, replace it with --overwrite, or choose another --run-dir")
        check_overwritable(run_dir)
    created = not run_dir.exists()
    had_lock = (run_dir / ".lock").exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GenforgeError(f"cannot create run directory '{run_dir}' ({e.strerror})") from None
    lock = RunLock(run_dir).acquire()
    if overwrite and not resume:
        try:
            check_overwritable(run_dir)  # again under the lock: the folder may have changed
            for child in run_dir.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        except BaseException as e:
            release_claim(run_dir, lock, created, had_lock)
            if isinstance(e, OSError):
                raise GenforgeError(f"cannot clear run directory '{run_dir}' ({e.strerror}: "
                                    f"{e.filename}); check its permissions") from None
            raise
    lock.created_file = not had_lock
    return lock, created


def release_claim(run_dir: Path, lock: RunLock, created: bool, had_lock: bool) -> None:
    """Undo a claim whose start failed: release the lock, remove the ``.lock`` it created, and
    the folder itself when the claim created it and nothing else was written."""
    lock.release()
    if not had_lock:
        with contextlib.suppress(OSError):
            (Path(run_dir) / ".lock").unlink()
    if created:
        with contextlib.suppress(OSError):
            Path(run_dir).rmdir()  # only when empty


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
