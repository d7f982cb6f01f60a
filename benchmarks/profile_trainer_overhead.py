"""Where genforge's trainer spends time per step that a bare PyTorch loop does not.

At nanoGPT's CPU size (4x128, context 64, batch 12) one step is ~25 ms of compute, so
per-step Python work matters. This script:

1. runs ``Trainer.fit`` for ``--steps`` steps under cProfile (nanoGPT's layout and
   recipe, no evaluation) and prints, per step, the call counts and cumulative time
   of the functions that a bare loop does not call;
2. times the pieces one at a time with ``timeit`` on the trainer's own objects
   (sampler, batch dict, ``.to()``, clipping, LR loop, optimizer step, zero_grad,
   progress bar, metric bookkeeping), each against what a bare loop does instead;
3. times forward+backward of genforge's GPT against nanoGPT's model.py (from
   ../shared/peers/nanoGPT, when present) on the same batch, interleaved.

Call counts are exact; microseconds are medians over many repeats and still move
with machine load, so read them as sizes, not as a benchmark.

Usage: GENFORGE_DATA=/path python benchmarks/profile_trainer_overhead.py [--steps 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import inspect
import io
import os
import pstats
import statistics
import tempfile
import time
import timeit
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PRESET = "gpt-shakespeare-char"
NANOGPT_LAYOUT = ["model.pos_embedding=learned", "train.lr=1e-3"]


def make_trainer(overrides: list[str], run_dir: Path, progress: bool):
    """Build a Trainer under either constructor: (cfg, model_cfg, run_dir) or (cfg, model, data, run_dir)."""
    from genforge.config import load_config
    from genforge.train import trainer as trainer_module

    cfg, mcfg = load_config(PRESET, overrides)
    names = list(inspect.signature(trainer_module.Trainer.__init__).parameters)
    if names[2] in ("model_cfg", "model_config"):
        return trainer_module.Trainer(cfg, mcfg, run_dir, progress=progress)
    # New contract: one small function builds data and model from the config.
    for mod_name in ("genforge.train.trainer", "genforge.train", "genforge.runs", "genforge.build"):
        try:
            mod = __import__(mod_name, fromlist=["_"])
        except ImportError:
            continue
        for fn_name in ("build", "build_run", "build_model_and_data", "build_data_and_model", "build_parts"):
            fn = getattr(mod, fn_name, None)
            if fn is None:
                continue
            built = fn(cfg, mcfg) if len(inspect.signature(fn).parameters) >= 2 else fn(cfg)
            model, data = (built.model, built.data) if hasattr(built, "model") else built
            if not isinstance(model, torch.nn.Module):
                data, model = model, data
            return trainer_module.Trainer(cfg, model, data, run_dir, progress=progress)
    raise SystemExit(f"Trainer takes {names}; adapt make_trainer() to the new builder")


def us(fn, number: int = 200, repeat: int = 7) -> float:
    """Median microseconds per call."""
    fn()
    return 1e6 * statistics.median(timeit.repeat(fn, number=number, repeat=repeat)) / number


def profile_fit(steps: int, progress: bool) -> tuple[object, float, str]:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer([*NANOGPT_LAYOUT, f"train.max_steps={steps}", "train.eval_every=0",
                                f"train.checkpoint_every={10 * steps}"], Path(tmp) / "run", progress)
        prof = cProfile.Profile()
        t = time.perf_counter()
        with contextlib.redirect_stderr(io.StringIO()):
            prof.runcall(trainer.fit)
        wall = time.perf_counter() - t
        out = io.StringIO()
        st = pstats.Stats(prof, stream=out)
        rows = []
        for (file, line, name), (_cc, nc, tt, ct, _) in st.stats.items():
            rows.append((ct, tt, nc, f"{Path(file).name}:{line}({name})"))
        rows.sort(reverse=True)
        lines = [f"{'calls/step':>10} {'cum us/step':>12} {'own us/step':>12}  function"]
        for ct, tt, nc, where in rows[:70]:
            lines.append(f"{nc / steps:10.1f} {1e6 * ct / steps:12.1f} {1e6 * tt / steps:12.1f}  {where}")
        return trainer, wall / steps, "\n".join(lines)


def fit_wall(steps: int, progress: bool) -> float:
    """Median ms/step of Trainer.fit without a profiler (time between batch draws)."""
    from genforge.data import sampler as sampler_module

    stamps: list[float] = []
    draw = sampler_module.EpochSampler.next_batch

    def timed(self):
        stamps.append(time.perf_counter())
        return draw(self)

    sampler_module.EpochSampler.next_batch = timed
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stderr(io.StringIO()):
            make_trainer([*NANOGPT_LAYOUT, f"train.max_steps={steps}", "train.eval_every=0",
                          f"train.checkpoint_every={10 * steps}"], Path(tmp) / "run", progress).fit()
    finally:
        sampler_module.EpochSampler.next_batch = draw
    return 1000 * statistics.median(b - a for a, b in zip(stamps[10:-1], stamps[11:], strict=True))


def pieces(trainer) -> list[tuple[str, float, str]]:
    """(what, microseconds per step, what a bare loop does instead)."""
    import numpy as np
    from tqdm.auto import tqdm

    t, model = trainer, trainer.model
    opt = next(iter(t.optimizers.values()))
    data = t.data.train
    n = len(data)
    rows = []
    sampler = getattr(t, "sampler", None) or t.batches.sampler
    rows.append(("sampler.next_batch()", us(sampler.next_batch, 2000), "torch.randint(0, n, (12,))"))
    rows.append(("  torch.randint(0, n, (12,))", us(lambda: torch.randint(0, n, (12,)), 2000), ""))
    idx = sampler.next_batch()
    rows.append(("data.train.get(idx) -> {'x','y'} views", us(lambda: data.get(idx), 2000), ""))
    mm = data.tokens

    def nano_get():
        ix = torch.randint(len(mm) - 64, (12,))
        x = torch.stack([torch.from_numpy((mm[i:i + 64]).astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy((mm[i + 1:i + 1 + 64]).astype(np.int64)) for i in ix])
        return x, y
    rows.append(("  nanoGPT get_batch (reference)", us(nano_get, 500), ""))
    batch = data.get(idx)
    rows.append(("_to_device(batch) on CPU (dict comp + 2x .to)", us(lambda: t._to_device(batch), 5000), "nothing"))
    rows.append(("  [x.to('cpu', non_blocking=True)] alone", us(lambda: batch["x"].to(t.device, non_blocking=True),
                                                         5000), ""))
    # a backward so that every parameter has a gradient
    model.train()
    loss = model(batch)["loss"]
    loss.backward()
    params = [p for g in opt.param_groups for p in g["params"]]
    rows.append(("params list comp in StepContext.step", us(lambda: [p for g in opt.param_groups for p in g["params"]],
                                                               5000), "model.parameters() generator"))
    grads_keep = [p.grad.clone() for p in params]

    def restore():
        for p, g in zip(params, grads_keep, strict=True):
            p.grad = g.clone()
    rows.append(("clip_grad_norm_(params, 1.0), as the trainer calls it", us(lambda: torch.nn.utils.clip_grad_norm_(params, 1.0),
                                                                      500), "same call"))
    rows.append(("  clip_grad_norm_(model.parameters(), 1.0)",
                 us(lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0), 500), ""))
    rows.append(("  clip_grad_norm_(params, inf) when grad_clip=0",
                 us(lambda: torch.nn.utils.clip_grad_norm_(params, float("inf")), 500), ""))

    def lr_loop():
        if hasattr(t, "lr_factor"):
            scale = t.lr_factor()
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale
        else:
            lr = t.lr()
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
    rows.append(("LR schedule + param_group lr loop", us(lr_loop, 5000), "nanoGPT: same loop"))
    # optimizer variants on a copy so the trainer's state is untouched
    import copy

    for label, kwargs in (("AdamW default .step() (CPU: per-tensor loop, as nanoGPT)", {}),
                          ("AdamW foreach=True .step()", {"foreach": True}), ("AdamW fused=True .step() (CPU)", {"fused": True}),
                          ("AdamW foreach=False .step()", {"foreach": False})):
        m2 = copy.deepcopy(model)
        for p2, g in zip(m2.parameters(), [p.grad for p in model.parameters()], strict=True):
            p2.grad = g.clone()
        try:
            groups = [{"params": [p for p in m2.parameters() if p.dim() >= 2], "weight_decay": 0.1},
                      {"params": [p for p in m2.parameters() if p.dim() < 2], "weight_decay": 0.0}]
            o2 = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), **kwargs)
            rows.append((label, us(o2.step, 50), ""))
        except (RuntimeError, TypeError) as e:
            rows.append((label, float("nan"), f"unavailable: {e}"))
    restore()
    rows.append(("opt.zero_grad(set_to_none=True)", us(lambda: (opt.zero_grad(set_to_none=True), restore())[0], 200)
                 - us(restore, 200), "same call"))
    rows.append(("model.zero_grad(set_to_none=True)", us(lambda: (model.zero_grad(set_to_none=True), restore())[0], 200)
                 - us(restore, 200), "opt.zero_grad"))
    with open(os.devnull, "w") as devnull:
        bar = tqdm(total=10**9, file=devnull, dynamic_ncols=True, unit="step")
        rows.append(("tqdm bar.update(1) (progress on)", us(lambda: bar.update(1), 5000), "nothing / print"))
        bar.close()
    lv = loss.detach()
    rows.append(("train_step: total + loss.detach().float(); / len", us(lambda: (0.0 + lv.float()) / 1, 5000),
                 "nothing"))
    rows.append(("norm.detach() return", us(lambda: lv.detach(), 5000), ""))
    micro = [batch]
    count = t.modality.count if hasattr(t, "modality") else t._items_in
    rows.append(("sum(count(b) for b in micro) * world", us(lambda: sum(count(b) for b in micro) * 1, 5000),
                 "constant"))
    if hasattr(t, "_stop_requested"):
        from genforge.train.trainer import _StopFlag

        flag = _StopFlag()
        rows.append(("_stop_requested(flag) per step", us(lambda: t._stop_requested(flag), 5000), "nothing"))
    rows.append(("float(loss) (sync; done only on log steps)", us(lambda: float(lv), 5000), "loss.item() per step"))
    rows.append(("_check_finite(metrics) (log steps only)", us(lambda: t._check_finite({"loss": lv, "grad_norm": lv}),
                                                               2000), ""))
    if t.ema is not None:
        rows.append(("EMA.update", us(lambda: t.ema.update(model.ema_target()), 100), "nothing"))
    sd = model.state_dict
    rows.append(("(for EMA) model.state_dict()", us(sd, 200), "EMA is off in this preset"))
    return rows


def model_compare(threads: int, repeats: int = 30) -> list[tuple[str, float]]:
    """fwd+bwd ms of genforge's GPT vs nanoGPT's model.py on the same batch, interleaved."""
    peers = Path(os.environ.get("GENFORGE_PEERS", HERE.parent.parent / "shared" / "peers")) / "nanoGPT"
    if not (peers / "model.py").is_file():
        return [("nanoGPT model.py not found; skipped", float("nan"))]
    import importlib.util

    spec = importlib.util.spec_from_file_location("nanogpt_model", peers / "model.py")
    nano = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(io.StringIO()):
        spec.loader.exec_module(nano)
    from genforge.config import load_config
    from genforge.data.spec import DataSpec
    from genforge.families.gpt import GPT

    cfg, mcfg = load_config(PRESET, NANOGPT_LAYOUT)
    torch.manual_seed(0)
    g = GPT(mcfg, DataSpec(modality="text", vocab_size=65, name="x"))
    with contextlib.redirect_stdout(io.StringIO()):
        nm = nano.GPT(nano.GPTConfig(block_size=64, vocab_size=65, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                                     bias=False))
    x = torch.randint(0, 65, (12, 64))
    y = torch.randint(0, 65, (12, 64))
    batch = {"x": x, "y": y}

    def gstep():
        g(batch)["loss"].backward()
        g.zero_grad(set_to_none=True)

    def nstep():
        nm(x, y)[1].backward()
        nm.zero_grad(set_to_none=True)

    def gfwd():
        with torch.no_grad():
            g(batch)

    def nfwd():
        with torch.no_grad():
            nm(x, y)
    out = {k: [] for k in ("genforge fwd+bwd", "nanoGPT fwd+bwd", "genforge fwd (no_grad)", "nanoGPT fwd (no_grad)")}
    for f in (gstep, nstep, gfwd, nfwd):
        for _ in range(3):
            f()
    for _ in range(repeats):
        for k, f in zip(out, (gstep, nstep, gfwd, nfwd), strict=True):
            s = time.perf_counter()
            f()
            out[k].append(1000 * (time.perf_counter() - s))
    return [(k, statistics.median(v)) for k, v in out.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--progress", action="store_true", help="profile with the progress bar on")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    trainer, per_step, table = profile_fit(args.steps, args.progress)
    print(f"# cProfile of Trainer.fit, {args.steps} steps, nanoGPT layout, {args.threads} threads "
          f"(progress bar {'on' if args.progress else 'off'}); {1000 * per_step:.1f} ms/step under the profiler\n")
    print(table)
    print("\n# pieces, median us per call (timeit)\n")
    for what, t, instead in pieces(trainer):
        print(f"{t:10.1f} us  {what}" + (f"   [bare loop: {instead}]" if instead else ""))
    print("\n# model only, median ms per call, interleaved\n")
    for what, t in model_compare(args.threads):
        print(f"{t:10.2f} ms  {what}")
    print("\n# Trainer.fit without profiler, median ms/step (time between batch draws)\n")
    for prog in (False, True):
        print(f"{fit_wall(max(60, args.steps // 2), prog):10.2f} ms  progress bar {'on' if prog else 'off'}")


if __name__ == "__main__":
    main()
