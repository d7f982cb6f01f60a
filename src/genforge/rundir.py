"""The run directory as a whole: who may write into it (the ``.lock`` flock) and what
``--overwrite`` may replace (a genforge run: only the entries :data:`RUN_FILES` and
:data:`RUN_FOLDERS` name). Every writer of runs (`train`, `rl`) claims its folder here."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from genforge import GenforgeError


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
                       "eval.json", "oracle.csv", ".lock", "README.md", "watermark.key"})
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

    A new run needs an absent or empty folder unless ``overwrite``, which allows a genforge run
    (:func:`check_overwritable`, checked again once the lock proves nobody else is writing there;
    the caller clears it with :func:`clear_run_dir` once its start has succeeded); a resumed run
    needs checkpoints. Every writer of runs (`train`, `rl`)
    comes through here. On a refusal nothing is created or deleted (no stale ``.lock``)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise GenforgeError(f"run directory '{run_dir}' is a file; choose another --run-dir")
    if resume and not (run_dir / "checkpoints").is_dir():
        raise GenforgeError(f"cannot resume: '{run_dir}' is not a run directory with checkpoints")
    if not resume and run_dir.exists() and not is_empty_dir(run_dir):
        if not overwrite:
            if not (run_dir / "checkpoints").is_dir():  # e.g. killed before its first checkpoint
                raise GenforgeError(f"run directory '{run_dir}' is not empty and holds no checkpoint to resume; "
                                    "replace it with --overwrite, or choose another --run-dir")
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
        except BaseException:
            release_claim(run_dir, lock, created, had_lock)
            raise
    lock.created_file = not had_lock
    return lock, created


def clear_run_dir(run_dir: Path) -> None:
    """Empty a claimed run folder for ``--overwrite`` (all but ``.lock``). The trainer calls it
    only once the new run has started without error, so a refused start (a bad override) keeps
    the run it would have replaced."""
    run_dir = Path(run_dir)
    check_overwritable(run_dir)
    try:
        for child in run_dir.iterdir():
            if child.name != ".lock":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    except OSError as e:
        raise GenforgeError(f"cannot clear run directory '{run_dir}' ({e.strerror}: "
                            f"{e.filename}); check its permissions") from None


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
