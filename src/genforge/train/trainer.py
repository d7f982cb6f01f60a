"""The generic training loop. Nothing here knows which family it trains.

The family owns ``train_step`` (its losses and the order of its optimizer
steps); this file owns device, precision, accumulation, clipping, LR, EMA,
evaluation, previews, logging, checkpoints, resume and DDP.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from genforge import GenforgeError, Interrupted
from genforge.config import RunConfig
from genforge.data.sampler import EpochSampler
from genforge.train import checkpoint as ckpt
from genforge.train import distributed
from genforge.train.ema import EMA
from genforge.train.schedule import lr_at


class _StepContext:
    """Handed to ``family.train_step``; see ``genforge.families.base.StepContext``."""

    def __init__(self, trainer: Trainer):
        self.t = trainer
        self.n_micro = 1

    def accumulate(self, micro_batches):
        self.n_micro = len(micro_batches)
        for i, batch in enumerate(micro_batches):
            if isinstance(self.t.ddp, DDP):  # all-reduce gradients on the last micro-batch only
                self.t.ddp.require_backward_grad_sync = i == len(micro_batches) - 1
            yield batch

    def forward(self, batch, **kwargs):
        with self.t.autocast():
            return self.t.wrapped(batch, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.n_micro).backward()

    def step(self, optimizer: str) -> torch.Tensor:
        t = self.t
        opt = t.optimizers[optimizer]
        params = [p for g in opt.param_groups for p in g["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, t.tc.grad_clip if t.tc.grad_clip > 0 else math.inf)
        lr = t.lr()
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return norm.detach()


class Trainer:
    def __init__(self, cfg: RunConfig, model_cfg, run_dir: Path, resume: bool = False,
                 stop_after: int | None = None, progress: bool = True):
        from genforge.data import load_data
        from genforge.families import family_class

        self.cfg, self.tc, self.run_dir = cfg, cfg.train, Path(run_dir)
        self.stop_after, self.progress = stop_after, progress
        self.dist, self.device = distributed.setup(self.tc.device)
        use_bf16 = self.tc.precision == "bf16" or (self.tc.precision == "auto" and self.device.type == "cuda")
        self.amp_dtype = torch.bfloat16 if use_bf16 else None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        # Rank 0 builds any data cache first; the others then read it.
        if not self.dist.is_main:
            distributed.barrier()
        self.data = load_data(cfg.data, model_cfg)
        if self.dist.is_main:
            distributed.barrier()
            ckpt.atomic_write_text(self.run_dir / "config.json", json.dumps(cfg.model_dump(), indent=2))
            ckpt.atomic_write_text(self.run_dir / "spec.json", self.data.spec.to_json())
            self.data.save(self.run_dir)

        torch.manual_seed(self.tc.seed)  # identical initial weights on every rank
        self.model = family_class(cfg.family)(model_cfg, self.data.spec).to(self.device)
        self.optimizers = {
            name: torch.optim.AdamW(groups, lr=self.tc.lr, betas=self.tc.betas,
                                    fused=self.device.type == "cuda")
            for name, groups in self.model.optimizer_groups(self.tc.weight_decay).items()
        }
        self.ema = EMA(self.model.ema_target(), self.tc.ema_decay) if self.tc.ema_decay > 0 else None
        self.wrapped = self.ddp = self.model
        if self.dist.world > 1:
            self.ddp = self.wrapped = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.tc.compile:
            self.wrapped = torch.compile(self.wrapped)
        self.sampler = EpochSampler(len(self.data.train), self.tc.batch_size, self.tc.seed,
                                    self.dist.rank, self.dist.world)
        self.step = 0
        self.best_val = math.inf
        if resume:
            self._resume()
        else:  # dropout etc. draw differently on each rank
            torch.manual_seed(self.tc.seed + 1000 * self.dist.rank)
        self.ctx = _StepContext(self)
        self.tb = self._tensorboard() if self.dist.is_main else None

    # -- helpers ------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def lr(self) -> float:
        tc = self.tc
        return lr_at(self.step, tc.lr, tc.min_lr, tc.warmup_steps, tc.max_steps, tc.lr_schedule)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return SummaryWriter(str(self.run_dir / "tensorboard"))

    def _log(self, row: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            prefix = row.get("split", "train")
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "step":
                    self.tb.add_scalar(f"{prefix}/{k}", v, row["step"])

    def _items_in(self, batch) -> int:
        """Tokens for text (B*T), examples otherwise: the unit of throughput."""
        x = batch["x"]
        return x.numel() if self.data.spec.modality != "image" else x.shape[0]

    # -- checkpoints --------------------------------------------------------------------
    def save(self, name: str | None = None) -> None:
        if not self.dist.is_main:
            return
        state = {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "sampler": self.sampler.state_dict(),
            "rng": ckpt.rng_state(),
            "best_val": self.best_val,
        }
        ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.ema.state_dict() if self.ema else None,
                             state, self.cfg.model_dump(), keep=self.tc.keep_checkpoints, name=name)

    def _resume(self) -> None:
        path = ckpt.require_checkpoint(self.run_dir)
        ckpt.load_weights(self.model, path)
        state = ckpt.load_train_state(path)
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        if self.ema is not None:
            from safetensors.torch import load_file

            if (path / "ema.safetensors").is_file():
                self.ema.load_state_dict(load_file(str(path / "ema.safetensors")))
        self.sampler.load_state_dict(state["sampler"])
        ckpt.set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best_val = float(state.get("best_val", math.inf))
        # Drop log rows written after this checkpoint (a crash between checkpoints).
        log = self.run_dir / "metrics.jsonl"
        if self.dist.is_main and log.is_file():
            rows = [r for r in log.read_text().splitlines() if r and json.loads(r)["step"] <= self.step]
            ckpt.atomic_write_text(log, "".join(r + "\n" for r in rows))

    # -- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Loss on a fixed set of validation batches (same batches at every evaluation)."""
        g = torch.Generator().manual_seed(12345)
        n = len(self.data.val)
        batches = (self._to_device(self.data.val.get(torch.randint(0, n, (self.tc.batch_size,), generator=g)))
                   for _ in range(self.tc.eval_batches))
        self.model.eval()
        with self.autocast():
            out = self.model.evaluate(batches)
        self.model.train()
        return out

    def write_preview(self) -> None:
        g = torch.Generator(device=self.device).manual_seed(self.tc.seed)
        sample = self.model.preview(self.data, g)
        if sample is None:
            return
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        if isinstance(sample, str):
            ckpt.atomic_write_text(folder / f"step_{self.step:07d}.txt", sample)
        else:
            from genforge.data.images import save_grid

            save_grid(sample, folder / f"step_{self.step:07d}.png", self.data.spec)

    def _check_finite(self, metrics: dict) -> dict[str, float]:
        values = {k: float(v) for k, v in metrics.items()}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if bad:
            last = ckpt.latest_checkpoint(self.run_dir)
            raise GenforgeError(
                f"{bad[0]} became {values[bad[0]]} at step {self.step}; training stopped. "
                f"Last good checkpoint: {last or 'none'}. Lower train.lr or set train.grad_clip"
            )
        return values

    # -- the loop -----------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        tc = self.tc
        self.model.train()
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=not (self.progress and self.dist.is_main),
                   desc="train", dynamic_ncols=True, unit="step")
        last_eval: dict[str, float] = {}
        t0, items, steps_run = time.perf_counter(), 0, 0
        window_t, window_items = time.perf_counter(), 0
        try:
            while self.step < tc.max_steps:
                if self.stop_after is not None and steps_run >= self.stop_after:
                    break
                micro = [self._to_device(self.data.train.get(self.sampler.next_batch()))
                         for _ in range(tc.grad_accum)]
                metrics = self.model.train_step(micro, self.ctx)
                logging_now = (self.step + 1) % tc.log_every == 0 or self.step + 1 == tc.max_steps
                # Checkpoint at the interval, at the end, and before a --stop-after pause.
                saving_now = ((self.step + 1) % tc.checkpoint_every == 0 or self.step + 1 == tc.max_steps
                              or steps_run + 1 == self.stop_after)
                if logging_now or saving_now:
                    # Reading values syncs with the GPU, so it happens only when they are needed.
                    metrics = self._check_finite(metrics)
                if self.ema is not None:
                    self.ema.update(self.model.ema_target())
                n_items = sum(self._items_in(b) for b in micro) * self.dist.world
                items, window_items = items + n_items, window_items + n_items
                self.step += 1
                steps_run += 1
                bar.update(1)
                if logging_now:
                    now = time.perf_counter()
                    rate = window_items / max(now - window_t, 1e-9)
                    window_t, window_items = now, 0
                    unit = "tokens_per_s" if self.data.spec.modality != "image" else "examples_per_s"
                    self._log({"step": self.step, **metrics, "lr": self.lr(), unit: rate,
                               "elapsed_s": now - t0})
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", **{unit.split('_')[0] + "/s": f"{rate:,.0f}"})
                if tc.eval_every and (self.step % tc.eval_every == 0 or self.step == tc.max_steps):
                    last_eval = self.evaluate()
                    improved = last_eval["loss"] < self.best_val
                    if improved:
                        self.best_val = last_eval["loss"]
                        if tc.keep_best:
                            self.save(name="best")
                    self._log({"step": self.step, "split": "val", **last_eval, "best": improved})
                    bar.write(f"step {self.step}: val " + ", ".join(f"{k} {v:.4f}" for k, v in last_eval.items()))
                    if self.dist.is_main and (tc.sample_every == 0):
                        self.write_preview()
                if self.dist.is_main and tc.sample_every and self.step % tc.sample_every == 0:
                    self.write_preview()
                if saving_now:
                    self.save()
        except KeyboardInterrupt:
            bar.close()
            self.save()
            raise Interrupted(
                f"interrupted at step {self.step}; checkpoint saved. Continue with: "
                f"genforge train --resume {self.run_dir}"
            ) from None
        finally:
            bar.close()
        if self.tb is not None:
            self.tb.close()
        elapsed = time.perf_counter() - t0
        return {"step": self.step, "items_per_s": items / max(elapsed, 1e-9), **last_eval,
                "best_val_loss": self.best_val}
