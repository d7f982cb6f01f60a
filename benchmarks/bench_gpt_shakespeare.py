"""genforge against nanoGPT's own code at nanoGPT's CPU recipe, measured side by side.

nanoGPT's CPU recipe (its README; ../shared/peers/README.md): 4 layers, 4 heads,
128 wide, context 64, batch 12, dropout 0, no biases, learned positions, tied
embeddings, AdamW lr 1e-3 cosine to 1e-4 after 100 warm-up steps, betas
(0.9, 0.99), weight decay 0.1 on matrices, gradient clip 1, 2000 iterations.

Rows, each trained in its own process, with the same intra-op thread count:

  nanogpt           nanoGPT's unmodified ``train.py`` from a temporary copy of
                    ../shared/peers/nanoGPT (its data prepared by its own prepare.py)
  genforge-nanogpt  ``genforge train gpt-shakespeare-char`` with nanoGPT's model and
                    recipe (``model.pos_embedding=learned train.lr=1e-3``; the preset
                    already has nanoGPT's sizes, batch, betas, decay, clip and no biases)
  nanogpt-compile   with ``--compile``: nanoGPT's ``train.py --compile=True`` (its CPU
                    recipe says --compile=False; this row makes the comparison fair both ways)
  genforge-compile  with ``--compile``: genforge-nanogpt plus ``train.compile=true``
  bare-loop         genforge's GPT module with nanoGPT's layout in a plain PyTorch loop
                    (random windows, forward, backward, clip, step): no trainer at all
  genforge-preset   ``genforge train gpt-shakespeare-char`` as shipped (RoPE, lr 2e-3), once

All rows but the preset run in alternation (nanogpt, genforge-nanogpt, bare-loop,
[nanogpt-compile, genforge-compile,] nanogpt, ...) ``--repeats`` times: by default 4 rounds
of 300 steps, the speed comparison. Speed ratios are medians of the per-round ratios, so
they compare runs that saw the same machine load. ``--steps 2000 --repeats 2`` is the long
mode, whose validation losses are comparable with nanoGPT's published 2000-step recipe.
"first step s" is the first step's wall time: for compiled rows it holds the compilation
(nanoGPT's also holds its step-0 evaluation of 2 x 20 batches, compiled in eval mode too),
from an empty Inductor cache: each run gets its own TORCHINDUCTOR_CACHE_DIR. ms/step is the median over steps after the first 10:
nanoGPT's own ``iter N: ... time T ms`` lines; for genforge, the time between consecutive
training batch draws (the whole step, bookkeeping included).

Validation loss is one metric for every row: mean cross-entropy over every non-overlapping
64-token window of the held-out 10% (genforge's text modality ``evaluate``, via ``genforge eval
--checkpoint latest``; nanoGPT's final ``ckpt.pt`` is scored the same way on its own
val.bin, which holds the same 90/10 split, with nanoGPT's model.py in a separate process).

Usage:
  GENFORGE_DATA=/path/with/tinyshakespeare python benchmarks/bench_gpt_shakespeare.py \\
      [--steps 300] [--repeats 4] [--threads 2] [--compile] [--out-prefix benchmarks/results/gpt_shakespeare_cpu]
  A quick end-to-end check that leaves the committed results alone:
      python benchmarks/bench_gpt_shakespeare.py --steps 30 --repeats 1 --out-prefix /tmp/gs
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import (  # noqa: E402
    RESULTS,
    machine,
    matmul_peak_gflops,
    peak_rss_mib,
    run_process,
    tail,
    thread_env,
    write,
)

PRESET = "gpt-shakespeare-char"
NANOGPT_LAYOUT = ["model.pos_embedding=learned", "train.lr=1e-3"]
BATCH, BLOCK = 12, 64
SKIP = 10  # warm-up steps left out of every per-step median
DEFAULT_PEERS = HERE.parent.parent / "shared" / "peers"
ITER_LINE = re.compile(r"^iter (\d+): loss ([0-9.]+), time ([0-9.]+)ms")


# ----------------------------------------------------------------------------- workers
# Each runs in a fresh process (``python bench_gpt_shakespeare.py worker KIND OUT.json ...``)
# and writes one JSON object to OUT.json.

def worker_genforge(out: str, run_dir: str, threads: str, progress: str, *overrides: str) -> dict:
    """`genforge train` + `genforge eval` in this process, timing every training batch draw."""
    torch.set_num_threads(int(threads))
    from genforge.cli import main as cli
    from genforge.data import sampler as sampler_module

    stamps: list[float] = []
    draw = sampler_module.EpochSampler.next_batch

    def timed_draw(self):
        stamps.append(time.perf_counter())
        return draw(self)

    sampler_module.EpochSampler.next_batch = timed_draw
    args = ["train", PRESET, *overrides, "--run-dir", run_dir] + ([] if progress == "1" else ["--no-progress"])
    t = time.perf_counter()
    if cli(args) != 0:
        raise SystemExit(f"genforge {' '.join(args)} failed")
    wall = time.perf_counter() - t
    rss = peak_rss_mib()
    sampler_module.EpochSampler.next_batch = draw
    if cli(["eval", run_dir, "--checkpoint", "latest"]) != 0:
        raise SystemExit(f"genforge eval {run_dir} failed")
    ev = json.loads((Path(run_dir) / "eval.json").read_text())
    steps_ms = [1000 * (b - a) for a, b in zip(stamps[:-1], stamps[1:], strict=True)]
    rows = [json.loads(r) for r in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if r]
    windows = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][1:]
    result = {"val_loss": ev["val_loss"], "bits_per_char": ev["bits_per_char"], "val_tokens": ev["tokens"],
              "ms_per_step": statistics.median(steps_ms[SKIP:] or steps_ms) if steps_ms else None,
              "steps_timed": len(steps_ms[SKIP:]),
              "log_window_tokens_per_s": statistics.median(windows) if windows else None,
              "first_step_s": stamps[1] - stamps[0] if len(stamps) > 1 else None,
              "wall_s": wall, "peak_rss_mib": rss, "threads": torch.get_num_threads()}
    try:
        from genforge.runs import load_run

        result["flops_per_token"] = load_run(run_dir, device="cpu", checkpoint="latest").model.flops_per_token()
    except Exception as e:  # noqa: BLE001 - MFU is optional; never fail the benchmark on it
        result["flops_per_token_error"] = repr(e)
    if result["ms_per_step"] is None:  # the sampler was renamed: fall back to logged windows
        result["ms_per_step"] = 1000 * BATCH * BLOCK / result["log_window_tokens_per_s"]
        result["timing_source"] = "metrics.jsonl windows"
    else:
        result["timing_source"] = "time between training batch draws"
    return result


def worker_bare(out: str, steps: str, threads: str) -> dict:
    """nanoGPT's layout and update with genforge's GPT module in a plain loop: no trainer."""
    torch.set_num_threads(int(threads))
    from genforge.config import DataConfig, load_config
    from genforge.data.text import load_text
    from genforge.families.gpt import GPT, GPTConfig

    cfg, mcfg = load_config(PRESET, NANOGPT_LAYOUT)
    tc = cfg.train
    data = load_text(DataConfig(name="shakespeare"), BLOCK)
    torch.manual_seed(tc.seed)
    model = GPT(mcfg if isinstance(mcfg, GPTConfig) else GPTConfig(**cfg.model), data.spec)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=tc.betas)
    n = len(data.train)
    stamps = []
    for _ in range(int(steps)):
        stamps.append(time.perf_counter())
        batch = data.train.get(torch.randint(0, n, (BATCH,)))
        loss = model(batch)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    stamps.append(time.perf_counter())
    steps_ms = [1000 * (b - a) for a, b in zip(stamps[:-1], stamps[1:], strict=True)]
    return {"ms_per_step": statistics.median(steps_ms[SKIP:] or steps_ms), "steps_timed": len(steps_ms[SKIP:]),
            "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads(),
            "flops_per_token": model.flops_per_token()}


def worker_nanoeval(out: str, nanogpt_dir: str, ckpt_path: str, val_bin: str, threads: str) -> dict:
    """Score nanoGPT's checkpoint with nanoGPT's model.py on genforge's metric: every
    non-overlapping (block+1)-token window of val.bin, windows starting every block tokens."""
    import numpy as np

    torch.set_num_threads(int(threads))
    sys.path.insert(0, nanogpt_dir)
    from model import GPT, GPTConfig  # nanoGPT's, from the temporary copy

    ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    model = GPT(GPTConfig(**ck["model_args"]))
    state = {k.removeprefix("_orig_mod."): v for k, v in ck["model"].items()}
    model.load_state_dict(state)
    model.eval()
    block = ck["model_args"]["block_size"]
    val = np.memmap(val_bin, dtype=np.uint16, mode="r")
    starts = np.arange((len(val) - block - 1) // block + 1) * block
    offsets = np.arange(block + 1)
    total = 0.0
    with torch.no_grad():
        for s in range(0, len(starts), 32):
            w = torch.from_numpy(val[starts[s : s + 32, None] + offsets].astype(np.int64))
            _, loss = model(w[:, :-1].contiguous(), w[:, 1:].contiguous())
            total += loss.item() * w.shape[0]
    loss = total / len(starts)
    return {"val_loss": loss, "bits_per_char": loss / math.log(2), "val_tokens": len(starts) * block,
            "iter_num": ck["iter_num"], "flops_per_token": 6 * model.get_num_params() + 12 * model.config.n_layer
            * model.config.n_embd * block}


WORKERS = {"genforge": worker_genforge, "bare": worker_bare, "nanoeval": worker_nanoeval}


# ----------------------------------------------------------------------------- driver
class Bench:
    def __init__(self, args, tmp: Path):
        self.args, self.tmp = args, tmp
        self.env = thread_env(args.threads)
        self.count = 0

    def cold_env(self) -> dict[str, str]:
        """The thread-pinned environment with an empty Inductor cache of its own, so that every
        compiled run compiles from scratch (a warm cache in /tmp would hide the compile time)."""
        return {**self.env, "TORCHINDUCTOR_CACHE_DIR": str(self.tmp / f"{self.count:02d}-inductor-cache")}

    def worker(self, kind: str, *args: str) -> dict:
        self.count += 1
        out, log = self.tmp / f"{self.count:02d}-{kind}.json", self.tmp / f"{self.count:02d}-{kind}.log"
        proc = run_process([sys.executable, __file__, "worker", kind, str(out), *args], log, env=self.cold_env())
        if proc["returncode"] != 0 or not out.is_file():
            raise SystemExit(f"worker {kind} {args} failed (exit {proc['returncode']}):\n{tail(log)}")
        return {**json.loads(out.read_text()), "process_wall_s": proc["wall_s"]}

    # -- nanoGPT ---------------------------------------------------------------------
    def setup_nanogpt(self) -> str | None:
        """Copy nanoGPT and prepare its data; return why not when it cannot run."""
        src = self.args.nanogpt
        if not (src / "train.py").is_file():
            return f"nanoGPT not found at {src}"
        data_root = os.environ.get("GENFORGE_DATA")
        text = Path(data_root) / "tinyshakespeare" / "input.txt" if data_root else None
        if text is None or not text.is_file():
            return "GENFORGE_DATA/tinyshakespeare/input.txt not found (nanoGPT's prepare.py would download)"
        self.nano = self.tmp / "nanoGPT"
        shutil.copytree(src, self.nano)
        for p in self.nano.rglob("*"):  # the peers folder is read-only; the copy must not be
            p.chmod(p.stat().st_mode | 0o200)
        self.nano.chmod(self.nano.stat().st_mode | 0o200)
        shutil.copy(text, self.nano / "data" / "shakespeare_char" / "input.txt")
        log = self.tmp / "nanogpt-prepare.log"
        proc = run_process([sys.executable, "data/shakespeare_char/prepare.py"], log, cwd=self.nano, env=self.env)
        if proc["returncode"] != 0:
            return f"nanoGPT's prepare.py failed: {tail(log, 400).strip().splitlines()[-1:]}"
        return None

    def nanogpt_command(self, out_dir: Path, compiled: bool = False) -> list[str]:
        s = self.args.steps
        cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", f"--compile={compiled}",
               "--eval_iters=20", "--log_interval=1", f"--block_size={BLOCK}", f"--batch_size={BATCH}",
               "--n_layer=4", "--n_head=4", "--n_embd=128", f"--max_iters={s}", f"--lr_decay_iters={s}",
               "--dropout=0.0", "--always_save_checkpoint=True", f"--out_dir={out_dir}"]
        if s % 250:  # its config evaluates (and so saves) every 250 iterations; make it save at the end
            cmd.append(f"--eval_interval={s}")
        return cmd

    def run_nanogpt(self, compiled: bool = False) -> dict:
        self.count += 1
        out_dir = self.tmp / f"{self.count:02d}-nanogpt-out"
        log = self.tmp / f"{self.count:02d}-nanogpt.log"
        cmd = self.nanogpt_command(out_dir, compiled)
        proc = run_process(cmd, log, cwd=self.nano, env=self.cold_env())
        if proc["returncode"] != 0:
            raise SystemExit(f"nanoGPT failed (exit {proc['returncode']}):\n{tail(log)}")
        iters = [(int(m[1]), float(m[3])) for m in map(ITER_LINE.match, log.read_text().splitlines()) if m]
        times = [ms for it, ms in iters if it >= SKIP]
        ev = self.worker("nanoeval", str(self.nano), str(out_dir / "ckpt.pt"),
                         str(self.nano / "data" / "shakespeare_char" / "val.bin"), str(self.args.threads))
        first = [ms for it, ms in iters if it == 0]
        return {**ev, "ms_per_step": statistics.median(times), "steps_timed": len(times),
                "first_step_s": first[0] / 1000 if first else None,
                "peak_rss_mib": proc["peak_rss_mib"], "process_wall_s": proc["wall_s"],
                "command": " ".join(cmd[1:]), "threads": self.args.threads,
                "timing_source": "nanoGPT's own 'iter N: ... time T ms' lines"}

    # -- genforge --------------------------------------------------------------------
    def run_genforge(self, overrides: list[str]) -> dict:
        run_dir = self.tmp / f"{self.count + 1:02d}-run"
        ov = [f"train.max_steps={self.args.steps}", *overrides]
        r = self.worker("genforge", str(run_dir), str(self.args.threads), "1" if self.args.progress else "0", *ov)
        return {**r, "overrides": ov}


def summarize(rounds: list[dict], name: str) -> dict:
    runs = [r[name] for r in rounds if name in r]
    ms = statistics.median(r["ms_per_step"] for r in runs)
    return {"ms_per_step_median": ms, "tokens_per_s": BATCH * BLOCK / (ms / 1000),
            "ms_per_step_each": [r["ms_per_step"] for r in runs],
            "val_loss": runs[0].get("val_loss"), "val_loss_each": [r.get("val_loss") for r in runs],
            "bits_per_char": runs[0].get("bits_per_char"),
            "first_step_s": statistics.median(r["first_step_s"] for r in runs) if all(
                r.get("first_step_s") is not None for r in runs) else None,
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs), "flops_per_token": runs[0].get("flops_per_token")}


def pair_ratios(rounds: list[dict], num: str, den: str) -> list[float]:
    """Per-round tokens/s ratio num/den (= den ms/step over num ms/step)."""
    return [r[den]["ms_per_step"] / r[num]["ms_per_step"] for r in rounds if num in r and den in r]


def render(res: dict) -> str:
    s, runs, ratios = res["settings"], res["runs"], res["ratios"]
    label = {"nanogpt": "nanoGPT's own code (unmodified, separate process)",
             "genforge-nanogpt": "genforge trainer, nanoGPT's model and recipe",
             "nanogpt-compile": "nanoGPT's own code, `--compile=True`",
             "genforge-compile": "genforge trainer, nanoGPT's model and recipe, `train.compile=true`",
             "bare-loop": "genforge GPT, nanoGPT's layout, bare PyTorch loop",
             "genforge-preset": f"genforge preset `{PRESET}` ({', '.join(res['preset_differs'])})"}

    def f(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) else ""

    lines = [f"# GPT on Tiny Shakespeare at nanoGPT's CPU recipe: {s['steps']} steps, batch {BATCH}, "
             f"context {BLOCK}, {s['threads']} threads", ""]
    head = []
    if "genforge-nanogpt/nanogpt" in ratios:
        r = ratios["genforge-nanogpt/nanogpt"]
        head.append(f"genforge / nanoGPT tokens/s at nanoGPT's recipe, both eager (nanoGPT `--compile=False`, its "
                    f"CPU recipe): **{r['median']:.2f}x** (median of {len(r['each'])} alternated rounds: "
                    f"{', '.join(f'{x:.2f}' for x in r['each'])}).")
        for key, what in (("genforge-compile/nanogpt", "genforge compiled / nanoGPT eager"),
                          ("genforge-compile/nanogpt-compile", "both compiled")):
            if key in ratios:
                e = ratios[key]["each"]
                head.append(f"{what}: **{ratios[key]['median']:.2f}x** ({', '.join(f'{x:.2f}' for x in e)}).")
        if len(r["each"]) < 4:
            head.append(f"Fewer than 4 rounds ({len(r['each'])}): indicative only.")
        vl = {k: runs[k]["val_loss"] for k in ("nanogpt", "genforge-nanogpt", "nanogpt-compile", "genforge-compile",
                                                 "genforge-preset") if k in runs}
        head.append("Val loss, full split: " + "; ".join(f"{k} {v:.4f}" for k, v in vl.items()) + ".")
    else:
        head.append(f"nanoGPT row skipped: {res['nanogpt_skipped']}.")
    lines += head + [""]
    lines += ["| run | val loss (full split) | bits/char | tokens/s | ms/step (median) | per-round ms/step "
              "| first step s | MFU | peak RSS MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        lines.append(f"| {label[name]} | {f(r['val_loss'], '.4f')} | {f(r['bits_per_char'], '.3f')} | "
                     f"{r['tokens_per_s']:,.0f} | {r['ms_per_step_median']:.1f} | "
                     f"{', '.join(f'{x:.1f}' for x in r['ms_per_step_each'])} | {f(r.get('first_step_s'), '.1f')} | "
                     f"{f(r.get('mfu'), '.1%')} | "
                     f"{r['peak_rss_mib']:.0f} |")
    if ratios:
        lines += ["", "Ratios of tokens/s measured in this run (median of per-round ratios):", ""]
    lines += [f"- {k}: {v['median']:.2f}x ({', '.join(f'{x:.2f}' for x in v['each'])})" for k, v in ratios.items()]
    lines += ["", f"fp32 matmul peak measured in this run: {res['fp32_matmul_peak_gflops']:.1f} GFLOP/s "
              f"(MFU denominator); torch {res['machine']['torch']}."]
    if res.get("nanogpt_command"):
        lines += [f"nanoGPT command (in a temporary copy): `python {res['nanogpt_command']}`."]
    if res.get("val_tokens"):
        lines += [f"Val loss is mean cross-entropy over all {res['val_tokens']:,} tokens of the non-overlapping "
              f"{BLOCK}-token windows of the held-out split."]
    return "\n".join(lines)


def preset_differs() -> list[str]:
    """How the shipped preset differs from nanoGPT's recipe, read from the configs themselves."""
    from genforge.config import load_config

    (cfg, mcfg), (ncfg, nmcfg) = load_config(PRESET, []), load_config(PRESET, NANOGPT_LAYOUT)
    out = []
    if getattr(mcfg, "pos_embedding", None) != getattr(nmcfg, "pos_embedding", None):
        out.append(f"{mcfg.pos_embedding} positions")
    if cfg.train.lr != ncfg.train.lr:
        out.append(f"lr {cfg.train.lr:g}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300,
                   help="training steps per run (default 300; 2000 for nanoGPT's full recipe and its val loss)")
    p.add_argument("--repeats", type=int, default=4, help="alternated rounds (default 4)")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads for every run (default 2)")
    p.add_argument("--bare-steps", type=int, default=300, help="steps of the bare loop; 0 skips it")
    p.add_argument("--no-preset", action="store_true", help="skip the genforge preset row")
    p.add_argument("--compile", action="store_true",
                   help="add torch.compile rows: nanoGPT --compile=True and genforge train.compile=true")
    p.add_argument("--progress", action="store_true", help="genforge with its progress bar (default off)")
    p.add_argument("--nanogpt", type=Path, default=Path(os.environ.get("GENFORGE_PEERS", DEFAULT_PEERS)) / "nanoGPT",
                   help="nanoGPT checkout (default ../shared/peers/nanoGPT; $GENFORGE_PEERS overrides the parent)")
    p.add_argument("--out-prefix", type=Path, default=RESULTS / "gpt_shakespeare_cpu",
                   help="write OUT_PREFIX.json and OUT_PREFIX.md (default benchmarks/results/gpt_shakespeare_cpu)")
    args = p.parse_args()
    if args.steps <= SKIP + 1:
        p.error(f"--steps must exceed {SKIP + 1}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-gpt-") as tmp:
        b = Bench(args, Path(tmp))
        skipped = b.setup_nanogpt()
        if skipped:
            print(f"skipping the nanoGPT row: {skipped}", file=sys.stderr)
        peak_before = matmul_peak_gflops()
        rounds = []
        for i in range(args.repeats):
            rnd = {}
            if not skipped:
                rnd["nanogpt"] = b.run_nanogpt()
                print(f"round {i + 1}: nanogpt {rnd['nanogpt']['ms_per_step']:.1f} ms/step", file=sys.stderr)
            rnd["genforge-nanogpt"] = b.run_genforge(NANOGPT_LAYOUT)
            print(f"round {i + 1}: genforge-nanogpt {rnd['genforge-nanogpt']['ms_per_step']:.1f} ms/step",
                  file=sys.stderr)
            if args.bare_steps:
                rnd["bare-loop"] = b.worker("bare", str(max(args.bare_steps, SKIP + 2)), str(args.threads))
                print(f"round {i + 1}: bare-loop {rnd['bare-loop']['ms_per_step']:.1f} ms/step", file=sys.stderr)
            if args.compile:
                if not skipped:
                    rnd["nanogpt-compile"] = b.run_nanogpt(compiled=True)
                rnd["genforge-compile"] = b.run_genforge([*NANOGPT_LAYOUT, "train.compile=true"])
                for k in ("nanogpt-compile", "genforge-compile"):
                    if k in rnd:
                        print(f"round {i + 1}: {k} {rnd[k]['ms_per_step']:.1f} ms/step, first step "
                              f"{rnd[k]['first_step_s']:.1f} s", file=sys.stderr)
            rounds.append(rnd)
        if not args.no_preset:
            rounds[-1]["genforge-preset"] = b.run_genforge([])
        peak = statistics.median([peak_before, matmul_peak_gflops()])
    names = [n for n in ("nanogpt", "genforge-nanogpt", "bare-loop", "nanogpt-compile", "genforge-compile",
                         "genforge-preset") if any(n in r for r in rounds)]
    runs = {n: summarize(rounds, n) for n in names}
    for r in runs.values():
        if r.get("flops_per_token"):
            r["mfu"] = r["flops_per_token"] * r["tokens_per_s"] / (peak * 1e9)
    ratios = {}
    for num, den in (("genforge-nanogpt", "nanogpt"), ("genforge-nanogpt", "bare-loop"),
                     ("bare-loop", "nanogpt"), ("genforge-compile", "nanogpt"), ("genforge-compile", "nanogpt-compile"),
                     ("nanogpt-compile", "nanogpt"), ("genforge-compile", "genforge-nanogpt"),
                     ("genforge-preset", "nanogpt"), ("genforge-preset", "genforge-nanogpt")):
        each = pair_ratios(rounds, num, den)
        if each:
            ratios[f"{num}/{den}"] = {"median": statistics.median(each), "each": each}
    tokens = {n: r["val_tokens"] for rnd in rounds for n, r in rnd.items() if "val_tokens" in r}
    if len(set(tokens.values())) > 1:
        raise SystemExit(f"val splits differ between rows: {tokens}")
    result = {
        "benchmark": "gpt-shakespeare-char at nanoGPT's CPU recipe, nanoGPT run beside genforge",
        "settings": {"steps": args.steps, "repeats": args.repeats, "threads": args.threads,
                     "bare_steps": args.bare_steps, "skip_first_steps": SKIP, "progress_bar": args.progress,
                     "compile_rows": args.compile},
        "machine": machine(), "fp32_matmul_peak_gflops": peak, "nanogpt_skipped": skipped,
        "preset_differs": preset_differs(), "val_tokens": next(iter(tokens.values()), None),
        "nanogpt_command": next((r["nanogpt"]["command"] for r in rounds if "nanogpt" in r), None),
        "runs": runs, "ratios": ratios, "rounds": rounds,
    }
    write(args.out_prefix.name, result, render(result), folder=args.out_prefix.parent)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        kind, out, *rest = sys.argv[2:]
        Path(out).write_text(json.dumps(WORKERS[kind](out, *rest)))
    else:
        main()
