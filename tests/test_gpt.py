"""GPT network and decoding: KV cache parity, padding, sampling filters, log-probs."""

import pytest
import torch

from genforge import GenforgeError
from genforge.data.spec import DataSpec
from genforge.families.gpt import GPT, GPTConfig
from genforge.sampling.text import filter_logits, generate, sample_next, stream


def tiny_gpt(pos="rope", block=32, vocab=23, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block, pos_embedding=pos)
    return GPT(cfg, DataSpec(modality="text", vocab_size=vocab)).eval()


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_kv_cache_greedy_matches_full_context(pos):
    model = tiny_gpt(pos)
    prompts = [[1, 2, 3, 4], [5, 6, 7, 8]]
    cached = generate(model, prompts, max_new_tokens=20, temperature=0, use_cache=True)
    full = generate(model, prompts, max_new_tokens=20, temperature=0, use_cache=False)
    assert cached.tokens == full.tokens
    assert all(len(t) == 20 for t in cached.tokens)
    for a, b in zip(cached.logprobs, full.logprobs, strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)


def test_cached_logits_match_full_forward():
    model = tiny_gpt()
    ids = torch.randint(0, 23, (3, 16))
    full = model.logits(ids)
    cache = model.new_cache(3)
    step_logits = [model.logits(ids[:, :5], cache)]
    for t in range(5, 16):
        step_logits.append(model.logits(ids[:, t : t + 1], cache))
    assert torch.allclose(torch.cat(step_logits, 1), full, atol=1e-5)


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_left_padded_batch_matches_single_prompts(pos):
    model = tiny_gpt(pos)
    prompts = [[3, 4], [1, 2, 3, 4, 5, 6]]
    batched = generate(model, prompts, max_new_tokens=8, temperature=0)
    singles = [generate(model, [p], max_new_tokens=8, temperature=0).tokens[0] for p in prompts]
    assert batched.tokens == singles


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_kv_cache_matches_recompute_past_the_window_with_left_padding(pos):
    model = tiny_gpt(pos, block=8)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [7]]  # one longer than the window
    cached = generate(model, prompts, max_new_tokens=30, temperature=0, use_cache=True)
    full = generate(model, prompts, max_new_tokens=30, temperature=0, use_cache=False)
    assert cached.tokens == full.tokens and all(len(t) == 30 for t in cached.tokens)
    # and sampled (not greedy) tokens agree too, draw for draw
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = generate(model, prompts, 25, temperature=1.0, generator=g1, use_cache=True)
    b = generate(model, prompts, 25, temperature=1.0, generator=g2, use_cache=False)
    assert a.tokens == b.tokens


def test_masked_loss_and_token_logprobs_carry_gradients():
    model = tiny_gpt()
    ids = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 7, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    logp = model.token_logprobs(ids, mask)  # (2, 5)
    assert logp.shape == (2, 5) and logp.requires_grad
    assert torch.all(logp[0, 3:] == 0)  # padded targets contribute nothing
    (-logp.sum()).backward()
    assert model.tok_emb.weight.grad is not None and model.tok_emb.weight.grad.abs().sum() > 0
    # the masked loss equals the mean over real targets only
    batch = {"x": ids[:, :-1], "y": ids[:, 1:], "mask": mask[:, 1:]}
    expected = -(logp.detach().sum() / mask[:, 1:].sum())
    assert model(batch)["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    # padding content does not change the loss when masked
    other = {**batch, "y": batch["y"].masked_fill(~batch["mask"], 11)}
    assert model(other)["loss"].item() == pytest.approx(model(batch)["loss"].item(), rel=1e-6)


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model = tiny_gpt()
    def run(s):
        return generate(model, [[1]], 30, temperature=1.0,
                                 generator=torch.Generator().manual_seed(s)).tokens
    assert run(7) == run(7)
    assert run(7) != run(8)


def test_top_k_keeps_only_k_tokens():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    kept = torch.isfinite(filter_logits(probs.log(), top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    # the most likely token always survives, even when it alone exceeds top_p
    assert torch.isfinite(filter_logits(probs.log(), top_p=0.1)).sum() == 1
    for tiny in (1e-300, 1e-46):  # 0 in float32: the top token stays (it was dropped: all -inf, NaN draws)
        assert torch.isfinite(filter_logits(probs.log(), top_p=tiny)).tolist() == [[True, False, False, False]]


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 1.0]])
    assert sample_next(logits, 0, None, None, None).tolist() == [1, 0]


def test_token_logprobs_match_generation_logprobs():
    model = tiny_gpt()
    out = generate(model, [[1, 2, 3]], 10, temperature=1.0, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 2, 3] + out.tokens[0]])
    scored = model.token_logprobs(ids)[0, 2:]
    assert torch.allclose(scored, torch.tensor(out.logprobs[0]), atol=1e-4)


def test_stream_yields_one_token_per_step():
    model = tiny_gpt()
    steps = list(stream(model, [[1], [2]], max_new_tokens=5, temperature=0))
    assert len(steps) == 5 and all(t.shape == (2,) for t, _ in steps)


def test_bad_settings_are_errors():
    model = tiny_gpt()
    with pytest.raises(GenforgeError, match="temperature"):
        generate(model, [[1]], 5, temperature=-1)
    with pytest.raises(GenforgeError, match="top-p"):
        generate(model, [[1]], 5, top_p=1.5)
    with pytest.raises(GenforgeError, match="at least one token"):
        generate(model, [[]], 5)


def test_config_rejects_impossible_shapes():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)


def test_weight_tying():
    model = tiny_gpt()
    assert model.lm_head.weight.data_ptr() == model.tok_emb.weight.data_ptr()


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_training_attention_matches_textbook_attention_and_its_gradients(pos):
    # softmax(q k^T / sqrt(hs) + causal mask) v per head (Vaswani et al., 2017), q and k rotated
    # for RoPE: catches q/k/v taken from the wrong third of the fused projection, in either layout.
    from genforge.nn.attention import CausalSelfAttention, apply_rotary, rotary_table

    torch.manual_seed(0)
    B, T, C, nh = 3, 8, 16, 2
    attn = CausalSelfAttention(C, nh, 0.0, bias=True)
    x = torch.randn(B, T, C, requires_grad=True)
    rope = rotary_table(T, C // nh) if pos == "rope" else None
    out = attn(x, rope)
    q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in attn.qkv(x).split(C, -1))  # (B, nh, T, hs)
    if rope is not None:
        q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
    scores = (q @ k.transpose(-2, -1)) / (C // nh) ** 0.5
    weights = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    ref = attn.proj((weights @ v).transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(out, ref)
    g = torch.randn_like(out)
    wrt = [x, attn.qkv.weight, attn.qkv.bias]
    for got, want in zip(torch.autograd.grad(out, wrt, g), torch.autograd.grad(ref, wrt, g), strict=True):
        torch.testing.assert_close(got, want)
