"""Loading a trained model from its run directory alone (no training flags, no dataset)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genforge import GenforgeError
from genforge.config import RunConfig, config_from_dict
from genforge.data.spec import DataSpec
from genforge.train import checkpoint as ckpt
from genforge.train.distributed import pick_device


@dataclass
class LoadedRun:
    run_dir: Path
    config: RunConfig
    model_config: Any
    spec: DataSpec
    model: torch.nn.Module
    step: int
    tokenizer: Any = None  # text runs only
    used_ema: bool = False


def load_run(run_dir: str | Path, use_ema: bool = True, device: str = "auto",
             checkpoint: str = "auto") -> LoadedRun:
    """checkpoint: 'auto' (best validation if kept, else latest), 'best' or 'latest'."""
    from genforge.families import family_class

    run_dir = Path(run_dir)
    path = ckpt.require_checkpoint(run_dir, checkpoint)
    try:
        raw = json.loads((run_dir / "config.json").read_text())
        spec = DataSpec.from_json((run_dir / "spec.json").read_text())
    except (OSError, json.JSONDecodeError, TypeError) as e:
        raise GenforgeError(f"run '{run_dir}' has an unreadable config.json or spec.json ({e})") from None
    cfg, model_cfg = config_from_dict(raw)
    model = family_class(cfg.family)(model_cfg, spec)
    ema = use_ema and (path / "ema.safetensors").is_file()
    ckpt.load_weights(model, path, ema=False)
    if ema:
        ckpt.load_weights(model, path, ema=True)
    model.to(pick_device(device)).eval()
    tokenizer = None
    if (run_dir / "tokenizer.json").is_file():
        from genforge.data.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    return LoadedRun(run_dir, cfg, model_cfg, spec, model, ckpt.checkpoint_step(path), tokenizer, ema)
