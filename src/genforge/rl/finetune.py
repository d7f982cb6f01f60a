"""`genforge rl`: fine-tune a trained run against rewards, into a new run directory.

The loop is the generic trainer's; what RL adds is a batch source, :class:`Rollouts`
(``rl/rollouts.py``), that samples from the current policy, scores the samples (counting oracle calls),
applies the diversity filter, computes advantages, watches the guard rails and hands
the trainer a batch for the policy's loss. Its state (generator, prompt order, filter
memory, reward cache, KL coefficient, the current rollout) is checkpointed, so a resumed
run continues exactly.

An RL run directory is a run directory of the base family (``sample``/``eval`` load it
like any run) plus ``reference/`` (the frozen starting weights, so the run does not
depend on the base run staying put) and, for molecules, ``oracle.csv`` (every counted oracle
call, in call order: each distinct canonical SMILES of a training rollout, invalid ones
never; what PMO's top-k and AUC are computed from). ``oracle.csv`` is rewritten atomically
with every checkpoint, so after Ctrl-C it matches the checkpoint's ``oracle_calls``.

With one prompt (or none: unconditional molecules, images) every sample of a rollout comes
from the same distribution, so the group baselines (RLOO, GRPO, DDPO) are the batch's and
``--group-size`` does not apply. With ``grad_accum`` k, one optimizer step takes k rollouts
and ``updates_per_rollout`` counts optimizer steps on them.

A reward that fails mid-run stops it with one line: a run with a checkpoint continues with
``genforge rl --resume RUN`` once the reward is fixed; one without is removed, so the same
command can simply be run again.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from genforge import GenforgeError
from genforge import checkpoint as ckpt
from genforge.atomic import atomic_write_text
from genforge.config import RLConfig, RunConfig, TrainConfig, config_from_dict, validate
from genforge.rl.diversity import DiversityFilter
from genforge.rl.policy import DiffusionPolicy, policy_class
from genforge.rl.prompts import load_prompts
from genforge.rl.rewards import Reward, RewardError, build_reward
from genforge.rl.rollouts import Rollouts, oracle_summary, policy_device
from genforge.rl.specs import rl_spec
from genforge.train.trainer import Trainer

# The trainer's settings an RL run starts from (any train.* override replaces them):
# a small constant LR, no weight decay toward zero (the KL term keeps the policy near
# the reference), no EMA (the policy must be the one that was sampled from).
RL_TRAIN_DEFAULTS = {"lr": 1e-4, "min_lr": 1e-4, "lr_schedule": "constant", "warmup_steps": 0,
                     "weight_decay": 0.0, "ema_decay": 0.0, "batch_size": 64, "grad_accum": 1,
                     "eval_batches": 4, "log_every": 1}


# --------------------------------------------------------------------------- set-up


def _diversity_filter(settings: RLConfig, modality: str) -> DiversityFilter | None:
    if settings.diversity_filter is None:
        return None
    keys = rl_spec(modality).filter_keys
    if keys is None:
        raise GenforgeError(f"--diversity-filter buckets SMILES scaffolds or text n-grams; {modality} samples "
                            "have neither (watch --min-diversity instead)")
    return DiversityFilter(keys, settings.diversity_filter)


def _check_settings(settings: RLConfig, family_policy: type, prompt_count: int, fresh: bool) -> None:
    """Refuse what cannot work or would be ignored. ``fresh``: a new run (the options the user
    gave are ``settings.model_fields_set``); a resumed run was checked when it started."""
    ddpo = issubclass(family_policy, DiffusionPolicy)
    if ddpo and settings.algo != "ddpo":
        raise GenforgeError(f"diffusion runs are fine-tuned with --algo ddpo, not {settings.algo}")
    if not ddpo and settings.algo == "ddpo":
        raise GenforgeError("--algo ddpo fine-tunes diffusion runs; token runs use reinforce, rloo or grpo")
    if ddpo and settings.max_new_tokens is not None:
        raise GenforgeError("--max-new-tokens applies to token runs, not diffusion")
    if not ddpo and (settings.sampling_steps != RLConfig.model_fields["sampling_steps"].default
                     or settings.timestep_fraction != 1.0):
        raise GenforgeError("--sampling-steps and --timestep-fraction apply to DDPO (diffusion runs)")
    if settings.algo in ("rloo", "grpo", "ddpo") and prompt_count > 1 and settings.group_size < 2:
        raise GenforgeError(f"{settings.algo} needs --group-size >= 2 (its baseline is the group's other samples)")
    if fresh and "group_size" in settings.model_fields_set:
        if settings.algo == "reinforce":
            raise GenforgeError("--group-size applies to rloo, grpo and ddpo; reinforce uses the batch mean")
        if prompt_count == 1:
            raise GenforgeError("--group-size applies with several prompts (samples per prompt); with one "
                                "prompt or none, every sample shares it and the baseline is the whole batch "
                                "(drop --group-size)")


def _base_checkpoint(base_run: Path, which: str) -> Path:
    path = ckpt.require_checkpoint(base_run, which)
    ckpt.verify_checkpoint(path)
    return path


def _same_data(base_run: Path, data) -> None:
    """The base run's tokenizer must be the one the data builds now (same ids, same meaning)."""
    saved = base_run / "tokenizer.json"
    if not saved.is_file():
        return
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        data.save(Path(tmp))
        now = Path(tmp) / "tokenizer.json"
        if now.is_file() and now.read_text() != saved.read_text():
            raise GenforgeError(f"the data of base run '{base_run}' no longer builds the tokenizer it was "
                                "trained with (did the dataset change?)")


def finetune(base_run: str | Path | None, settings: RLConfig | None, run_dir: str | Path, *,
             train_overrides: dict[str, Any] | None = None, resume: bool = False, overwrite: bool = False,
             checkpoint: str = "auto", stop_after: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune ``base_run`` with ``settings`` into ``run_dir`` (or resume ``run_dir``).

    From Python::

        from genforge.config import RLConfig
        from genforge.rl.finetune import finetune
        finetune("runs/shakespeare", RLConfig(base_run="runs/shakespeare", reward=["sentiment"]),
                 "runs/shakespeare-rl", train_overrides={"max_steps": 200})
    """
    from genforge.families import build_model, family_class
    from genforge.modalities import load_data

    run_dir = Path(run_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GenforgeError("RL fine-tuning runs in one process; start it without torchrun")
    if resume:
        raw = ckpt.checkpoint_config(ckpt.require_checkpoint(run_dir, "latest"))
        if train_overrides:
            raw["train"] = {**raw["train"], **train_overrides}
        cfg, model_cfg = config_from_dict(raw)
        if cfg.rl is None:
            raise GenforgeError(f"'{run_dir}' is not an RL run; continue it with `genforge train --resume`")
        settings = cfg.rl
        base_path = run_dir / "reference"
        try:
            ckpt.verify_checkpoint(base_path)
        except GenforgeError as e:  # its advice, "delete that checkpoint folder", would lose the run
            why = str(e).partition("(")[2].rpartition(")")[0] or str(e)
            raise GenforgeError(f"'{base_path}' (the starting weights every KL is measured against) is missing "
                                f"or damaged ({why}); this RL run cannot continue without it: restore it, or "
                                f"start a new run from {settings.base_run}") from None
    else:
        base_run = Path(base_run)
        _refuse_overlap(run_dir, base_run)
        base_path = _base_checkpoint(base_run, checkpoint)
        base_cfg = validate(RunConfig, ckpt.checkpoint_config(base_path))
        overrides = dict(train_overrides or {})
        steps = int(overrides.get("max_steps", base_cfg.train.max_steps))
        # Evaluate ~10 times and checkpoint ~5 times per run unless told otherwise.
        paced = {"eval_every": max(1, steps // 10), "checkpoint_every": max(1, steps // 5)}
        if "lr" in overrides and "min_lr" not in overrides:  # the constant schedule: the floor is the LR
            overrides["min_lr"] = min(overrides["lr"], RL_TRAIN_DEFAULTS["min_lr"])
        train = {**base_cfg.train.model_dump(), **RL_TRAIN_DEFAULTS, **paced, **overrides}
        cls = policy_class(family_class(base_cfg.family))
        default_algo = "ddpo" if issubclass(cls, DiffusionPolicy) else "grpo"
        settings = settings.model_copy(update={"base_run": str(base_run), "base_checkpoint": base_path.name,
                                               "algo": settings.algo or default_algo})
        raw = {**base_cfg.model_dump(), "train": validate(TrainConfig, train, "train").model_dump(),
               "rl": settings.model_dump()}
        cfg, model_cfg = config_from_dict(raw)
    cls = policy_class(family_class(cfg.family))
    data = load_data(cfg.data, cls.data_needs(model_cfg))
    modality = data.spec.modality
    prompts = load_prompts(settings, data, modality)
    _check_settings(settings, cls, len(prompts) if prompts is not None else 1, fresh=not resume)
    if not resume:
        _same_data(Path(settings.base_run), data)
    torch.manual_seed(cfg.train.seed)
    reference = build_model(cfg.family, model_cfg, data.spec)
    _load_sampling_weights(reference, base_path)
    policy = cls(model_cfg, data.spec)
    policy.load_state_dict(reference.state_dict())  # start where the reference is
    reward = build_reward(settings.reward, settings.reward_args, modality, data)
    policy.attach(reference, reward, settings, data, prompts)
    rollouts = Rollouts(policy, reward, settings, cfg.train.batch_size, cfg.train.seed, modality,
                        _diversity_filter(settings, modality), cfg.train.grad_accum)
    if not resume:  # a reward that breaks its contract fails here, before a folder exists (not counted)
        preflight = policy.rollout_batch([0, 0], torch.Generator(device=policy_device(policy)).manual_seed(0))
        reward(preflight.samples, policy.rl_columns([0, 0]), counted=False)
    trainer = RLTrainer(cfg, policy, data, run_dir, resume=resume, overwrite=overwrite, stop_after=stop_after,
                        progress=progress, batches=rollouts, eval_at_start=True,
                        resume_command="genforge rl --resume")
    if not resume:
        _save_reference(run_dir, base_path)
    try:
        result = trainer.fit()
    except RewardError as e:
        raise _after_reward_failure(e, run_dir, resume) from None
    never = reward.never_applied()
    if never and trainer.step > 0:
        print(f"genforge: warning: reward {', '.join(never)} returned None for every training sample of this "
              "run; it never applied", flush=True)
    if reward.cache:
        result.update(oracle_summary(reward, settings.max_oracle_calls))
    result["oracle_calls"] = reward.calls
    return result


class RLTrainer(Trainer):
    """The generic trainer, plus ``oracle.csv`` rewritten (atomically) with every checkpoint,
    so it always matches the checkpoint's oracle count, also after Ctrl-C."""

    def save(self, best: bool = False) -> None:
        super().save(best)
        reward = self.batches.reward
        if self.dist.is_main and reward.cache:
            write_oracle_file(self.run_dir / "oracle.csv", reward)


def _refuse_overlap(run_dir: Path, base_run: Path) -> None:
    """Writing the RL run into the base run, around it or inside it would let --overwrite (or
    the run itself) clobber the base the run starts from and copies: refused before anything
    is touched. Paths are compared resolved (symlinks, ``..``)."""
    run, base = run_dir.resolve(), base_run.resolve()
    if run == base or base.is_relative_to(run) or run.is_relative_to(base):
        where = "is" if run == base else "contains" if base.is_relative_to(run) else "lies inside"
        raise GenforgeError(f"--run-dir '{run_dir}' {where} the base run '{base_run}'; write the RL run to a "
                            "folder of its own (the default is BASE_RUN-rl-TIMESTAMP beside it)")


def _after_reward_failure(e: RewardError, run_dir: Path, resume: bool) -> RewardError:
    """A reward that failed mid-run: keep a run that has a checkpoint (resumable), remove one
    that has none (this call made it: a claimed folder is new, empty or a cleared run), so
    neither a half-made run nor a forced --overwrite is left to the user."""
    last = ckpt.latest_checkpoint(run_dir)
    if last is not None:
        return RewardError(f"{e}. The run is kept at {last.name}: fix the reward, then continue it with "
                           f"`genforge rl --resume {run_dir}`")
    if not resume:
        shutil.rmtree(run_dir, ignore_errors=True)
    return RewardError(f"{e}. No checkpoint was written, so '{run_dir}' was removed: fix the reward and run "
                       "the same command again")



def _load_sampling_weights(model: torch.nn.Module, path: Path) -> None:
    """The weights the base run samples with: EMA where it kept EMA, else the raw weights."""
    ckpt.load_weights(model, path)
    if (path / ckpt.EMA_WEIGHTS).is_file():
        ckpt.load_ema_weights(model, path)


def _save_reference(run_dir: Path, base_path: Path) -> None:
    """Copy the starting checkpoint into RUN/reference (via a hidden folder and a rename)."""
    target = run_dir / "reference"
    if target.exists():
        shutil.rmtree(target)
    tmp = run_dir / ".reference.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base_path, tmp)
    tmp.rename(target)


def write_oracle_file(path: Path, reward: Reward) -> None:
    """One row per counted oracle call, in call order: the canonical SMILES (the cache key)."""
    rows = ["call,smiles,score," + ",".join(reward.names)]
    for i, (key, values) in enumerate(reward.scored.items(), 1):
        smiles = key[0] if isinstance(key, tuple) else key  # (canonical, prompt columns) when a term reads them
        total = reward.total(values)
        cells = ["" if v is None else f"{v:.6g}" for v in values]
        rows.append(f"{i},{smiles},{total:.6g}," + ",".join(cells))
    atomic_write_text(path, "\n".join(rows) + "\n")
