"""Restoring a trainer from its run's latest checkpoint (``genforge train --resume``).

Weights, optimizer moments, EMA shadow, sampler position, RNG, step and the selection
state come back, so a resumed run continues the uninterrupted run's loss curve exactly
(tests/test_train.py). Hyperparameters come from today's config; the data (``data.*`` but
the training-split augmentations) stays the checkpoint's.
"""

from __future__ import annotations

import json
from typing import Any

from genforge import GenforgeError
from genforge import checkpoint as ckpt


def restore(t: Any) -> None:
    """Load ``t.run_dir``'s latest checkpoint into ``t``, a ``train.trainer.Trainer`` (not
    imported: the trainer imports this module), with its model, optimizers, EMA, batches,
    RNG, step, best score and early-stopping count; drop log rows written after it."""
    path = ckpt.require_checkpoint(t.run_dir, "latest")
    ckpt.verify_checkpoint(path)
    saved = ckpt.checkpoint_config(path)
    check_same_data(saved.get("data") or {}, t.cfg.data.model_dump(), path)
    seed = (saved.get("train") or {}).get("seed")
    if seed is not None and t.tc.seed != seed:  # recorded in config.json, yet it would change nothing
        raise GenforgeError(f"train.seed={t.tc.seed} on --resume: the run continues from the random state saved "
                            f"in {path.name} (it started from train.seed={seed}), so a new seed changes nothing; "
                            "drop it, or train a new run for another seed")
    ckpt.load_weights(t.model, path)
    state = ckpt.load_train_state(path)
    try:
        for name, opt in t.optimizers.items():
            # Hyperparameters come from today's config (a resume may change them); moments
            # and step counts from the checkpoint.
            fresh = [{k: g[k] for k in ("base_lr", "betas", "weight_decay")} for g in opt.param_groups]
            opt.load_state_dict(state["optimizers"][name])
            for group, settings in zip(opt.param_groups, fresh, strict=True):
                group.update(settings)
    except (KeyError, ValueError) as e:
        raise GenforgeError(f"checkpoint {path} has no matching optimizer state ({e}); was it "
                            "trained with another family or model settings?") from None
    shadow = ckpt.read_ema_state(path) if t.ema is not None else None
    if shadow is not None:  # None: EMA switched on for a resumed run starts from the weights
        try:
            t.ema.load_state_dict(shadow)
        except ValueError:
            raise GenforgeError(f"checkpoint {path}: its EMA weights do not match the model") from None
    try:
        t.batches.load_state_dict(state["batches"])
    except (KeyError, ValueError, TypeError) as e:  # e.g. an RL run's rollout state
        raise GenforgeError(f"checkpoint {path} was written by another kind of run (its batch "
                            f"state lacks {e}); an RL run continues with `genforge rl --resume "
                            f"{t.run_dir}`") from None
    ckpt.set_rng_state(state["rng"])
    t.step = int(state["step"])
    if t.step >= t.tc.max_steps:
        raise GenforgeError(f"run '{t.run_dir}' is already at step {t.step} "
                            f"(train.max_steps={t.tc.max_steps}); resume with a larger "
                            "train.max_steps to continue it")
    t.best_score = state.get("best_score")
    t.early_stop.load_state_dict(state.get("early_stop"), t.run_dir, t.step)
    # Drop log rows written after this checkpoint (a crash between checkpoints).
    log = t.run_dir / "metrics.jsonl"
    if t.dist.is_main and log.is_file():
        rows = [r for r in log.read_text().splitlines() if r and json.loads(r)["step"] <= t.step]
        ckpt.atomic_write_text(log, "".join(r + "\n" for r in rows))


# Augmentations of the training split: a resumed run may turn them on or off.
DATA_CHANGEABLE = frozenset({"hflip", "transpose"})


def check_same_data(then: dict[str, Any], now: dict[str, Any], path) -> None:
    """Refuse a resume whose ``data.*`` settings define other data than the checkpoint's: another
    dataset, split (``val_fraction`` moves trained examples into the test split) or vocabulary
    (token ids that mean other characters) would continue the run silently on the wrong data."""
    from genforge.config import DataConfig

    then = DataConfig(**{k: v for k, v in then.items() if k in DataConfig.model_fields}).model_dump()
    for key, value in now.items():
        if key not in DATA_CHANGEABLE and key in then and value != then[key]:
            raise GenforgeError(f"data.{key}={value!r} on --resume: the run was trained with "
                                f"data.{key}={then[key]!r} ({path.name}), and its data, splits and "
                                "vocabulary stay fixed (only data.hflip and data.transpose may change); "
                                "train a new run for other data")
