"""RL invariants of issue #16: on-policy exactness (dropout base, bf16 autocast), batch
baselines for one prompt, optimizer steps per rollout with grad_accum, no zero-variance DDPO
step, run folders that cannot clobber the base run, rewards that never apply or fail."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from genforge import GenforgeError
from genforge.cli import main
from genforge.rl import algorithms as alg

TINY_GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=40",
            "train.batch_size=16", "train.eval_every=100", "train.eval_batches=2", "train.plot=false",
            "train.checkpoint_every=100", "train.lr=3e-3", "train.warmup_steps=5"]

REWARDS = '''
import os
from pathlib import Path

CALLS = [0]


def e_fraction(samples, **columns):
    return [s.count("e") / max(len(s), 1) for s in samples]


def never(samples, **columns):
    return [None for _ in samples]


def flaky(samples, **columns):
    """Fails from call FLAKY_AT on (pre-flight = call 1) while the file FLAKY_FLAG exists."""
    CALLS[0] += 1
    if CALLS[0] >= int(os.environ["FLAKY_AT"]) and Path(os.environ["FLAKY_FLAG"]).exists():
        raise ConnectionError("the oracle went down")
    return [float(len(s)) for s in samples]
'''


def _rows(run_dir, split=None):
    rows = [json.loads(r) for r in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == split]


@pytest.fixture(scope="module")
def dropout_base(tmp_path_factory):
    """A tiny char GPT trained with dropout 0.2: the case where train-mode log-probs went off-policy."""
    tmp = tmp_path_factory.mktemp("rl-dropout")
    words = ["the", "cat", "sat", "on", "mat", "we", "see", "tree", "bee"]
    g = torch.Generator().manual_seed(0)
    (tmp / "corpus.txt").write_text(" ".join(words[i] for i in torch.randint(0, 9, (4000,), generator=g).tolist()))
    (tmp / "rewards.py").write_text(REWARDS)
    run = tmp / "base"
    assert main(["train", "gpt-demo", f"data.name={tmp / 'corpus.txt'}", "train.max_steps=30", "model.dropout=0.2",
                 *TINY_GPT, "--run-dir", str(run), "--no-progress"]) == 0
    return run, tmp / "rewards.py"


@pytest.fixture(scope="module")
def ddpo_base(tmp_path_factory):
    run = tmp_path_factory.mktemp("rl-ddpo") / "base"
    assert main(["train", "diffusion-digits", "model.channels=[8, 16]", "model.attention=[false, false]",
                 "model.blocks=1", "model.dropout=0.2", "train.max_steps=4", "train.batch_size=16",
                 "train.eval_every=4", "train.eval_batches=1", "train.plot=false", "--run-dir", str(run),
                 "--no-progress"]) == 0
    return run


def _rl(base, reward, run_dir, *extra):
    return main(["rl", str(base), "--reward", reward, "--run-dir", str(run_dir), "--batch-size", "8",
                 "--max-new-tokens", "8", "--eval-samples", "4", "--no-progress", *extra])


@pytest.fixture
def ratio_spy(monkeypatch):
    """max |log pi - log pi_old| over the actions of every update's loss."""
    seen: list[float] = []
    clipped = alg.clipped_policy_loss

    def spy(logp, old_logp, adv, mask, clip, length):
        seen.append(float((logp.detach() - old_logp)[mask.bool()].abs().max()))
        return clipped(logp, old_logp, adv, mask, clip, length)

    monkeypatch.setattr(alg, "clipped_policy_loss", spy)
    return seen


# --------------------------------------------------------------------------- item 1


def test_first_update_is_on_policy_with_dropout_under_bf16_autocast(dropout_base, tmp_path, ratio_spy):
    base, rewards = dropout_base
    # bf16 autocast wraps the update (ctx.forward) as it does on CUDA; dropout 0.2 in the base
    assert _rl(base, f"{rewards}:e_fraction", tmp_path / "rl", "--steps", "1", "--kl-coef", "0.1",
               "train.precision=bf16") == 0
    assert ratio_spy == [0.0]  # the ratio is exactly 1 on every action
    first = _rows(tmp_path / "rl")[0]
    assert first["clip_frac"] == 0.0 and first["kl"] == 0.0 and first["kl_loss"] == 0.0
    assert first["kl_k1"] == 0.0


def test_ddpo_first_update_is_on_policy_with_dropout_under_bf16_autocast(ddpo_base, tmp_path, ratio_spy):
    assert main(["rl", str(ddpo_base), "--reward", "brightness", "--steps", "1", "--batch-size", "4",
                 "--sampling-steps", "4", "--eval-samples", "4", "train.precision=bf16",
                 "--run-dir", str(tmp_path / "rl"), "--no-progress"]) == 0
    assert ratio_spy and max(ratio_spy) == 0.0
    first = _rows(tmp_path / "rl")[0]
    assert first["clip_frac"] == 0.0 and first["kl"] == 0.0 and first["kl_loss"] == 0.0


def test_the_policy_never_leaves_eval_mode():
    from genforge.data.spec import DataSpec
    from genforge.families.gpt import GPT
    from genforge.rl.policy import policy_class

    cls = policy_class(GPT)
    policy = cls(GPT.Config(n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.5),
                 DataSpec(modality="text", vocab_size=11))
    policy.train()
    assert not any(m.training for m in policy.modules())


# --------------------------------------------------------------------------- item 7


def test_group_baselines_are_the_batchs_with_one_prompt(dropout_base, ddpo_base, tmp_path, monkeypatch):
    groups: list[tuple[int, int]] = []
    advantages = alg.advantages

    def spy(rewards, applies, method, group_size=1, eps=1e-4):
        groups.append((len(rewards), group_size))
        return advantages(rewards, applies, method, group_size, eps)

    monkeypatch.setattr(alg, "advantages", spy)
    base, rewards = dropout_base
    assert _rl(base, f"{rewards}:e_fraction", tmp_path / "one", "--steps", "1") == 0
    assert groups == [(8, 8)]  # one (default) prompt: GRPO's statistics are the batch's
    groups.clear()
    assert _rl(base, f"{rewards}:e_fraction", tmp_path / "two", "--steps", "1", "--prompt", "the", "--prompt", "we",
               "--group-size", "4") == 0
    assert groups == [(8, 4)]  # two prompts: per-prompt groups
    groups.clear()
    assert main(["rl", str(ddpo_base), "--reward", "brightness", "--steps", "1", "--batch-size", "4",
                 "--sampling-steps", "4", "--eval-samples", "4", "--run-dir", str(tmp_path / "ddpo"),
                 "--no-progress"]) == 0
    assert groups == [(4, 4)]  # unconditional DDPO: the batch, not arbitrary groups of 8


# --------------------------------------------------------------------------- item 4


def test_grad_accum_rollouts_get_updates_per_rollout_optimizer_steps(dropout_base, tmp_path, monkeypatch):
    from genforge.rl.policy import PolicyMixin
    from genforge.rl.rollouts import Rollouts
    from genforge.train.step_context import StepContext as _StepContext

    steps, collected, used = [], [], []
    step, collect, train_step = _StepContext.step, Rollouts._collect, PolicyMixin.train_step
    monkeypatch.setattr(_StepContext, "step", lambda self, name: steps.append(name) or step(self, name))

    def spy_collect(self):
        batch = collect(self)
        collected.append(batch)
        return batch

    def spy_train_step(self, micro_batches, ctx):
        used.append([next(i for i, b in enumerate(collected) if b is m) for m in micro_batches])
        return train_step(self, micro_batches, ctx)

    monkeypatch.setattr(Rollouts, "_collect", spy_collect)
    monkeypatch.setattr(PolicyMixin, "train_step", spy_train_step)
    base, rewards = dropout_base
    assert _rl(base, f"{rewards}:e_fraction", tmp_path / "rl", "--steps", "4", "--updates-per-rollout", "2",
               "train.grad_accum=2") == 0
    assert len(steps) == 4 and len(collected) == 4
    # each optimizer step takes grad_accum distinct rollouts; each rollout gets 2 optimizer steps
    assert used == [[0, 1], [0, 1], [2, 3], [2, 3]]


# --------------------------------------------------------------------------- item 8


def test_ddpo_never_trains_a_zero_variance_step(ddpo_base, tmp_path, monkeypatch, capsys):
    from genforge.diffusion import schedules
    from genforge.rl.policy import MIN_ACTION_SIGMA, DiffusionPolicy

    sigmas = torch.tensor([10.0, 1.0, 1.0, 0.5, 0.01, 0.0])
    active = DiffusionPolicy.rl_active_steps(DiffusionPolicy, sigmas)
    assert active == [0, 2]  # 1 -> 1 has std 0; steps ending below MIN_ACTION_SIGMA are not actions
    assert all(float(sigmas[t + 1]) >= MIN_ACTION_SIGMA and sigmas[t] > sigmas[t + 1] for t in active)
    with pytest.raises(ValueError, match="std > 0"):
        alg.gaussian_logprob(torch.zeros(1, 2), torch.zeros(1, 2), 0.0)
    monkeypatch.setattr(schedules, "sampling_sigmas", lambda *a, **k: sigmas)
    assert main(["rl", str(ddpo_base), "--reward", "brightness", "--steps", "1", "--batch-size", "4",
                 "--sampling-steps", "5", "--run-dir", str(tmp_path / "rl"), "--no-progress"]) == 2
    assert "does not strictly decrease" in capsys.readouterr().err
    assert not (tmp_path / "rl").exists()


# --------------------------------------------------------------------------- item 3


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_run_dir_that_is_contains_or_lies_in_the_base_is_refused(dropout_base, tmp_path, capsys):
    base, rewards = dropout_base
    before = _listing(base)
    link = tmp_path / "link"
    link.symlink_to(base, target_is_directory=True)
    for run_dir, word in [(base, "is"), (link, "is"), (base / "sub" / "..", "is"), (base.parent, "contains"),
                          (base / "..", "contains"), (base / "rl", "lies inside")]:
        assert _rl(base, f"{rewards}:e_fraction", run_dir, "--steps", "1", "--overwrite") == 2, run_dir
        err = capsys.readouterr().err
        assert f"{word} the base run" in err and "Traceback" not in err, run_dir
        assert _listing(base) == before, run_dir  # nothing touched
    assert not (base / "rl").exists()


# --------------------------------------------------------------------------- items 18, 19


def test_rewards_that_never_apply_or_weigh_nothing_are_not_silent(dropout_base, tmp_path, capsys):
    base, rewards = dropout_base
    assert _rl(base, f"{rewards}:e_fraction=0", tmp_path / "a", "--steps", "1") == 2
    assert "weight 0" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert _rl(base, f"{rewards}:never", tmp_path / "b", "--steps", "3") == 0
    assert "stopped early: no reward applied to any of the 8 samples" in capsys.readouterr().out
    assert _rows(tmp_path / "b")[-1]["event"] == "stopped"
    assert main(["rl", str(base), "--reward", f"{rewards}:never", "--reward", f"{rewards}:e_fraction",
                 "--run-dir", str(tmp_path / "c"), "--batch-size", "8", "--max-new-tokens", "8",
                 "--eval-samples", "4", "--steps", "1", "--no-progress"]) == 0
    assert "reward rewards:never returned None for every training sample" in capsys.readouterr().out


def test_batch_size_error_names_the_flag_typed(dropout_base, tmp_path, capsys):
    base, rewards = dropout_base
    assert _rl(base, f"{rewards}:e_fraction", tmp_path / "a", "--prompt", "the", "--prompt", "we",
               "--group-size", "3") == 2
    err = capsys.readouterr().err
    assert "--batch-size 8 is not a multiple of --group-size 3" in err and "train.batch_size" not in err


def test_a_reward_module_in_the_current_folder_is_found(tmp_path, monkeypatch):
    from genforge.rl.rewards import build_reward

    monkeypatch.chdir(tmp_path)
    (tmp_path / "cwd_rewards_16.py").write_text("def shout(samples):\n    return [float('!' in s) for s in samples]\n")
    path = list(sys.path)
    reward = build_reward(["cwd_rewards_16:shout"], {}, "text")
    assert reward(["hi!", "hi"])[0].tolist() == [1.0, 0.0]
    assert sys.path == path  # the current folder joined the import path for that lookup only
    sys.modules.pop("cwd_rewards_16", None)


def test_a_reward_failing_mid_run_leaves_a_retryable_or_resumable_run(dropout_base, tmp_path, monkeypatch, capsys):
    base, rewards = dropout_base
    flag = tmp_path / "oracle-down"
    flag.touch()
    monkeypatch.setenv("FLAKY_FLAG", str(flag))
    # fails at the step-0 evaluation (call 2), before any checkpoint: nothing half-made is left
    monkeypatch.setenv("FLAKY_AT", "2")
    run = tmp_path / "rl"
    assert _rl(base, f"{rewards}:flaky", run, "--steps", "3") == 2
    err = capsys.readouterr().err
    assert "the oracle went down" in err and "run the same command again" in err and "Traceback" not in err
    assert not run.exists()
    # fails at step 2's rollout, after step 1's checkpoint: the run resumes once the reward works
    monkeypatch.setenv("FLAKY_AT", "5")  # pre-flight, eval 0, rollout 1, eval 1, rollout 2
    assert _rl(base, f"{rewards}:flaky", run, "--steps", "3", "train.checkpoint_every=1", "train.eval_every=1") == 2
    assert "genforge rl --resume" in capsys.readouterr().err
    flag.unlink()
    assert main(["rl", "--resume", str(run), "--no-progress"]) == 0
    assert [r["step"] for r in _rows(run)] == [1, 2, 3]
    assert all(r["kl"] >= 0 and "kl_k1" in r for r in _rows(run))  # the logged kl is k3: never negative


def test_weight_zero_only_is_refused_in_python_too():
    from genforge.rl.rewards import RewardError, build_reward

    with pytest.raises(RewardError, match="weight 0"):
        build_reward(["length=0"], {"length": {"target": 3}}, "text")
    assert issubclass(RewardError, GenforgeError)  # the CLI prints it as one line, exit 2
