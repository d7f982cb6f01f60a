"""Small helpers shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path


def make_trainer(cfg, model_cfg, run_dir, **kwargs):
    """Build model and data from the config, then a Trainer over them (as the CLI does)."""
    from genforge.train.trainer import Trainer, build

    model, data = build(cfg, model_cfg)
    return Trainer(cfg, model, data, Path(run_dir), **kwargs)


def train_losses(run_dir) -> list[float]:
    rows = [json.loads(r) for r in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "split" not in r]
