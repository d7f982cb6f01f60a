"""The GAN family: networks, losses, regularizers, the two optimizers, and a short run."""

import math

import pytest
import torch
from helpers import gen, make_trainer

from genforge import GenforgeError
from genforge.config import load_config
from genforge.data.spec import DataSpec
from genforge.families.gan import (
    GAN,
    GANConfig,
    diff_augment,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
)
from genforge.train.ema import EMA

TINY = ["model.g_width=8", "model.d_width=8", "model.z_dim=8", "model.eval_samples=32", "train.eval_every=0",
        "train.plot=false", "train.checkpoint_every=1000", "train.batch_size=16"]


def spec(c, h, w, k=0):
    return DataSpec("image", shape=(c, h, w), num_classes=k, class_names=[str(i) for i in range(k)], name="x")


@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64)])
def test_shapes_and_conditioning(arch, shape):
    k = 10
    model = GAN(GANConfig(arch=arch, g_width=8, d_width=8, z_dim=16, conditional=True), spec(*shape, k=k))
    y = torch.arange(4) % k
    x = model.generator(model.latents(4), y)
    assert x.shape == (4, *shape) and x.abs().max() <= 1
    assert model.discriminator(x, y).shape == (4,)
    # the class changes the image: same z, different label
    z = model.latents(2, torch.Generator().manual_seed(0))
    model.generator.eval()
    with torch.no_grad():
        for p in model.generator.parameters():  # make the class embeddings non-zero
            p.add_(torch.randn_like(p) * 0.1)
        a = model.generator(z, torch.tensor([0, 0]))
        b = model.generator(z, torch.tensor([1, 1]))
    assert not torch.allclose(a, b)


def test_losses_match_their_formulas():
    r, f = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731  softplus
    assert discriminator_loss("hinge", r, f).item() == pytest.approx((0 + 2) / 2 + (1.5 + 0) / 2)
    assert discriminator_loss("ns", r, f).item() == pytest.approx((sp(-2) + sp(1)) / 2 + (sp(0.5) + sp(-3)) / 2)
    assert discriminator_loss("wgan-gp", r, f).item() == pytest.approx((0.5 - 3) / 2 - (2 - 1) / 2)
    assert generator_loss("ns", f).item() == pytest.approx((sp(-0.5) + sp(3)) / 2)
    assert generator_loss("hinge", f).item() == pytest.approx(1.25)
    assert generator_loss("wgan-gp", f).item() == pytest.approx(1.25)


def test_penalties_are_zero_or_positive_where_they_must_be():
    real, fake = torch.randn(8, 1, 4, 4), torch.randn(8, 1, 4, 4)
    w = torch.randn(16)
    unit = w / w.norm()
    linear = lambda x, y=None: x.flatten(1) @ unit  # noqa: E731  1-Lipschitz with gradient norm exactly 1
    assert gradient_penalty(linear, real, fake).item() == pytest.approx(0.0, abs=1e-10)
    steep = lambda x, y=None: x.flatten(1) @ (3 * unit)  # noqa: E731  gradient norm 3: penalty (3 - 1)^2
    assert gradient_penalty(steep, real, fake).item() == pytest.approx(4.0, rel=1e-5)
    x = real.clone().requires_grad_(True)
    assert r1_penalty((x * 0).flatten(1).sum(1) + 1.0, x).item() == 0.0  # flat D: no penalty
    x = real.clone().requires_grad_(True)
    assert r1_penalty(linear(x) * 2, x).item() == pytest.approx(4.0, rel=1e-5)  # ||2 unit||^2


def test_spectral_norm_bounds_the_largest_singular_value():
    model = GAN(GANConfig(g_width=8, d_width=16), spec(1, 28, 28))
    d = model.discriminator.train()
    for _ in range(30):  # each training-mode forward runs one power iteration
        d(torch.randn(4, 1, 28, 28))
    for module in d.modules():
        if hasattr(module, "parametrizations"):
            w = module.weight.flatten(1)
            assert torch.linalg.matrix_norm(w, 2) <= 1.05, module


def test_diff_augment_keeps_shape_and_changes_images():
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    for policy in ("translation", "cutout", "color"):
        out = diff_augment(x, [policy])
        assert out.shape == x.shape and not torch.equal(out, x)
    with pytest.raises(Exception, match="unknown diffaugment"):
        GANConfig(diffaugment="flip")


def test_neither_optimizer_sees_the_other_networks_gradients(tmp_path):
    cfg, mcfg = load_config("gan-digits", [*TINY, "train.max_steps=2", "model.r1_gamma=1", "model.r1_every=1"])
    trainer = make_trainer(cfg, mcfg, tmp_path / "run", progress=False)
    model = trainer.model
    seen = []
    for name, opt in trainer.optimizers.items():
        original = opt.step

        def spy(*a, _name=name, _orig=original, **kw):
            g_grads = [p.grad is not None for p in model.generator.parameters()]
            d_grads = [p.grad is not None for p in model.discriminator.parameters()]
            seen.append((_name, any(g_grads), any(d_grads)))
            return _orig(*a, **kw)

        opt.step = spy
    trainer.fit()
    assert seen == [("d", False, True), ("g", True, False)] * 2


def test_short_conditional_run_is_recognised_above_chance(tmp_path):
    from genforge.metrics.classes import label_agreement
    from genforge.metrics.extractor import load_extractor

    cfg, mcfg = load_config("gan-digits", ["train.eval_every=0", "train.plot=false", "train.checkpoint_every=1000",
                                           "model.conditional=true", "train.max_steps=400", "model.g_width=32",
                                           "model.d_width=32", "train.ema_decay=0"])
    trainer = make_trainer(cfg, mcfg, tmp_path / "run", progress=False)
    trainer.fit()
    labels = torch.arange(200) % 10
    x = trainer.model.sample(200, gen(0, trainer.model), labels).cpu()
    acc = label_agreement(load_extractor(trainer.data).run(x)[1], labels)
    assert acc > 0.3, acc  # chance is 0.1


def test_a_discriminator_that_wins_outright_stops_training(tmp_path):
    cfg, mcfg = load_config("gan-digits", [*TINY, "train.max_steps=5", "model.divergence_patience=1"])
    trainer = make_trainer(cfg, mcfg, tmp_path / "run", progress=False)
    real_forward = trainer.model.forward

    def forward(batch, part="g", r1=False):  # report that D got every image right
        out = real_forward(batch, part=part, r1=r1)
        if part == "d":
            out["d_wins"] = torch.tensor(True)
        return out

    trainer.model.forward = forward
    with pytest.raises(GenforgeError, match="discriminator has classified every real and fake image"):
        trainer.fit()


def test_truncation_and_seed_paths():
    model = GAN(GANConfig(g_width=8, d_width=8, z_dim=16), spec(1, 8, 8))
    z = model.latents(500, torch.Generator().manual_seed(0), truncation=0.5)
    assert z.abs().max() <= 0.5 and z.std() < 0.35
    path = model.sample(1, None, interpolate_seeds=(1, 2), interp_points=5)
    ends = torch.cat([model.sample(1, torch.Generator().manual_seed(s)) for s in (1, 2)])
    assert path.shape == (5, 1, 8, 8) and torch.allclose(path[[0, -1]], ends, atol=1e-5)
    with pytest.raises(GenforgeError, match="--truncation"):
        model.latents(2, truncation=float("nan"))


def test_ema_warms_up():
    ema = EMA(torch.nn.Linear(2, 2), 0.999, ["weight", "bias"])
    assert ema.decay_at(0) == pytest.approx(0.1) and ema.decay_at(10**7) == 0.999


def test_cli_sample_truncation_paths_and_refusals(tmp_path, capsys):
    from genforge.cli import main

    run = tmp_path / "run"
    assert main(["train", "gan-digits", *TINY, "train.max_steps=2", "model.conditional=true", "--run-dir", str(run),
                 "--no-progress"]) == 0
    assert main(["sample", str(run), "--class-label", "7", "--truncation", "0.7", "--seed", "0", "--num-samples", "8",
                 "--out", str(tmp_path / "s.png")]) == 0
    assert main(["sample", str(run), "--interpolate-seeds", "1", "2", "--interp-points", "6",
                 "--out", str(tmp_path / "path.png")]) == 0
    assert (tmp_path / "s.png").is_file() and (tmp_path / "path.png").is_file()
    capsys.readouterr()
    for argv, message in [(["--guidance", "2"], "does not apply"), (["--truncation", "-1"], "--truncation"),
                          (["--interpolate-seeds", "1", "2", "--num-samples", "4"], "drop --num-samples")]:
        assert main(["sample", str(run), *argv]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
