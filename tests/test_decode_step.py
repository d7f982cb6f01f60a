"""The cached decode step (issue #20): single-query attention over a padded cache, one forward per drawn token,
a cache allocated once and written in place, and the hook's history kept in a preallocated buffer."""

import pytest
import torch

from genforge.data.spec import DataSpec
from genforge.families.gpt import GPT, GPTConfig
from genforge.sampling.text import _prefill, generate, stream


def tiny_gpt(pos="rope", block=16, vocab=23):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block, pos_embedding=pos)
    return GPT(cfg, DataSpec(modality="text", vocab_size=vocab)).eval()


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_single_query_steps_on_a_left_padded_cache_match_one_prefill(pos):
    """The T == 1 step masks only padding (key_mask): its logits equal those of prefilling the
    whole padded history at once, which masks causally too."""
    model = tiny_gpt(pos)
    ids = torch.randint(0, 23, (3, 10))
    pad = torch.tensor([0, 2, 5])
    with torch.inference_mode():
        _, full = _prefill(model, ids, pad)  # logits after all 10 columns
        cache, _ = _prefill(model, ids[:, :6], pad)
        for t in range(6, 10):
            step = model.logits(ids[:, t:t + 1], cache, (t - pad)[:, None])[:, -1]
    assert cache.length == 10
    assert torch.allclose(step, full, atol=1e-5)


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


@pytest.mark.parametrize("sync_every", [1, 3, 16])
def test_generate_with_eos_keeps_each_rows_tokens_up_to_its_first_eos_whatever_the_sync_interval(sync_every):
    """``generate`` reads tokens back only every ``sync_every`` steps; each row must still end at
    its own first eos (kept), rows that never draw it keep every token, and the log-probs are the
    stream's own, in order."""
    model = tiny_gpt()
    prompts = [[1, 2, 3], [4], [5, 6]]
    g = torch.Generator().manual_seed(3)
    steps = list(stream(model, prompts, 12, generator=g))
    tokens = torch.stack([t for t, _ in steps], 1).tolist()
    logps = torch.stack([lp for _, lp in steps], 1).tolist()
    eos = tokens[0][4]  # row 0 ends at step 4 at the latest; other rows end wherever this id falls
    out = generate(model, prompts, 12, generator=torch.Generator().manual_seed(3), eos_id=eos,
                   sync_every=sync_every)
    for row, lps, got, got_lp in zip(tokens, logps, out.tokens, out.logprobs, strict=True):
        n = row.index(eos) + 1 if eos in row else len(row)
        assert got == row[:n] and got_lp == pytest.approx(lps[:n])
    assert len(out.tokens[0]) <= 5


def test_generate_refuses_a_sync_interval_below_one():
    with pytest.raises(Exception, match="sync_every must be a positive integer"):
        generate(tiny_gpt(), [[1]], 3, sync_every=0)
