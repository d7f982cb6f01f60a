"""The generic training loop. Nothing here knows which family or modality it trains.

The family owns ``train_step`` (its losses and the order of its optimizer steps)
and declares its optimizers, frozen parts, EMA target and selection metric
(``genforge.families.base``); this file owns device, precision, accumulation,
clipping, LR, EMA, evaluation, previews, logging, checkpoints, resume, signals,
the run-directory lock and DDP.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from genforge import GenforgeError, Interrupted
from genforge import checkpoint as ckpt
from genforge.config import RunConfig
from genforge.families.base import Diverged, GenerativeModel, StopTraining
from genforge.modalities import load_data, modality
from genforge.train import distributed
from genforge.train.batches import BatchSource, DatasetBatches
from genforge.train.compiling import compile_forward
from genforge.train.early_stop import EarlyStop
from genforge.train.ema import EMA
from genforge.train.resume import restore
from genforge.train.schedule import lr_at
from genforge.train.signals import StopFlag
from genforge.train.step_context import StepContext


def build(cfg: RunConfig, model_cfg) -> tuple[GenerativeModel, Any]:
    """The model and data a config describes. Under torchrun rank 0 builds any data cache
    first; every rank seeds the same, so initial weights agree."""
    from genforge.families import build_model, family_class

    needs = family_class(cfg.family).data_needs(model_cfg)
    if not distributed.is_main():
        distributed.barrier()
    data = load_data(cfg.data, needs)
    if distributed.is_main():
        distributed.barrier()
    torch.manual_seed(cfg.train.seed)
    return build_model(cfg.family, model_cfg, data.spec), data


class Trainer:
    """Trains ``model`` on ``data`` (or on any :class:`BatchSource`) into ``run_dir``.

    ``resume`` continues from the run's latest checkpoint; otherwise ``run_dir`` must be
    empty or absent, unless ``overwrite`` (which replaces a genforge run, and refuses any other
    folder: ``checkpoint.claim_run_dir``). Nothing is written into the
    folder until the model is built and any checkpoint has loaded, so a failed start leaves
    an existing run untouched and creates no folder.
    """

    def __init__(self, cfg: RunConfig, model: GenerativeModel, data, run_dir: Path, *,
                 resume: bool = False, overwrite: bool = False, stop_after: int | None = None,
                 progress: bool = True, batches: BatchSource | None = None, eval_at_start: bool = False,
                 resume_command: str = "genforge train --resume"):
        self.cfg, self.tc, self.run_dir = cfg, cfg.train, Path(run_dir)
        self.data, self.stop_after, self.progress = data, stop_after, progress
        self.eval_at_start = eval_at_start  # a step-0 evaluation: the baseline an RL run starts from
        self.resume_command = resume_command  # what an interrupted run is told to type
        self.modality = modality(data.spec.modality)
        self.dist, self.device = distributed.setup(self.tc.device)
        use_bf16 = self.tc.precision == "bf16" or (self.tc.precision == "auto" and self.device.type == "cuda")
        self.amp_dtype = torch.bfloat16 if use_bf16 else None
        self.lock, created = None, False
        if self.dist.is_main:
            self.lock, created = ckpt.claim_run_dir(self.run_dir, resume, overwrite)
        try:
            self._setup(model, batches, resume)
            if self.dist.is_main:
                if overwrite and not resume:  # only now: a refused start keeps the run it would replace
                    ckpt.clear_run_dir(self.run_dir)
                self.tb = self._tensorboard()
                self._write_run_files()
        except BaseException:
            lock, self.lock = self.lock, None
            if lock is not None:  # no debris from a failed start: the .lock it made, the folder it made
                ckpt.release_claim(self.run_dir, lock, created and ckpt.is_empty_dir(self.run_dir),
                                   had_lock=not lock.created_file)
            raise

    # -- set-up -------------------------------------------------------------------------
    def _setup(self, model: GenerativeModel, batches: BatchSource | None, resume: bool) -> None:
        tc = self.tc
        self.model = model.to(self.device).train()
        model.bind_data(self.data)  # e.g. the GAN scores in features fitted on this run's own split
        groups = model.optimizer_groups()
        unknown = sorted(set(tc.optim) - set(groups))
        if unknown:
            raise GenforgeError(f"train.optim.{unknown[0]}: family '{self.cfg.family}' has no optimizer "
                                f"'{unknown[0]}'; its optimizers are: {', '.join(groups)}")
        self.optimizers, self.optimizer_params = {}, {}
        for name, param_groups in groups.items():
            o = tc.optim.get(name)
            lr = o.lr if o and o.lr is not None else tc.lr
            betas = o.betas if o and o.betas is not None else tc.betas
            wd = o.weight_decay if o and o.weight_decay is not None else tc.weight_decay
            torch_groups = [{"params": g["params"], "weight_decay": wd if g.get("decay", True) else 0.0,
                             "base_lr": lr} for g in param_groups if g["params"]]
            # Fused AdamW on CPU too: one kernel instead of a loop over tensors (456 vs 1445 us
            # per step at 4x128, benchmarks/profile_trainer_overhead.py).
            self.optimizers[name] = torch.optim.AdamW(torch_groups, lr=lr, betas=betas,
                                                      fused=self.device.type in ("cuda", "cpu"))
            self.optimizer_params[name] = [p for g in torch_groups for p in g["params"]]
        target = model.ema_target()
        frozen = tuple(f"{n}." for n in model.frozen_parts()) if target is model else ()
        self.all_params = [p for p in model.parameters() if p.requires_grad]
        self.ema = EMA(target, tc.ema_decay, ckpt.ema_keys(target, frozen)) if tc.ema_decay > 0 else None
        self.ddp, self.wrapped = None, model
        if self.dist.world > 1:
            # Alternating optimizers leave one part without gradients in some backward passes.
            self.ddp = self.wrapped = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                          find_unused_parameters=len(self.optimizers) > 1)
        if tc.compile:
            self.wrapped = compile_forward(self.wrapped, self.device)
        self.batches = batches or DatasetBatches(self.data.train, tc.batch_size, tc.seed,
                                                 self.dist.rank, self.dist.world)
        self.step = 0
        self.best_score: float | None = None
        self.early_stop = EarlyStop(tc.early_stop_patience)
        if tc.early_stop_patience and model.selection is None:
            raise GenforgeError(f"train.early_stop_patience: family '{self.cfg.family}' has no selection "
                                "metric to watch; set train.early_stop_patience=0")
        if resume:
            restore(self)
        else:  # dropout etc. draw differently on each rank
            torch.manual_seed(tc.seed + 1000 * self.dist.rank)
        self.ctx = StepContext(self)
        self.tb = None  # made with the run files, after any --overwrite has cleared the folder

    def _write_run_files(self) -> None:
        ckpt.atomic_write_text(self.run_dir / "config.json", json.dumps(self.cfg.model_dump(), indent=2))
        ckpt.atomic_write_text(self.run_dir / "spec.json", self.data.spec.to_json())
        self.data.save(self.run_dir)

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # -- helpers ------------------------------------------------------------------------
    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def lr_factor(self) -> float:
        """The schedule's multiplier of each optimizer's base LR at the current step."""
        tc = self.tc
        return lr_at(self.step, 1.0, tc.min_lr / tc.lr, tc.warmup_steps, tc.max_steps, tc.lr_schedule)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cpu":
            return batch  # .to() per tensor costs a Python call for nothing on the CPU
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
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
                    self.tb.add_scalar(f"{prefix}/{k}", v, row["step"])

    # -- checkpoints --------------------------------------------------------------------
    def save(self, best: bool = False) -> None:
        if not self.dist.is_main:
            return
        state = {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "batches": self.batches.state_dict(),
            "rng": ckpt.rng_state(),
            "best_score": self.best_score,
            "early_stop": self.early_stop.state_dict(),
        }
        ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.ema.state_dict() if self.ema else None,
                             state, self.cfg.model_dump(), keep=self.tc.keep_checkpoints, best=best)

    # -- evaluation ---------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The family's metrics on a fixed set of validation batches (the same batches at every
        evaluation), with the weights sampling uses: EMA when it is on."""
        g = torch.Generator().manual_seed(12345)
        n = len(self.data.val)
        batches = (self._to_device(self.data.val.get(torch.randint(0, n, (self.tc.batch_size,), generator=g)))
                   for _ in range(self.tc.eval_batches))
        weights = self.ema.swapped_in(self.model.ema_target()) if self.ema else contextlib.nullcontext()
        self.model.eval()
        try:
            with weights, self.autocast():
                return {k: float(v) for k, v in self.model.evaluate(batches).items()}
        finally:
            self.model.train()

    def write_preview(self) -> None:
        g = torch.Generator(device=self.device).manual_seed(self.tc.seed)
        weights = self.ema.swapped_in(self.model.ema_target()) if self.ema else contextlib.nullcontext()
        with weights:
            sample = self.model.preview(self.data, g)
        if sample is None:
            return
        folder = self.run_dir / "samples"
        folder.mkdir(exist_ok=True)
        self.modality.write_preview(sample, folder / f"step_{self.step:07d}", self.data)

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

    def _after_evaluation(self, bar) -> dict[str, float]:
        """Evaluate, log, keep the best checkpoint and count evaluations without a new best
        (``self.early_stop``). Every DDP rank scores the same batches with the same weights, so
        all ranks agree on when to stop."""
        result = self.evaluate()
        selection = self.model.selection
        improved = False
        if selection is not None:
            if selection.metric not in result:
                raise GenforgeError(f"family '{self.cfg.family}' selects on '{selection.metric}', but its "
                                    f"evaluation reported only {sorted(result)}")
            score = result[selection.metric]
            improved = math.isfinite(score) and selection.better(score, self.best_score)
            if improved:
                self.best_score = score
                if self.tc.keep_best:
                    self.save(best=True)
            self.early_stop.update(improved, self.step)
        self._log({"step": self.step, "split": "val", **result, "best": improved,
                   "weights": "ema" if self.ema else "raw"})
        line = f"step {self.step}: val " + ", ".join(f"{k} {v:.4f}" for k, v in result.items())
        if self.dist.is_main:
            bar.write(line) if self.progress else print(line, flush=True)
        return result

    def _stop_requested(self, flag: StopFlag) -> bool:
        if self.dist.world == 1:
            return flag.signum is not None
        # Every rank must stop at the same step, or the others wait forever in all-reduce.
        t = torch.tensor([0 if flag.signum is None else flag.signum], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        if t.item() and flag.signum is None:
            flag.signum = int(t.item())
        return bool(t.item())

    # -- the loop -----------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        try:
            with StopFlag() as flag:
                return self._fit(flag)
        finally:
            self.close()
            if self.tb is not None:
                self.tb.close()

    def _fit(self, flag: StopFlag) -> dict[str, float]:
        tc = self.tc
        self.model.train()
        bar = tqdm(total=tc.max_steps, initial=self.step, disable=not (self.progress and self.dist.is_main),
                   desc="train", dynamic_ncols=True, unit="step")
        last_eval: dict[str, float] = {}
        stopped: str | None = None
        t0, items, steps_run = time.perf_counter(), 0, 0
        window_t, window_items = time.perf_counter(), 0
        unit = f"{self.modality.unit}_per_s"
        try:
            if self.eval_at_start and self.step == 0 and tc.eval_every:
                last_eval = self._after_evaluation(bar)
            while self.step < tc.max_steps:
                if self.stop_after is not None and steps_run >= self.stop_after:
                    break
                try:
                    micro = [self._to_device(self.batches.next()) for _ in range(tc.grad_accum)]
                    metrics = self.model.train_step(micro, self.ctx)
                except StopTraining as e:
                    stopped = self._stop_early(e, bar)
                    break
                except Diverged as e:
                    last = ckpt.latest_checkpoint(self.run_dir)
                    raise GenforgeError(f"training stopped at step {self.step + 1}: {e}. Last good "
                                        f"checkpoint: {last or 'none'}") from None
                if self.ema is not None:
                    self.ema.update(self.model.ema_target(), self.step)
                n_items = sum(self.modality.count(b) for b in micro) * self.dist.world
                items, window_items = items + n_items, window_items + n_items
                self.step += 1
                steps_run += 1
                bar.update(1)
                stopping = self._stop_requested(flag)
                logging_now = self.step % tc.log_every == 0 or self.step == tc.max_steps
                # Checkpoint at the interval, at the end, before a --stop-after pause, on a signal.
                saving_now = (self.step % tc.checkpoint_every == 0 or self.step == tc.max_steps
                              or steps_run == self.stop_after or stopping)
                if logging_now or saving_now:
                    # Reading values syncs with the GPU, so it happens only when they are needed.
                    metrics = self._check_finite(metrics)
                if logging_now:
                    now = time.perf_counter()
                    rate = window_items / max(now - window_t, 1e-9)
                    window_t, window_items = now, 0
                    self._log({"step": self.step, **metrics, "lr": tc.lr * self.lr_factor(), unit: rate,
                               "elapsed_s": now - t0})
                    if self.progress:
                        shown = {k: f"{metrics[k]:.4g}" for k in self.model.progress_keys if k in metrics}
                        bar.set_postfix(**shown, **{unit.split('_')[0] + "/s": f"{rate:,.0f}"})
                if tc.eval_every and (self.step % tc.eval_every == 0 or self.step == tc.max_steps):
                    last_eval = self._after_evaluation(bar)
                    if self.dist.is_main and tc.sample_every == 0:
                        self.write_preview()
                    if self.early_stop.triggered and self.step < tc.max_steps:
                        stopped = self._out_of_patience(bar)
                        saving_now = True
                if self.dist.is_main and tc.sample_every and self.step % tc.sample_every == 0:
                    self.write_preview()
                if saving_now:
                    self.save()
                if stopping:
                    name = signal.Signals(flag.signum).name
                    raise Interrupted(f"{name} at step {self.step}; checkpoint saved. Continue with: "
                                      f"{self.resume_command} {self.run_dir}", 128 + flag.signum)
                if stopped:
                    break
        finally:
            bar.close()
        if self.dist.is_main and tc.plot and (self.step == tc.max_steps or stopped):
            self._plot()
        if self.dist.is_main:  # the model card (README.md); a hand-edited one is kept
            from genforge.card import refresh_card

            refresh_card(self.run_dir)
        elapsed = time.perf_counter() - t0
        result = {"step": self.step, "items_per_s": items / max(elapsed, 1e-9), **last_eval,
                  "best_score": self.best_score}
        return {**result, "stopped": stopped} if stopped else result

    def _stop_early(self, e: StopTraining, bar) -> str:
        """A guard rail ended training: log why, evaluate (so ``best`` sees the last weights) and
        checkpoint the step reached; the update that tripped it was not applied."""
        values = {k: float(v) for k, v in e.metrics.items()}
        self._log({"step": self.step, **values, "event": "stopped", "reason": e.reason})
        line = f"step {self.step}: stopped early: {e.reason}"
        if self.dist.is_main:
            bar.write(line) if self.progress else print(line, flush=True)
        if self.tc.eval_every and self.step > 0 and self.step % self.tc.eval_every:  # not evaluated yet
            self._after_evaluation(bar)
        self.save()
        return e.reason

    def _out_of_patience(self, bar) -> str:
        """Early stopping: log why; the caller checkpoints this step (checkpoints/best holds the
        best weights already)."""
        reason = self.early_stop.reason(self.model.selection.metric, self.best_score)
        self._log({"step": self.step, "event": "stopped", "reason": reason})
        if self.dist.is_main:
            line = f"step {self.step}: stopped early: {reason}"
            bar.write(line) if self.progress else print(line, flush=True)
        return reason

    def _plot(self) -> None:
        try:
            from genforge.plot import plot_run

            plot_run(self.run_dir)
        except (GenforgeError, ImportError) as e:  # curves are a convenience: never fail a finished run for them
            print(f"genforge: no loss curves ({e})", flush=True)
