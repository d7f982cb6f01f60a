"""RL fine-tuning benchmarks (issue #10): text sentiment, molecule QED under an oracle budget,
DDPO on Fashion-MNIST, the guard rails, and throughput.

Every experiment runs the real CLI (`genforge rl`) on a base run trained earlier and stores
its summary under its key in ``results/rl.json``; ``report`` renders ``results/rl.md``.
Step counts are fixed (not wall-clock budgets), so rewards and KLs do not depend on how
busy the machine was; ``throughput`` times short runs and must run on a quiet machine.

Base runs (not committed; rebuild them with these commands):
- text: ``genforge train gpt-shakespeare-char --run-dir runs/bench-rl/shakespeare-base``
  (4x128 char GPT, 2000 steps, val loss 1.73)
- molecules: the 9- and 25-minute CPU GPT 4x256 runs of ``bench_moses.py train --preset gpt-moses
  --budget-s 540|1500`` (MOSES validity 0.75 / 0.90)
- images: the genforge Fashion-MNIST diffusion model of ``bench_diffusion_vs_diffusers.py``
  (FD 3.85 in the fixed classifier's features)

Usage: GENFORGE_DATA=... python benchmarks/bench_rl.py text|guard|molecules|ddpo|throughput|report
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, machine, run_process, tail

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "bench-rl"
TEXT_BASE = RUNS / "shakespeare-base"
MOL_BASE = ROOT / "runs" / "bench-moses" / "genforge_GPT_4x256_(CPU,_9_min)"
IMAGE_BASE = ROOT / "runs" / "bench-dvd-genforge"
GENFORGE = [sys.executable, "-m", "genforge.cli"]
STORE = RESULTS / "rl.json"


def rows(run: Path) -> list[dict]:
    return [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]


def rl(name: str, base: Path, *args: str) -> tuple[Path, dict]:
    run = RUNS / name
    cmd = [*GENFORGE, "rl", str(base), "--run-dir", str(run), "--overwrite", "--no-progress", *args]
    print(" ".join(cmd[2:]), flush=True)
    proc = run_process(cmd, RUNS / f"{name}.log")
    if proc["returncode"] != 0:
        raise SystemExit(f"{name} failed:\n{tail(RUNS / f'{name}.log')}")
    return run, {"command": "genforge " + " ".join(cmd[3:]), "wall_s": proc["wall_s"],
                 "peak_rss_mib": proc["peak_rss_mib"]}


def summary(run: Path) -> dict:
    """Evaluation curve (step, reward, KL, held-out loss, diversity...), the training-rollout
    curve, and how the run ended."""
    all_rows = rows(run)
    evals = [r for r in all_rows if r.get("split") == "val"]
    train = [r for r in all_rows if "split" not in r and "event" not in r]
    stopped = [r for r in all_rows if r.get("event") == "stopped"]
    keep = lambda r: {k: v for k, v in r.items() if isinstance(v, (int, float)) and k not in ("best",)}  # noqa: E731
    return {"evals": [keep(r) for r in evals], "train": [keep(r) for r in train],
            "stopped": stopped[0]["reason"] if stopped else None, "steps": train[-1]["step"] if train else 0}


def samples(run: Path, n: int, seed: int = 0, checkpoint: str = "latest", extra: tuple = ()) -> str:
    out = subprocess.run([*GENFORGE, "sample", str(run), "--checkpoint", checkpoint, "--num-samples", str(n),
                          "--seed", str(seed), *extra], capture_output=True, text=True, check=True)
    return out.stdout


def _rounded(x):
    """Floats to 5 significant digits: the per-step curves stay, the file stays small."""
    if isinstance(x, float):
        return float(f"{x:.5g}")
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_rounded(v) for v in x]
    return x


def store(key: str, value: dict) -> None:
    data = json.loads(STORE.read_text()) if STORE.is_file() else {}
    data[key] = value
    data["machine"] = machine()
    STORE.write_text(json.dumps(_rounded(data), separators=(",", ":")) + "\n")


# --------------------------------------------------------------------------- experiments

TEXT_COMMON = ["--reward", "sentiment", "--steps", "150", "--lr", "1e-4", "--batch-size", "64",
               "--max-new-tokens", "64"]


def text() -> None:
    """Tiny Shakespeare char GPT -> positive VADER sentiment: a KL sweep (reward-KL curve),
    two other estimators at one KL weight, and 5 samples before and after."""
    out = {"base": str(TEXT_BASE.relative_to(ROOT)), "runs": {}}
    for algo, coef in [("grpo", "0.01"), ("grpo", "0.1"), ("grpo", "0.3"), ("rloo", "0.1"), ("reinforce", "0.1")]:
        name = f"text-{algo}-kl{coef}"
        # one (default) prompt: every baseline is the batch's (--group-size applies to several prompts)
        run, meta = rl(name, TEXT_BASE, *TEXT_COMMON, "--algo", algo, "--kl-coef", coef)
        out["runs"][name] = {**meta, **summary(run)}
    out["samples_before"] = samples(TEXT_BASE, 5, extra=("--max-new-tokens", "120", "--checkpoint", "auto"))
    out["samples_after"] = samples(RUNS / "text-grpo-kl0.1", 5, extra=("--max-new-tokens", "120"))
    out["samples_after_kl0.3"] = samples(RUNS / "text-grpo-kl0.3", 5, extra=("--max-new-tokens", "120"))
    store("text", out)


def guard() -> None:
    """A run that would collapse (no KL, a high LR) is stopped by min_diversity; the same run
    with the REINVENT-style n-gram diversity filter, for comparison."""
    common = ["--reward", "sentiment", "--steps", "150", "--lr", "3e-4", "--kl-coef", "0",
              "--batch-size", "64", "--max-new-tokens", "64"]
    out = {}
    run, meta = rl("guard-stop", TEXT_BASE, *common, "--min-diversity", "0.35", "--guard-patience", "3")
    out["stop"] = {**meta, **summary(run)}
    run, meta = rl("guard-unguarded", TEXT_BASE, *common)
    out["unguarded"] = {**meta, **summary(run)}
    out["unguarded_samples"] = samples(run, 3, extra=("--max-new-tokens", "100"))
    run, meta = rl("guard-filter", TEXT_BASE, *common, "--diversity-filter", "20")
    out["filter"] = {**meta, **summary(run)}
    out["filter_samples"] = samples(run, 3, extra=("--max-new-tokens", "100"))
    store("guard", out)


QED_COMMON = ["--reward", "qed", "--steps", "2000", "--batch-size", "64",
              "--diversity-filter", "25", "--max-oracle-calls", "10000", "--eval-samples", "64",
              "train.eval_every=20"]


def molecules() -> None:
    """QED of the MOSES SMILES GPT with at most 10,000 oracle calls (PMO's budget), then the
    generated set's validity, uniqueness and IntDiv on 1,000 fresh samples."""
    _molecules("molecules", "qed", "--lr", "1e-4", "--kl-coef", "0.01")


def molecules_guarded() -> None:
    """The same, gentler (KL weight 0.05, lr 5e-5) and with the diversity guard rail: stop when
    the rollouts' IntDiv stays under 0.8 for 5 rollouts."""
    _molecules("molecules_guarded", "qed-guarded", "--lr", "5e-5", "--kl-coef", "0.05", "--min-diversity", "0.8",
               "--guard-patience", "5")


def molecules_tight_filter() -> None:
    """A third point: a little faster (lr 7e-5) with a tighter scaffold filter (bucket 10)."""
    common = [a if a != "25" else "10" for a in QED_COMMON]
    _molecules("molecules_tight_filter", "qed-tight-filter", "--lr", "7e-5", "--kl-coef", "0.05",
               "--min-diversity", "0.8", "--guard-patience", "5", common=common)


def molecules_entropy() -> None:
    """A fourth point: the guarded recipe at lr 7e-5 with an entropy bonus (0.01) against the collapse."""
    _molecules("molecules_entropy", "qed-entropy", "--lr", "7e-5", "--kl-coef", "0.05", "--entropy-coef", "0.01",
               "--min-diversity", "0.8", "--guard-patience", "5")


MOL_BASE_25 = ROOT / "runs" / "bench-moses" / "genforge_GPT_4x256_(CPU,_25_min)"


def molecules_strong_base() -> None:
    """The guarded recipe on a better base: the same GPT 4x256 trained 25 CPU minutes."""
    _molecules("molecules_strong_base", "qed-strong-base", "--lr", "5e-5", "--kl-coef", "0.05",
               "--min-diversity", "0.8", "--guard-patience", "5", base=MOL_BASE_25)


def _molecules(key: str, name: str, *args: str, common: list[str] = QED_COMMON, base: Path = MOL_BASE) -> None:
    run, meta = rl(name, base, *common, *args)
    result = {**meta, **summary(run)}
    final = result["train"][-1]
    # PMO's numbers: oracle calls are distinct valid canonical SMILES of training rollouts (the
    # pre-flight and evaluations are free), so top-k ranks distinct canonical molecules.
    result["pmo"] = {k: final.get(k) for k in ("top1", "top10", "top100", "auc_top10", "oracle_calls")}
    oracle = (run / "oracle.csv").read_text().splitlines()[1:]
    result["pmo"]["distinct_in_oracle_csv"] = len({line.split(",")[1] for line in oracle})
    from genforge.rl.diversity import molecule_diversity
    from genforge.rl.rewards import qed

    result["base"] = str(base.relative_to(ROOT))
    for label, source in (("before", base), ("after", run)):
        text_out = samples(source, 1000, seed=1, checkpoint="latest" if label == "after" else "auto")
        smiles = [line.strip() for line in text_out.splitlines() if line.strip() and not line.startswith("---")]
        scores = qed(smiles)
        result[f"set_{label}"] = {**molecule_diversity(smiles), "n": len(smiles),
                                  "mean_qed": sum(scores) / len(scores)}
    store(key, result)


def ddpo() -> None:
    """DDPO on the Fashion-MNIST diffusion model toward one class (the fixed classifier's
    probability of Trouser) and toward JPEG incompressibility."""
    common = ["--algo", "ddpo", "--steps", "40", "--lr", "3e-5", "--batch-size", "32",
              "--sampling-steps", "10", "--timestep-fraction", "0.5", "--kl-coef", "0", "--eval-samples", "256"]
    out = {}
    run, meta = rl("ddpo-trouser", IMAGE_BASE, "--reward", "classifier", "--reward-arg", "target=Trouser", *common)
    out["trouser"] = {**meta, **summary(run)}
    run, meta = rl("ddpo-jpeg", IMAGE_BASE, "--reward", "jpeg_incompressibility", *common)
    out["jpeg"] = {**meta, **summary(run)}
    for name in ("ddpo-trouser", "ddpo-jpeg"):
        subprocess.run([*GENFORGE, "sample", str(RUNS / name), "--checkpoint", "latest", "--num-samples", "64",
                        "--seed", "0", "--sampler", "ddpm", "--sampling-steps", "10",
                        "--out", str(RESULTS / f"rl_{name}.png")], check=True, capture_output=True)
    subprocess.run([*GENFORGE, "sample", str(IMAGE_BASE), "--num-samples", "64", "--seed", "0", "--sampler", "ddpm",
                    "--sampling-steps", "10", "--out", str(RESULTS / "rl_ddpo-base.png")], check=True,
                   capture_output=True)
    store("ddpo", out)


def throughput() -> None:
    """Rollouts/s and updates/s on this machine: short runs, step times from the log (medians;
    steps right after an evaluation are left out). Run on a quiet machine."""
    cases = {
        "text (4x128 char GPT, 64 samples x 64 tokens)": (TEXT_BASE, TEXT_COMMON[:2] + ["--batch-size", "64",
                                                                                         "--max-new-tokens", "64"]),
        "molecules (4x256 SMILES GPT, 64 samples)": (MOL_BASE, ["--reward", "qed", "--batch-size", "64"]),
        "ddpo (2.7M UNet, 32 images x 10 steps, half the steps trained)": (
            IMAGE_BASE, ["--reward", "brightness", "--algo", "ddpo", "--batch-size", "32",
                         "--sampling-steps", "10", "--timestep-fraction", "0.5"]),
    }
    out = {}
    for label, (base, args) in cases.items():
        run, meta = rl("throughput", base, *args, "--steps", "12", "train.eval_every=1000")
        train = [r for r in rows(run) if "split" not in r and "event" not in r]
        batch = int(args[args.index("--batch-size") + 1])
        step_s = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip(train[1:], train[2:], strict=False)]
        rollout_s = statistics.median(r["rollout_s"] for r in train[1:])
        update_s = statistics.median(s - r["rollout_s"] - r["reward_s"] for s, r in zip(step_s, train[2:], strict=True))
        out[label] = {"rollouts_per_s": batch / rollout_s, "updates_per_s": 1 / update_s,
                      "step_s": statistics.median(step_s), "rollout_s": rollout_s, "update_s": update_s}
        print(label, out[label], flush=True)
    store("throughput", out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["text", "guard", "molecules", "molecules_guarded", "molecules_tight_filter",
                                    "molecules_entropy", "molecules_strong_base", "ddpo", "throughput", "report"])
    what = p.parse_args().what
    RUNS.mkdir(parents=True, exist_ok=True)
    if what == "report":
        from rl_report import render

        render(json.loads(STORE.read_text()))
    else:
        globals()[what]()


if __name__ == "__main__":
    main()
