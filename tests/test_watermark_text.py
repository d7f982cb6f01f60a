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
from genforge.watermark.text import (TextWatermark, detect_ids, detect_text, green_count,  # noqa: E402
                                     green_mask, key_words, last_context, p_value)

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
