"""The JSB recipes (issue #19): every preset loads, and the CPU and GPU JSB presets train as written."""

from __future__ import annotations

import math

import pytest
from helpers import train_losses
from tests.test_music import jsb_json

from genforge.cli import main
from genforge.config import PRESET_DIR, load_config

pytest.importorskip("pretty_midi")

PRESETS = sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def test_the_jsb_recipes_are_presets():
    assert {"gpt-jsb", "gpt-jsb-cpu", "gpt-jsb-gpu"} <= set(PRESETS)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_loads_and_describes_itself(name):
    cfg, model_cfg = load_config(name)
    assert cfg.description.strip() and model_cfg is not None


def test_cpu_recipe_schedule_ends_within_the_budget_it_names():
    """gpt-jsb-cpu is sized so its cosine schedule decays inside 10 quiet CPU minutes: fewer steps
    than gpt-jsb's 1500 (which the budget cut at 576), and a cheaper step than gpt-jsb's."""
    cpu, _ = load_config("gpt-jsb-cpu")
    base, _ = load_config("gpt-jsb")
    assert cpu.train.max_steps < base.train.max_steps
    assert cpu.train.warmup_steps < cpu.train.max_steps
    assert "10" in cpu.description and "minute" in cpu.description


@pytest.mark.parametrize("name", ["gpt-jsb-cpu", "gpt-jsb-gpu"])
def test_jsb_recipe_trains_as_written_on_tiny_chorales(name, tmp_path):
    """The preset's own model (layers, width, context, positions, dropout) on 6 tiny chorales;
    only the batch and the step count are cut, so the test stays a few seconds on a CPU."""
    data = jsb_json(tmp_path / "tiny.json", T=160)
    run = tmp_path / "run"
    assert main(["train", name, "--run-dir", str(run), "--no-progress", f"data.name={data}",
                 "train.max_steps=3", "train.batch_size=2", "train.eval_every=3", "train.eval_batches=1",
                 "train.checkpoint_every=3", "train.warmup_steps=1", "train.plot=false", "train.device=cpu"]) == 0
    losses = train_losses(run)
    assert losses and all(math.isfinite(x) for x in losses)
    assert (run / "checkpoints" / "latest").exists()
