"""The generic trainer on a tiny GPT: learning, checkpoints, exact resume, failures, DDP."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import make_trainer, on, subprocess_env
from helpers import train_losses as losses

from genforge import GenforgeError
from genforge.checkpoint import latest_checkpoint
from genforge.cli import main
from genforge.config import load_config
from genforge.families.gpt import GPT
from genforge.runs import load_run

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
        "train.batch_size=4", "train.warmup_steps=2", "train.eval_every=0", "train.log_every=1",
        "train.checkpoint_every=1000", "train.lr=3e-3"]


def tiny(corpus, *extra):
    return load_config("gpt-demo", [f"data.name={corpus}", *TINY, *extra])



def test_loss_decreases_on_a_fixed_batch(corpus):
    cfg, mcfg = tiny(corpus)
    from genforge.modalities import load_data

    data = load_data(cfg.data, GPT.data_needs(mcfg))
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
    assert {p.name for p in ckpt.iterdir()} == {"model.safetensors", "ema.safetensors", "state.pt",
                                                "config.json", "manifest.json"}
    assert result["step"] == 6 and "loss" in result
    # round trip: the loaded model's weights equal the trained ones, EMA differs from raw
    raw = load_run(run, use_ema=False, checkpoint="latest").model
    ema = load_run(run, use_ema=True, checkpoint="latest").model
    assert not torch.equal(raw.tok_emb.weight, ema.tok_emb.weight)
    from safetensors.torch import load_file

    saved = load_file(str(ckpt / "ema.safetensors"))
    assert torch.equal(ema.tok_emb.weight.cpu(), saved["tok_emb.weight"])


def test_best_validation_checkpoint_is_kept(corpus, tmp_path):
    cfg, mcfg = tiny(corpus, "train.max_steps=9", "train.eval_every=3")
    result = make_trainer(cfg, mcfg, tmp_path / "run", progress=False).fit()
    evals = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if '"split"' in r]
    best = min(evals, key=lambda r: r["loss"])
    assert result["best_score"] == best["loss"]
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


def test_nan_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    cfg, mcfg = tiny(corpus, "train.max_steps=10", "train.checkpoint_every=2")
    original = GPT.forward
    calls = {"n": 0}

    def poisoned(self, batch, **kw):
        calls["n"] += 1
        out = original(self, batch, **kw)
        return {"loss": out["loss"] * float("nan")} if calls["n"] > 5 else out

    monkeypatch.setattr(GPT, "forward", poisoned)
    with pytest.raises(GenforgeError, match="loss became nan at step 6.*step_0000004"):
        make_trainer(cfg, mcfg, tmp_path / "n", progress=False).fit()
    assert latest_checkpoint(tmp_path / "n").name == "step_0000004"


def test_gradient_accumulation_matches_a_bigger_batch(corpus, tmp_path):
    one, m1 = tiny(corpus, "train.max_steps=3", "train.batch_size=8")
    acc, m2 = tiny(corpus, "train.max_steps=3", "train.batch_size=4", "train.grad_accum=2")
    t1 = make_trainer(one, m1, tmp_path / "one", progress=False)
    t2 = make_trainer(acc, m2, tmp_path / "acc", progress=False)
    before = t1.model.tok_emb.weight.detach().clone()
    batch = on(t1.data.train.get(torch.arange(8)), t1.model)
    t1.model.train_step([batch], t1.ctx)
    t2.model.train_step([on(t2.data.train.get(torch.arange(4)), t2.model), on(t2.data.train.get(torch.arange(4, 8)), t2.model)], t2.ctx)
    for p, q in zip(t1.model.parameters(), t2.model.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)
    assert not torch.equal(before, t1.model.tok_emb.weight)


def test_ddp_two_processes_match_one_process_with_alternating_optimizers(tmp_path):
    """DDP with the toy family (two optimizers stepping in turn, a frozen part): 2 processes
    with batch B end with the weights of 1 process with batch 2B. No retries: a generous
    timeout, and stderr in the failure message."""
    toy = str(Path(__file__).with_name("toy-digits.toml"))
    # on the CPU (gloo) whatever the test device: two ranks need two GPUs otherwise
    common = ["train.max_steps=3", "train.log_every=1", "train.eval_every=0", "train.plot=false", "train.device=cpu"]
    env = subprocess_env()
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "genforge.cli", "train", toy, *common, "train.batch_size=8",
         "--run-dir", str(tmp_path / "ddp"), "--no-progress"],
        capture_output=True, text=True, env=env, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single_cfg, single_m = load_config(toy, [*common, "train.batch_size=16"])
    make_trainer(single_cfg, single_m, tmp_path / "one", progress=False).fit()
    assert len(losses(tmp_path / "ddp")) == 3  # only rank 0 logged
    a = load_run(tmp_path / "ddp", checkpoint="latest", device="cpu").model.state_dict()
    b = load_run(tmp_path / "one", checkpoint="latest", device="cpu").model.state_dict()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


# ------------------------------------------------------------------ signals: exact resume


def _cli(*args, **kw):
    env = subprocess_env()
    return subprocess.Popen([sys.executable, "-m", "genforge", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_real_signal_mid_run_saves_and_resume_is_exact(corpus, tmp_path, sig, code):
    args = [f"data.name={corpus}", *TINY, "train.max_steps=400", "model.dropout=0.1", "train.plot=false",
            "--no-progress"]
    straight = _cli("train", "gpt-demo", *args, "--run-dir", str(tmp_path / "a"))
    paused = _cli("train", "gpt-demo", *args, "--run-dir", str(tmp_path / "b"))
    log = tmp_path / "b" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.is_file() and len(log.read_text().splitlines()) >= 20):
        time.sleep(0.05)
    paused.send_signal(sig)
    _, err = paused.communicate(timeout=120)
    assert paused.returncode == code, err
    assert "checkpoint saved" in err and "Traceback" not in err
    stopped_at = len(losses(tmp_path / "b"))
    assert 20 <= stopped_at < 400 and latest_checkpoint(tmp_path / "b").name == f"step_{stopped_at:07d}"
    resumed = _cli("train", "--resume", str(tmp_path / "b"), "--no-progress")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read()
    assert straight.wait(timeout=300) == 0
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # bit for bit, every step


# ------------------------------------------------------------------ run-directory integrity


def test_a_failed_resume_leaves_the_run_untouched(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "gpt-demo", f"data.name={corpus}", *TINY, "train.max_steps=3", "train.plot=false",
                 "--run-dir", str(run), "--no-progress"]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(run), "model.n_layer=2", "--no-progress"]) == 2
    assert "does not match the model" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(["sample", str(run), "--max-new-tokens", "5", "--seed", "0", "--no-stream"]) == 0


def test_resume_refuses_data_settings_that_change_the_runs_data(tmp_path, capsys):
    """`--resume RUN data.val_fraction=0.3` re-split digits silently: images the run had trained
    on moved into its test split (and data.json was rewritten to match, so eval never knew)."""
    run = tmp_path / "run"
    toy = str(Path(__file__).with_name("toy-digits.toml"))
    assert main(["train", toy, "train.max_steps=2", "train.plot=false", "--run-dir", str(run),
                 "--no-progress"]) == 0
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    # train.seed too: it was recorded in config.json, but the restored random state ignores it
    for change in ("data.val_fraction=0.3", "data.pixel_range=[-1, 1]", "train.seed=7"):
        assert main(["train", "--resume", str(run), "train.max_steps=4", change, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert f"{change.split('=')[0]}=" in err and "train a new run" in err and err.count("\n") == 1
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
    assert main(["train", "--resume", str(run), "train.max_steps=3", "data.hflip=true", "--no-progress"]) == 0


def test_each_checkpoint_carries_its_config_and_load_run_uses_it(corpus, tmp_path):
    cfg, mcfg = tiny(corpus, "train.max_steps=4", "train.eval_every=2", "train.plot=false")
    make_trainer(cfg, mcfg, tmp_path / "r", progress=False).fit()
    cfg2, mcfg2 = tiny(corpus, "train.max_steps=8", "train.eval_every=2", "train.plot=false", "train.lr=1e-3")
    make_trainer(cfg2, mcfg2, tmp_path / "r", resume=True, progress=False).fit()
    latest = load_run(tmp_path / "r", checkpoint="latest")
    assert latest.config.train.lr == 1e-3 and latest.config.train.max_steps == 8
    early = [p.name for p in (tmp_path / "r" / "checkpoints").glob("best-step_*")]
    if early and int(early[0].split("_")[-1]) <= 4:  # a best from before the resume keeps its config
        assert load_run(tmp_path / "r", checkpoint="best").config.train.lr == 3e-3


def test_corrupted_tensor_bytes_behind_an_intact_header_are_an_error(corpus, tmp_path):
    cfg, mcfg = tiny(corpus, "train.max_steps=2", "train.plot=false")
    make_trainer(cfg, mcfg, tmp_path / "r", progress=False).fit()
    weights = latest_checkpoint(tmp_path / "r") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = b"\xff" * 8  # tensor bytes, not the header: safetensors alone would load it
    weights.write_bytes(bytes(data))
    with pytest.raises(GenforgeError, match="sha256"):
        load_run(tmp_path / "r", checkpoint="latest")


def test_a_non_empty_run_directory_is_refused_unless_resume_or_overwrite(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["gpt-demo", f"data.name={corpus}", *TINY, "train.max_steps=2", "train.plot=false",
              "--run-dir", str(run), "--no-progress"]
    assert main(["train", *common]) == 0
    first = (latest_checkpoint(run) / "model.safetensors").read_bytes()
    assert main(["train", *common]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (latest_checkpoint(run) / "model.safetensors").read_bytes() == first
    assert main(["train", *common, "--overwrite", "train.seed=5"]) == 0
    assert (latest_checkpoint(run) / "model.safetensors").read_bytes() != first
    assert len(losses(run)) == 2  # the old log went with the old run


def test_two_trainings_on_one_folder_cannot_both_run(corpus, tmp_path):
    from genforge.checkpoint import RunLock

    run = tmp_path / "run"
    run.mkdir()
    held = RunLock(run).acquire()
    cfg, mcfg = tiny(corpus, "train.max_steps=2")
    with pytest.raises(GenforgeError, match="being trained by process"):
        make_trainer(cfg, mcfg, run, progress=False)
    held.release()
    make_trainer(cfg, mcfg, run, progress=False).fit()


def test_a_failed_train_leaves_no_folder(corpus, tmp_path, capsys):
    assert main(["train", "gpt-demo", "data.name=/no/such/corpus", "--run-dir", str(tmp_path / "a")]) == 2
    assert main(["train", "gpt-demo", f"data.name={corpus}", *TINY, "train.optim.nope.lr=1e-3",
                 "--run-dir", str(tmp_path / "b")]) == 2
    assert "no optimizer 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_best_is_replaced_atomically_and_only_one_is_kept(corpus, tmp_path):
    cfg, mcfg = tiny(corpus, "train.max_steps=12", "train.eval_every=2", "train.plot=false")
    make_trainer(cfg, mcfg, tmp_path / "r", progress=False).fit()
    folder = tmp_path / "r" / "checkpoints"
    bests = list(folder.glob("best-step_*"))
    assert len(bests) == 1 and (folder / "best").read_text() == bests[0].name
    assert not list(folder.glob(".tmp-*"))


def test_no_progress_still_prints_one_line_per_evaluation(corpus, tmp_path, capsys):
    assert main(["train", "gpt-demo", f"data.name={corpus}", *TINY, "train.max_steps=4", "train.eval_every=2",
                 "train.plot=false", "--run-dir", str(tmp_path / "r"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("step 2: val loss") == 1 and out.count("step 4: val loss") == 1


def test_overrides_may_follow_options(corpus, tmp_path):
    assert main(["train", "gpt-demo", "--no-progress", f"data.name={corpus}", *TINY, "train.max_steps=2",
                 "--run-dir", str(tmp_path / "r"), "train.plot=false"]) == 0
    assert load_run(tmp_path / "r", checkpoint="latest").config.train.max_steps == 2


def test_a_corpus_without_a_newline_trains_and_previews(tmp_path):
    corpus = tmp_path / "flat.txt"
    corpus.write_text("abcdefgh " * 300)
    cfg, mcfg = tiny(corpus, "train.max_steps=2", "train.eval_every=2", "train.plot=false")
    make_trainer(cfg, mcfg, tmp_path / "r", progress=False).fit()
    assert (tmp_path / "r" / "samples" / "step_0000002.txt").read_text()


def test_loading_a_run_imports_no_trainer(corpus, tmp_path):
    code = "import sys, genforge.runs; sys.exit(int('genforge.train.trainer' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_per_optimizer_settings_and_no_gradient_leaks(tmp_path):
    toy = str(Path(__file__).with_name("toy-digits.toml"))
    cfg, mcfg = load_config(toy, ["train.optim.critic.lr=4e-3", "train.optim.critic.betas=[0.0, 0.99]"])
    trainer = make_trainer(cfg, mcfg, tmp_path / "r", progress=False)
    critic, gen = trainer.optimizers["critic"], trainer.optimizers["gen"]
    assert critic.param_groups[0]["base_lr"] == 4e-3 and critic.param_groups[0]["betas"] == (0.0, 0.99)
    assert gen.param_groups[0]["base_lr"] == 3e-3 and gen.param_groups[0]["betas"] == (0.9, 0.99)
    model = trainer.model
    batch = on(trainer.data.train.get(torch.arange(8)), model)
    model(batch, part="gen")["loss"].backward()  # reaches the critic's parameters too
    assert model.critic.weight.grad is not None
    trainer.ctx.step("gen")
    assert all(p.grad is None for p in model.parameters())  # nothing leaks into the critic's step
    with trainer.ctx.frozen(model.critic):
        model(batch, part="gen")["loss"].backward()
    assert model.critic.weight.grad is None and model.critic.weight.requires_grad
    assert not any(p.requires_grad for p in model.encoder.parameters())  # frozen part
    assert trainer.ctx.global_step == 0


def test_fused_adamw_follows_the_foreach_loss_trajectory(corpus, tmp_path, monkeypatch):
    # The trainer steps with fused AdamW (one kernel over all tensors, CPU and CUDA); the
    # reference is torch's multi-tensor (foreach) AdamW on the same batches.
    cfg, mcfg = tiny(corpus, "train.max_steps=25", "train.plot=false")
    trainer = make_trainer(cfg, mcfg, tmp_path / "fused", progress=False)
    assert all(o.defaults["fused"] for o in trainer.optimizers.values())
    trainer.fit()
    real = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda *a, fused, **k: real(*a, foreach=True, **k))
    cfg, mcfg = tiny(corpus, "train.max_steps=25", "train.plot=false")
    reference = make_trainer(cfg, mcfg, tmp_path / "foreach", progress=False)
    assert not any(o.defaults["fused"] for o in reference.optimizers.values())
    reference.fit()
    fused, foreach = losses(tmp_path / "fused"), losses(tmp_path / "foreach")
    assert len(fused) == 25 and fused[-1] < fused[0]
    torch.testing.assert_close(fused, foreach, rtol=1e-4, atol=1e-5)


def test_train_compile_traces_the_forward_and_matches_eager(corpus, tmp_path, monkeypatch):
    # Dynamo capture and AOTAutograd (backend aot_eager) run the graph Inductor would get;
    # Inductor's C++ build (tens of seconds) is measured in benchmarks/bench_gpt_shakespeare.py.
    cfg, mcfg = tiny(corpus, "train.max_steps=12", "train.plot=false")
    make_trainer(cfg, mcfg, tmp_path / "eager", progress=False).fit()
    real, compiled = torch.compile, []
    monkeypatch.setattr(torch, "compile", lambda m: compiled.append(m) or real(m, backend="aot_eager"))
    cfg, mcfg = tiny(corpus, "train.max_steps=12", "train.plot=false", "train.compile=true")
    make_trainer(cfg, mcfg, tmp_path / "compiled", progress=False).fit()
    assert len(compiled) == 1
    torch.testing.assert_close(losses(tmp_path / "compiled"), losses(tmp_path / "eager"), rtol=1e-5, atol=1e-6)
    assert load_run(tmp_path / "compiled", checkpoint="latest").model is not None  # no _orig_mod. keys


@pytest.mark.parametrize("missing", ["cxx", "dynamo"])
def test_train_compile_where_it_cannot_run_is_refused_in_one_line(corpus, tmp_path, monkeypatch, capsys, missing):
    import torch._dynamo
    from torch._inductor import config as inductor_config

    if missing == "cxx":
        monkeypatch.setattr(inductor_config.cpp, "cxx", (None, str(tmp_path / "no-such-g++")))
    else:
        monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    run = tmp_path / "r"
    assert main(["train", "gpt-demo", f"data.name={corpus}", *TINY, "train.compile=true", "train.device=cpu",
                 "--run-dir", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train.compile" in err
    assert ("C++ compiler" if missing == "cxx" else "Python version") in err
    assert not run.exists()
