"""The cached decode step (issue #20): single-query attention, one forward per drawn token,
a cache allocated once and written in place, and the hook's history kept in a preallocated buffer."""

import pytest
import torch
import torch.nn.functional as F

from genforge.data.spec import DataSpec
from genforge.families.gpt import GPT, GPTConfig
from genforge.nn.attention import CausalSelfAttention
from genforge.sampling.text import generate, stream


def tiny_gpt(pos="rope", block=16, vocab=23):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block, pos_embedding=pos)
    return GPT(cfg, DataSpec(modality="text", vocab_size=vocab)).eval()


@pytest.mark.parametrize("masked", [False, True])
def test_one_query_attention_matches_sdpa(masked):
    torch.manual_seed(1)
    attn = CausalSelfAttention(n_embd=32, n_head=4, dropout=0.0, bias=False).eval()
    B, nh, L, hs = 3, 4, 11, 8
    q, k, v = torch.randn(B, nh, 1, hs), torch.randn(B, nh, L, hs), torch.randn(B, nh, L, hs)
    key_mask = None
    if masked:  # left padding: row 0 none, row 1 three columns, row 2 ten (one real key left)
        key_mask = (torch.arange(L + 5)[None, :] >= torch.tensor([0, 3, 10])[:, None])[:, None, None, :]
    out = attn._one_query(q, k, v, key_mask)  # (B, 1, C)
    mask = key_mask[..., :L] if masked else None
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, 1, nh * hs)
    assert out.shape == (B, 1, nh * hs)
    assert torch.allclose(out, ref, atol=1e-6)


class Spy:
    def __init__(self, model):
        self.model, self.logits, self.caches = model, 0, 0
        self._logits, self._new_cache = model.logits, model.new_cache
        model.logits, model.new_cache = self.count_logits, self.count_cache

    def count_logits(self, *args, **kwargs):
        self.logits += 1
        return self._logits(*args, **kwargs)

    def count_cache(self, *args, **kwargs):
        self.caches += 1
        return self._new_cache(*args, **kwargs)


@pytest.mark.parametrize("use_cache", [True, False])
def test_one_forward_per_drawn_token_and_one_cache_within_the_window(use_cache):
    model = tiny_gpt()
    spy = Spy(model)
    out = generate(model, [[1, 2], [3]], max_new_tokens=9, temperature=0, use_cache=use_cache)
    assert [len(t) for t in out.tokens] == [9, 9]
    assert spy.logits == 9  # the prefill and 8 steps: none after the last token
    assert spy.caches == (1 if use_cache else 9)  # cached: one preallocated cache, written in place


def test_cache_tensors_are_written_in_place():
    model = tiny_gpt()
    caches = []
    orig = model.new_cache
    model.new_cache = lambda *a, **k: caches.append(orig(*a, **k)) or caches[-1]
    ptrs = []
    for _ in stream(model, [[1]], max_new_tokens=6, temperature=0):
        ptrs.append([t.data_ptr() for t in (*caches[0].k, *caches[0].v)])
    assert len(caches) == 1 and all(p == ptrs[0] for p in ptrs)
    assert caches[0].length == 6  # the prompt token and 5 steps


def test_hook_sees_prompt_and_tokens_so_far_with_padding():
    model = tiny_gpt(block=8)
    seen = []

    def hook(logits, history):
        seen.append(history.clone())
        return logits

    prompts = [[4, 5, 6], [7]]
    out = generate(model, prompts, max_new_tokens=10, temperature=0, logits_hook=hook)  # past the window
    assert [h.shape[1] for h in seen] == list(range(3, 13))
    rows = [[*p, *t[:-1]] for p, t in zip(prompts, out.tokens, strict=True)]
    assert seen[-1].tolist() == [[-1] * (12 - len(r)) + r for r in rows]
    assert out.tokens == generate(model, prompts, max_new_tokens=10, temperature=0).tokens  # hook is identity
