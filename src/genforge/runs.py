"""Loading a trained model from its run directory alone (no training flags, no dataset).

Imports no trainer, so a server loads runs with ``genforge.runs`` and ``genforge.checkpoint``
only. The model is rebuilt from the config stored *in the checkpoint it loads*, so
``best``, ``latest`` and older checkpoints each come back with their own settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genforge import GenforgeError
from genforge import checkpoint as ckpt
from genforge.config import RunConfig, config_from_dict
from genforge.data.spec import DataSpec
from genforge.train.distributed import pick_device


@dataclass
class LoadedRun:
    run_dir: Path
    config: RunConfig
    model_config: Any
    spec: DataSpec
    model: torch.nn.Module
    step: int
    checkpoint: Path
    tokenizer: Any = None  # token runs only
    used_ema: bool = False


def load_run(run_dir: str | Path, use_ema: bool = True, device: str = "auto",
             checkpoint: str = "auto") -> LoadedRun:
    """checkpoint: 'auto' (best if kept, else latest), 'best', 'latest' or a folder name."""
    from genforge.families import build_model

    run_dir = Path(run_dir)
    target = pick_device(device, option="--device")  # before any loading: a wrong device fails fast
    path = ckpt.require_checkpoint(run_dir, checkpoint)
    manifest = ckpt.verify_checkpoint(path)
    cfg, model_cfg = config_from_dict(ckpt.checkpoint_config(path))
    try:
        spec = DataSpec.from_json((run_dir / "spec.json").read_text())
    except (OSError, ValueError, TypeError) as e:
        raise GenforgeError(f"run '{run_dir}' has an unreadable spec.json ({e})") from None
    model = build_model(cfg.family, model_cfg, spec)
    ckpt.load_weights(model, path)
    ema = use_ema and (path / ckpt.EMA_WEIGHTS).is_file()
    if ema:
        ckpt.load_ema_weights(model, path)
    model.to(target).eval()
    tokenizer = None
    if (run_dir / "tokenizer.json").is_file():
        from genforge.data.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(run_dir / "tokenizer.json")
    elif spec.vocab_size is not None:  # a token run: sampling crashed on the missing tokenizer
        raise GenforgeError(f"run '{run_dir}' has no tokenizer.json, which turns its {spec.modality} tokens "
                            "into text; put the run's tokenizer.json back (every token run writes one)")
    return LoadedRun(run_dir, cfg, model_cfg, spec, model, int(manifest["step"]), path, tokenizer, ema)
