"""Image requests batched across requests (serve/images.py): one sampler call for compatible
requests, each request's PNGs byte-identical to drawing it alone, for every image family."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from genforge.data.spec import DataSpec
from genforge.diffusion.samplers import SAMPLERS
from genforge.families import build_model, family_class
from genforge.serve import images

SPEC = DataSpec(modality="image", shape=(1, 8, 8), num_classes=10, class_names=[str(k) for k in range(10)])
MODELS = {
    "vae": {"latent_dim": 4, "channels": [8, 8], "hidden": 32, "conditional": True},
    "gan": {"g_width": 8, "d_width": 8, "z_dim": 8, "conditional": True},
    "diffusion": {"channels": [8, 16], "attention": [False, True], "heads": 2, "sampling_steps": 3, "conditioning": "class"},
}


def entry(family: str):
    torch.manual_seed(0)
    model = build_model(family, family_class(family).Config(**MODELS[family]), SPEC).eval()
    run = SimpleNamespace(model=model, spec=SPEC)
    return SimpleNamespace(id=family, run=run, device=torch.device("cpu"), lock=threading.Lock())


def requests_for(family: str) -> list[tuple[dict, int]]:
    extra = [{}]
    if family == "diffusion":
        extra = [{"sampler": s, "sampling_steps": 3} for s in SAMPLERS]  # stochastic ones included
    if family == "gan":
        extra = [{}, {"truncation": 0.7}]  # redraws outside +-t: still per request
    if family == "vae":
        extra = [{}, {"latent_temperature": 0.5}]
    return [[({"num_samples": n, "class_label": label, **e}, seed)
             for n, label, seed in ((3, "4", 11), (1, None, 12), (2, "7", 13))] for e in extra]


def alone(e, options, seed):
    prep = images.prepare(e, options)
    return images.encode(e, images.sample(e, prep, torch.Generator().manual_seed(seed)), prep)


@pytest.mark.parametrize("family", list(MODELS))
def test_batched_image_requests_are_byte_identical_to_alone(family, monkeypatch):
    e = entry(family)
    for group in requests_for(family):
        expected = [alone(e, o, s) for o, s in group]
        jobs = [images.ImageJob(images.prepare(e, o), torch.Generator().manual_seed(s)) for o, s in group]
        assert len({j.prep.key for j in jobs}) == 1  # compatible: counts and classes differ only
        calls = []
        inner = e.run.model.sample
        monkeypatch.setattr(e.run.model, "sample",
                            lambda n, *a, calls=calls, inner=inner, **k: calls.append(n) or inner(n, *a, **k))
        batcher = images.ImageBatcher(e)
        with torch.inference_mode():
            batcher._draw(jobs)
        monkeypatch.undo()
        assert calls == [6], f"{family} {group[0][0]}: drawn as {calls}, not in one call"
        assert [j.result for j in jobs] == expected, f"{family} {group[0][0]}"


def test_a_draw_rows_cannot_split_falls_back_to_one_by_one():
    e = entry("vae")
    group = requests_for("vae")[0]
    expected = [alone(e, o, s) for o, s in group]
    inner = e.run.model.sample

    def odd_sample(n, generator, **kw):  # a family drawing something not shaped by its rows
        torch.rand(1, generator=generator)
        return inner(n, generator, **kw)

    e.run.model.sample = odd_sample
    expected = [alone(e, o, s) for o, s in group]
    jobs = [images.ImageJob(images.prepare(e, o), torch.Generator().manual_seed(s)) for o, s in group]
    with torch.inference_mode():
        images.ImageBatcher(e)._draw(jobs)
    assert [j.result for j in jobs] == expected


def test_incompatible_requests_are_not_merged():
    e = entry("diffusion")
    a = images.prepare(e, {"num_samples": 2, "sampler": "heun", "sampling_steps": 2})
    b = images.prepare(e, {"num_samples": 2, "sampler": "euler", "sampling_steps": 2})
    assert a.key != b.key
    batcher = images.ImageBatcher(e)
    for prep in (a, b, a):
        batcher.waiting.append(images.ImageJob(prep, torch.Generator().manual_seed(0)))
    first = batcher._take()
    assert [j.prep for j in first] == [a, a] and [j.prep for j in batcher.waiting] == [b]


def test_row_generators_split_draws_by_rows():
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    rows = images.RowGenerators(gens, [2, 3], "cpu")
    with rows:
        got = torch.randn(5, 4, generator=rows.key)
        with pytest.raises(images.NotRowwise):
            torch.randn(4, 5, generator=rows.key)
    want = torch.cat([torch.randn(2, 4, generator=torch.Generator().manual_seed(1)),
                      torch.randn(3, 4, generator=torch.Generator().manual_seed(2))])
    assert torch.equal(got, want)
