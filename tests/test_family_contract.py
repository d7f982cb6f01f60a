"""Contract tests run over every family: whatever the family, the trainer, run
directories, resume and previews behave the same. A new family joins FAMILY_CASES."""

import json

import pytest
import torch

from helpers import make_trainer
from genforge.config import load_config
from genforge.families import FAMILIES
from genforge.families.base import GenerativeModel
from genforge.runs import load_run
from genforge.checkpoint import latest_checkpoint
from genforge.train.trainer import Trainer

COMMON = ["train.batch_size=8", "train.warmup_steps=2", "train.log_every=1", "train.eval_every=3",
          "train.eval_batches=2", "train.checkpoint_every=1000", "train.ema_decay=0.9"]


def gpt_case(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("all the world's a stage, and all the men and women merely players.\n" * 60)
    return "gpt-demo", [f"data.name={corpus}", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
                        "model.block_size=16"]


def vae_case(tmp_path):
    return "vae-digits", ["model.latent_dim=4", "model.channels=[8, 8]", "model.hidden=32",
                          "model.kl_warmup_steps=4"]


FAMILY_CASES = {"gpt": gpt_case, "vae": vae_case}


def test_every_registered_family_has_a_contract_case():
    assert set(FAMILY_CASES) == set(FAMILIES)


def train(tmp_path, family, name, *extra, **kwargs):
    preset, overrides = FAMILY_CASES[family](tmp_path)
    cfg, mcfg = load_config(preset, [*overrides, *COMMON, *extra])
    trainer = make_trainer(cfg, mcfg, tmp_path / name, progress=False, **kwargs)
    return trainer, trainer.fit()


def train_losses(run_dir):
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "split" not in r]


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_family_contract(family, tmp_path):
    trainer, result = train(tmp_path, family, "run", "train.max_steps=6")
    model = trainer.model
    assert isinstance(model, GenerativeModel) and isinstance(model.Config.__name__, str)
    # forward: a scalar training objective
    batch = trainer._to_device(trainer.data.train.get(torch.arange(4)))
    out = model(batch)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    # evaluation reports the objective; the trainer logged one row per step
    assert "loss" in model.evaluate([batch]) and len(train_losses(tmp_path / "run")) == 6
    # previews: text for token families, an image batch in the spec's shape otherwise
    preview = model.preview(trainer.data, torch.Generator().manual_seed(0))
    if trainer.data.spec.modality == "text":
        assert isinstance(preview, str) and preview
    else:
        assert preview.shape[1:] == trainer.data.spec.shape
    assert any((tmp_path / "run" / "samples").iterdir())
    # the run directory alone rebuilds the trained weights
    loaded = load_run(tmp_path / "run", use_ema=False, checkpoint="latest").model
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert result["step"] == 6 and latest_checkpoint(tmp_path / "run").name == "step_0000006"


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_family_resume_is_exact(family, tmp_path):
    train(tmp_path, family, "straight", "train.max_steps=7")
    train(tmp_path, family, "paused", "train.max_steps=7", stop_after=4)
    train(tmp_path, family, "paused", "train.max_steps=7", resume=True)
    assert train_losses(tmp_path / "straight") == train_losses(tmp_path / "paused")
    assert len(train_losses(tmp_path / "paused")) == 7
