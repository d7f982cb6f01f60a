"""Did this session's changes slow anything down? The same workloads on two source trees, alternated.

Issue #20 asks that "nothing else got slower". This script runs each workload from two trees of
genforge (a base commit checked out as a git worktree, and the working tree), in alternation
(A B A B ...), each run in a fresh process, and reports the median time per tree and the ratio
new/base (< 1: faster). Workloads:

- ``decode@1``, ``decode@16``: greedy KV-cached decoding of 200 tokens, 6x384 GPT (context 256,
  65-token vocab, random weights), batch 1 and 16: the default path of ``sampling.text.generate``.
- ``train``: ``Trainer.fit`` of the gpt-demo preset for 120 steps (evaluation and checkpoints
  inside), from a fresh run folder: the trainer's own overhead included.

Usage: python benchmarks/bench_regression.py --base REV [--rounds 3] [--only decode@16 ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

DECODE = """
import time, torch
from genforge.data.spec import DataSpec
from genforge.families.gpt import GPT, GPTConfig
from genforge.sampling.text import generate
torch.manual_seed(0)
m = GPT(GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256), DataSpec(modality="text", vocab_size=65)).eval()
p = [[0]] * {batch}
generate(m, p, 8, temperature=0)
t = time.perf_counter(); generate(m, p, 200, temperature=0); print(time.perf_counter() - t)
"""

TRAIN = """
import time, tempfile
from genforge.config import load_config
from genforge.train.trainer import Trainer, build
cfg, mcfg = load_config("gpt-demo", ["train.max_steps=120", "train.eval_every=60", "train.checkpoint_every=60",
                                     "train.plot=false"])
model, data = build(cfg, mcfg)
d = tempfile.mkdtemp()
t = time.perf_counter(); Trainer(cfg, model, data, d + "/run").fit(); print(time.perf_counter() - t)
"""

WORKLOADS = {"decode@1": DECODE.format(batch=1), "decode@16": DECODE.format(batch=16), "train": TRAIN}


def once(tree: Path, code: str) -> float:
    env = {"PYTHONPATH": str(tree / "src"), "PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tree)
    if out.returncode != 0:
        raise SystemExit(f"{tree}: {out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the commit to compare against (e.g. the session's start)")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds per workload (default 3)")
    ap.add_argument("--only", nargs="*", choices=sorted(WORKLOADS), help="these workloads only (default all)")
    ap.add_argument("--name", default="regression", help="results file name (default regression)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    args = ap.parse_args()
    base_rev = subprocess.run(["git", "rev-parse", "--short", args.base], capture_output=True, text=True,
                              cwd=ROOT, check=True).stdout.strip()
    new_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=ROOT, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "--detach", str(base), base_rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            rows = {}
            for name, code in WORKLOADS.items():
                if args.only and name not in args.only:
                    continue
                times = {"base": [], "new": []}
                for r in range(args.rounds):
                    for side, tree in (("base", base), ("new", ROOT)):  # A B A B
                        times[side].append(once(tree, code))
                    print(f"{name} round {r + 1}: base {times['base'][-1]:.2f} s, new {times['new'][-1]:.2f} s",
                          flush=True)
                b, n = statistics.median(times["base"]), statistics.median(times["new"])
                rows[name] = {"base_s": times["base"], "new_s": times["new"], "ratio_new_over_base": n / b}
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, capture_output=True)
    cmd = f"python benchmarks/bench_regression.py --base {args.base} --rounds {args.rounds}"
    if args.only:
        cmd += f" --only {' '.join(args.only)} --name {args.name}"
    lines = [f"# Same workloads, base {base_rev} vs {new_rev} (working tree), alternated", "",
             f"Command: `{cmd}`; {args.rounds} rounds, each run a fresh process; medians; CPU, nothing else running.",
             "", "| workload | base median s | new median s | new / base |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {statistics.median(r['base_s']):.3f} | {statistics.median(r['new_s']):.3f} "
                     f"| {r['ratio_new_over_base']:.3f} |")
    write(args.name, {"base": base_rev, "new": new_rev, "rows": rows, "command": cmd, "machine": machine()},
          "\n".join(lines) + "\n", args.out)
    print(json.dumps({k: round(v["ratio_new_over_base"], 3) for k, v in rows.items()}))


if __name__ == "__main__":
    main()
