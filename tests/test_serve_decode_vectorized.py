"""The per-step vectorization of the text server's decode (serve/decoder.py ``_draw``): several
requests' rows sampled in one pass (sampling.text.sample_rows, each request its own generator),
the watermark of requests that share a key applied in one call on their last ids, and green
lists selected without a sort. Each must equal the per-request computation exactly."""

from __future__ import annotations

import pytest
import torch

from genforge import GenforgeError
from genforge.data.spec import DataSpec
from genforge.data.tokenizers import CharTokenizer
from genforge.families.gpt import GPT, GPTConfig
from genforge.sampling.text import sample_next, sample_rows, stream
from genforge.serve.batching import Job, admit
from genforge.serve.decoder import Decoder, _hook_contexts
from genforge.watermark import text as wm

CHARS = list("abcdefghijklmnopqrstuvwxyz ,.\n")


@pytest.mark.parametrize("V", [7, 65, 2048])
def test_sample_rows_draws_what_sample_next_draws_per_part(V):
    g = torch.Generator().manual_seed(V)
    for trial in range(40):
        ns = [1 + (trial + j) % 3 for j in range(1 + trial % 5)]
        logits = torch.randn(sum(ns), V, generator=g) * 3
        if trial % 4 == 0:
            logits = logits.round()  # ties: top-k/top-p keep the same tokens batched as alone
        t, k, p = [1.0, 0.8, 0.3][trial % 3], [None, 5][trial % 2], [None, 0.9, 0.5][trial // 3 % 3]
        seeds = [1000 * trial + j for j in range(len(ns))]
        mine = [torch.Generator().manual_seed(s) for s in seeds]
        theirs = [torch.Generator().manual_seed(s) for s in seeds]
        alone = torch.cat([sample_next(rows, t, k, p, gen) for rows, gen in zip(logits.split(ns), theirs, strict=True)])
        assert torch.equal(sample_rows(logits, t, k, p, list(zip(ns, mine, strict=True))), alone)
        # and each generator is left where drawing alone leaves it (its next request step agrees)
        assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(mine, theirs, strict=True))


def test_sample_rows_greedy_and_bad_input():
    logits = torch.tensor([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    assert sample_rows(logits, 0, None, None, [(1, None), (1, None)]).tolist() == [1, 0]
    with pytest.raises(GenforgeError, match="parts cover 1 rows"):
        sample_rows(logits, 1.0, None, None, [(1, None)])
    with pytest.raises(GenforgeError, match="nan"):
        sample_rows(torch.full((2, 3), float("nan")), 1.0, None, None, [(1, None), (1, None)])


def sorted_green_mask(words, context_ids, vocab_size, gamma):
    """The former green-list selection: the first n of a stable argsort of the scores."""
    k0, k1, k2 = words
    h = torch.full(context_ids.shape[:1], k0, dtype=torch.long)
    for j in range(context_ids.shape[1]):
        h = wm._mix(h ^ wm._mix((context_ids[:, j] & wm._M32) ^ k1))
    scores = wm._mix(h[:, None] ^ wm._mix(torch.arange(vocab_size) ^ k2)[None, :])
    order = torch.argsort(scores, dim=-1, stable=True)[:, :wm.green_count(vocab_size, gamma)]
    return torch.zeros(scores.shape, dtype=torch.bool).scatter_(-1, order, True)


@pytest.mark.parametrize("V,gamma,context", [(65, 0.25, 1), (30, 0.5, 2), (2048, 0.25, 3), (3, 0.9, 1)])
def test_green_lists_by_selection_equal_the_sorted_ones(V, gamma, context):
    g = torch.Generator().manual_seed(V)
    ctx = torch.randint(-1, V, (200, context), generator=g)  # -1: no token there (left padding)
    words = wm.key_words(b"some key" * 4)
    got = wm.green_mask(words, ctx, V, gamma)
    assert torch.equal(got, sorted_green_mask(words, ctx, V, gamma))
    assert (got.sum(-1) == wm.green_count(V, gamma)).all()


@pytest.mark.parametrize("context", [1, 3])
def test_one_watermark_call_on_last_ids_equals_a_call_per_row_on_whole_histories(context):
    hook = wm.TextWatermark(b"k" * 32, context=context)
    g = torch.Generator().manual_seed(context)
    histories = [[[int(t) for t in torch.randint(0, 30, (n,), generator=g)]] for n in (1, 2, 5, 9)]
    logits = torch.randn(len(histories), 30, generator=g)
    batched = hook(logits, _hook_contexts(histories, hook.history_window, "cpu"))
    for b, [h] in enumerate(histories):
        alone = hook(logits[b:b + 1], torch.tensor([h]))
        assert torch.equal(batched[b:b + 1], alone)


def test_the_watermark_key_is_derived_once_per_hook_not_per_step(monkeypatch):
    calls = []
    real = wm.key_words
    monkeypatch.setattr(wm, "key_words", lambda key: calls.append(1) or real(key))
    hook = wm.TextWatermark(b"k" * 32)
    for _ in range(5):
        hook(torch.zeros(2, 30), torch.tensor([[1], [2]]))
    assert len(calls) == 1


def shift_hook(logits, history):
    """An opaque hook (no history_window): a bias on a token that depends on the last real id."""
    last = history[:, -1].clamp(min=0)
    bias = torch.zeros_like(logits)
    bias[torch.arange(len(last)), (last * 7 + 3) % logits.shape[-1]] = 4.0
    return logits + bias


class UnhashableWatermark:
    """Declares itself row-wise but cannot be a dict key: the decoder calls it per request."""

    __hash__ = None
    history_window = 1

    def __init__(self, key):
        self.inner = wm.TextWatermark(key)

    def __eq__(self, other):
        return isinstance(other, UnhashableWatermark) and other.inner == self.inner

    def __call__(self, logits, history):
        return self.inner(logits, history)


def test_many_requests_sharing_settings_and_keys_each_get_what_they_get_alone():
    """Twelve requests: most share settings (one sampling pass) and one of two watermark keys
    (one hook call per key), others have their own top-k or an opaque hook; some join mid-decode,
    some pass the context window; each equals sampling.text.stream alone with its seed."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=12),
                DataSpec(modality="text", vocab_size=len(CHARS))).eval()
    tok = CharTokenizer(CHARS)
    keys = [wm.TextWatermark(b"a" * 32), wm.TextWatermark(b"b" * 32, context=2), None]
    specs = []
    for i in range(12):
        prompts = ["the cat", "a"] if i % 5 == 0 else [["ab", "hello there", "q", "zz top"][i % 4]]
        settings = dict(max_new_tokens=4 + i, temperature=0.8, top_k=4 if i == 7 else None, top_p=None, stop=())
        hook = shift_hook if i == 9 else UnhashableWatermark(b"c" * 32) if i == 10 else keys[i % 3]
        specs.append((prompts, 100 + i, settings, hook))

    def make(prompts, seed, settings, hook):
        return Job(list(prompts), dict(settings), torch.Generator().manual_seed(seed), logits_hook=hook)

    jobs = [make(*s) for s in specs]
    decoder = Decoder(model, tok)
    with torch.inference_mode():
        for j in jobs[:6]:
            admit(decoder, j, tok)
        decoder.step()
        decoder.step()
        for j in jobs[6:]:
            admit(decoder, j, tok)
        while decoder.running:
            decoder.step()
    for job, (prompts, seed, s, hook) in zip(jobs, specs, strict=True):
        new = [[] for _ in prompts]
        for tokens, _ in stream(model, [tok.encode(p) for p in prompts], s["max_new_tokens"], s["temperature"],
                                s["top_k"], None, torch.Generator().manual_seed(seed), logits_hook=hook):
            for row, t in zip(new, tokens.tolist(), strict=True):
                row.append(t)
        assert job.texts() == [tok.decode(r) for r in new]
