"""torch.profiler over training steps: genforge's trainer step against nanoGPT's loop, op by op.

Both sides train nanoGPT's CPU recipe (4x128, context 64, batch 12, learned positions, no
biases) in this process on the same data:

  genforge  the Trainer's own step (``family.train_step`` through its StepContext: fused AdamW,
            clip only over the limit, gradients set to None), no evaluation, no logging
  nanogpt   nanoGPT's model.py (from ../shared/peers/nanoGPT, read-only, when present) in
            nanoGPT's train.py loop: forward, backward, clip_grad_norm_, AdamW from its own
            ``configure_optimizers`` (per-tensor on the CPU), zero_grad(set_to_none=True)

It prints, per side, the profiled aten ops per step and the top ops by self CPU time with
their call counts. Call counts are exact (they show, e.g., the extra copies a layout makes in
backward); the milliseconds move with machine load, so compare them only within one run.

Usage: GENFORGE_DATA=/path python benchmarks/profile_gpt_ops.py [--steps 30] [--threads 2] [--rows 18]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

HERE = Path(__file__).resolve().parent
PRESET = "gpt-shakespeare-char"
NANOGPT_LAYOUT = ["model.pos_embedding=learned", "train.lr=1e-3"]
BATCH, WARMUP = 12, 5


def profiled(step, steps: int):
    for _ in range(WARMUP):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages()


def report(name: str, table, steps: int, rows: int) -> None:
    total_us = sum(e.self_cpu_time_total for e in table)
    print(f"== {name}: {sum(e.count for e in table) / steps:.0f} profiled ops per step, "
          f"self CPU {total_us / steps / 1000:.1f} ms per step")
    print(f"{'op':<48} {'calls/step':>10} {'self ms/step':>13} {'share':>7}")
    for e in sorted(table, key=lambda e: -e.self_cpu_time_total)[:rows]:
        print(f"{e.key[:48]:<48} {e.count / steps:>10.1f} {e.self_cpu_time_total / steps / 1000:>13.2f} "
              f"{e.self_cpu_time_total / max(total_us, 1):>7.1%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30, help="profiled steps per side (default 30)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    p.add_argument("--rows", type=int, default=18, help="ops listed per side (default 18)")
    args = p.parse_args()
    if args.steps < 1 or args.threads < 1:
        p.error("--steps and --threads must be positive")
    torch.set_num_threads(args.threads)
    from genforge.config import load_config
    from genforge.train.trainer import Trainer, build

    cfg, mcfg = load_config(PRESET, [*NANOGPT_LAYOUT, "train.eval_every=0", "train.plot=false", "train.device=cpu",
                                     f"train.max_steps={args.steps + WARMUP}"])
    model, data = build(cfg, mcfg)
    with tempfile.TemporaryDirectory(prefix="profile-gpt-") as tmp:
        trainer = Trainer(cfg, model, data, Path(tmp) / "run", progress=False)

        def genforge_step():
            trainer.model.train_step([trainer.batches.next()], trainer.ctx)
            trainer.step += 1

        try:
            report("genforge trainer step", profiled(genforge_step, args.steps), args.steps, args.rows)
        finally:
            trainer.close()

    peers = Path(os.environ.get("GENFORGE_PEERS", HERE.parent.parent / "shared" / "peers")) / "nanoGPT"
    if not (peers / "model.py").is_file():
        print(f"nanoGPT side skipped: {peers / 'model.py'} not found")
        return
    sys.path.insert(0, str(peers))
    from model import GPT, GPTConfig  # nanoGPT's own model.py, run unmodified

    c = mcfg
    nano = GPT(GPTConfig(block_size=c.block_size, vocab_size=data.spec.vocab_size, n_layer=c.n_layer,
                         n_head=c.n_head, n_embd=c.n_embd, dropout=0.0, bias=False))
    opt = nano.configure_optimizers(cfg.train.weight_decay, cfg.train.lr, tuple(cfg.train.betas), "cpu")
    n = len(data.train)

    def nanogpt_step():
        b = data.train.get(torch.randint(0, n, (BATCH,)))
        _, loss = nano(b["x"].contiguous(), b["y"].contiguous())  # its loss .view()s the targets
        loss.backward()
        torch.nn.utils.clip_grad_norm_(nano.parameters(), cfg.train.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    report("nanoGPT model.py in its train.py loop", profiled(nanogpt_step, args.steps), args.steps, args.rows)


if __name__ == "__main__":
    main()
