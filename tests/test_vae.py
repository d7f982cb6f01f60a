"""The VAE family: objective, likelihood bounds, conditioning, latent tools, warm-up state, CLI."""

import json
import math

import pytest
import torch
from helpers import gen, make_trainer, on

from genforge import GenforgeError
from genforge.cli import main
from genforge.config import load_config
from genforge.data.spec import DataSpec
from genforge.families.vae import VAE, discretized_logistic_logp
from genforge.metrics.classes import label_agreement
from genforge.metrics.extractor import load_extractor
from genforge.modalities import load_data
from genforge.runs import load_run
from genforge.sampling.images import apply_attribute, attribute_vector, interpolate, lerp, slerp

FAST = ["train.eval_every=0", "train.log_every=10", "train.checkpoint_every=100000", "train.warmup_steps=10"]


def fit(tmp_path, steps, *overrides):
    cfg, mcfg = load_config("vae-digits", [f"train.max_steps={steps}", *FAST, *overrides])
    trainer = make_trainer(cfg, mcfg, tmp_path, progress=False)
    trainer.fit()
    return trainer


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A CVAE on digits, trained briefly (a few seconds on 2 cores)."""
    run_dir = tmp_path_factory.mktemp("cvae")
    torch.manual_seed(0)
    trainer = fit(run_dir, 400, "model.conditional=true", "model.kl_warmup_steps=100")
    return trainer, run_dir


def test_loss_decreases_on_digits(tmp_path):
    cfg, mcfg = load_config("vae-digits", [])
    data = load_data(cfg.data, {})
    torch.manual_seed(0)
    model = VAE(mcfg, data.spec)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    batch = data.train.get(torch.arange(128))
    losses = []
    for _ in range(60):
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_iwae_bound_is_above_the_elbo_and_tightens_with_k(trained):
    trainer, _ = trained
    model, data = trainer.model.eval(), trainer.data
    batch = on(data.val.get(torch.arange(120)), model)
    g = gen(0, model)
    target = model.target(batch["x"], g)  # one fixed binarization for every k
    bounds = {k: model.iwae_log_likelihood(target, batch["y"], k=k, generator=g).mean().item()
              for k in (1, 10, 100)}
    # k=1 averaged over many draws is the ELBO itself.
    elbo = torch.stack([model.iwae_log_likelihood(target, batch["y"], k=1, generator=g)
                        for _ in range(50)]).mean().item()
    assert bounds[100] > bounds[10] > elbo
    assert bounds[1] == pytest.approx(elbo, abs=2.0)


def test_heldout_metrics_report_nats_bits_and_active_units(trained):
    trainer, _ = trained
    model = trainer.model.eval()
    batches = [on(trainer.data.val.get(torch.arange(s, s + 60)), model) for s in (0, 60)]
    out = model.heldout_metrics(batches, gen(0, model), iwae_k=20)
    assert out["nll_iwae_nats"] < -out["elbo_nats"]  # same draws: Jensen's inequality, exactly
    assert out["nll_bits_per_dim"] == pytest.approx(out["nll_iwae_nats"] / (64 * math.log(2)))
    assert 1 <= out["active_units"] <= 8


def test_conditional_samples_respect_labels(trained):
    trainer, _ = trained
    model = trainer.model.eval()
    labels = torch.arange(200) % 10
    samples = model.sample(200, gen(1, model), labels).cpu()
    _, probs = load_extractor("digits").run(samples)
    assert label_agreement(probs, labels) > 0.8  # chance is 0.1


def test_interpolation_endpoints_reconstruct_the_inputs(trained):
    trainer, _ = trained
    model = trainer.model.eval()
    batch = on(trainer.data.val.get(torch.tensor([0, 1])), model)
    xa, xb, ya, yb = batch["x"][0], batch["x"][1], batch["y"][0], batch["y"][1]
    for method in ("lerp", "slerp"):
        path = interpolate(model, xa, xb, points=5, method=method, y_a=ya, y_b=yb)
        assert path.shape == (5, 1, 8, 8)
        assert torch.allclose(path[0], model.reconstruct(xa[None], ya[None])[0], atol=1e-5)
        assert torch.allclose(path[-1], model.reconstruct(xb[None], yb[None])[0], atol=1e-5)


def test_slerp_keeps_the_norm_and_lerp_is_straight():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    t = torch.linspace(0, 1, 7)
    assert torch.allclose(slerp(a, b, t).norm(dim=1), torch.full((7,), 3.0), atol=1e-5)
    assert torch.allclose(lerp(a, b, t)[3], torch.tensor([1.5, 1.5]))
    assert torch.allclose(slerp(a, a, t), a.expand(7, 2))  # parallel: falls back to the line


@pytest.fixture(scope="module")
def unconditional(tmp_path_factory):
    """An unconditional VAE on digits, shared by the tests that need one."""
    torch.manual_seed(0)
    return fit(tmp_path_factory.mktemp("vae"), 300)


def test_attribute_vector_moves_images_towards_the_target_class(unconditional):
    model, data = unconditional.model.eval(), unconditional.data
    everything = data.test.get(torch.arange(len(data.test)))
    vector = attribute_vector(model, everything["x"], everything["y"], 0, 1)
    zeros = everything["x"][everything["y"] == 0][:10]
    out = apply_attribute(model, zeros, vector, scales=(0.0, 1.0))
    assert out.shape == (10, 2, 1, 8, 8)
    _, before = load_extractor("digits").run(out[:, 0])
    _, after = load_extractor("digits").run(out[:, 1])
    assert after[:, 1].mean() > before[:, 1].mean() + 0.2


def test_discretized_logistic_is_a_distribution_over_256_levels():
    levels = torch.linspace(-1, 1, 256)
    mean, log_scale = torch.tensor(0.3), torch.tensor(-2.0)
    p = discretized_logistic_logp(levels, mean.expand(256), log_scale.expand(256)).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-4)
    assert p.argmax().item() == round((0.3 + 1) / 2 * 255)


def test_logistic_likelihood_trains(tmp_path):
    torch.manual_seed(0)
    trainer = fit(tmp_path, 60, "model.likelihood=logistic")
    rows = [json.loads(r) for r in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert trainer.model.sample(4).shape == (4, 1, 8, 8)


def test_free_bits_and_warmup_shape_the_kl_term():
    spec = DataSpec("image", (1, 8, 8), num_classes=10, class_names=list("0123456789"))
    _, mcfg = load_config("vae-digits", ["model.free_bits=5.0", "model.kl_warmup_steps=0"])
    torch.manual_seed(0)
    model = VAE(mcfg, spec)
    out = model({"x": torch.rand(16, 1, 8, 8)})
    # At initialization every dimension's KL is far below 5 nats, so each costs exactly 5.
    assert out["loss"].item() == pytest.approx(out["recon"].item() + 8 * 5.0, rel=1e-5)
    _, mcfg = load_config("vae-digits", ["model.kl_warmup_steps=100", "model.beta=2.0"])
    model = VAE(mcfg, spec)
    model.steps_done.fill_(25)
    assert float(model.kl_weight()) == pytest.approx(0.5)


def test_warmup_step_counter_survives_resume(tmp_path):
    cfg, mcfg = load_config("vae-digits", ["train.max_steps=20", "model.kl_warmup_steps=100",
                                           "train.checkpoint_every=10", *FAST[:3]])
    make_trainer(cfg, mcfg, tmp_path, stop_after=10, progress=False).fit()
    resumed = make_trainer(cfg, mcfg, tmp_path, resume=True, progress=False)
    assert int(resumed.model.steps_done) == 10 and float(resumed.model.kl_weight()) == pytest.approx(0.1)
    resumed.fit()
    assert int(load_run(tmp_path).model.steps_done) == 20


def test_bad_configurations_are_clear_errors(tmp_path):
    unlabelled = DataSpec("image", (1, 8, 8))
    _, mcfg = load_config("vae-digits", ["model.conditional=true"])
    with pytest.raises(GenforgeError, match="needs class labels"):
        VAE(mcfg, unlabelled)
    model = VAE(mcfg, DataSpec("image", (1, 8, 8), num_classes=3, class_names=list("abc")))
    with pytest.raises(GenforgeError, match="conditional"):
        model({"x": torch.rand(2, 1, 8, 8)})
    with pytest.raises(GenforgeError, match="beta"):
        load_config("vae-digits", ["model.beta=-1"])
    with pytest.raises(GenforgeError, match="models images"):
        VAE(mcfg, DataSpec("text", vocab_size=10))


def test_odd_image_sizes_are_padded_and_cropped():
    _, mcfg = load_config("vae-digits", [])
    model = VAE(mcfg, DataSpec("image", (3, 10, 6)))
    out = model({"x": torch.rand(4, 3, 10, 6)})
    assert torch.isfinite(out["loss"]) and model.sample(2).shape == (2, 3, 10, 6)


def test_cli_sample_interpolate_attribute_and_eval(trained, tmp_path, capsys):
    _, run_dir = trained
    assert main(["sample", str(run_dir), "--num-samples", "20", "--out", str(tmp_path / "s.png"),
                 "--nearest"]) == 0
    assert (tmp_path / "s.png").is_file() and (tmp_path / "s-nearest.png").is_file()
    assert main(["sample", str(run_dir), "--class-label", "7", "--out", str(tmp_path / "c.png")]) == 0
    assert main(["sample", str(run_dir), "--interpolate", "test:0", "test:5", "--interp-method", "lerp",
                 "--out", str(tmp_path / "i.png")]) == 0
    assert main(["sample", str(run_dir), "--attribute", "3", "8", "--num-samples", "4",
                 "--out", str(tmp_path / "a.png")]) == 0
    for path in ("c.png", "i.png", "a.png"):
        assert (tmp_path / path).is_file()
    capsys.readouterr()
    assert main(["sample", str(run_dir), "--class-label", "eleven"]) == 2
    assert "unknown class 'eleven'" in capsys.readouterr().err
    assert main(["eval", str(run_dir), "--num-samples", "150", "--iwae-k", "5"]) == 0
    result = json.loads((run_dir / "eval.json").read_text())
    for key in ("fd", "kid", "kid_se", "precision", "recall", "density", "coverage", "label_agreement",
                "memorization_near_copy_fraction", "floor_fd_train_test", "floor_fd_noise",
                "nll_iwae_nats", "nll_bits_per_dim", "active_units", "class_entropy_norm"):
        assert math.isfinite(result[key]), key
    assert result["floor_fd_train_test"] < result["fd"] < result["floor_fd_noise"]
    assert result["samples"] == 150 and result["iwae_k"] == 5


def test_eval_refuses_changed_data_and_missing_inception_weights(trained, tmp_path, capsys):
    _, run_dir = trained
    assert main(["eval", str(run_dir), "--num-samples", "50", "--inception-weights",
                 str(tmp_path / "none.pth")]) == 2
    assert "Inception weights" in capsys.readouterr().err
    saved = run_dir / "data.json"
    original = saved.read_text()
    try:
        saved.write_text(json.dumps({**json.loads(original), "test_fingerprint": "0" * 16}))
        assert main(["eval", str(run_dir), "--num-samples", "50"]) == 2
        err = capsys.readouterr().err
        assert "changed since this run was trained" in err and "Traceback" not in err
    finally:
        saved.write_text(original)


@pytest.mark.parametrize("likelihood", ["bernoulli", "logistic"])
def test_objective_stays_fp32_under_bf16_autocast(likelihood):
    # The trainer autocasts to bf16 on GPUs; a 1/255-wide bin needs fp32 likelihood maths.
    _, mcfg = load_config("vae-digits", [f"model.likelihood={likelihood}"])
    model = VAE(mcfg, DataSpec("image", (1, 8, 8)))
    x = torch.rand(8, 1, 8, 8)
    torch.manual_seed(0)
    ref = model({"x": x})["loss"].item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(0)
        out = model({"x": x})["loss"]
    assert out.dtype == torch.float32 and out.item() == pytest.approx(ref, rel=1e-2)


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "hello"], "--prompt does not apply to this vae run"),
    (["--max-new-tokens", "5"], "--max-new-tokens does not apply"),
    (["--latent-temperature", "nan"], "latent temperature must be between 0 and 100"),
    (["--latent-temperature", "1e308"], "latent temperature must be between 0 and 100"),  # NaN images, silently
    (["--interpolate", "test:0", "test:1", "--nearest"], "--nearest, --filter and --privacy-filter apply to samples"),
    (["--num-samples", "1000", "--out", "big.png"], "write them with --out FILE.npz"),
    (["--out", "samples.txt"], ".png grid or an .npz"),
])
def test_image_sample_mistakes_are_one_line_errors(trained, capsys, argv, message):
    _, run_dir = trained
    assert main(["sample", str(run_dir), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("argv, message", [
    (["--iwae-k", "0"], "--iwae-k must be at least 1"),
    (["--max-batches", "-1"], "--max-batches must be at least 1"),
    (["--num-samples", "0"], "--num-samples must be at least 1"),
])
def test_image_eval_mistakes_are_one_line_errors(trained, capsys, argv, message):
    _, run_dir = trained
    assert main(["eval", str(run_dir), *argv]) == 2
    assert message in capsys.readouterr().err


def test_many_images_are_sampled_in_batches_into_an_npz(trained, tmp_path):
    import numpy as np

    _, run_dir = trained
    out = tmp_path / "many.npz"
    assert main(["sample", str(run_dir), "--num-samples", "1000", "--batch-size", "256", "--seed", "1",
                 "--out", str(out)]) == 0
    saved = np.load(out)
    assert saved["images"].shape == (1000, 1, 8, 8) and saved["images"].dtype == np.uint8
    assert saved["labels"].tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    again = tmp_path / "again.npz"
    assert main(["sample", str(run_dir), "--num-samples", "1000", "--batch-size", "256", "--seed", "1",
                 "--out", str(again)]) == 0
    assert np.array_equal(np.load(again)["images"], saved["images"])  # same seed, same images
