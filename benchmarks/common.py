"""Shared helpers for benchmarks: workers run in subprocesses so each reports its own peak memory."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_gflops(n: int = 1024, repeats: int = 7) -> float:
    """Median fp32 matmul throughput on this device: the denominator of MFU."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    rates = []
    for _ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        rates.append(4 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates[1:])


def run_worker(script: str, args: list[str]) -> dict:
    """Run ``script worker ARGS`` in a fresh process; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, script, "worker", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def thread_env(threads: int) -> dict[str, str]:
    """This process's environment with the intra-op thread count pinned for a child process."""
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    return env


def run_process(cmd: list[str], log: Path, cwd: Path | str | None = None,
                env: dict[str, str] | None = None) -> dict:
    """Run ``cmd`` to completion with stdout and stderr into ``log``.

    Returns the exit code, wall seconds and the peak RSS of that child alone (``wait4``
    gives per-child usage, unlike ``RUSAGE_CHILDREN``, which is a maximum over all children).
    """
    with open(log, "w") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"returncode": proc.returncode, "wall_s": wall, "peak_rss_mib": usage.ru_maxrss / 1024}


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def write(name: str, result: dict, table: str, folder: Path | None = None) -> None:
    """Write ``folder/name.json`` and ``folder/name.md`` (default folder: benchmarks/results)."""
    folder = Path(folder) if folder is not None else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (folder / f"{name}.md").write_text(table + "\n")
    print(table)
