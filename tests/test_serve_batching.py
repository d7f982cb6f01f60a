"""Continuous batching of text (serve/decoder.py) and batching of image requests
(serve/images.py): a request batched with others, joining mid-decode or leaving early, gets
exactly what it gets alone. Tiny untrained models: no run directory, no training."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest
import torch

from genforge.data.spec import DataSpec
from genforge.data.tokenizers import CharTokenizer
from genforge.families.gpt import GPT, GPTConfig
from genforge.sampling.text import stream
from genforge.serve.batching import Batcher, Job, run_alone
from genforge.serve.decoder import Decoder

CHARS = list("abcdefghijklmnopqrstuvwxyz ,.\n")


@pytest.fixture(scope="module", params=["rope", "learned"])
def gpt(request):
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=12, pos_embedding=request.param)
    return GPT(cfg, DataSpec(modality="text", vocab_size=len(CHARS))).eval(), CharTokenizer(CHARS)


def job(prompts, seed, max_new_tokens=10, temperature=1.0, top_k=None, top_p=None, stop=(), hook=None):
    settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                    stop=tuple(stop))
    return Job(list(prompts), settings, torch.Generator().manual_seed(seed), logits_hook=hook)


def reference(model, tok, j: Job, seed: int) -> list[str]:
    """What `genforge sample` draws for the same request: sampling.text.stream, alone."""
    s = j.settings
    new = [[] for _ in j.prompts]
    for tokens, _ in stream(model, [tok.encode(p) for p in j.prompts], s["max_new_tokens"], s["temperature"],
                            s["top_k"], s["top_p"], torch.Generator().manual_seed(seed),
                            logits_hook=j.logits_hook):
        for row, t in zip(new, tokens.tolist(), strict=True):
            row.append(t)
    return [tok.decode(r) for r in new]


def entry_for(model, tok):
    return SimpleNamespace(id="gpt", run=SimpleNamespace(model=model, tokenizer=tok), lock=threading.Lock())


def shift_hook(logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """A stand-in for the watermark: a bias that depends on each row's last real token."""
    last = history[:, -1].clamp(min=0)
    bias = torch.zeros_like(logits)
    bias[torch.arange(len(last)), (last * 7 + 3) % logits.shape[-1]] = 4.0
    return logits + bias


REQUESTS = [  # (prompts, seed, settings): lengths, settings, past-the-window (block 12) and a hook
    (["ab"], 1, {"max_new_tokens": 6}),
    (["hello there", "x"], 2, {"max_new_tokens": 18, "top_k": 4}),  # past the window
    (["the cat sat on the mat, and the dog"], 3, {"max_new_tokens": 5, "top_p": 0.8}),  # prompt > block
    (["q"], 4, {"max_new_tokens": 9, "temperature": 0}),
    (["zz", "a b"], 5, {"max_new_tokens": 7, "hook": shift_hook}),
    (["stop"], 6, {"max_new_tokens": 15, "stop": ["e"]}),
]


def test_a_job_alone_draws_what_stream_draws(gpt):
    model, tok = gpt
    entry = entry_for(model, tok)
    for prompts, seed, settings in REQUESTS:
        if settings.get("stop"):
            continue  # a stop string cuts the text: compared through the batch below
        alone = run_alone(entry, job(prompts, seed, **settings))
        assert alone.texts() == reference(model, tok, job(prompts, seed, **settings), seed)
        assert alone.steps == settings["max_new_tokens"]


@pytest.mark.parametrize("join_at", [0, 1, 3, 7])
def test_jobs_joining_and_leaving_mid_decode_get_what_they_get_alone(gpt, join_at):
    """Jobs admitted at different steps (a mid-decode join) and ending at different steps (rows
    leave, the cache is compacted; rows pass the window) each match their run alone."""
    model, tok = gpt
    entry = entry_for(model, tok)
    alone = [run_alone(entry, job(p, s, **kw)).texts() for p, s, kw in REQUESTS]
    jobs = [job(p, s, **kw) for p, s, kw in REQUESTS]
    decoder = Decoder(model, tok)
    from genforge.serve.batching import admit

    with torch.inference_mode():
        for j in jobs[:2]:
            admit(decoder, j, tok)
        for _ in range(join_at):
            decoder.step()
        for j in jobs[2:]:
            admit(decoder, j, tok)
        while decoder.running:
            decoder.step()
    assert [j.texts() for j in jobs] == alone
    assert decoder.cache.rows == 0 and not decoder.slots  # every row left


def test_batcher_admits_jobs_into_a_running_batch(gpt):
    model, tok = gpt
    entry = entry_for(model, tok)
    alone = [run_alone(entry, job(p, s, **kw)).texts() for p, s, kw in REQUESTS]
    batcher = Batcher(entry)
    first = batcher.submit(job(["ab"], 9, max_new_tokens=40))
    deadline = time.monotonic() + 10
    while first.steps < 2 and time.monotonic() < deadline:  # the first job is decoding
        time.sleep(0.001)
    jobs = [batcher.submit(job(p, s, **kw)) for p, s, kw in REQUESTS]
    assert [j.texts() for j in jobs] == alone
    first.texts()
    assert batcher.stats["joined_running"] >= 1 and batcher.stats["peak_jobs"] >= 2


def test_batching_off_runs_one_job_at_a_time(gpt):
    model, tok = gpt
    batcher = Batcher(entry_for(model, tok), max_jobs=1)
    jobs = [batcher.submit(job(p, s, **kw)) for p, s, kw in REQUESTS]
    for j in jobs:
        j.texts()
    assert batcher.stats["peak_jobs"] == 1 and batcher.stats["joined_running"] == 0


def test_a_cancelled_job_leaves_the_batch_and_others_continue(gpt):
    model, tok = gpt
    entry = entry_for(model, tok)
    expected = run_alone(entry, job(["ab"], 1, max_new_tokens=30)).texts()
    batcher = Batcher(entry)
    keep, gone = job(["ab"], 1, max_new_tokens=30), job(["cd"], 2, max_new_tokens=1000)
    gone.cancelled.set()  # cancelled while waiting: never decoded
    waiting = batcher.submit(gone)
    assert waiting.texts() == [""] and waiting.steps == 0
    leaving = job(["cd"], 2, max_new_tokens=1000)
    batcher.submit(keep)
    batcher.submit(leaving)
    deadline = time.monotonic() + 10
    while leaving.steps < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    leaving.cancelled.set()
    assert keep.texts() == expected
    leaving.texts()
    assert leaving.steps < 1000


def test_a_failing_job_fails_alone(gpt):
    model, tok = gpt
    batcher = Batcher(entry_for(model, tok))
    bad = batcher.submit(job(["ab", ""], 1))  # an empty prompt has no token to start from
    good = batcher.submit(job(["ab"], 1))
    with pytest.raises(Exception, match="at least one token"):
        bad.texts()
    assert len(good.texts()[0]) == 10


def test_a_stop_string_is_never_streamed_in_part(gpt):
    """A row that ends at a stop string of several characters holds none of it, streamed or not
    (its first characters were sent before the last one arrived: 'ab' as stop left an 'a'), and
    gets what `genforge sample` cuts (sampling.text: the text before the first stop string)."""
    model, tok = gpt
    full = reference(model, tok, job(["ab"], 7, max_new_tokens=12), 7)[0]
    batcher = Batcher(entry_for(model, tok))
    for stop in (full[3:5], full[3:6], full[0:2]):
        cut = full[:full.index(stop)]
        j = batcher.submit(job(["ab"], 7, max_new_tokens=12, stop=[stop, "\n\n\n\n\n"]))
        pieces = list(j.pieces())
        assert "".join(piece for _, piece in pieces) == cut, (stop, full)
    assert batcher.submit(job(["ab"], 7, max_new_tokens=12, stop=["never in it"])).texts() == [full]  # held back, then sent
