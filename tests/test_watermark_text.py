"""Text watermark (Kirchenbauer et al. 2023): keys, the logits hook, the detector, the CLI."""

from __future__ import annotations

import os
import stat

import pytest

from genforge import GenforgeError
from genforge.watermark.keys import KEY_FILE, derive, key_fingerprint, read_key_file, run_key

# ---------------------------------------------------------------- keys

def test_run_key_is_made_once_owner_only_and_reread(tmp_path):
    key = run_key(tmp_path)
    assert len(key) == 32
    assert stat.S_IMODE(os.stat(tmp_path / KEY_FILE).st_mode) == 0o600
    assert run_key(tmp_path) == key and run_key(tmp_path, create=False) == key
    assert sorted(os.listdir(tmp_path)) == [KEY_FILE]  # no temporary left behind
    other = tmp_path / "other"
    other.mkdir()
    assert run_key(other) != key


def test_missing_short_and_hex_keys(tmp_path):
    with pytest.raises(GenforgeError, match="has no watermark.key"):
        run_key(tmp_path, create=False)
    with pytest.raises(GenforgeError, match="does not exist"):
        read_key_file(tmp_path / "nope")
    (tmp_path / "short").write_bytes(b"x" * 31)
    with pytest.raises(GenforgeError, match="31 bytes, needs at least 32"):
        read_key_file(tmp_path / "short")
    key = bytes(range(32))
    (tmp_path / "hex").write_text(key.hex() + "\n")
    assert read_key_file(tmp_path / "hex") == key


def test_fingerprint_and_subkeys_reveal_nothing_of_the_key():
    key = bytes(range(32))
    fp = key_fingerprint(key)
    assert len(fp) == 16 and fp not in key.hex()
    assert key_fingerprint(bytes(32)) != fp
    assert derive(key, "text/v1") != derive(key, "image/v1") and key not in derive(key, "text/v1")


# ---------------------------------------------------------------- the hook and the detector

import torch  # noqa: E402

from genforge.data.spec import DataSpec  # noqa: E402
from genforge.families.gpt import GPT, GPTConfig  # noqa: E402
from genforge.sampling.text import generate  # noqa: E402
from genforge.watermark.text import (  # noqa: E402
    TextWatermark,
    detect_ids,
    detect_text,
    green_count,
    green_mask,
    key_words,
    last_context,
    p_value,
)

KEY, OTHER = bytes(range(32)), bytes(range(1, 33))
V = 40


def tiny_gpt(block=64, vocab=V, seed=0):
    torch.manual_seed(seed)  # an untrained GPT: near-uniform logits, much entropy to hold a mark
    return GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=block), DataSpec(modality="text", vocab_size=vocab)).eval()


def test_green_lists_have_the_exact_size_and_depend_on_key_and_context_only():
    ctx = torch.tensor([[3, 7], [7, 3], [-1, 3], [3, 7]])
    m = green_mask(key_words(KEY), ctx, V, 0.25)
    assert m.shape == (4, V) and (m.sum(1) == green_count(V, 0.25)).all() and green_count(V, 0.25) == 10
    assert torch.equal(m[0], m[3]) and not torch.equal(m[0], m[1]) and not torch.equal(m[1], m[2])
    assert not torch.equal(m, green_mask(key_words(OTHER), ctx, V, 0.25))
    assert torch.equal(green_mask(key_words(KEY), ctx[1:2], V, 0.25)[0], m[1])  # batch shape does not matter


def test_hook_adds_delta_to_green_logits_only():
    logits = torch.randn(2, V)
    history = torch.tensor([[-1, 5], [4, 9]])
    out = TextWatermark(KEY, 0.25, 3.0)(logits, history)
    green = green_mask(key_words(KEY), history[:, -1:], V, 0.25)
    assert torch.allclose(out - logits, 3.0 * green.float())


@pytest.mark.parametrize("context", [1, 3])
def test_left_padded_batches_give_the_same_tokens_as_alone_with_the_hook(context):
    model = tiny_gpt()
    mark = TextWatermark(KEY, 0.25, 50.0, context)  # greedy + a huge delta: the pick is the green list's
    prompts = [[3], [1, 2, 3, 4, 5, 6]]
    batched = generate(model, prompts, 12, temperature=0, logits_hook=mark).tokens
    alone = [generate(model, [p], 12, temperature=0, logits_hook=mark).tokens[0] for p in prompts]
    assert batched == alone
    for p, toks in zip(prompts, alone, strict=True):  # every pick was green for its real context only
        seq = p + toks
        for i in range(len(p), len(seq)):
            ctx = last_context(torch.tensor([seq[:i]]), context)
            assert green_mask(key_words(KEY), ctx, V, 0.25)[0, seq[i]]


def _marked(n_tokens=300, seed=0, hook=True):
    model = tiny_gpt()
    g = torch.Generator().manual_seed(seed)
    out = generate(model, [[1]], n_tokens, temperature=1.0, generator=g,
                   logits_hook=TextWatermark(KEY) if hook else None)
    return [1] + out.tokens[0]


def test_marked_tokens_are_detected_unmarked_and_wrong_key_are_not():
    marked = detect_ids(_marked(), KEY, V)
    assert marked["watermarked"] and marked["z"] > 6 and marked["p_value"] < 1e-9 and marked["tokens"] > 150
    plain = detect_ids(_marked(hook=False), KEY, V)
    assert not plain["watermarked"] and abs(plain["z"]) < 3
    wrong = detect_ids(_marked(), OTHER, V)
    assert not wrong["watermarked"] and abs(wrong["z"]) < 3


def test_repeated_pairs_count_once():
    r = detect_ids([1, 2] * 500, KEY, V)
    assert r["tokens"] == 2  # (1, 2) and (2, 1): a repetitive text is two pieces of evidence, not 999


def test_p_value_is_the_normal_tail():
    assert p_value(0.0) == pytest.approx(0.5) and p_value(4.0) == pytest.approx(3.167e-5, rel=1e-3)


# ---------------------------------------------------------------- human text stays under the claimed FPR

HUMAN = (
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
    "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
    "it was the season of Darkness, it was the spring of hope, it was the winter of despair.\n"
    "First Citizen: Before we proceed any further, hear me speak. All: Speak, speak. First Citizen: You "
    "are all resolved rather to die than to famish? All: Resolved. resolved. First Citizen: First, you "
    "know Caius Marcius is chief enemy to the people.\n"
    "The committee met on Tuesday to review the budget for the new library wing; after a long debate about "
    "heating costs and the price of shelving, members agreed to postpone the vote until the spring survey "
    "of the roof had been completed and the architect could attend in person.\n"
)


def test_human_text_stays_under_the_claimed_false_positive_rate():
    """z > 4 claims a false-positive rate of 3e-5: over 60 keys none may fire, and even the 5% level
    (z > 1.645) must fire about 5% of the time, not far more (a miscalibrated null would)."""
    import hashlib

    from genforge.data.tokenizers import CharTokenizer

    tok = CharTokenizer.train([HUMAN])
    zs = [detect_text(HUMAN, tok, hashlib.sha256(bytes([i])).digest())["z"] for i in range(60)]
    assert max(zs) < 4.0
    assert sum(z > 1.645 for z in zs) <= 9  # binomial(60, 0.05): P(> 9) < 0.2%
    assert detect_text(HUMAN, tok, KEY)["tokens"] > 200  # distinct bigrams scored


def _markov_text(n: int, seed: int, vocab: int = 24):
    """Ids from a fixed, skewed bigram chain (Zipf-like next-token shares, as letters have): a
    stand-in for human text whose frequent bigrams carry most of the mass (what makes one key's
    green share drift from gamma)."""
    import numpy as np

    zipf = 1.0 / np.arange(1, vocab + 1) ** 1.5
    trans = np.random.default_rng(0).dirichlet(vocab * zipf / zipf.sum(), size=vocab)  # (V, V), one chain
    rng, out = np.random.default_rng(seed), [0]
    for u in rng.random(n - 1):
        out.append(int(min(vocab - 1, np.searchsorted(np.cumsum(trans[out[-1]]), u))))
    return out


def test_upper_tail_is_the_exact_poisson_binomial_tail():
    import math

    import numpy as np

    from genforge.watermark.text_null import upper_tail

    exact = sum(math.comb(50, k) * 0.3**k * 0.7 ** (50 - k) for k in range(22, 51))
    assert upper_tail(np.full(50, 0.3), 22) == pytest.approx(exact, rel=1e-9)
    # two different coins: P(both) = 0.2 * 0.9, P(at least one) = 1 - 0.8 * 0.1
    assert upper_tail(np.array([0.2, 0.9]), 2) == pytest.approx(0.18)
    assert upper_tail(np.array([0.2, 0.9]), 1) == pytest.approx(0.92)
    assert upper_tail(np.array([0.2, 0.9]), 0) == 1.0 and upper_tail(np.array([0.2, 0.9]), 3) == 0.0


def test_reference_null_holds_its_alpha_for_every_key_where_the_binomial_one_does_not():
    """One key's green share on skewed 'human' text drifts from gamma (its luck on the frequent
    bigrams), so the key-averaged binomial test fires far above alpha for some keys; conditioned
    on a reference of the same kind of text it must stay near alpha for every key."""
    import hashlib

    from genforge.watermark.text_null import Reference

    V, alpha, gamma = 24, 0.05, 0.5
    ref = Reference.from_ids(_markov_text(60_000, seed=1), V, 1)
    windows = [_markov_text(300, seed=100 + i) for i in range(40)]
    plain_worst, cond_rates = 0.0, []
    for k in range(25):
        key = hashlib.sha256(b"k" + bytes([k])).digest()
        plain = [detect_ids(w, key, V, gamma)["p_value"] <= alpha for w in windows]
        cond = [detect_ids(w, key, V, gamma, reference=ref)["p_value"] <= alpha for w in windows]
        plain_worst, cond_rates = max(plain_worst, sum(plain) / 40), cond_rates + [sum(cond) / 40]
    assert plain_worst > 0.3  # the failure this test guards against exists on this text
    assert max(cond_rates) <= 0.15  # binomial(40, 0.05): P(> 6 of 40) ~ 1.4% per key, and the test is conservative
    assert sum(cond_rates) / len(cond_rates) <= alpha + 0.02


def test_reference_must_match_the_context_and_have_text():
    from genforge.watermark.text_null import Reference

    ref = Reference.from_ids(_markov_text(2000, seed=1), 24, 1)
    with pytest.raises(GenforgeError, match="contexts of 1 tokens, the detector 2"):
        detect_ids([1, 2, 3, 4], KEY, 24, context=2, reference=ref)
    with pytest.raises(GenforgeError, match="needs thousands"):
        Reference.from_ids([1, 2, 3], 24, 1)


def test_characters_outside_the_vocabulary_are_skipped_not_an_error():
    from genforge.data.tokenizers import CharTokenizer

    tok = CharTokenizer.train(["abc "])
    r = detect_text("abc §§ cab", tok, KEY)
    assert r["tokens"] == 5  # ab bc c_ _c ca: no pair touching a §, the repeated ab once


# ---------------------------------------------------------------- `genforge sample` and `genforge detect`

import json  # noqa: E402

from genforge.cli import main  # noqa: E402

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
        "train.batch_size=4", "train.max_steps=4", "train.eval_every=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("wm")
    corpus = root / "c.txt"
    corpus.write_text("to be or not to be, that is the question: whether tis nobler in the mind.\n" * 60)
    assert main(["train", "gpt-demo", f"data.name={corpus}", *TINY, "--run-dir", str(root / "run"),
                 "--no-progress"]) == 0
    return root / "run"


def _sample(run, out, *extra):
    return main(["sample", str(run), "--max-new-tokens", "300", "--seed", "5", "--out", str(out), *extra])


def test_sample_is_watermarked_by_default_and_detect_finds_it(text_run, tmp_path, capsys):
    assert _sample(text_run, tmp_path / "m.txt") == 0
    err = capsys.readouterr().err
    key = (text_run / KEY_FILE).read_bytes()
    assert f"watermarked (key fingerprint {key_fingerprint(key)}" in err and "--no-watermark" in err
    assert stat.S_IMODE(os.stat(text_run / KEY_FILE).st_mode) == 0o600
    assert main(["detect", str(tmp_path / "m.txt"), "--run", str(text_run), "--json"]) == 0
    out, err = capsys.readouterr()
    [r] = json.loads(out)
    assert r["watermarked"] and r["z"] > 4 and r["p_value"] < 1e-4 and r["tokens"] > 50
    assert set(r) == {"file", "watermarked", "z", "p_value", "tokens", "method", "null"}
    assert r["null"] == "reference"  # conditioned on the key by the run's own training text
    assert key.hex() not in out + err and key_fingerprint(key) in err
    # the same with --key-file and --tokenizer; another key finds nothing
    assert main(["detect", str(tmp_path / "m.txt"), "--key-file", str(text_run / KEY_FILE),
                 "--tokenizer", str(text_run / "tokenizer.json")]) == 0
    out, err = capsys.readouterr()
    assert ": watermarked (z " in out and "uniform null" in out and "binomial null" in err
    (tmp_path / "ref.txt").write_text("whether tis nobler in the mind to suffer the slings and arrows\n" * 80)
    assert main(["detect", str(tmp_path / "m.txt"), "--key-file", str(text_run / KEY_FILE),
                 "--tokenizer", str(text_run / "tokenizer.json"), "--reference", str(tmp_path / "ref.txt")]) == 0
    out, err = capsys.readouterr()
    assert ": watermarked (z " in out and "reference null" in out and "note:" not in err
    assert main(["detect", str(tmp_path / "m.txt"), "--run", str(text_run), "--reference",
                 str(tmp_path / "nope.txt")]) == 2
    assert "reference text" in capsys.readouterr().err
    (tmp_path / "other.key").write_bytes(OTHER)
    assert main(["detect", str(tmp_path / "m.txt"), "--key-file", str(tmp_path / "other.key"),
                 "--tokenizer", str(text_run / "tokenizer.json"), "--json"]) == 0
    [r] = json.loads(capsys.readouterr().out)
    assert not r["watermarked"] and abs(r["z"]) < 3


def test_no_watermark_says_so_and_scores_near_zero(text_run, tmp_path, capsys):
    assert _sample(text_run, tmp_path / "plain.jsonl", "--no-watermark", "--num-samples", "2") == 0
    assert "not watermarked (--no-watermark)" in capsys.readouterr().err
    assert main(["detect", str(tmp_path / "plain.jsonl"), "--run", str(text_run), "--json"]) == 0
    [r] = json.loads(capsys.readouterr().out)
    # one-sided: an untrained model's noise is unlike the run's text, so the key-conditioned test's
    # z can be far below 0 (fewer green pairs than human text would hold); only a high z is wrong
    assert not r["watermarked"] and r["z"] < 3 and r["p_value"] > 1e-3 and r["tokens"] > 50


def test_the_key_appears_in_no_file_of_the_run_but_its_own(text_run, tmp_path, capsys):
    assert _sample(text_run, tmp_path / "s.txt") == 0
    streamed = main(["sample", str(text_run), "--max-new-tokens", "20", "--seed", "1"])
    out, err = capsys.readouterr()
    key = (text_run / KEY_FILE).read_bytes()
    needles = [key, key.hex().encode(), key.hex().upper().encode()]
    assert streamed == 0 and not any(n.decode("latin-1") in out + err for n in needles)
    for path in [p for p in text_run.rglob("*") if p.is_file() and p.name != KEY_FILE]:
        data = path.read_bytes()
        assert not any(n in data for n in needles), path


@pytest.mark.parametrize("args, message", [
    (["detect", "{tmp}/nope.txt", "--run", "{run}"], "does not exist"),
    (["detect", "{tmp}/t.txt"], "needs the key"),
    (["detect", "{tmp}/t.txt", "--run", "{run}", "--key-file", "{run}/watermark.key"], "not both"),
    (["detect", "{tmp}/t.txt", "--key-file", "{run}/watermark.key"], "--tokenizer"),
    (["detect", "{tmp}/t.txt", "--run", "{run}", "--tokenizer", "{run}/tokenizer.json"], "does not apply"),
    (["detect", "{tmp}/t.txt", "--run", "{run}", "--gamma", "1.5"], "gamma"),
    (["detect", "{tmp}/t.txt", "--key-file", "{tmp}/t.txt", "--tokenizer", "{run}/tokenizer.json"], "needs at least 32"),
    (["detect", "{tmp}/t.txt", "--run", "{tmp}"], "has no watermark.key"),
    (["sample", "{run}", "--no-watermark", "--watermark-delta", "3"], "does not apply with --no-watermark"),
    (["sample", "{run}", "--watermark-gamma", "0"], "gamma"),
    (["sample", "{run}", "--watermark-delta", "1e308"], "delta"),  # finite, but inf once added to logits
    (["sample", "{run}", "--watermark-context", "2147483648"], "context"),  # ids hashed per row per step
    (["detect", "{tmp}/t.txt", "--run", "{run}", "--threshold", "-5"], "positive"),  # every text was 'marked'
])
def test_bad_input_is_one_line_and_exit_2(text_run, tmp_path, capsys, args, message):
    (tmp_path / "t.txt").write_text("to be")
    if args[0] == "detect":  # the run's key is made by its first marked sample: alone, this test makes it
        assert main(["sample", str(text_run), "--max-new-tokens", "4", "--seed", "0", "--out", str(tmp_path / "k.txt")]) == 0
        capsys.readouterr()
    argv = [a.format(tmp=tmp_path, run=text_run) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_molecule_runs_refuse_the_text_watermark_options():
    from genforge.modalities import modality

    names = {o.name for o in modality("molecule").sample_options}
    assert not names & {"no_watermark", "watermark_gamma", "watermark_delta", "watermark_context"}
    assert {"no_watermark", "watermark_gamma"} <= {o.name for o in modality("text").sample_options}


def test_rl_rollouts_are_never_watermarked(text_run, tmp_path, monkeypatch):
    """Rollouts are the policy's own training data: a green-list bias there would be learned."""
    import genforge.sampling.text as sampling_text

    hooks, real = [], sampling_text.stream

    def spy(*args, **kwargs):
        hooks.append(kwargs.get("logits_hook"))
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling_text, "stream", spy)
    assert main(["rl", str(text_run), "--reward", "length", "--reward-arg", "target=5", "--run-dir", str(tmp_path / "rl"), "--steps", "1",
                 "--batch-size", "4", "--max-new-tokens", "6", "--no-progress"]) == 0
    assert hooks and all(h is None for h in hooks)
    assert not (tmp_path / "rl" / KEY_FILE).exists()


def test_green_lists_are_pinned_and_the_same_on_every_device(device):
    """Text marked today must be detected by any later genforge on any device: the lists of a
    fixed key are pinned (changing the hash is a breaking change), and equal on the test device."""
    ctx = torch.tensor([[3], [-1]])
    cpu = green_mask(key_words(KEY), ctx, V, 0.25)
    assert [r.nonzero().flatten().tolist() for r in cpu] == [[1, 2, 4, 10, 13, 16, 19, 22, 29, 39],
                                                              [2, 5, 7, 8, 18, 19, 28, 31, 34, 36]]
    on_device = green_mask(key_words(KEY), ctx.to(device), V, 0.25)
    assert torch.equal(on_device.cpu(), cpu)
    big = torch.randint(0, 50_000, (64, 2), generator=torch.Generator().manual_seed(0))
    assert torch.equal(green_mask(key_words(KEY), big.to(device), 50_000, 0.5).cpu(),
                       green_mask(key_words(KEY), big, 50_000, 0.5))


def test_images_go_to_the_image_detector_or_are_refused_in_one_line(tmp_path, capsys, monkeypatch):
    import sys
    import types

    # the real row builder, imported before the module is hidden below
    from genforge.watermark.image import verdict

    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG not really")
    (tmp_path / "k").write_bytes(KEY)
    keyed = ["--key-file", str(tmp_path / "k")]
    monkeypatch.setitem(sys.modules, "genforge.watermark.image", None)  # the module missing: ImportError
    assert main(["detect", str(png), *keyed]) == 2
    err = capsys.readouterr().err.strip()
    assert "image watermark detection is not available" in err and len(err.splitlines()) == 1
    seen = []
    fake = types.ModuleType("genforge.watermark.image")
    fake.detect_image_file = lambda path, key, run_dir=None: seen.append((path, key, run_dir)) or {
        "watermarked": True, "statistic": 7.5, "p_value": 1e-12, "method": "tree-ring"}
    fake.verdict = verdict
    monkeypatch.setitem(sys.modules, "genforge.watermark.image", fake)
    assert main(["detect", str(png), *keyed, "--json"]) == 0
    [r] = json.loads(capsys.readouterr().out)
    assert r == {"file": str(png), "watermarked": True, "z": 7.5, "p_value": 1e-12, "tokens": None,
                 "method": "tree-ring"}
    assert seen[0][1] == KEY and seen[0][2] is None  # no run given: the key file alone
    assert main(["detect", str(png), *keyed, "--gamma", "0.5"]) == 2  # text-only option


def test_python_api_marks_gpt_samples_with_the_run_key(tmp_path):
    from genforge.watermark.text import run_watermark

    model = tiny_gpt()
    mark = run_watermark(tmp_path, gamma=0.5, delta=4.0)
    assert mark.key == run_key(tmp_path, create=False) and KEY_FILE in os.listdir(tmp_path)
    tokens = model.sample(1, torch.Generator().manual_seed(0), [[1]], max_new_tokens=200, logits_hook=mark)[0]
    assert detect_ids([1] + tokens, mark.key, V, gamma=0.5)["watermarked"]
    plain = model.sample(1, torch.Generator().manual_seed(0), [[1]], max_new_tokens=200)[0]
    assert not detect_ids([1] + plain, mark.key, V, gamma=0.5)["watermarked"]


def test_a_read_only_run_says_how_to_sample_without_the_mark(text_run, tmp_path, monkeypatch):
    import genforge.watermark.keys as keys

    def refuse(path, write):
        raise GenforgeError(f"cannot write {path} (Read-only file system); check that the folder is writable")

    monkeypatch.setattr(keys, "atomic_write", refuse)
    fresh = tmp_path / "copy"
    import shutil

    shutil.copytree(text_run, fresh, ignore=shutil.ignore_patterns(KEY_FILE, ".lock"))
    with pytest.raises(GenforgeError, match="pass --no-watermark to sample without it"):
        main_raises(["sample", str(fresh), "--max-new-tokens", "5"])


def main_raises(argv):
    """Run the sample command's library path without main's error printing."""
    from genforge.cli import _parse

    args = _parse(argv)
    args.func(args)


def test_the_key_file_belongs_to_the_run_folder(text_run):
    """`train --overwrite` clears only run folders: a sampled run (with its key) still is one."""
    from genforge.rundir import foreign_entries

    run_key(text_run)
    assert KEY_FILE in os.listdir(text_run) and foreign_entries(text_run) == []
