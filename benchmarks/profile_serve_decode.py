"""In-process profile of one continuous-batching decode step (serve/decoder.py), no HTTP.

A text run's ``Decoder`` is filled with ``--rows`` one-row jobs (the load benchmark's prompts,
temperature 0.8, each job its own generator) and stepped; each step's wall time is split by
timing wrappers into:

- forward: the model's cached one-token step (``model.logits``),
- watermark: the text watermark's logits hook and the history it reads,
- sampling: temperature / top-k / top-p and the draw (``sample_next`` per job, or the batched
  ``sample_rows``),
- text/events: each job's new text (tokenizer decode, stop strings, the event put),
- bookkeeping: the rest of the step (gathering rows, cache moves, tensors built per step).

Times are CPU seconds of this process (``time.process_time``, all threads) by default: on a
shared machine wall time mostly measures the other processes; ``--wall`` for wall time.
With ``--baseline REV`` the decoder and watermark modules of git revision REV are loaded beside
the working tree's and the two are measured alternately (A = REV, B = working tree) in one
process, so machine noise hits both alike. Numbers are indicative (the wrappers add ~1 us/call).

Usage: python benchmarks/profile_serve_decode.py [--run runs/bench-serve/text] [--rows 1 32]
       [--steps 40] [--repeats 5] [--baseline HEAD] [--threads 1] [--wall]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = ["ROMEO:\n", "First Citizen:\n", "KING HENRY:\n", "To be, or ", "O, ", "What ", "I will ", "The "]
PARTS = ("forward", "watermark", "sampling", "text/events", "bookkeeping")


def load_at(rev: str, rel: str, name: str):
    """The module at ``rel`` (src/genforge/...) as of git revision ``rev``, under the name ``name``."""
    source = subprocess.run(["git", "show", f"{rev}:{rel}"], cwd=ROOT, capture_output=True, text=True)
    if source.returncode != 0:
        raise SystemExit(f"error: cannot read {rel} at {rev}: {source.stderr.strip()}")
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # before exec: dataclasses look their module up
    exec(compile(source.stdout, f"{rev}:{rel}", "exec"), module.__dict__)
    return module


class Clock:
    """Per-category seconds, filled by wrappers around the step's parts."""

    def __init__(self, now=time.process_time):
        self.spent: dict[str, float] = defaultdict(float)
        self.now, self.depth = now, [0]

    def wrap(self, owner, attr: str, part: str) -> None:
        inner = getattr(owner, attr, None)
        if inner is None:
            return
        spent, now, depth = self.spent, self.now, self.depth

        def timed(*args, **kwargs):
            if depth[0]:  # inside another timed part (sample_rows -> sample_next): counted there
                return inner(*args, **kwargs)
            t = now()
            depth[0] += 1
            try:
                return inner(*args, **kwargs)
            finally:
                depth[0] -= 1
                spent[part] += now() - t

        setattr(owner, attr, timed)


def measure(side, run, rows: int, watermark: bool, steps: int, now=time.process_time) -> dict[str, float]:
    """Microseconds per decode step, by part, for ``rows`` one-row jobs."""
    import genforge.sampling.text  # noqa: F401  (patched below)
    from genforge.serve.batching import Job, _Rows

    decoder_mod, wm_mod = side
    clock = Clock(now)
    patched = [(run.model, "logits", "forward"), (wm_mod.TextWatermark, "__call__", "watermark"),
               (decoder_mod._Live, "seen", "watermark"), (decoder_mod, "_hook_contexts", "watermark"),
               (sys.modules["genforge.sampling.text"], "sample_next", "sampling"),
               (sys.modules["genforge.sampling.text"], "sample_rows", "sampling"), (_Rows, "add", "text/events")]
    saved = [(owner, attr, getattr(owner, attr)) for owner, attr, _ in patched if hasattr(owner, attr)]
    for owner, attr, part in patched:
        clock.wrap(owner, attr, part)
    try:
        hook = wm_mod.TextWatermark(b"k" * 32) if watermark else None
        decoder = decoder_mod.Decoder(run.model, run.tokenizer, capacity=max(rows, 1))
        settings = dict(max_new_tokens=10_000, temperature=0.8, top_k=None, top_p=None, stop=())
        with torch.inference_mode():
            for i in range(rows):
                job = Job([PROMPTS[i % len(PROMPTS)]], settings, torch.Generator().manual_seed(i), logits_hook=hook)
                decoder.admit(_Rows(job, run.tokenizer))
            for _ in range(3):  # warm-up: the first steps allocate
                decoder.step()
            clock.spent.clear()
            t = now()
            for _ in range(steps):
                decoder.step()
            total = now() - t
    finally:
        for owner, attr, inner in saved:
            setattr(owner, attr, inner)
    out = {part: 1e6 * clock.spent[part] / steps for part in PARTS if part != "bookkeeping"}
    out["bookkeeping"] = 1e6 * total / steps - sum(out.values())
    out["step"] = 1e6 * total / steps
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=str(ROOT / "runs" / "bench-serve" / "text"), help="a trained text run")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 32])
    p.add_argument("--steps", type=int, default=40, help="measured decode steps (rows stay in the window)")
    p.add_argument("--repeats", type=int, default=5, help="alternating repeats; medians are reported")
    p.add_argument("--baseline", default=None, help="git revision to compare against (A side)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--wall", action="store_true", help="wall-clock time instead of this process's CPU time")
    args = p.parse_args(argv)
    if min(args.rows) < 1 or args.steps < 1 or args.repeats < 1:
        print("error: --rows, --steps and --repeats must be >= 1", file=sys.stderr)
        return 2
    if not Path(args.run, "config.json").is_file():
        print(f"error: no run at {args.run}; train one: genforge train gpt-demo data.name=shakespeare "
              f"train.max_steps=50 --run-dir {args.run}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    from genforge.runs import load_run
    from genforge.serve import decoder
    from genforge.watermark import text as wm

    run = load_run(args.run, device="cpu")
    run.model.eval()
    if run.model.config.block_size < 16 + 3 + args.steps:
        print(f"error: --steps {args.steps} would pass the window of {run.model.config.block_size}", file=sys.stderr)
        return 2
    sides = {"now": (decoder, wm)}
    if args.baseline:
        sides = {args.baseline: (load_at(args.baseline, "src/genforge/serve/decoder.py", "_base_decoder"),
                                 load_at(args.baseline, "src/genforge/watermark/text.py", "_base_wm")), **sides}
    results: dict[tuple, list[dict]] = defaultdict(list)
    for _ in range(args.repeats):
        for rows in args.rows:
            for watermark in (False, True):
                for name, side in sides.items():  # alternate A/B inside every setting
                    results[(rows, watermark, name)].append(measure(side, run, rows, watermark, args.steps,
                                                                       time.perf_counter if args.wall else time.process_time))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; run {args.run}; "
          f"{args.steps} steps x {args.repeats} repeats; {'wall' if args.wall else 'CPU'} us per decode step (median)")
    print("| rows | watermark | code | " + " | ".join(PARTS) + " | step | rows/s |")
    print("|---|---|---|" + "---|" * (len(PARTS) + 2))
    for (rows, watermark, name), runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in (*PARTS, "step")}
        cells = " | ".join(f"{med[k]:,.0f}" for k in PARTS)
        print(f"| {rows} | {'on' if watermark else 'off'} | {name} | {cells} | {med['step']:,.0f} | "
              f"{rows / med['step'] * 1e6:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
