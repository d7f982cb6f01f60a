"""MOSES distribution learning: genforge's SMILES models beside the published baselines.

Two steps, each adding a row to ``results/moses.json`` (keyed by ``--label``), then the
table is rendered to ``results/moses.md``:

- ``train``: calibrate seconds per step for a preset through the genforge trainer, train
  for as many steps as fit ``--budget-s`` (so the schedule ends where the budget does),
  sample ``--samples`` molecules at temperature 1 and score them;
- ``score``: score a samples file made elsewhere (e.g. on a GPU machine by
  ``gpu_moses.py``, whose JSON gives device, steps and timings).

Scores come from ``genforge metrics molecules`` (RDKit + fcd-torch) against MOSES test and
test_scaffolds, with novelty against MOSES train; the wall time of scoring 30,000
molecules is recorded. Published rows: Polykovskiy et al. 2020, "Molecular Sets (MOSES)",
Front. Pharmacol. 11:565644, Table 2 (CharRNN and VAE; FCD/Test of JTN-VAE and LatentGAN).

Usage: GENFORGE_DATA=... python benchmarks/bench_moses.py train --preset gpt-moses --budget-s 1200 --label L
       GENFORGE_DATA=... python benchmarks/bench_moses.py score FILE --label L [--meta GPU.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_image_families import seconds_per_step
from common import RESULTS, machine, write

COLUMNS = ("valid", "unique@10000", "FCD/Test", "SNN/Test", "Frag/Test", "Scaf/Test", "IntDiv", "Novelty")
MORE = ("unique@1000", "FCD/TestSF", "SNN/TestSF", "Frag/TestSF", "Scaf/TestSF", "IntDiv2", "Filters",
        "logP", "SA", "QED", "weight")
PUBLISHED = [  # MOSES paper, Table 2 (as quoted in genforge issue #9)
    {"label": "CharRNN (MOSES paper)", "valid": 0.975, "unique@10000": 0.999, "FCD/Test": 0.073,
     "SNN/Test": 0.602, "Frag/Test": 1.000, "Scaf/Test": 0.924, "IntDiv": 0.856, "Novelty": 0.842},
    {"label": "VAE (MOSES paper)", "valid": 0.977, "unique@10000": 0.998, "FCD/Test": 0.099,
     "SNN/Test": 0.626},
    {"label": "JTN-VAE (MOSES paper)", "FCD/Test": 0.395},
    {"label": "LatentGAN (MOSES paper)", "FCD/Test": 0.297},
]


def score(path: Path, workers: int) -> dict:
    from genforge.modalities.molecule import score_smiles_file

    t = time.perf_counter()
    result = score_smiles_file(str(path), workers=workers, progress=True)
    result["metric_wall_s"] = time.perf_counter() - t
    return result


def train_and_sample(args) -> dict:
    s = seconds_per_step(args.preset, [*args.overrides, "data.max_molecules=50000"], steps=20)
    steps = max(100, int(args.budget_s / s))
    run = Path(args.runs_dir) / args.label.replace(" ", "_").replace("/", "_")
    cmd = [sys.executable, "-m", "genforge", "train", args.preset, *args.overrides, f"train.max_steps={steps}",
           "--run-dir", str(run), "--overwrite", "--no-progress"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    train_wall = time.perf_counter() - t
    samples = run / "samples_30k.smi"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "genforge", "sample", str(run), "--num-samples", str(args.samples),
                    "--seed", "0", "--temperature", "1.0", "--batch-size", "1000", "--out", str(samples)],
                   check=True)
    sample_wall = time.perf_counter() - t
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    val = [m["loss"] for m in metrics if m.get("split") == "val"]
    m = machine()
    return {"device": f"CPU, {m['threads']} threads (torch {m['torch']})", "preset": args.preset, "overrides": args.overrides,
            "budget_s": args.budget_s, "s_per_step": s, "steps": steps, "train_wall_s": train_wall,
            "final_val_loss": val[-1] if val else None, "molecules_per_s": args.samples / sample_wall,
            "samples_file": str(samples)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--preset", required=True)
    t.add_argument("--budget-s", type=float, required=True)
    t.add_argument("--label", required=True)
    t.add_argument("--samples", type=int, default=30000)
    t.add_argument("--overrides", nargs="*", default=[])
    t.add_argument("--runs-dir", default="runs/bench-moses")
    s = sub.add_parser("score")
    s.add_argument("file")
    s.add_argument("--label", required=True)
    s.add_argument("--meta", help="JSON written by gpu_moses.py: device, steps, timings")
    for q in (t, s):
        q.add_argument("--workers", type=int, default=2)
    sub.add_parser("render")
    args = p.parse_args()
    path = RESULTS / "moses.json"
    result = json.loads(path.read_text()) if path.exists() else {"rows": []}
    if args.cmd != "render":
        if args.cmd == "train":
            row = train_and_sample(args)
            file = Path(row["samples_file"])
        else:
            file = Path(args.file)
            row = {"samples_file": str(file)}
            if args.meta:
                meta = json.loads(Path(args.meta).read_text())
                row.update({k: meta.get(k) for k in ("device", "preset", "budget_s", "steps", "train_elapsed_s",
                                                      "molecules_per_s", "torch")})
                row["final_val_loss"] = meta["val_losses"][-1][1] if meta.get("val_losses") else None
        row.update(label=args.label, **score(file, args.workers))
        result["rows"] = [r for r in result["rows"] if r["label"] != args.label] + [row]
    write("moses", result, render(result))


def fmt(v) -> str:
    return "" if v is None else f"{v:.3f}"


def render(result: dict) -> str:
    lines = ["# MOSES distribution learning", "",
             "30,000 samples at temperature 1 per genforge row, scored by `genforge metrics molecules` "
             "(RDKit + fcd-torch) against MOSES test (and test_scaffolds), novelty against MOSES train. "
             "Published rows: Polykovskiy et al. 2020 (MOSES), Table 2.", "",
             "| model | " + " | ".join(COLUMNS) + " |", "| --- |" + " --- |" * len(COLUMNS)]
    for r in result["rows"] + PUBLISHED:
        lines.append(f"| {r['label']} | " + " | ".join(fmt(r.get(k)) for k in COLUMNS) + " |")
    lines += ["", "| model | " + " | ".join(MORE) + " |", "| --- |" + " --- |" * len(MORE)]
    for r in result["rows"]:
        lines.append(f"| {r['label']} | " + " | ".join(fmt(r.get(k)) for k in MORE) + " |")
    lines += ["", "| model | device | training | steps | final val loss (nats/token) | sampling molecules/s | "
                  "metrics wall s (30k) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        budget = f"{r['budget_s']:.0f} s budget" if r.get("budget_s") else ""
        if r.get("train_elapsed_s"):
            budget += f" ({r['train_elapsed_s']:.0f} s in the training loop)"
        lines.append(f"| {r['label']} | {r.get('device', '')} | {budget} | {r.get('steps', '')} | "
                     f"{fmt(r.get('final_val_loss'))} | {r.get('molecules_per_s', 0):.0f} | "
                     f"{r.get('metric_wall_s', 0):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
