"""genforge's diffusion family beside Hugging Face diffusers, at matched size and batch.

Both sides are a 3-level UNet of widths (32, 64, 128), one residual block per level,
attention at the 7x7 level and in the middle (4 heads of 32), on Fashion-MNIST 28x28, batch
64, fp32, the same intra-op thread count:

  genforge   the ``diffusion-fashion-mnist`` preset: ``nn.unet.UNet`` under EDM
             preconditioning and loss (log-normal noise levels), fused AdamW
  diffusers  ``UNet2DModel`` with the same widths, blocks and heads (``norm_num_groups=16``:
             one group count for every norm, valid for all its widths) + ``DDPMScheduler``
             (1000 linear steps), epsilon prediction, MSE

Parts (``--part speed`` runs 1 and 2, ``--part quality`` runs 3, ``--part all`` runs all three):

1. Training speed, in this process: each side's forward (genforge: the family's forward, its
   EDM loss; diffusers: ``add_noise`` + UNet + epsilon MSE), backward and AdamW step
   (genforge: fused, as its trainer does; diffusers: torch's default AdamW, as its example
   does) on the same real batches. No clipping, EMA or LR schedule here. ``--repeats``
   rounds in alternation (genforge, diffusers, genforge, ...), each ``--warmup-steps`` then
   ``--speed-steps`` timed steps. Forward+backward and optimizer time are also timed apart.
2. Sampling speed: DDIM, ``--ddim-steps`` (50) steps, deterministic, batch 64, eval mode, no
   grad. diffusers: ``DDIMScheduler.set_timesteps`` and a loop of ``unet(x, t).sample`` +
   ``scheduler.step``; genforge: ``model.sample(64, g, sampler="ddim", schedule="linear")``.
   Alternating rounds, after one untimed warm-up call per side.
3. Quality at an equal wall-clock budget (``--budget-s`` per side), each with its own recipe:
   genforge runs its real CLI, ``genforge train diffusion-fashion-mnist
   train.max_steps=N``, in a subprocess; diffusers runs the recipe of diffusers'
   ``examples/unconditional_image_generation/train_unconditional.py`` (its defaults: AdamW
   lr 1e-4, betas (0.95, 0.999), weight decay 1e-6, eps 1e-8; cosine LR after 500 warm-up
   steps; gradient clip 1.0; ``EMAModel`` decay 0.9999 with warm-up, inv_gamma 1, power 3/4;
   ``DDPMScheduler(1000)`` linear, epsilon; random flips off here, as genforge's preset has
   none) in our own loop, in a subprocess. Each side's step count comes from its own
   ``--probe-steps`` probe (steps/s over the steps after the first 10, times the budget), so
   that each LR schedule completes; a run still going at 1.15x the budget gets SIGTERM
   (genforge checkpoints and stops; the diffusers loop stops and saves). Then
   ``--quality-samples`` images from the EMA weights of each: diffusers with DDIM-50,
   genforge with its preset default (DPM-Solver++(2M), 20 steps, Karras) and with DDIM-50 too,
   all scored by ``genforge.metrics.evaluate_images.image_report`` against the test split,
   with the floors it measures in the same call. 64-image grids go beside the results.

Speeds are medians over rounds; ratios are the medians of per-round ratios, measured in
the same run, so each compares two measurements that saw the same machine load.

Usage (GENFORGE_DATA must hold fashion-mnist/*.gz; the full run takes about 30 minutes on
2 cores, most of it the two 600 s trainings and sampling 3 x 1000 images):
  python benchmarks/bench_diffusion_vs_diffusers.py [--part all] [--budget-s 600]
      [--quality-samples 1000] [--repeats 3] [--threads 2]
      [--out benchmarks/results/diffusion_vs_diffusers]
A quick end-to-end check that leaves the committed results alone:
  python benchmarks/bench_diffusion_vs_diffusers.py --part all --budget-s 20 --quality-samples 100 \\
      --repeats 1 --speed-steps 3 --warmup-steps 1 --probe-steps 20 --out /tmp/dvd/smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import RESULTS, machine, run_process, tail, thread_env, write  # noqa: E402

PRESET = "diffusion-fashion-mnist"
BATCH = 64
SKIP = 10  # probe steps left out of the steps/s estimate (genforge logs every 10 steps)
OVERRUN = 1.15  # a training run still going at OVERRUN x budget gets SIGTERM
SAMPLE_CHUNK = 250  # images per sampling call in part 3 (as `genforge eval`)
DIFFUSERS_UNET = {
    "sample_size": 28, "in_channels": 1, "out_channels": 1, "block_out_channels": (32, 64, 128),
    "layers_per_block": 1, "down_block_types": ("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
    "up_block_types": ("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), "attention_head_dim": 32,
    "norm_num_groups": 16,
}
# diffusers' examples/unconditional_image_generation/train_unconditional.py, argument defaults
# (https://github.com/huggingface/diffusers/blob/main/examples/unconditional_image_generation/
# train_unconditional.py). Only the numbers are taken; the loop below is our own.
DIFFUSERS_RECIPE = {
    "lr": 1e-4, "betas": (0.95, 0.999), "weight_decay": 1e-6, "eps": 1e-8, "lr_scheduler": "cosine",
    "lr_warmup_steps": 500, "grad_clip": 1.0, "ema_max_decay": 0.9999, "ema_inv_gamma": 1.0,
    "ema_power": 0.75, "train_timesteps": 1000, "beta_schedule": "linear", "prediction_type": "epsilon",
    "random_flip": False,
}


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def diffusers_unet(seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(**DIFFUSERS_UNET)


def genforge_model():
    """The preset's config, model and data (``build`` seeds the initial weights from the preset)."""
    from genforge.config import load_config
    from genforge.train.trainer import build

    cfg, mcfg = load_config(PRESET, [])
    model, data = build(cfg, mcfg)
    return cfg, model, data


# ----------------------------------------------------------------------------- sampling
@torch.no_grad()
def diffusers_ddim(unet, n: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 1, 28, 28) in [0, 1]: DDIM (eta 0) with diffusers' scheduler at its defaults, which
    match the DDPMScheduler(1000) the model is trained with (linear betas, epsilon)."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=DIFFUSERS_RECIPE["train_timesteps"])
    sched.set_timesteps(steps)
    x = torch.randn((n, 1, 28, 28), generator=generator)
    for t in sched.timesteps:
        x = sched.step(unet(x, t).sample, t, x).prev_sample
    return (x / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def genforge_ddim(model, n: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    return model.sample(n, generator, sampler="ddim", sampling_steps=steps, schedule="linear").clamp(0, 1)


def draw(fn, n: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    """``n`` images from ``fn(m, generator)`` in chunks of SAMPLE_CHUNK, one generator; and seconds."""
    g = torch.Generator().manual_seed(seed)
    t = time.perf_counter()
    out = [fn(min(SAMPLE_CHUNK, n - s), g).float().cpu() for s in range(0, n, SAMPLE_CHUNK)]
    return torch.cat(out), time.perf_counter() - t


# ----------------------------------------------------------------------------- part 1 and 2
def speed(args) -> dict:
    from diffusers import DDPMScheduler

    cfg, gf, data = genforge_model()
    df = diffusers_unet()
    noise_sched = DDPMScheduler(num_train_timesteps=DIFFUSERS_RECIPE["train_timesteps"])
    gf_opt = torch.optim.AdamW(gf.parameters(), lr=cfg.train.lr, betas=cfg.train.betas,
                               weight_decay=cfg.train.weight_decay, fused=True)
    df_opt = torch.optim.AdamW(df.parameters(), lr=DIFFUSERS_RECIPE["lr"], betas=DIFFUSERS_RECIPE["betas"],
                               weight_decay=DIFFUSERS_RECIPE["weight_decay"], eps=DIFFUSERS_RECIPE["eps"])
    g = torch.Generator().manual_seed(0)
    per_round = args.warmup_steps + args.speed_steps
    batches = [data.train.get(torch.randint(0, len(data.train), (BATCH,), generator=g))["x"]
               for _ in range(per_round)]  # (B, 1, 28, 28) in [0, 1], the same for both sides
    df_g = torch.Generator().manual_seed(1)

    def gf_step(x):
        t0 = time.perf_counter()
        gf({"x": x})["loss"].backward()  # the family's forward: EDM loss, [0, 1] -> [-1, 1] inside
        t1 = time.perf_counter()
        gf_opt.step()
        gf_opt.zero_grad(set_to_none=True)
        return t1 - t0, time.perf_counter() - t1

    def df_step(x):
        t0 = time.perf_counter()
        x0 = x * 2 - 1  # the example's Normalize([0.5], [0.5])
        noise = torch.randn(x0.shape, generator=df_g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (x0.shape[0],), generator=df_g)
        F.mse_loss(df(noise_sched.add_noise(x0, noise, t), t).sample, noise).backward()
        t1 = time.perf_counter()
        df_opt.step()
        df_opt.zero_grad(set_to_none=True)
        return t1 - t0, time.perf_counter() - t1

    def train_round(step) -> dict:
        for x in batches[: args.warmup_steps]:
            step(x)
        parts = []
        t = time.perf_counter()
        for x in batches[args.warmup_steps:]:
            parts.append(step(x))
        wall = time.perf_counter() - t
        return {"steps_per_s": args.speed_steps / wall, "ms_per_step": 1000 * wall / args.speed_steps,
                "fwd_bwd_ms": 1000 * statistics.median(a for a, _ in parts),
                "optimizer_ms": 1000 * statistics.median(b for _, b in parts)}

    train_rounds = []
    gf.train()
    df.train()
    for i in range(args.repeats):
        rnd = {"genforge": train_round(gf_step), "diffusers": train_round(df_step)}
        train_rounds.append(rnd)
        print(f"train round {i + 1}: genforge {rnd['genforge']['steps_per_s']:.2f} steps/s, "
              f"diffusers {rnd['diffusers']['steps_per_s']:.2f} steps/s", file=sys.stderr, flush=True)

    gf.eval()
    df.eval()
    steps = args.ddim_steps
    samplers = {"genforge": lambda g: genforge_ddim(gf, BATCH, steps, g),
                "diffusers": lambda g: diffusers_ddim(df, BATCH, steps, g)}
    for name in samplers:  # untimed warm-up call of each, few steps
        (genforge_ddim(gf, 8, 2, torch.Generator().manual_seed(0)) if name == "genforge"
         else diffusers_ddim(df, 8, 2, torch.Generator().manual_seed(0)))
    sample_rounds = []
    for i in range(args.repeats):
        rnd = {}
        for name, fn in samplers.items():
            t = time.perf_counter()
            fn(torch.Generator().manual_seed(i))
            wall = time.perf_counter() - t
            rnd[name] = {"images_per_s": BATCH / wall, "s_per_batch": wall}
        sample_rounds.append(rnd)
        print(f"sample round {i + 1}: genforge {rnd['genforge']['images_per_s']:.1f} images/s, "
              f"diffusers {rnd['diffusers']['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)

    def med(rounds, side, key):
        return statistics.median(r[side][key] for r in rounds)

    def ratio(rounds, key, invert=False):
        each = [(r["diffusers"][key] / r["genforge"][key]) if invert else (r["genforge"][key] / r["diffusers"][key])
                for r in rounds]
        return {"median": statistics.median(each), "each": each}

    sides = {}
    for side, model in (("genforge", gf), ("diffusers", df)):
        sides[side] = {"params": count_params(model),
                       "train_steps_per_s": med(train_rounds, side, "steps_per_s"),
                       "train_ms_per_step": med(train_rounds, side, "ms_per_step"),
                       "train_fwd_bwd_ms": med(train_rounds, side, "fwd_bwd_ms"),
                       "train_optimizer_ms": med(train_rounds, side, "optimizer_ms"),
                       "ddim_images_per_s": med(sample_rounds, side, "images_per_s")}
    sides["genforge"]["optimizer"] = "torch AdamW, fused=True (as genforge's trainer)"
    sides["diffusers"]["optimizer"] = "torch AdamW, default implementation (as diffusers' example)"
    return {"sides": sides, "train_rounds": train_rounds, "sample_rounds": sample_rounds,
            "ratios": {"train_steps_per_s": ratio(train_rounds, "steps_per_s"),
                       "train_fwd_bwd": ratio(train_rounds, "fwd_bwd_ms", invert=True),
                       "ddim_images_per_s": ratio(sample_rounds, "images_per_s")}}


# ----------------------------------------------------------------------------- part 3 worker
def worker_diffusers(out: str, settings: str) -> dict:
    """Train the diffusers UNet with train_unconditional.py's recipe for ``steps`` steps (or until
    SIGTERM); save the EMA weights to ``state`` unless probing. Runs in its own process."""
    s = json.loads(settings)
    stop: dict = {"signum": None}
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.update(signum=signum))
    torch.set_num_threads(int(s["threads"]))
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from genforge.config import load_config
    from genforge.data.images import load_images

    r = DIFFUSERS_RECIPE
    cfg, _ = load_config(PRESET, [])
    train = load_images(cfg.data).train  # the same training split genforge trains on
    unet = diffusers_unet(s["seed"])
    noise_sched = DDPMScheduler(num_train_timesteps=r["train_timesteps"], beta_schedule=r["beta_schedule"],
                                prediction_type=r["prediction_type"])
    opt = torch.optim.AdamW(unet.parameters(), lr=r["lr"], betas=r["betas"], weight_decay=r["weight_decay"],
                            eps=r["eps"])
    steps = int(s["steps"])
    lr_sched = get_scheduler(r["lr_scheduler"], optimizer=opt, num_warmup_steps=r["lr_warmup_steps"],
                             num_training_steps=steps)
    ema = EMAModel(unet.parameters(), decay=r["ema_max_decay"], use_ema_warmup=True,
                   inv_gamma=r["ema_inv_gamma"], power=r["ema_power"])
    g = torch.Generator().manual_seed(s["seed"])
    order, pos = torch.randperm(len(train), generator=g), 0
    losses, stamps = [], [time.perf_counter()]
    unet.train()
    for _ in range(steps):
        if stop["signum"] is not None:
            break
        if pos + BATCH > len(order):  # a new epoch, reshuffled (full batches only)
            order, pos = torch.randperm(len(train), generator=g), 0
        x0 = train.get(order[pos:pos + BATCH])["x"] * 2 - 1
        pos += BATCH
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, r["train_timesteps"], (BATCH,), generator=g)
        loss = F.mse_loss(unet(noise_sched.add_noise(x0, noise, t), t).sample.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), r["grad_clip"])
        opt.step()
        lr_sched.step()
        ema.step(unet.parameters())
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        stamps.append(time.perf_counter())
    done = len(stamps) - 1
    rate = (done - SKIP) / (stamps[done] - stamps[SKIP]) if done > SKIP else None
    result = {"steps_planned": steps, "steps_done": done, "loop_s": stamps[-1] - stamps[0],
              "steps_per_s_after_first_10": rate, "stopped_by_signal": stop["signum"] is not None,
              "final_loss_last10": float(torch.stack(losses[-10:]).mean()) if losses else None,
              "final_lr": lr_sched.get_last_lr()[0], "final_ema_decay": getattr(ema, "cur_decay_value", None),
              "threads": torch.get_num_threads()}
    if s.get("state"):
        ema.copy_to(unet.parameters())
        torch.save(unet.state_dict(), s["state"])
    return result


WORKERS = {"diffusers": worker_diffusers}


# ----------------------------------------------------------------------------- part 3 driver
def run_limited(cmd: list[str], log: Path, env: dict[str, str], limit_s: float) -> dict:
    """``run_process`` with a deadline: SIGTERM at ``limit_s`` seconds (the process then stops
    itself cleanly: genforge checkpoints, the diffusers worker saves)."""
    with open(log, "w") as out:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        fired = threading.Event()

        def term():
            fired.set()
            proc.send_signal(signal.SIGTERM)

        timer = threading.Timer(limit_s, term)
        timer.start()
        try:
            returncode = proc.wait()
        finally:
            timer.cancel()
        wall = time.perf_counter() - t
    return {"returncode": returncode, "wall_s": wall, "sigterm_sent": fired.is_set()}


def genforge_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "genforge", *args]


def metrics_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(r) for r in path.read_text().splitlines() if r.strip()] if path.is_file() else []


def genforge_rate(run_dir: Path) -> float:
    """Steps/s between the first logged step >= SKIP and the last (the trainer logs every 10)."""
    rows = [r for r in metrics_rows(run_dir) if "elapsed_s" in r and r["step"] >= SKIP]
    if len(rows) < 2:
        raise SystemExit(f"genforge probe in {run_dir} logged too few steps; raise --probe-steps")
    return (rows[-1]["step"] - rows[0]["step"]) / (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"])


def diffusers_worker(tmp: Path, env: dict, name: str, settings: dict, limit_s: float) -> dict:
    out, log = tmp / f"{name}.json", tmp / f"{name}.log"
    cmd = [sys.executable, __file__, "worker", "diffusers", str(out), json.dumps(settings)]
    proc = run_limited(cmd, log, env, limit_s)
    if proc["returncode"] != 0 or not out.is_file():
        raise SystemExit(f"diffusers worker {name} failed (exit {proc['returncode']}):\n{tail(log)}")
    # No peak RSS: a child forked from this (large) process inherits its high-water mark.
    return {**json.loads(out.read_text()), "process_wall_s": proc["wall_s"], "sigterm_sent": proc["sigterm_sent"]}


SCORE_KEYS = ("fd", "kid", "kid_se", "precision", "recall", "density", "coverage", "class_entropy_norm",
              "floor_fd_train_test", "floor_kid_train_test", "floor_fd_noise", "samples", "extractor_version")


def quality(args, tmp: Path, out: Path) -> dict:
    from diffusers import UNet2DModel

    from genforge.config import load_config
    from genforge.data.grids import save_grid
    from genforge.data.images import load_images
    from genforge.metrics.evaluate_images import image_report
    from genforge.metrics.extractor import load_extractor
    from genforge.runs import load_run

    env = thread_env(args.threads)
    budget = args.budget_s
    res: dict = {"budget_s": budget, "overrun_limit_s": OVERRUN * budget}

    # genforge: probe, then the real CLI for budget x probe rate steps.
    probe_dir = tmp / "genforge-probe"
    cmd = genforge_cli("train", PRESET, f"train.max_steps={args.probe_steps}", "train.eval_every=0",
                       "train.plot=false", "--run-dir", str(probe_dir), "--no-progress")
    p = run_process(cmd, tmp / "genforge-probe.log", env=env)
    if p["returncode"] != 0:
        raise SystemExit(f"genforge probe failed:\n{tail(tmp / 'genforge-probe.log')}")
    gf_rate = genforge_rate(probe_dir)
    gf_steps = max(1, math.floor(budget * gf_rate))
    print(f"genforge probe: {gf_rate:.2f} steps/s -> {gf_steps} steps", file=sys.stderr, flush=True)
    run_dir = tmp / "genforge-run"
    cmd = genforge_cli("train", PRESET, f"train.max_steps={gf_steps}", "--run-dir", str(run_dir), "--no-progress")
    gf_proc = run_limited(cmd, tmp / "genforge-train.log", env, OVERRUN * budget)
    if gf_proc["returncode"] not in (0, 128 + signal.SIGTERM):
        raise SystemExit(f"genforge train failed (exit {gf_proc['returncode']}):\n{tail(tmp / 'genforge-train.log')}")
    rows = [r for r in metrics_rows(run_dir) if "elapsed_s" in r]
    if args.keep_run:  # e.g. for bench_image_families.py --diffusion-run
        import shutil

        shutil.copytree(run_dir, args.keep_run, dirs_exist_ok=True)
    run = load_run(run_dir, checkpoint="latest")  # EMA weights, as `genforge sample` uses
    cfg, mcfg = load_config(PRESET, [])
    res["genforge"] = {
        "probe_steps_per_s": gf_rate, "steps_planned": gf_steps, "steps_done": int(run.step),
        "train_process_wall_s": gf_proc["wall_s"], "train_loop_s_last_log": rows[-1]["elapsed_s"] if rows else None,
        "stopped_by_sigterm": gf_proc["sigterm_sent"],
        "ema_weights": bool(run.used_ema), "command": " ".join(cmd[2:]).replace(str(run_dir), "RUN_DIR"),
        "recipe": {"lr": cfg.train.lr, "min_lr": cfg.train.min_lr, "lr_schedule": cfg.train.lr_schedule,
                   "warmup_steps": cfg.train.warmup_steps, "betas": cfg.train.betas,
                   "weight_decay": cfg.train.weight_decay, "grad_clip": cfg.train.grad_clip,
                   "ema_decay": cfg.train.ema_decay, "eval_every": cfg.train.eval_every,
                   "parameterization": mcfg.parameterization, "training_noise": mcfg.training_noise},
        "final_train_loss": rows[-1].get("loss") if rows else None,
    }
    print(f"genforge trained {run.step} steps in {gf_proc['wall_s']:.0f} s", file=sys.stderr, flush=True)

    # diffusers: probe, then train for budget x probe rate steps.
    base = {"threads": args.threads, "seed": 0}
    probe = diffusers_worker(tmp, env, "diffusers-probe", {**base, "steps": args.probe_steps}, 10 * budget + 600)
    df_rate = probe["steps_per_s_after_first_10"]
    df_steps = max(1, math.floor(budget * df_rate))
    print(f"diffusers probe: {df_rate:.2f} steps/s -> {df_steps} steps", file=sys.stderr, flush=True)
    state = tmp / "diffusers-ema.pt"
    df_run = diffusers_worker(tmp, env, "diffusers-train", {**base, "steps": df_steps, "state": str(state)},
                              OVERRUN * budget)
    res["diffusers"] = {"probe_steps_per_s": df_rate, "steps_planned": df_steps, "steps_done": df_run["steps_done"],
                        "train_process_wall_s": df_run["process_wall_s"], "train_loop_s": df_run["loop_s"],
                        "stopped_by_sigterm": df_run["sigterm_sent"],
                        "ema_weights": True, "final_train_loss": df_run["final_loss_last10"],
                        "final_lr": df_run["final_lr"], "final_ema_decay": df_run["final_ema_decay"],
                        "recipe": DIFFUSERS_RECIPE}
    print(f"diffusers trained {df_run['steps_done']} steps in {df_run['process_wall_s']:.0f} s",
          file=sys.stderr, flush=True)

    # Sample and score, all in this process, the same way for every set.
    data = load_images(cfg.data)  # the preset's splits: what `genforge eval` of the run scores against
    extractor = load_extractor(data)
    unet = UNet2DModel(**DIFFUSERS_UNET)
    unet.load_state_dict(torch.load(state, map_location="cpu", weights_only=True))
    unet.eval()
    gf_model = run.model.eval()
    k = args.quality_samples
    c = gf_model.config
    sets = {
        "genforge": (f"{c.sampler} {c.sampling_steps} steps, {c.schedule} schedule (preset default)",
                     lambda m, g: gf_model.sample(m, g).clamp(0, 1)),
        "genforge-ddim": (f"ddim {args.ddim_steps} steps, linear schedule",
                          lambda m, g: genforge_ddim(gf_model, m, args.ddim_steps, g)),
        "diffusers": (f"diffusers DDIMScheduler, {args.ddim_steps} steps (eta 0)",
                      lambda m, g: diffusers_ddim(unet, m, args.ddim_steps, g)),
    }
    res["scores"] = {}
    for name, (label, fn) in sets.items():
        images, secs = draw(fn, k, seed=0)
        rep = image_report(images, data, extractor, seed=0)
        grid = out.parent / f"{out.name}_{name}.png"
        save_grid(images[:64], grid, data.spec, nrow=8)
        res["scores"][name] = {"sampler": label, "sampling_s": secs, "images_per_s": k / secs, "grid": grid.name,
                               **{key: rep[key] for key in SCORE_KEYS if key in rep}}
        print(f"{name} ({label}): FD {rep['fd']:.2f}, KID {rep['kid']:.4f}", file=sys.stderr, flush=True)
    return res


# ----------------------------------------------------------------------------- report
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return machine()["cpu"]


def f(v, fmt: str) -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else ""


def render(res: dict) -> str:
    s, sp, q = res["settings"], res.get("speed"), res.get("quality")
    m = res["machine"]
    lines = [f"# genforge diffusion vs Hugging Face diffusers, Fashion-MNIST 28x28, batch {BATCH}", "",
             f"{res['date']}; {m['cpu_model']}, {s['threads']} threads; torch {m['torch']}, "
             f"diffusers {res['diffusers_version']}, genforge {res['genforge_version']}. "
             f"Command: `{res['command']}`.", ""]
    params = {side: (sp["sides"][side]["params"] if sp else res["params"][side]) for side in ("genforge", "diffusers")}
    lines += [f"| side | params | train steps/s | DDIM-{s['ddim_steps']} images/s | steps in budget (planned), wall s | sampler "
              "| FD | KID | precision | recall | coverage |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = [("genforge", "genforge"), ("genforge", "genforge-ddim"), ("diffusers", "diffusers")]
    for side, key in rows:
        spd = sp["sides"][side] if sp else {}
        run = q[side] if q else {}
        sc = q["scores"][key] if q else {}
        steps = (f"{run['steps_done']:,} ({run['steps_planned']:,}), {run['train_process_wall_s']:.0f}"
                 + (" (SIGTERM)" if run.get("stopped_by_sigterm") else "")) if run else ""
        lines.append(f"| {side} | {params[side]:,} | {f(spd.get('train_steps_per_s'), '.2f')} | "
                     f"{f(spd.get('ddim_images_per_s'), '.1f')} | {steps} | {sc.get('sampler', '')} | "
                     f"{f(sc.get('fd'), '.2f')} | {f(sc.get('kid'), '.4f')} | {f(sc.get('precision'), '.3f')} | "
                     f"{f(sc.get('recall'), '.3f')} | {f(sc.get('coverage'), '.3f')} |")
    lines += [""]
    p_ratio = params["genforge"] / params["diffusers"]
    lines.append(f"- Parameters: genforge {params['genforge']:,}, diffusers {params['diffusers']:,} "
                 f"({p_ratio:.3f}x){'' if abs(p_ratio - 1) <= 0.2 else ' -- MORE THAN 20% APART'}.")
    goals = []
    if sp:
        r = sp["ratios"]

        def each(v):
            return ", ".join(f"{x:.2f}" for x in v["each"])

        lines.append(f"- Training steps/s, genforge / diffusers: **{r['train_steps_per_s']['median']:.2f}x** "
                     f"(per round {each(r['train_steps_per_s'])}; {s['speed_steps']} timed steps after "
                     f"{s['warmup_steps']} warm-up, {s['repeats']} alternating rounds). Forward+backward alone: "
                     f"{r['train_fwd_bwd']['median']:.2f}x (ms {sp['sides']['genforge']['train_fwd_bwd_ms']:.0f} vs "
                     f"{sp['sides']['diffusers']['train_fwd_bwd_ms']:.0f}); optimizer step ms "
                     f"{sp['sides']['genforge']['train_optimizer_ms']:.1f} (fused AdamW) vs "
                     f"{sp['sides']['diffusers']['train_optimizer_ms']:.1f} (default AdamW).")
        lines.append(f"- DDIM-{s['ddim_steps']} images/s at batch {BATCH}, genforge / diffusers: "
                     f"**{r['ddim_images_per_s']['median']:.2f}x** (per round {each(r['ddim_images_per_s'])}).")
        goals.append(f"train steps/s >= 1.0x: {'met' if r['train_steps_per_s']['median'] >= 1 else 'NOT met'} "
                     f"({r['train_steps_per_s']['median']:.2f}x)")
        goals.append(f"DDIM-{s['ddim_steps']} images/s >= 1.0x: "
                     f"{'met' if r['ddim_images_per_s']['median'] >= 1 else 'NOT met'} "
                     f"({r['ddim_images_per_s']['median']:.2f}x)")
    if q:
        sc = q["scores"]
        d_fd = sc["diffusers"]["fd"]
        for key in ("genforge", "genforge-ddim"):
            goals.append(f"FD <= half of diffusers' ({sc[key]['sampler']}): "
                         f"{'met' if sc[key]['fd'] <= d_fd / 2 else 'NOT met'} "
                         f"({sc[key]['fd']:.2f} vs {d_fd:.2f}, {sc[key]['fd'] / d_fd:.2f}x)")
        fl = sc["diffusers"]
        lines.append(f"- Quality: {q['budget_s']:.0f} s of wall clock per side, {sc['diffusers']['samples']} samples "
                     f"each vs as many test images. Floors from the same call: FD train-vs-test "
                     f"{fl['floor_fd_train_test']:.2f} (the best possible at this sample size), uniform noise "
                     f"{fl['floor_fd_noise']:.2f}; KID train-vs-test {fl['floor_kid_train_test']:.4f}.")
        g, d = q["genforge"], q["diffusers"]
        lines.append(f"- Steps in the budget come from each side's own {s['probe_steps']}-step probe "
                     f"(genforge {g['probe_steps_per_s']:.2f} steps/s, diffusers {d['probe_steps_per_s']:.2f} "
                     f"steps/s) x budget, so each LR schedule completes. Wall s is the whole training "
                     f"process (start-up, data, genforge's evaluations and previews every "
                     f"{g['recipe']['eval_every']} steps and checkpoints included); SIGTERM at "
                     f"{OVERRUN:.2f}x the budget.")
        lines.append(f"- genforge recipe: the preset (EDM, lr {g['recipe']['lr']:g} {g['recipe']['lr_schedule']} to "
                     f"{g['recipe']['min_lr']:g} after {g['recipe']['warmup_steps']} warm-up steps, betas "
                     f"{tuple(g['recipe']['betas'])}, clip {g['recipe']['grad_clip']:g}, EMA "
                     f"{g['recipe']['ema_decay']:g}), `genforge train {PRESET} train.max_steps=N`. diffusers "
                     f"recipe: train_unconditional.py's defaults (lr 1e-4 cosine after 500 warm-up steps, "
                     f"betas (0.95, 0.999), wd 1e-6, clip 1, EMAModel 0.9999 with warm-up, power 3/4; DDPM 1000 "
                     f"linear, epsilon), no flips; final EMA decay {f(d['final_ema_decay'], '.4f')}.")
        lines.append("- Sampling the trained models, images/s: " + ", ".join(
            f"{k} {v['images_per_s']:.1f}" for k, v in sc.items()) + f" (chunks of {SAMPLE_CHUNK}).")
        lines.append("- Grids (64 samples): " + ", ".join(f"`{v['grid']}`" for v in sc.values()) + ".")
    lines += ["", "Goals (issue): genforge >= 1.0x diffusers on training steps/s and on DDIM-50 images/s; "
              "FD at most half of the diffusers run's.", ""]
    lines += [f"- {x}" for x in goals]
    lines += ["", "Notes:", "",
              "- Same widths (32, 64, 128), one block per level (decoder two), attention at 7x7 and in the "
              "middle with 4 heads of 32, time embedding 128 wide, on both sides. They differ in detail: genforge "
              "conditions by scale-shift group norm and picks group counts per width (16 for 32 channels, else "
              "32); diffusers adds the time embedding and uses norm_num_groups=16 everywhere; its attention "
              "has separate q/k/v projections.",
              "- Part 1 times the network, loss and optimizer only (no clip, EMA, LR schedule); each side uses "
              "its own optimizer implementation (genforge fused AdamW as its trainer, diffusers torch's default "
              "as its example), so the forward+backward ratio is the network-only comparison.",
              "- genforge's DDIM runs on its EDM-trained network with the linear VP schedule's timesteps "
              "(trailing spacing, clipped to sigma 80); diffusers' DDIMScheduler uses its default leading "
              "spacing with clip_sample. Both make one network evaluation per step.",
              "- One 2-core machine, shared: read speed ratios to within about 5%."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("speed", "quality", "all"), default="all",
                   help="speed: training and sampling speed; quality: equal-budget FD etc.; all (default)")
    p.add_argument("--budget-s", type=float, default=600.0, help="wall-clock training budget per side (default 600)")
    p.add_argument("--quality-samples", type=int, default=1000, help="images per side scored (default 1000)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds of the speed parts (default 3)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every side (default 2)")
    p.add_argument("--speed-steps", type=int, default=20, help="timed training steps per side per round (default 20)")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps before them (default 3)")
    p.add_argument("--ddim-steps", type=int, default=50, help="DDIM steps, speed and quality parts (default 50)")
    p.add_argument("--probe-steps", type=int, default=30,
                   help=f"steps of each side's speed probe before the budgeted run (default 30; > {SKIP + 1})")
    p.add_argument("--out", type=Path, default=RESULTS / "diffusion_vs_diffusers",
                   help="write OUT.json, OUT.md and OUT_*.png (default benchmarks/results/diffusion_vs_diffusers)")
    p.add_argument("--keep-run", type=Path, help="copy the budgeted genforge run directory here")
    args = p.parse_args()
    if args.probe_steps <= SKIP + 1:
        p.error(f"--probe-steps must exceed {SKIP + 1}")
    if min(args.repeats, args.speed_steps, args.ddim_steps) < 1 or args.warmup_steps < 0:
        p.error("--repeats, --speed-steps and --ddim-steps must be at least 1")
    if not os.environ.get("GENFORGE_DATA"):
        print("warning: GENFORGE_DATA is not set; genforge will look for Fashion-MNIST in its default "
              "place", file=sys.stderr)
    torch.set_num_threads(args.threads)

    import diffusers

    import genforge

    result: dict = {
        "benchmark": "genforge diffusion vs diffusers UNet2DModel, Fashion-MNIST 28x28",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/bench_diffusion_vs_diffusers.py " + " ".join(sys.argv[1:]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {**machine(), "cpu_model": cpu_model(), "threads": args.threads},
        "diffusers_version": diffusers.__version__, "genforge_version": genforge.__version__,
        "diffusers_unet": DIFFUSERS_UNET, "preset": PRESET, "batch": BATCH,
    }
    _, gf, _ = genforge_model()
    result["params"] = {"genforge": count_params(gf), "diffusers": count_params(diffusers_unet())}
    del gf
    if args.part in ("speed", "all"):
        result["speed"] = speed(args)
    if args.part in ("quality", "all"):
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="bench-dvd-") as tmp:
            result["quality"] = quality(args, Path(tmp), args.out)
    write(args.out.name, result, render(result), folder=args.out.parent)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        kind, out, *rest = sys.argv[2:]
        Path(out).write_text(json.dumps(WORKERS[kind](out, *rest)))
    else:
        main()
