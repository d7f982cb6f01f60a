"""RL fine-tuning: the pure pieces against hand-computed cases, the reward contract, and short
real runs (tiny char GPT, tiny SMILES GPT, tiny digits diffusion) through `genforge rl`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from genforge.cli import main
from genforge.metrics.optimization import top_k_auc, top_k_mean
from genforge.rl import algorithms as alg
from genforge.rl.diversity import DiversityFilter, distinct_n, word_ngrams
from genforge.rl.rewards import RewardError, build_reward

TINY_GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=40",
            "train.batch_size=16", "train.eval_every=100", "train.eval_batches=2", "train.plot=false",
            "train.checkpoint_every=100", "train.lr=3e-3", "train.warmup_steps=5"]

E_REWARD = '''
def e_fraction(samples, **columns):
    """Fraction of characters that are 'e' (optimum: all of them)."""
    return [s.count("e") / max(len(s), 1) for s in samples]


def zero(samples, **columns):
    return [0.0 for _ in samples]


def wrong_length(samples, **columns):
    return [1.0]


def nan(samples, **columns):
    return [float("nan") for _ in samples]


def boom(samples, **columns):
    raise ValueError("the oracle is down")


def by_column(samples, target, **columns):
    return [float(t in s) for s, t in zip(samples, target)]


def knows_prompt(samples, prompt):
    return [float(p in ("the", "we")) for p in prompt]
'''


# --------------------------------------------------------------------------- pure pieces


def test_advantages_match_hand_computed_cases():
    r = torch.tensor([1.0, 3.0, 2.0, 2.0])
    yes = torch.ones(4, dtype=torch.bool)
    assert alg.advantages(r, yes, "reinforce").tolist() == [-1.0, 1.0, 0.0, 0.0]
    # RLOO: r_i minus the mean of the others in its group of 2
    assert alg.advantages(r, yes, "rloo", 2).tolist() == [-2.0, 2.0, 0.0, 0.0]
    # GRPO: (r - mean) / (sample std + eps); a group of equal rewards carries no signal
    grpo = alg.advantages(r, yes, "grpo", 2)
    assert grpo[:2].tolist() == pytest.approx([-1 / (math.sqrt(2) + 1e-4), 1 / (math.sqrt(2) + 1e-4)])
    assert grpo[2:].tolist() == [0.0, 0.0]
    # samples no reward applied to get 0 and stay out of the baselines
    some = torch.tensor([True, True, True, False])
    assert alg.advantages(r, some, "reinforce").tolist() == [-1.0, 1.0, 0.0, 0.0]
    assert alg.advantages(torch.tensor([1.0, 2.0, 4.0]), torch.tensor([True, True, False]), "rloo", 3).tolist() \
        == [-1.0, 1.0, 0.0]


def test_clipped_loss_kl_and_gaussian_pieces_match_their_formulas():
    logp = torch.tensor([[math.log(0.5), math.log(0.9)]])
    old = torch.tensor([[math.log(0.25), math.log(0.9)]])  # ratios 2 and 1
    mask = torch.tensor([[True, True]])
    loss, clip_frac = alg.clipped_policy_loss(logp, old, torch.tensor([1.0]), mask, clip=0.2, length=2.0)
    assert float(loss) == pytest.approx(-(1.2 + 1.0) / 2)  # ratio 2 clipped to 1.2 for A > 0
    assert float(clip_frac) == pytest.approx(0.5)
    loss_neg, _ = alg.clipped_policy_loss(logp, old, torch.tensor([-1.0]), mask, clip=0.2, length=2.0)
    assert float(loss_neg) == pytest.approx((2.0 + 1.0) / 2)  # pessimistic: the unclipped 2 for A < 0
    p, q = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    assert float(alg.kl_k3(p, q)) == pytest.approx(0.5 - math.log(0.5) - 1)
    assert float(alg.kl_k3(p, p)) == 0.0
    # the logged KL is the k3 sum the penalty uses (0.5 - log 0.5 - 1 = 0.193 here, never negative);
    # k1 (log 2 here) is logged beside it as kl_k1 and goes negative when the ratios are below 1
    assert alg.sequence_kl(logp, old, mask).tolist() == pytest.approx([0.5 - math.log(0.5) - 1])
    assert alg.sequence_kl_k1(logp, old, mask).tolist() == pytest.approx([math.log(2)])
    assert float(alg.sequence_kl_k1(old, logp, mask)) < 0 < float(alg.sequence_kl(old, logp, mask))
    x, mean = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    expect = torch.distributions.Normal(mean, 0.3).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(alg.gaussian_logprob(x, mean, 0.3), expect, atol=1e-4)
    other = torch.randn(3, 2, 4, 4)
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(mean, 0.3),
                                           torch.distributions.Normal(other, 0.3)).flatten(1).sum(1)
    assert torch.allclose(alg.gaussian_kl(mean, other, 0.3), kl, atol=1e-4)
    assert alg.adapt_kl_coef(1.0, 2.0, 1.0) == pytest.approx(1.02)  # KL over target: beta up
    assert alg.adapt_kl_coef(1.0, 0.5, 1.0) < 1.0


def test_pmo_top_k_and_auc():
    assert top_k_mean([0.1, 0.9, 0.5], 2) == pytest.approx(0.7)
    assert top_k_mean([0.3], 10) == pytest.approx(0.3)
    # every call scores 1: AUC 1; half the budget used, then stop: the last value carries on
    assert top_k_auc([1.0] * 10, 1, 10, every=1) == pytest.approx(0.95)  # the first trapezoid starts at 0
    assert top_k_auc([0.0, 1.0], 1, 4, every=1) == pytest.approx((0 + 0.5 + 1 + 1) / 4)


def test_distinct_n_and_the_diversity_filter():
    assert distinct_n(["a b a b"], 1) == 0.5
    assert distinct_n(["a b c", "a b d"], 2) == 0.75
    f = DiversityFilter(lambda s: [s[0]], bucket_size=2)
    out, frac = f(["ax", "ay", "az", "bx"], torch.tensor([1.0, 1.0, 1.0, -1.0]))
    assert out.tolist() == [1.0, 1.0, 0.0, -1.0]  # the third 'a' finds its bucket full
    assert frac == 0.25
    text = DiversityFilter(word_ngrams, bucket_size=1)
    text(["the cat sat on"], torch.tensor([1.0]))
    out, _ = text(["the cat sat here"], torch.tensor([1.0]))  # 1 of its 2 trigrams is used up
    assert out.tolist() == [0.5]
    assert word_ngrams("Love! love? LOVE.", 3) == [("love", "love", "love")]  # punctuation does not dodge it


# --------------------------------------------------------------------------- rewards


def test_reward_contract_errors_are_clear(tmp_path, monkeypatch):
    (tmp_path / "myrewards.py").write_text(E_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    samples = ["ee", "ab"]
    for name, message in [("wrong_length", "returned 1 values for 2 samples"),
                          ("nan", "must be finite"), ("boom", "raised ValueError: the oracle is down")]:
        with pytest.raises(RewardError, match=message):
            build_reward([f"myrewards:{name}"], {}, "text")(samples)
    with pytest.raises(RewardError, match="unknown reward 'sentimental'"):
        build_reward(["sentimental"], {}, "text")
    with pytest.raises(RewardError, match="scores molecule samples, but this run makes text"):
        build_reward(["qed"], {}, "text")
    with pytest.raises(RewardError, match="needs --reward-arg word"):
        build_reward(["keyword"], {}, "text")
    with pytest.raises(RewardError, match="takes no argument 'wrod'"):
        build_reward(["keyword"], {"keyword": {"wrod": "x"}}, "text")
    with pytest.raises(RewardError, match="has no function 'nope'"):
        build_reward(["myrewards:nope"], {}, "text")
    with pytest.raises(RewardError, match="no file"):
        build_reward([f"{tmp_path}/missing.py:f"], {}, "text")


def test_rewards_combine_with_weights_none_and_counted_calls(tmp_path):
    (tmp_path / "r.py").write_text(E_REWARD + "\ndef some(samples):\n    return [1.0, None]\n")
    reward = build_reward([f"{tmp_path}/r.py:e_fraction=2", f"{tmp_path}/r.py:some=-1"], {}, "text")
    total, applies, means = reward(["ee", "ab"])
    assert total.tolist() == [2 * 1.0 - 1.0, 0.0]
    assert applies.tolist() == [True, True]
    assert means["r:some"] == 1.0  # the mean over samples it applies to
    assert reward.calls == 2
    cols = build_reward([f"{tmp_path}/r.py:by_column"], {}, "text")
    assert cols(["a cat", "a dog"], {"target": ["cat", "cat"]})[0].tolist() == [1.0, 0.0]


def test_builtin_text_and_image_rewards():
    pytest.importorskip("vaderSentiment")
    reward = build_reward(["sentiment"], {}, "text")
    good, bad = reward(["what a wonderful, lovely day", "a terrible, hateful death"])[0].tolist()
    assert good > 0.5 and bad < -0.5
    kw = build_reward(["keyword", "length=0.5"], {"keyword": {"word": "Love"}, "length": {"target": 2}}, "text")
    assert kw(["i love", "no"])[0].tolist() == [1 + 0.5 * 1.0, 0 + 0.5 * 0.5]
    assert build_reward(["regex"], {"regex": {"pattern": r"\d+"}}, "text")(["a1", "b"])[0].tolist() == [1, 0]
    assert build_reward(["repetition"], {}, "text")(["a b c a b c", "a b c d"])[0].tolist() == \
        pytest.approx([-0.25, 0.0])
    flat, noise = torch.full((1, 1, 16, 16), 0.5), torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    images = torch.cat([flat, noise])
    jpeg = build_reward(["jpeg_incompressibility"], {}, "image")(images)[0].tolist()
    assert jpeg[1] > jpeg[0]  # noise does not compress
    assert build_reward(["jpeg_compressibility"], {}, "image")(images)[0].tolist() == pytest.approx([-v for v in jpeg])
    assert build_reward(["brightness"], {}, "image")(images)[0][0] == pytest.approx(0.5)


def test_builtin_classifier_reward_knows_real_digits():
    from genforge.config import DataConfig
    from genforge.data.images import load_images

    data = load_images(DataConfig(name="digits"))
    batch = data.test.get(torch.arange(40))
    threes = batch["x"][batch["y"] == 3]
    reward = build_reward(["classifier"], {"classifier": {"target": 3}}, "image", data)
    assert sum(reward(threes)[0].tolist()) / len(threes) > 0.8
    with pytest.raises(RewardError, match="outside 0..9"):
        build_reward(["classifier"], {"classifier": {"target": 12}}, "image", data)(threes)


def test_builtin_molecule_rewards_fold_in_validity():
    pytest.importorskip("rdkit")
    r = build_reward(["qed"], {}, "molecule")
    aspirin, bad = r(["CC(=O)Oc1ccccc1C(=O)O", "C1CC"])[0].tolist()
    assert aspirin == pytest.approx(0.55, abs=0.01) and bad == 0.0  # RDKit's QED of aspirin: 0.550
    assert build_reward(["tanimoto"], {"tanimoto": {"target": "CCO"}}, "molecule")(["CCO", "c1ccccc1"])[0].tolist() \
        == [1.0, 0.0]
    logp = build_reward(["plogp"], {}, "molecule")(["CCCCCCCC", "xx"])[0].tolist()
    assert logp[1] == -10.0 and logp[0] > -10.0



def test_oracle_calls_count_distinct_canonical_molecules_as_pmo():
    pytest.importorskip("rdkit")
    from genforge.rl.rollouts import oracle_scores

    cached = build_reward(["qed"], {}, "molecule")
    total, _, _ = cached(["CCO", "OCC", "C(O)C"])  # ethanol three ways: one molecule, one call
    assert cached.calls == 1 and len(oracle_scores(cached)) == 1 and list(cached.scored) == ["CCO"]
    assert total.tolist() == [total[0].item()] * 3
    cached(["C1CC", "xx", "CCO"])  # invalid SMILES are scored (0) but never an oracle call
    assert cached.calls == 1
    cached(["c1ccccc1"], counted=False)  # pre-flight and evaluation: scored, not counted, not cached
    assert cached.calls == 1 and "c1ccccc1" not in cached.scored
    cached(["c1ccccc1"])
    assert cached.calls == 2
    # a term reading a prompt column may score a molecule per prompt: the cache keys both
    by_prompt = build_reward(["validity"], {}, "molecule")
    by_prompt.terms[0].takes = frozenset({"prompt"})
    by_prompt.terms[0].fn = lambda samples, prompt: [1.0 for _ in samples]
    by_prompt(["CCO", "OCC", "CCO"], {"prompt": ["C", "C", "O"]})
    assert by_prompt.calls == 2


# --------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def text_base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl-text")
    corpus = tmp / "corpus.txt"
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "we", "see", "tree", "bee"]
    g = torch.Generator().manual_seed(0)
    corpus.write_text(" ".join(words[i] for i in torch.randint(0, len(words), (6000,), generator=g).tolist()))
    (tmp / "myrewards.py").write_text(E_REWARD)
    run = tmp / "base"
    assert main(["train", "gpt-demo", f"data.name={corpus}", "train.max_steps=80", *TINY_GPT,
                 "--run-dir", str(run), "--no-progress"]) == 0
    return run, tmp / "myrewards.py"


def _rl(base, reward_file, run_dir, *extra, reward="e_fraction"):
    return main(["rl", str(base), "--reward", f"{reward_file}:{reward}", "--run-dir", str(run_dir),
                 "--batch-size", "16", "--max-new-tokens", "12", "--no-progress",
                 *extra])


def _rows(run_dir, split=None):
    rows = [json.loads(r) for r in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == split]


def _weights(run_dir):
    from genforge.runs import load_run

    return {k: v.clone() for k, v in load_run(run_dir, checkpoint="latest").model.state_dict().items()}


def test_zero_reward_leaves_the_policy_where_it_started(text_base, tmp_path):
    base, rewards = text_base
    assert _rl(base, rewards, tmp_path / "rl", "--steps", "3", "--kl-coef", "0.1", "--lr", "1e-5", reward="zero") == 0
    before, after = _weights(base), _weights(tmp_path / "rl")
    assert max(float((before[k] - after[k]).abs().max()) for k in before) < 1e-6


def test_toy_reward_is_climbed_and_the_run_is_a_normal_run(text_base, tmp_path, capsys):
    base, rewards = text_base
    run = tmp_path / "rl"
    assert _rl(base, rewards, run, "--steps", "30", "--lr", "3e-3", "--kl-coef", "0", "--algo", "rloo") == 0
    evals = _rows(run, "val")
    assert evals[-1]["reward"] > evals[0]["reward"] + 0.15, [e["reward"] for e in evals]
    config = json.loads((run / "config.json").read_text())
    assert config["family"] == "gpt" and config["rl"]["algo"] == "rloo"
    assert config["rl"]["base_run"] == str(base) and config["rl"]["reward"] == [f"{rewards}:e_fraction"]
    assert (run / "reference" / "model.safetensors").is_file()
    assert evals[0]["step"] == 0 and evals[0]["kl"] == 0.0  # the baseline, before any update
    capsys.readouterr()
    assert main(["sample", str(run), "--seed", "1", "--prompt", "we", "--max-new-tokens", "20", "--no-stream"]) == 0
    assert capsys.readouterr().out.count("e") >= 8
    assert main(["eval", str(run)]) == 0
    assert "val_loss" in capsys.readouterr().out


def test_prompt_files_feed_columns_to_rewards(text_base, tmp_path):
    base, rewards = text_base
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "the", "target": "cat"}\n{"prompt": "we", "target": "see"}\n')
    run = tmp_path / "rl"
    assert _rl(base, rewards, run, "--steps", "2", "--prompt-file", str(prompts), reward="by_column") == 0
    assert {"reward_myrewards:by_column", "heldout_loss"} <= set(_rows(run, "val")[-1])
    assert _rl(base, rewards, tmp_path / "kp", "--steps", "1", "--prompt-file", str(prompts), reward="knows_prompt") == 0
    assert _rows(tmp_path / "kp", "val")[-1]["reward"] == 1.0  # each sample's prompt reached the reward
    # a built-in that takes no columns still works beside a prompt file that has some
    assert main(["rl", str(base), "--reward", "keyword", "--reward-arg", "word=see", "--prompt-file", str(prompts),
                 "--steps", "1", "--batch-size", "16", "--group-size", "4", "--max-new-tokens", "8",
                 "--run-dir", str(tmp_path / "kw"), "--no-progress"]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x"}\n')
    assert _rl(base, rewards, tmp_path / "rl2", "--steps", "2", "--prompt-file", str(bad)) == 2


def test_python_api_entropy_bonus_and_best_checkpoint_by_tradeoff(text_base, tmp_path):
    from genforge.checkpoint import best_checkpoint
    from genforge.config import RLConfig
    from genforge.rl.finetune import finetune

    base, rewards = text_base
    settings = RLConfig(base_run=str(base), reward=[f"{rewards}:zero"], entropy_coef=0.5, kl_coef=0.0,
                        max_new_tokens=12, select_kl_weight=1.0, eval_samples=16)
    run = tmp_path / "rl"
    result = finetune(base, settings, run, train_overrides={"max_steps": 6, "batch_size": 16, "lr": 3e-3,
                                                              "eval_every": 2}, progress=False)
    assert result["step"] == 6 and result["oracle_calls"] > 0
    train = _rows(run)
    assert train[-1]["entropy"] > train[0]["entropy"] + 0.05  # zero reward: only the bonus acts
    evals = _rows(run, "val")
    scores = [e["reward"] - e["kl"] for e in evals]
    assert [e["score"] for e in evals] == pytest.approx(scores)
    best = max(evals, key=lambda e: e["score"])
    assert best_checkpoint(run).name == f"best-step_{best['step']:07d}"


def test_kl_penalty_keeps_kl_under_budget_and_the_budget_stops_a_run_without_it(text_base, tmp_path):
    base, rewards = text_base
    common = ["--steps", "25", "--lr", "1e-3", "--kl-budget", "1.0", "--guard-patience", "2"]
    assert _rl(base, rewards, tmp_path / "free", *common, "--kl-coef", "0") == 0
    stopped = [r for r in _rows(tmp_path / "free") if r.get("event") == "stopped"]
    assert stopped and "over kl_budget" in stopped[0]["reason"]
    assert _rl(base, rewards, tmp_path / "held", *common, "--kl-coef", "2.0") == 0
    train = _rows(tmp_path / "held")
    assert len(train) == 25 and max(r["kl"] for r in train) < 1.0


def test_diversity_collapse_stops_the_run(text_base, tmp_path, capsys):
    base, rewards = text_base
    # No KL and a high LR: the policy collapses onto "weeeeeeee" within ~20 steps.
    assert _rl(base, rewards, tmp_path / "rl", "--steps", "40", "--lr", "3e-3", "--kl-coef", "0",
               "--min-diversity", "0.3", "--guard-patience", "2") == 0
    assert "stopped early: diversity collapsed: distinct_1" in capsys.readouterr().out
    rows = _rows(tmp_path / "rl")
    assert rows[-1]["event"] == "stopped" and rows[-1]["distinct_1"] < 0.3
    assert rows[-2]["distinct_1"] < 0.3 and len(rows) < 40
    assert rows[0]["distinct_1"] > 0.6


def test_bad_rewards_and_options_fail_with_one_line(text_base, tmp_path, capsys):
    base, rewards = text_base
    assert _rl(base, rewards, tmp_path / "a", "--steps", "2", reward="wrong_length") == 2
    assert "returned 1 values for 2 samples" in capsys.readouterr().err  # the pre-flight check
    assert _rl(base, rewards, tmp_path / "b", "--steps", "2", reward="boom") == 2
    err = capsys.readouterr().err
    assert "the oracle is down" in err and "Traceback" not in err
    for extra, message in [(["--algo", "ddpo"], "ddpo fine-tunes diffusion"),
                           (["--sampling-steps", "5"], "apply to DDPO"),
                           (["--group-size", "4"], "applies with several prompts"),
                           (["--prompt", "the", "--prompt", "we", "--group-size", "3"],
                            "--batch-size 16 is not a multiple of --group-size 3"),
                           (["--algo", "reinforce", "--group-size", "4"], "reinforce uses the batch mean"),
                           (["--max-new-tokens", "100"], "does not fit the context"),
                           (["--reward-arg", "nope.x=1"], "no reward 'nope'"),
                           (["--reward-arg", "x=1", "--reward-arg", "x=2"], "x is given twice"),
                           (["--kl-coef", "nan"], "--kl-coef")]:
        assert _rl(base, rewards, tmp_path / "c", "--steps", "2", *extra) == 2, extra
        assert message in capsys.readouterr().err, extra
    assert not any((tmp_path / d).exists() for d in "abc")  # a refused start leaves nothing behind


def test_rl_resume_is_exact(text_base, tmp_path):
    base, rewards = text_base
    opts = ["--steps", "4", "--lr", "3e-3", "--updates-per-rollout", "2"]
    assert _rl(base, rewards, tmp_path / "once", *opts) == 0
    assert _rl(base, rewards, tmp_path / "twice", *opts, "--stop-after", "3") == 0
    assert main(["rl", "--resume", str(tmp_path / "twice"), "--no-progress"]) == 0
    a, b = _rows(tmp_path / "once"), _rows(tmp_path / "twice")
    strip = ("elapsed_s", "tokens_per_s", "rollout_s", "reward_s")
    assert [{k: v for k, v in r.items() if k not in strip} for r in a] == \
        [{k: v for k, v in r.items() if k not in strip} for r in b]
    wa, wb = _weights(tmp_path / "once"), _weights(tmp_path / "twice")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert main(["rl", "--resume", str(tmp_path / "twice"), "--reward", "x"]) == 2


def test_ddpo_raises_brightness_on_digits(tmp_path):
    base = tmp_path / "base"
    assert main(["train", "diffusion-digits", "model.channels=[16, 32]", "model.attention=[false, false]",
                 "model.blocks=1", "train.max_steps=60", "train.batch_size=32", "train.eval_every=60",
                 "train.eval_batches=1", "train.plot=false", "--run-dir", str(base), "--no-progress"]) == 0
    run = tmp_path / "rl"
    assert main(["rl", str(base), "--reward", "brightness", "--steps", "12", "--lr", "1e-3",  # ddpo by default
                 "--batch-size", "16", "--sampling-steps", "6", "--kl-coef", "0",
                 "--eval-samples", "32", "--run-dir", str(run), "--no-progress"]) == 0
    evals = _rows(run, "val")
    assert evals[-1]["reward"] > evals[0]["reward"] + 0.02, [e["reward"] for e in evals]
    assert {"fd", "spread", "class_entropy", "kl"} <= set(evals[-1])
    assert json.loads((run / "config.json").read_text())["rl"]["algo"] == "ddpo"


def test_pmo_numbers_ignore_scorings_past_the_budget():
    """The last rollout may overshoot --max-oracle-calls; top-k and AUC count only the budget."""
    from genforge.rl.rollouts import oracle_summary

    class Scored:  # the two things oracle_summary reads of a Reward
        scored = {f"m{i}": [0.1] for i in range(10)} | {"late": [0.9]}

        @staticmethod
        def total(values):
            return values[0]

    assert oracle_summary(Scored, 10)["top1"] == pytest.approx(0.1)
    assert oracle_summary(Scored, None)["top1"] == pytest.approx(0.9)
