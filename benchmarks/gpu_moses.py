"""The SMILES GPT on MOSES at a fixed wall-clock training budget on one device (the GPU check).

Calibrates seconds per step through the genforge trainer on the real preset (a 50k-molecule
subset, so calibration does not pay for loading 1.58M molecules), sets ``train.max_steps``
so that training fills ``--budget-s`` (the cosine schedule then ends where training ends),
trains with the CLI, and samples ``--samples`` molecules at temperature 1 into ``OUT/``.
The MOSES metrics are computed afterwards with ``genforge metrics molecules`` on a CPU
machine with RDKit (the GPU machine has none). Writes ``OUT/moses_<tag>.json`` (device,
steps, timings) and ``OUT/moses_<tag>_samples.smi``.

Usage: GENFORGE_DATA=... python benchmarks/gpu_moses.py --out DIR [--preset gpt-moses-gpu]
       [--budget-s 300] [--samples 30000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_image_families import seconds_per_step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--preset", default="gpt-moses-gpu")
    p.add_argument("--budget-s", type=float, default=300.0)
    p.add_argument("--samples", type=int, default=30000)
    p.add_argument("--sample-batch", type=int, default=2000)
    p.add_argument("--run-dir", default="/tmp/gf-moses-run")
    p.add_argument("--tag", default="gpu")
    p.add_argument("--overrides", nargs="*", default=[])
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    result: dict = {"device": device, "torch": torch.__version__, "preset": args.preset,
                    "budget_s": args.budget_s, "overrides": args.overrides}

    def save() -> None:
        (out / f"moses_{args.tag}.json").write_text(json.dumps(result, indent=2) + "\n")

    t = time.perf_counter()
    s = seconds_per_step(args.preset, [*args.overrides, "data.max_molecules=50000"], steps=40)
    result.update(calibration_s=time.perf_counter() - t, s_per_step=s)
    steps = max(100, int(args.budget_s / s))
    result["steps"] = steps
    save()
    cmd = [sys.executable, "-m", "genforge", "train", args.preset, *args.overrides, f"train.max_steps={steps}",
           "--run-dir", args.run_dir, "--overwrite", "--no-progress"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    result.update(train_wall_s=time.perf_counter() - t, train_rc=proc.returncode,
                  train_tail=proc.stdout[-1500:] + proc.stderr[-1500:])
    save()
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    metrics = [json.loads(x) for x in (Path(args.run_dir) / "metrics.jsonl").read_text().splitlines()]
    result["val_losses"] = [(m["step"], m["loss"]) for m in metrics if m.get("split") == "val"]
    result["train_elapsed_s"] = max(m.get("elapsed_s", 0.0) for m in metrics)
    samples = out / f"moses_{args.tag}_samples.smi"
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "genforge", "sample", args.run_dir, "--num-samples",
                           str(args.samples), "--seed", "0", "--temperature", "1.0", "--batch-size",
                           str(args.sample_batch), "--out", str(samples)], capture_output=True, text=True)
    wall = time.perf_counter() - t
    result.update(sample_rc=proc.returncode, sample_wall_s=wall, molecules_per_s=args.samples / wall,
                  sample_tail=proc.stderr[-1000:])
    save()
    print(json.dumps({k: v for k, v in result.items() if not k.endswith("_tail")}, indent=2))


if __name__ == "__main__":
    main()
