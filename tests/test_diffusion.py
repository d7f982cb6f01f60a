"""The diffusion family on digits: conditioning, guidance, editing, likelihood and the CLI."""

import pytest
import torch
from helpers import gen, make_trainer, on

from genforge import GenforgeError
from genforge.cli import main
from genforge.config import load_config
from genforge.data.captions import PARAPHRASES, SYNONYMS, TEMPLATES, class_captions
from genforge.diffusion.samplers import SAMPLERS, guided
from genforge.metrics.classes import label_agreement
from genforge.metrics.extractor import load_extractor

TINY = ["model.channels=[16, 32]", "model.heads=2", "model.sampling_steps=4", "train.eval_every=0",
        "train.plot=false", "train.checkpoint_every=1000", "train.batch_size=16"]


def trained(tmp_path, *overrides, steps=3, **kwargs):
    cfg, mcfg = load_config("diffusion-digits", [*TINY, f"train.max_steps={steps}", *overrides])
    trainer = make_trainer(cfg, mcfg, tmp_path / "run", progress=False, **kwargs)
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def class_model(tmp_path_factory):
    """A class-conditional model after a short run (about 20 s on 2 cores)."""
    trainer = trained(tmp_path_factory.mktemp("cls"), "model.conditioning=class", "model.channels=[32, 64]",
                      "train.batch_size=64", "train.lr=3e-3", "model.cond_dropout=0.1", steps=400)
    return trainer.model.eval(), trainer.data


def agreement(model, data, **options):
    extractor = load_extractor(data)
    labels = torch.arange(100) % 10
    x = model.sample(100, gen(0, model), labels=labels, **options)
    _, probs = extractor.run(x.float().cpu())
    return label_agreement(probs, labels)


def test_short_class_conditional_run_is_recognised_above_chance(class_model):
    model, data = class_model
    acc = agreement(model, data, sampler="dpmpp-2m", sampling_steps=10, guidance=2.0)
    assert acc > 0.4, acc  # chance is 0.1


def test_guidance_at_scale_one_equals_the_conditional_model(class_model):
    model, _ = class_model
    x = torch.randn(4, 1, 8, 8)
    sigma = torch.full((4,), 1.3)
    cond = {"labels": torch.tensor([0, 3, 5, 9]), "uncond": torch.zeros(4, dtype=torch.bool)}
    with torch.no_grad():
        assert torch.equal(guided(model.denoiser, cond, 1.0)(x, sigma), model.denoiser(x, sigma, cond))
        g = guided(model.denoiser, cond, 1.0 + 1e-9)(x, sigma)  # the batched two-pass path
        assert torch.allclose(g, model.denoiser(x, sigma, cond), atol=1e-5)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_editing_with_every_sampler(class_model, sampler):
    model, data = class_model
    image = on(data.test.get(torch.tensor([0])), model)["x"][0]  # (1, 8, 8) in pixel range
    same = model.sample(2, gen(0, model), labels=torch.tensor([1, 2]), sampler=sampler,
                        init=image, strength=0.0)
    assert torch.allclose(same, image.expand_as(same), atol=1e-6)  # SDEdit at strength 0 returns the input
    mask = torch.zeros(1, 8, 8, device=image.device)
    mask[:, :, 4:] = 1  # regenerate the right half
    out = model.sample(2, gen(0, model), labels=torch.tensor([1, 2]), sampler=sampler,
                       sampling_steps=5, init=image, mask=mask)
    assert torch.allclose(out[..., :4], image[..., :4].expand_as(out[..., :4]), atol=1e-5)
    assert not torch.allclose(out[..., 4:], image[..., 4:].expand_as(out[..., 4:]), atol=1e-2)
    varied = model.sample(2, gen(0, model), labels=torch.tensor([1, 1]), sampler=sampler,
                          sampling_steps=5, init=image, strength=0.5)
    assert varied.shape == (2, 1, 8, 8) and not torch.equal(varied[0], varied[1])


def test_bits_per_dim_is_finite_and_in_a_sane_range(class_model):
    model, data = class_model
    batch = on(data.test.get(torch.arange(16)), model)
    out = model.heldout_metrics([batch], gen(0, model), bpd_steps=10, bpd_images=16)
    assert 0.0 < out["bits_per_dim"] < 8.0 and out["bpd_images"] == 16


def test_bad_sampling_options_are_refused(class_model):
    model, _ = class_model
    g = gen(0, model)
    for kwargs, message in [({"eta": 0.5, "sampler": "euler"}, "--eta applies to the ddim"),
                            ({"guidance": float("nan")}, "--guidance must be"),
                            ({"guidance": 1e308}, "--guidance must be between 0 and 100"),  # NaN images, silently
                            ({"strength": 0.5}, "give it with --init"),
                            ({"prompt": ["a two"]}, "needs a text-conditional")]:
        with pytest.raises(Exception, match=message):
            model.sample(2, g, **kwargs)


def test_paraphrases_never_appear_in_training_captions():
    for dataset, pairs in PARAPHRASES.items():
        train = {c.lower() for caps in class_captions(dataset, [str(i) for i in range(10)]) for c in caps}
        assert len(SYNONYMS[dataset]) == 10 and len(train) == 10 * len(TEMPLATES) * len(SYNONYMS[dataset][0])
        for text, label in pairs:
            assert text.lower() not in train and 0 <= label < 10


def test_config_errors_are_clear(tmp_path):
    import numpy as np

    np.savez(tmp_path / "unlabelled.npz", images=np.random.default_rng(0).integers(0, 255, (40, 8, 8), np.uint8))
    with pytest.raises(Exception, match="needs class labels"):
        trained(tmp_path, "model.conditioning=class", f"data.name={tmp_path / 'unlabelled.npz'}")
    five_levels = ["model.channels=[8, 8, 8, 8, 8]", "model.attention=[false, false, false, false, true]"]
    for bad, message in [(five_levels, "do not halve"), (["model.loss_weighting=min-snr"], "min-snr weighting")]:
        with pytest.raises(Exception, match=message):
            cfg, mcfg = load_config("diffusion-digits", [*TINY, *bad])
            make_trainer(cfg, mcfg, tmp_path / "r", progress=False)


def test_cli_sample_and_eval(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "diffusion-digits", *TINY, "train.max_steps=2", "model.conditioning=class",
                 "--run-dir", str(run), "--no-progress"]) == 0
    out = tmp_path / "s.png"
    assert main(["sample", str(run), "--class-label", "7", "--guidance", "3", "--sampler", "dpmpp-2m",
                 "--sampling-steps", "3", "--num-samples", "4", "--out", str(out), "--seed", "0"]) == 0
    assert out.is_file()
    assert main(["sample", str(run), "--init", "test:3", "--strength", "0.5", "--mask", "left",
                 "--sampler", "heun", "--sampling-steps", "2", "--num-samples", "2",
                 "--out", str(tmp_path / "edit.png")]) == 0
    capsys.readouterr()
    for argv, message in [(["--eta", "0.3", "--sampler", "euler"], "--eta applies"),
                          (["--prompt", "a seven"], "needs a text-conditional"),
                          (["--mask", "nowhere.png", "--init", "test:0"], "--mask nowhere.png"),
                          (["--latent-temperature", "0.5"], "does not apply"),
                          (["--temperature", "0"], "--temperature does not apply"),  # 0 is given too
                          (["--sampling-steps", "0"], "at least 1")]:
        assert main(["sample", str(run), "--num-samples", "2", *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert main(["eval", str(run), "--num-samples", "20", "--sampling-steps", "2", "--sampler", "euler",
                 "--bpd-steps", "2", "--bpd-images", "4"]) == 0
    report = capsys.readouterr().out
    assert "fd" in report and "bits_per_dim" in report


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """Text-to-image on digits with the real frozen all-MiniLM-L6-v2 (about 30 s)."""
    pytest.importorskip("sentence_transformers")
    trainer = trained(tmp_path_factory.mktemp("txt"), "model.conditioning=text", "model.channels=[32, 64]",
                      "train.batch_size=64", "train.lr=3e-3", steps=300)
    return trainer


def test_text_conditioning_follows_unseen_paraphrases(text_model):
    model, data = text_model.model.eval(), text_model.data
    extractor = load_extractor(data)
    hits = []
    for text, k in PARAPHRASES["digits"]:
        x = model.sample(10, gen(0, model), prompt=[text], sampling_steps=8, guidance=3.0)
        hits.append(label_agreement(extractor.run(x.cpu())[1], torch.full((10,), k)))
    assert sum(hits) / len(hits) > 0.5, hits  # chance is 0.1
    # the prompt moves samples: "seven" prompts give more sevens than "zero" prompts do
    sevens = [model.sample(20, gen(1, model), prompt=[p], sampling_steps=8, guidance=3.0)
              for p in ("a hand-written seven", "a scribbled zero")]
    frac = [float((extractor.run(x)[1].argmax(1) == 7).float().mean()) for x in sevens]
    assert frac[0] > frac[1] + 0.3, frac


def test_text_encoder_is_a_frozen_part_not_saved(text_model):
    model = text_model.model
    assert set(model.frozen_parts()) == {"text_encoder"}
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    from safetensors.torch import load_file

    from genforge.checkpoint import latest_checkpoint

    saved = load_file(str(latest_checkpoint(text_model.run_dir) / "model.safetensors"))
    assert saved and not any(k.startswith("text_encoder.") for k in saved)
    assert not any(k.startswith("caption_") for k in saved)  # rebuilt from the encoder
    ema = text_model.ema
    assert ema is None or not any(k.startswith("text_encoder") for k in ema.state_dict())


def test_missing_text_encoder_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("GENFORGE_TEXT_ENCODER", str(tmp_path))
    with pytest.raises(Exception, match="not a sentence-transformers model folder"):
        trained(tmp_path, "model.conditioning=text", steps=1)


def test_cli_prompt_trajectory_and_masks(tmp_path, capsys):
    from genforge.modalities.image import load_mask

    assert load_mask("left", (1, 8, 8))[0, :, :4].eq(1).all() and load_mask("left", (1, 8, 8))[0, :, 4:].eq(0).all()
    assert load_mask("center", (1, 8, 8)).sum() == 16
    run = tmp_path / "run"
    assert main(["train", "diffusion-digits", *TINY, "train.max_steps=1", "--run-dir", str(run), "--no-progress"]) == 0
    out = tmp_path / "t.png"
    assert main(["sample", str(run), "--trajectory", "--sampling-steps", "3", "--num-samples", "2",
                 "--out", str(out)]) == 0
    assert out.is_file() and (tmp_path / "t-trajectory.png").is_file()
    capsys.readouterr()
    assert main(["sample", str(run), "--class-label", "3"]) == 2
    err = capsys.readouterr().err  # the key that exists (issue #16 suggested model.conditional=true)
    assert "class-conditional" in err and "model.conditioning=class" in err and "conditional=true" not in err
    assert main(["sample", str(run), "--guidance", "3"]) == 2  # refused, not ignored
    assert "unconditional" in capsys.readouterr().err


def tiny_model(**config):
    """An untrained 8x8 model: enough to count steps and calls, and to check finiteness."""
    from helpers import device_under_test

    from genforge.data.spec import DataSpec
    from genforge.families.diffusion import Diffusion, DiffusionConfig

    spec = DataSpec("image", shape=(1, 8, 8), pixel_range=(0.0, 1.0), name="tiny")
    cfg = DiffusionConfig(channels=(8, 16), attention=(False, True), heads=2, **config)
    return Diffusion(cfg, spec).to(device_under_test()).eval()


@pytest.mark.parametrize("noise", ["lognormal", "linear", "cosine"])
def test_dpmpp_2m_at_the_step_counts_that_crashed(noise):
    """Issue #16: --schedule linear --sampling-steps 20 and cosine at 200 and 1000 steps crashed
    dpmpp-2m (ZeroDivisionError on a repeated level), whatever the training noise."""
    model = tiny_model(training_noise=noise)
    for schedule, steps in [("linear", 20), ("cosine", 200), ("cosine", 1000)]:
        x = model.sample(1, gen(0, model), sampler="dpmpp-2m", schedule=schedule, sampling_steps=steps)
        assert torch.isfinite(x).all(), (schedule, steps)


@pytest.mark.parametrize("sampler", sorted(SAMPLERS))
def test_sample_calls_back_once_per_step(sampler):
    model = tiny_model()
    steps = []
    model.sample(2, gen(0, model), sampler=sampler, sampling_steps=4, callback=lambda info: steps.append(info["step"]))
    assert steps == [0, 1, 2, 3]


def test_step_progress_bar_counts_steps_and_feeds_the_familys_observer(capsys):
    from genforge.families.base import SamplingPlan
    from genforge.modalities import step_progress

    seen = []
    plan = SamplingPlan({}, per_step=True, on_step=lambda info: seen.append(info["step"]))
    model = tiny_model()
    with step_progress(plan, "batch 1/1", enabled=True) as extra:
        model.sample(2, gen(0, model), sampling_steps=3, **extra)
    assert seen == [0, 1, 2] and "batch 1/1" in capsys.readouterr().err  # the bar, on stderr
    with step_progress(plan, "batch 1/1", enabled=False) as extra:
        model.sample(2, gen(0, model), sampling_steps=2, **extra)
    assert seen == [0, 1, 2, 0, 1] and capsys.readouterr().err == ""  # off: the observer still runs
    with step_progress(SamplingPlan({}), "batch 1/1", enabled=True) as extra:
        assert extra == {}  # a family without steps gets no callback


@pytest.mark.parametrize("bpd_steps", [1, 3])
def test_bits_per_dim_runs_bpd_steps_heun_steps(bpd_steps):
    """Issue #16: --bpd-steps N ran N-1 Heun steps (1 ran none). N steps are 2N denoiser calls."""
    model = tiny_model()
    calls = []
    plain = model.denoiser

    def counted(x, sigma, cond):
        calls.append(x.shape[0])
        return plain(x, sigma, cond)

    model.denoiser = counted
    batch = {"x": torch.rand(4, 1, 8, 8, generator=gen(0, model), device=gen(0, model).device)}
    out = model.heldout_metrics([batch], gen(0, model), bpd_steps=bpd_steps, bpd_images=4)
    assert len(calls) == 2 * bpd_steps and out["bpd_steps"] == bpd_steps
    assert torch.isfinite(torch.tensor(out["bits_per_dim"]))


def test_zero_counts_as_a_given_option():
    """Issue #16: `0 in (None, False)` is True, so --temperature 0 on a diffusion run was silently
    ignored while 0.5 was refused. Any value but None (and an unset switch) is given."""
    from types import SimpleNamespace

    from genforge.modalities import check_options

    run = SimpleNamespace(model=tiny_model(), config=SimpleNamespace(family="diffusion"),
                          spec=SimpleNamespace(modality="image", name="digits"))
    for value in (0, 0.0, 0.5):
        with pytest.raises(GenforgeError, match="--temperature does not apply"):
            check_options(run, {"temperature": value})
    with pytest.raises(GenforgeError, match="--top-k does not apply"):
        check_options(run, {"top_k": 0})
    filled = check_options(run, {"eta": 0.0, "guidance": 0.0, "trajectory": None})
    assert filled["eta"] == 0.0 and filled["guidance"] == 0.0 and filled["batch_size"] == 64
