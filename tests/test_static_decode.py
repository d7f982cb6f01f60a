"""The static-shape decode step (issue #20): the tokens and log-probs of the uncached path, greedy
and sampled, with left padding and past the window (its fixed-shape re-read); the per-row cache
write and mask; the decoder reused across calls; on CUDA, the captured graphs."""

import pytest
import torch
from helpers import gen

from genforge import GenforgeError
from genforge.data.spec import DataSpec
from genforge.families.gpt import GPT, GPTConfig
from genforge.nn.attention import KVCache
from genforge.sampling import static_decode
from genforge.sampling.text import generate, stream

VOCAB = 23


def tiny_gpt(device, pos="rope", block=16):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block, pos_embedding=pos)
    return GPT(cfg, DataSpec(modality="text", vocab_size=VOCAB)).eval().to(device)


def assert_same(static, reference):
    assert static.tokens == reference.tokens
    for a, b in zip(static.logprobs, reference.logprobs, strict=True):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)


PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [7]]  # left-padded to width 10


@pytest.mark.parametrize("pos", ["rope", "learned"])
@pytest.mark.parametrize("block", [16, 32])  # 16: six static steps fill the window, later ones re-read it
def test_greedy_matches_the_uncached_path(device, pos, block):
    model = tiny_gpt(device, pos, block)
    ref = generate(model, PROMPTS, 20, temperature=0, use_cache=False)
    assert_same(generate(model, PROMPTS, 20, temperature=0, static=True), ref)
    decoder, = static_decode._IDLE[model].values()
    assert decoder.length == min(block, 10 + 19)  # the static steps ran, up to the window's end
    assert (decoder.window is not None) == (block == 16)  # and then its fixed-shape re-read


@pytest.mark.parametrize("settings", [dict(temperature=1.0), dict(temperature=0.8, top_k=5),
                                      dict(temperature=1.2, top_p=0.9)])
@pytest.mark.parametrize("block", [16, 32])
def test_sampled_draws_match_the_uncached_path(device, settings, block):
    """The step draws argmax(p / q) with q from the caller's generator; multinomial draws the
    same q from it, so a seeded generator gives the same tokens draw for draw."""
    model = tiny_gpt(device, block=block)
    ref = generate(model, PROMPTS, 24, generator=gen(3, model), use_cache=False, **settings)
    assert_same(generate(model, PROMPTS, 24, generator=gen(3, model), static=True, **settings), ref)


def test_hook_and_pick_run_beside_the_static_forward(device):
    """With per-step Python (a hook, a pick) the step returns logits and the draw stays eager."""
    model = tiny_gpt(device)
    calls = []

    def hook(logits, history):
        calls.append(history.shape[1])
        return logits

    ref = generate(model, PROMPTS, 12, generator=gen(5, model), use_cache=False)
    assert_same(generate(model, PROMPTS, 12, generator=gen(5, model), logits_hook=hook, static=True), ref)
    assert calls == list(range(10, 22))
    greedy = [t for t, _ in stream(model, PROMPTS, 12, pick=lambda lg: lg.argmax(-1), static=True)]
    assert torch.stack(greedy, 1).tolist() == generate(model, PROMPTS, 12, temperature=0).tokens


def test_a_reused_decoder_masks_what_the_last_call_left(device):
    """The second call reuses the first one's cache (no new capture on a GPU): its columns past
    the new, shorter prompt hold the old call's keys, which the mask must hide."""
    model = tiny_gpt(device, block=32)
    generate(model, [[5] * 12, [6] * 12, [7] * 12], 15, temperature=0, static=True)
    idle = static_decode._IDLE[model]
    assert len(idle) == 1
    first = next(iter(idle.values()))
    out = generate(model, PROMPTS, 15, temperature=0, static=True)
    assert next(iter(static_decode._IDLE[model].values())) is first
    assert_same(out, generate(model, PROMPTS, 15, temperature=0, use_cache=False))


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_each_row_writes_its_own_column_and_sees_only_its_keys(device, pos):
    """Rows at different lengths in one batched step (slot and position differ per row), with
    finite garbage in every unwritten column: the logits equal each row's own cached step. A
    shared write column, an off-by-one mask or an unmasked column changes them."""
    model = tiny_gpt(device, pos)
    lengths = [3, 9]
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(0, VOCAB, (1, n + 1), generator=g).to(device) for n in lengths]
    expected, rows = [], []
    with torch.inference_mode():
        for x, n in zip(ids, lengths, strict=True):
            cache = model.new_cache(1)
            model.logits(x[:, :n], cache)
            expected.append(model.logits(x[:, n:], cache)[:, -1])  # the row's own cached step
            rows.append(cache)
        batched = model.new_cache(2)
        for layer in range(model.config.n_layer):
            for big, name in ((batched.k[layer], "k"), (batched.v[layer], "v")):
                big.copy_(torch.randn(big.shape, generator=g).to(device) * 3)  # garbage beyond each row
                for b, (cache, n) in enumerate(zip(rows, lengths, strict=True)):
                    big[b, :, :n] = getattr(cache, name)[layer][0, :, :n]
        slot = torch.tensor(lengths, device=device)
        cols = torch.arange(batched.max_len, device=device)
        step = KVCache(batched.k, batched.v, slot=slot, step_mask=(cols <= slot[:, None])[:, None, None, :])
        token = torch.cat([x[:, n:] for x, n in zip(ids, lengths, strict=True)])  # (2, 1)
        before = [t.clone() for t in (*batched.k, *batched.v)]
        got = model.logits(token, step, slot[:, None])[:, -1]
    assert torch.allclose(got, torch.cat(expected), atol=1e-5)
    caches = [(*c.k, *c.v) for c in rows]
    for i, (after, old) in enumerate(zip((*batched.k, *batched.v), before, strict=True)):
        for b, n in enumerate(lengths):  # the new key/value went to the row's own column n, only there
            assert torch.allclose(after[b, :, n], caches[b][i][0, :, n], atol=1e-6)
            assert torch.equal(torch.cat([after[b, :, :n], after[b, :, n + 1:]], 1),
                               torch.cat([old[b, :, :n], old[b, :, n + 1:]], 1))


def test_compiled_step_is_one_graph_with_the_same_draws(device, monkeypatch):
    """static="compile" traces the whole step (fullgraph: a graph break would raise) and keeps
    the draws; the aot_eager backend here for speed, Inductor runs in benchmarks/gpu_check.sh."""
    real, calls, graphs = torch.compile, [], []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm, inputs):  # called when the compiled step first runs: one graph, the whole step
        graphs.append(gm)
        return aot_eager(gm, inputs)

    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or real(fn, **kw, backend=backend))
    model = tiny_gpt(device, block=16)
    settings = dict(temperature=0.9, top_k=6)
    ref = generate(model, PROMPTS, 14, generator=gen(2, model), use_cache=False, **settings)
    assert_same(generate(model, PROMPTS, 14, generator=gen(2, model), static="compile", **settings), ref)
    assert calls == [dict(fullgraph=True, dynamic=False)] and len(graphs) == 1


def test_static_settings_are_checked():
    model = tiny_gpt("cpu")
    with pytest.raises(GenforgeError, match="use_cache"):
        generate(model, [[1]], 3, static=True, use_cache=False)
    with pytest.raises(GenforgeError, match="static must be"):
        generate(model, [[1]], 3, static="graph")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replays_give_the_uncached_tokens():
    model = tiny_gpt("cuda", block=32)
    for settings in (dict(temperature=0), dict(temperature=1.0, top_k=8)):
        ref = generate(model, PROMPTS, 40, generator=gen(7, model), use_cache=False, **settings)
        for _ in range(2):  # the first call captures, the second replays the cached graph
            assert_same(generate(model, PROMPTS, 40, generator=gen(7, model), static=True, **settings), ref)
    decoders = list(static_decode._IDLE[model].values())
    assert len(decoders) == 2 and all(d.graph is not None and d.read_graph is not None for d in decoders)
