"""The generic trainer on a tiny GPT: learning, checkpoints, exact resume, failures, DDP."""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import make_trainer
from genforge import GenforgeError, Interrupted
from genforge.config import load_config
from genforge.families.gpt import GPT
from genforge.runs import load_run
from genforge.checkpoint import latest_checkpoint
from genforge.train.trainer import Trainer

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
        "train.batch_size=4", "train.warmup_steps=2", "train.eval_every=0", "train.log_every=1",
        "train.checkpoint_every=1000", "train.lr=3e-3"]


def tiny(corpus, *extra):
    return load_config("gpt-demo", [f"data.name={corpus}", *TINY, *extra])


def losses(run_dir):
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "split" not in r]


def test_loss_decreases_on_a_fixed_batch(corpus):
    cfg, mcfg = tiny(corpus)
    from genforge.data import load_data

    data = load_data(cfg.data, mcfg)
    torch.manual_seed(0)
    model = GPT(mcfg, data.spec)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = data.train.get(torch.arange(8))
    first = model(batch)["loss"].item()
    for _ in range(60):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_training_writes_a_complete_run_dir(corpus, tmp_path):
    cfg, mcfg = tiny(corpus, "train.max_steps=6", "train.eval_every=3", "train.ema_decay=0.9")
    result = make_trainer(cfg, mcfg, tmp_path / "run", progress=False).fit()
    run = tmp_path / "run"
    for name in ["config.json", "spec.json", "tokenizer.json", "metrics.jsonl", "samples/step_0000003.txt"]:
        assert (run / name).is_file(), name
    ckpt = latest_checkpoint(run)
    assert ckpt.name == "step_0000006"
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "ema.safetensors", "state.pt"}
    assert result["step"] == 6 and "loss" in result
    # round trip: the loaded model's weights equal the trained ones, EMA differs from raw
    raw = load_run(run, use_ema=False, checkpoint="latest").model
    ema = load_run(run, use_ema=True, checkpoint="latest").model
    assert not torch.equal(raw.tok_emb.weight, ema.tok_emb.weight)
    from safetensors.torch import load_file

    saved = load_file(str(ckpt / "ema.safetensors"))
    assert torch.equal(ema.tok_emb.weight, saved["tok_emb.weight"])


def test_best_validation_checkpoint_is_kept(corpus, tmp_path):
    cfg, mcfg = tiny(corpus, "train.max_steps=9", "train.eval_every=3")
    result = make_trainer(cfg, mcfg, tmp_path / "run", progress=False).fit()
    evals = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"split"' in r]
    best = min(evals, key=lambda r: r["loss"])
    assert result["best_val_loss"] == best["loss"]
    assert load_run(tmp_path / "run").step == best["step"]  # sample/eval default to the best
    assert load_run(tmp_path / "run", checkpoint="latest").step == 9


def test_resume_reproduces_the_uninterrupted_loss_curve(corpus, tmp_path):
    cfg, mcfg = tiny(corpus, "train.max_steps=12", "model.dropout=0.1")
    make_trainer(cfg, mcfg, tmp_path / "a", progress=False).fit()
    make_trainer(cfg, mcfg, tmp_path / "b", stop_after=5, progress=False).fit()
    assert latest_checkpoint(tmp_path / "b").name == "step_0000005"
    assert len(losses(tmp_path / "b")) == 5
    make_trainer(cfg, mcfg, tmp_path / "b", resume=True, progress=False).fit()
    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert len(a) == 12 and a == b


def test_ctrl_c_saves_and_resume_continues(corpus, tmp_path, monkeypatch):
    cfg, mcfg = tiny(corpus, "train.max_steps=8")
    original = GPT.train_step
    calls = {"n": 0}

    def interrupting(self, micro, ctx):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return original(self, micro, ctx)

    monkeypatch.setattr(GPT, "train_step", interrupting)
    with pytest.raises(Interrupted, match="--resume"):
        make_trainer(cfg, mcfg, tmp_path / "r", progress=False).fit()
    assert latest_checkpoint(tmp_path / "r").name == "step_0000003"
    monkeypatch.setattr(GPT, "train_step", original)
    assert make_trainer(cfg, mcfg, tmp_path / "r", resume=True, progress=False).fit()["step"] == 8


def test_nan_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    cfg, mcfg = tiny(corpus, "train.max_steps=10", "train.checkpoint_every=2")
    original = GPT.forward
    calls = {"n": 0}

    def poisoned(self, batch, **kw):
        calls["n"] += 1
        out = original(self, batch, **kw)
        return {"loss": out["loss"] * float("nan")} if calls["n"] > 5 else out

    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(GenforgeError, match="loss became nan at step 5.*step_0000004"):
        make_trainer(cfg, mcfg, tmp_path / "n", progress=False).fit()
    assert latest_checkpoint(tmp_path / "n").name == "step_0000004"


def test_gradient_accumulation_matches_a_bigger_batch(corpus, tmp_path):
    one, m1 = tiny(corpus, "train.max_steps=3", "train.batch_size=8")
    acc, m2 = tiny(corpus, "train.max_steps=3", "train.batch_size=4", "train.grad_accum=2")
    t1 = make_trainer(one, m1, tmp_path / "one", progress=False)
    t2 = make_trainer(acc, m2, tmp_path / "acc", progress=False)
    before = t1.model.tok_emb.weight.detach().clone()
    batch = t1.data.train.get(torch.arange(8))
    t1.model.train_step([t1._to_device(batch)], t1.ctx)
    t2.model.train_step([t2.data.train.get(torch.arange(4)), t2.data.train.get(torch.arange(4, 8))], t2.ctx)
    for p, q in zip(t1.model.parameters(), t2.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)
    assert not torch.equal(before, t1.model.tok_emb.weight)


def test_ddp_two_processes_match_one_process_with_the_global_batch(corpus, tmp_path):
    common = [f"data.name={corpus}", *TINY, "train.max_steps=4", "train.log_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "genforge.cli", "train", "gpt-demo", *common, "train.batch_size=4",
         "--run-dir", str(tmp_path / "ddp"), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=240)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    single_cfg, single_m = load_config("gpt-demo", [*common, "train.batch_size=8"])
    make_trainer(single_cfg, single_m, tmp_path / "one", progress=False).fit()
    assert len(losses(tmp_path / "ddp")) == 4  # only rank 0 logged
    a = load_run(tmp_path / "ddp").model.state_dict()
    b = load_run(tmp_path / "one").model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k
