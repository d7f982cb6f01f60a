"""nanoGPT's GPU recipe on Tiny Shakespeare, on one CUDA GPU.

nanoGPT (6 layers, 6 heads, 384 wide, context 256, batch 64, dropout 0.2, 5000
iterations) reaches val loss 1.4697 in about 3 minutes on an A100 (nanoGPT's
README). Goal here: <= 1.47 in under 3 minutes on one H100, with the
`gpt-shakespeare-char-gpu` preset (bf16 autocast, torch.compile, fused AdamW).
Validation loss is over every non-overlapping 256-token window of the held-out 10%.

Usage: GENFORGE_DATA=... python benchmarks/bench_gpu_shakespeare.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write  # noqa: E402


def bf16_peak_tflops(n: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return repeats * 2 * n**3 / (time.perf_counter() - t) / 1e12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--run-dir", default="runs/gpu-shakespeare")
    p.add_argument("--label", default="preset", help="names the result file")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    from genforge.config import load_config
    from genforge.evaluate import evaluate_run
    from genforge.runs import load_run
    from genforge.sampling.text import generate_text
    from genforge.train.trainer import Trainer, build

    # Without a GPU this only smoke-tests the script (use small overrides).
    peak = bf16_peak_tflops() if torch.cuda.is_available() else float("nan")
    cfg, mcfg = load_config("gpt-shakespeare-char-gpu", ["train.log_every=100", *args.overrides])
    t0 = time.perf_counter()
    trainer = Trainer(cfg, *build(cfg, mcfg), Path(args.run_dir), progress=False)
    result = trainer.fit()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    rows = [json.loads(r) for r in (Path(args.run_dir) / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "tokens_per_s" in r]
    # Steady-state time: from the first logged step (compile done) to the end.
    first, last = train_rows[0], train_rows[-1]
    steady_s = last["elapsed_s"] - first["elapsed_s"]
    steady_steps = last["step"] - first["step"]
    tokens_per_step = cfg.train.batch_size * mcfg.block_size
    tps = steady_steps * tokens_per_step / steady_s
    run = load_run(args.run_dir)  # the best-validation checkpoint, as nanoGPT keeps
    ev = evaluate_run(run, progress=False)
    sample = generate_text(run.model, run.tokenizer, ["ROMEO:"], 200, temperature=0.8,
                           generator=torch.Generator(device=run.model.tok_emb.weight.device).manual_seed(0))[0]
    out = {
        "benchmark": "nanoGPT GPU recipe, gpt-shakespeare-char-gpu", "machine": machine(),
        "val_loss_full_split": ev["val_loss"], "bits_per_char": ev["bits_per_char"],
        "trainer_val_loss_last_eval": result.get("loss"), "steps": result["step"],
        "best_checkpoint_step": run.step, "overrides": args.overrides,
        "wall_s_including_compile_and_evals": wall,
        "steady_ms_per_step": 1000 * steady_s / steady_steps, "tokens_per_s": tps,
        "bf16_matmul_peak_tflops": peak,
        "mfu_vs_measured_bf16_peak": trainer.model.flops_per_token() * tps / (peak * 1e12),
        "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0,
        "sample": sample,
        "nanogpt_reference": {"val_loss": 1.4697, "minutes": "about 3 on an A100 (nanoGPT README)"},
    }
    table = "\n".join([
        f"# nanoGPT GPU recipe on {out['machine']['gpu']}", "",
        "| metric | genforge | nanoGPT (A100, its README) |", "|---|---|---|",
        f"| val loss, best checkpoint (step {run.step}) | {ev['val_loss']:.4f} (full held-out split) | 1.4697 |",
        f"| overrides | {' '.join(args.overrides) or 'none'} | |",
        f"| wall time, 5000 steps incl. compile and evals | {wall / 60:.2f} min | ~3 min |",
        f"| steady ms/step | {out['steady_ms_per_step']:.1f} | |",
        f"| tokens/s | {tps:,.0f} | |",
        f"| MFU vs measured bf16 matmul peak ({peak:.0f} TFLOP/s) | {out['mfu_vs_measured_bf16_peak']:.1%} | |",
        f"| peak GPU memory | {out['peak_gpu_memory_gib']:.2f} GiB | |",
    ])
    write(f"gpt_shakespeare_gpu_{args.label}" if torch.cuda.is_available() else "gpt_shakespeare_gpu_smoke",
          out, table)


if __name__ == "__main__":
    main()
