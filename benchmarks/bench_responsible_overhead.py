"""Overhead of provenance, C2PA signing, watermarks and output filters on samples/s (issue #18).

``--mode writing`` (the default) times provenance and signing; ``--mode text`` and ``--mode image``
time the watermark and the filters (below). Every mode runs its conditions in alternation
(A B A B ..., so drift in the machine's speed hits every condition alike) and reports medians.

writing: three ways the same samples, run in alternation (A B C A B C ..., so drift in the
machine's speed hits every condition alike), medians over rounds:

- A ``plain``: draw ``--num-samples`` images, write one PNG grid (no metadata);
- B ``provenance``: the same plus the provenance record (an iTXt chunk with the pixel hash);
- C ``provenance + C2PA``: B, then signed with a local test chain (ES256, no thumbnail).

Each round draws fresh samples from one seeded generator per condition, so all three time the
same network work; the difference is the cost of writing. The model is a run you name
(``--run``), else a tiny toy run on digits trained here (seconds).

text (a GPT run, ``--run`` required): ``--num-samples`` continuations of ``--tokens`` tokens from
held-out prompts, decoded
- plain; - with the text watermark (Kirchenbauer et al. 2023, gamma 0.25, delta 2: the logits hook
  of every step); - plain then a trivial ``--filter`` (keeps all: the cost of the filter path); -
  plain then the privacy filter (longest verbatim overlap with the training text, a suffix index
  built once before timing).
image (an image run, default the toy digits run): ``--num-samples`` images drawn
- plain; - then the post-hoc mark (informed embedding, genforge.watermark.posthoc; images too small
  to hold it stay unmarked and are counted); - then a trivial filter; - then the privacy filter
  (nearest training image by RMS pixel distance). Tree-Ring (diffusion runs) is not timed here: it
  marks the initial noise (one FFT per batch, no extra network call) and its cost is detection's
  DDIM inversion, not sampling's.

Usage: python benchmarks/bench_responsible_overhead.py [--mode writing|text|image] [--run RUN]
       [--rounds 7] [--num-samples 64] [--tokens 256]
Smoke tests: python benchmarks/bench_responsible_overhead.py --rounds 1 --num-samples 4 --no-write
  ... --mode image --rounds 2 --num-samples 4 --no-write
  ... --mode text --run RUN --rounds 2 --num-samples 2 --tokens 16 --no-write
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402

CONDITIONS = ("plain", "provenance", "provenance + C2PA")


def toy_run(folder: Path) -> Path:
    from genforge.cli import main

    toy = Path(__file__).resolve().parent.parent / "tests" / "toy-digits.toml"
    sys.path.insert(0, str(toy.parent))  # the toy family lives beside the tests
    run = folder / "toy"
    if main(["train", str(toy), "--run-dir", str(run), "train.max_steps=2", "train.plot=false",
             "--no-progress"]) != 0:
        raise SystemExit("training the toy run failed")
    return run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="an image run to sample from (default: a toy run made here)")
    p.add_argument("--rounds", type=int, default=7, help="alternation rounds (default 7)")
    p.add_argument("--num-samples", type=int, default=64, help="images per grid (default 64)")
    p.add_argument("--mode", choices=("writing", "text", "image"), default="writing",
                   help="what to time: provenance/signing (default), text or image watermark and filters")
    p.add_argument("--tokens", type=int, default=None, help="--mode text: new tokens per sample (default 256)")
    p.add_argument("--no-write", action="store_true", help="print only; do not write benchmarks/results")
    args = p.parse_args()
    if args.tokens is not None and args.mode != "text":
        raise SystemExit("--tokens applies to --mode text only")
    if args.mode != "writing":
        from bench_responsible_marks import run_mode

        return run_mode(args)

    import torch

    from genforge.credentials import init_keys, load_signing_key
    from genforge.data.grids import make_grid
    from genforge.provenance import Stamp, sample_record, write_png
    from genforge.runs import load_run

    tmp = Path(tempfile.mkdtemp(prefix="bench-responsible-"))
    run = load_run(args.run or toy_run(tmp), device="auto")
    keys = init_keys(tmp / "keys")
    signer = load_signing_key(keys["signer.pem"], keys["signer.key"])
    device = next(run.model.parameters()).device
    rates: dict[str, list[float]] = {c: [] for c in CONDITIONS}
    for r in range(args.rounds):
        for cond in CONDITIONS:
            g = torch.Generator(device=device).manual_seed(r)
            record = sample_record(run, g, {"num_samples": args.num_samples, "seed": r})
            stamp = {"plain": None, "provenance": Stamp(record),
                     "provenance + C2PA": Stamp(record, signer)}[cond]
            t = time.perf_counter()
            with torch.no_grad():
                x = run.model.sample(args.num_samples, g)
            if device.type == "cuda":
                torch.cuda.synchronize()
            write_png(make_grid(x.cpu(), run.spec), tmp / f"{cond.replace(' ', '')}-{r}.png", stamp)
            rates[cond].append(args.num_samples / (time.perf_counter() - t))
    med = {c: statistics.median(v) for c, v in rates.items()}
    rows = [f"| {c} | {med[c]:,.1f} | {100 * (med['plain'] / med[c] - 1):+.1f}% |" for c in CONDITIONS]
    table = "\n".join([
        f"Overhead of provenance and signing on samples/s ({args.num_samples} images per PNG grid, "
        f"{args.rounds} alternating rounds, medians; run {run.run_dir.name}, {run.config.family})", "",
        "| writing | samples/s | time vs plain |", "| --- | --- | --- |", *rows])
    result = {"machine": machine(), "run": str(run.run_dir), "family": run.config.family,
              "num_samples": args.num_samples, "rounds": args.rounds, "samples_per_s": rates, "median": med}
    if args.no_write:
        print(table)
    else:
        write("responsible_overhead", result, table)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)  # the toy run, the test chain's keys and the grids


if __name__ == "__main__":
    main()
