"""Image watermarks: Tree-Ring in diffusion's initial noise, the keyed post-hoc mark, their
detectors' calibration, the capacity limit, the robustness transformations, and the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F
from helpers import make_trainer

from genforge import GenforgeError
from genforge.cli import main
from genforge.config import DataConfig, load_config
from genforge.diffusion.samplers import SAMPLERS
from genforge.watermark import attacks, posthoc, treering
from genforge.watermark.image import ImageMarker, detect_images, split_grid

KEY, OTHER = bytes(range(32)), bytes(range(100, 132))


@pytest.fixture(scope="module")
def digits():
    from genforge.data.images import load_images

    data = load_images(DataConfig(name="digits"))
    x = data.test.images[:40]  # (40, 1, 8, 8) uint8
    return x, F.interpolate(x.float(), size=28, mode="bilinear").round().to(torch.uint8)  # and 28x28


@pytest.fixture(scope="module")
def diffusion_run(tmp_path_factory):
    """An unconditional diffusion model on digits, trained briefly: inversion recovers its noise."""
    run_dir = tmp_path_factory.mktemp("wm") / "run"
    cfg, mcfg = load_config("diffusion-digits", [
        "model.channels=[32, 64]", "model.heads=2", "model.sampling_steps=20", "train.eval_every=0",
        "train.plot=false", "train.checkpoint_every=1000", "train.batch_size=64", "train.lr=3e-3",
        "train.max_steps=300", "train.device=cpu"])
    trainer = make_trainer(cfg, mcfg, run_dir, progress=False)
    trainer.fit()
    # A fixed run key: how strongly a 20-step tiny model carries Tree-Ring varies from key to key
    # (a random key's 32-image z fell just under the z > 4 threshold now and then).
    from genforge.watermark.keys import KEY_FILE

    key = run_dir / KEY_FILE
    key.unlink(missing_ok=True)
    key.write_bytes(bytes(range(32)))
    key.chmod(0o600)
    return trainer.model.eval(), run_dir


def to_gray(x, model):
    from genforge.modalities.image import to_uint8

    return to_uint8(x.cpu(), model.spec)


# -- Tree-Ring ---------------------------------------------------------------------------------
def test_marked_noise_is_real_carries_the_key_and_keeps_unit_power():
    noise = torch.randn(2000, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    marked = treering.mark_noise(noise, KEY)
    spec = treering._spectrum(marked)
    rings = treering.ring_index(8, 8, treering.default_radius(8, 8)) > 0
    pattern = treering.key_pattern(KEY, (1, 8, 8), treering.default_radius(8, 8))
    assert torch.allclose(spec[..., rings], pattern[..., rings].expand(2000, 1, -1), atol=1e-5)
    assert torch.allclose(treering._spectrum(marked.double()), spec)  # real noise: nothing discarded
    assert torch.allclose(spec[..., ~rings], treering._spectrum(noise)[..., ~rings], atol=1e-5)  # the rest kept
    powers = [treering.mark_noise(noise[:200], bytes([k]) * 32).pow(2).mean() for k in range(40)]
    assert abs(float(torch.stack(powers).mean()) - 1.0) < 0.1  # over keys, unit power per pixel


def test_ring_pvalues_are_uniform_on_gaussian_noise_and_tiny_on_the_mark():
    noise = torch.randn(400, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    p = torch.tensor([d["p_value"] for d in treering.ring_pvalues(noise, KEY)])
    assert 0.01 < float((p < 0.05).float().mean()) < 0.1  # calibrated under H0
    assert 0.35 < float(p.median()) < 0.65
    near = treering.mark_noise(noise[:20], KEY) + 0.1 * noise[:20]  # the mark, slightly disturbed
    assert max(d["p_value"] for d in treering.ring_pvalues(near, KEY)) < 1e-4
    assert treering.combined_pvalue(near, KEY)["p_value"] < 1e-8


def test_ring_null_holds_for_any_image_whatever_the_key():
    """The null is over the key's randomness: for images that are NOT white noise (a shared
    structure, a shrunken or shifted spectrum, even an image marked with another key), p-values
    over keys are uniform. The paper's y-based chi-square test failed exactly this."""
    g = torch.Generator().manual_seed(2)
    base = torch.randn(1, 1, 8, 8, generator=g)
    odd = 0.3 * torch.randn(300, 1, 8, 8, generator=g) + 2.0 * base  # strongly dependent, low variance
    marked = treering.mark_noise(torch.randn(300, 1, 8, 8, generator=g), KEY) * 0.5 + 1.0
    keys = [i.to_bytes(2, "little") * 16 for i in range(300)]
    for images in (odd, marked):
        p = torch.tensor([treering.ring_pvalues(images[i:i + 1], keys[i])[0]["p_value"] for i in range(300)])
        assert 0.02 < float((p < 0.05).float().mean()) < 0.09, float((p < 0.05).float().mean())
        assert 0.4 < float(p.median()) < 0.6 and float(p.min()) > 1e-4
    grids = torch.tensor([treering.combined_pvalue(marked[i:i + 30], keys[i])["p_value"]
                          for i in range(0, 270, 3)])  # the grid test too, under other keys
    assert 0.2 < float(grids.median()) < 0.8 and float(grids.min()) > 1e-3
    t = treering.cosine_test(torch.ones(13, dtype=torch.float64), torch.ones(13, dtype=torch.float64))
    assert t["p_value"] < 1e-30 and t["dof"] == 12  # a perfect match is not capped


def test_radius_too_large_is_an_error():
    with pytest.raises(GenforgeError, match="radius"):
        treering.ring_index(8, 8, 4)


def test_tree_ring_is_found_on_marked_samples_not_on_unmarked_ones(diffusion_run):
    model, _ = diffusion_run
    g = torch.Generator().manual_seed(0)
    marked = to_gray(model.sample(24, g, noise_mark=lambda z: treering.mark_noise(z, KEY)), model).float()
    plain = to_gray(model.sample(40, g), model).float()
    found = detect_images(marked, KEY, model, inversion_steps=30)
    assert found["methods"]["tree_ring"]["p_value"] < 1e-5 and found["watermarked"], found["methods"]["tree_ring"]
    r = detect_images(plain, KEY, model, inversion_steps=30)
    assert not r["watermarked"] and r["methods"]["tree_ring"]["p_value"] > 1e-3, r["methods"]
    per_image = torch.tensor(detect_images(plain, KEY, model, inversion_steps=30)["methods"]["tree_ring"]["per_image_p"])
    assert float((per_image < 0.05).float().mean()) <= 0.2  # roughly uniform on unmarked images


def test_tree_ring_with_another_key_finds_nothing(diffusion_run):
    """Regression: the paper's chi-square test scored p ~ 1e-17 here (the inverted noise of marked
    digits is shrunk and structured, which it read as the mark whatever the key)."""
    model, _ = diffusion_run
    g = torch.Generator().manual_seed(0)
    marked = to_gray(model.sample(24, g, noise_mark=lambda z: treering.mark_noise(z, KEY)), model).float()
    r = detect_images(marked, OTHER, model, inversion_steps=30)
    assert not r["watermarked"] and r["methods"]["tree_ring"]["p_value"] > 1e-3, r["methods"]
    from genforge.data.images import to_range

    noise = treering.invert(model, to_range(marked, model.spec.pixel_range), 30)
    p = torch.tensor([treering.combined_pvalue(noise, bytes([i]) * 32)["p_value"] for i in range(60)])
    assert float(p.min()) > 1e-3 and float((p < 0.05).float().mean()) <= 0.15, p  # 60 wrong keys


def test_only_deterministic_samplers_from_pure_noise_get_tree_ring(diffusion_run):
    """Tree-Ring needs x_T to decide the image: every sampler in DETERMINISTIC_SAMPLERS must give
    the same image from the same x_T whatever the generator; every other sampler gets no hook."""
    model, _ = diffusion_run

    class Refs:
        def noise_mark(self, shape):
            return lambda z: treering.mark_noise(z, KEY)

    assert set(treering.DETERMINISTIC_SAMPLERS) <= set(SAMPLERS)
    for name in SAMPLERS:
        plan = model.plan_sampling({"sampler": name, "sampling_steps": 3}, 2, Refs())
        assert (plan.options.get("noise_mark") is not None) == (name in treering.DETERMINISTIC_SAMPLERS), name
        if name in treering.DETERMINISTIC_SAMPLERS:
            fixed = lambda z: treering.mark_noise(torch.zeros_like(z), KEY)  # noqa: E731 (x_T fixed)
            a = model.sample(2, torch.Generator().manual_seed(1), sampler=name, sampling_steps=3, noise_mark=fixed)
            b = model.sample(2, torch.Generator().manual_seed(2), sampler=name, sampling_steps=3, noise_mark=fixed)
            assert torch.equal(a, b), name
    assert model.plan_sampling({"sampler": "ddim", "eta": 0.5}, 2, Refs()).options.get("noise_mark") is None
    with pytest.raises(GenforgeError, match="--init"):
        model.sample(1, torch.Generator(), init=torch.zeros(1, 8, 8), noise_mark=Refs().noise_mark(None))


# -- post-hoc ----------------------------------------------------------------------------------
def test_posthoc_mark_is_found_and_unmarked_pvalues_are_uniform(digits):
    _, big = digits
    marked, report = posthoc.embed(big, KEY)
    assert report["marked"] == 40 and report["psnr_db"] >= posthoc.MIN_PSNR
    z = posthoc.zscores(marked, KEY)
    assert (z >= posthoc.TARGET_Z).all()
    assert posthoc.zscores(marked, OTHER).abs().max() < 4  # the wrong key finds nothing
    p = torch.tensor([d["p_value"] for d in posthoc.detect(big, KEY)])
    assert float((p < 0.05).float().mean()) <= 0.15 and float(p.min()) > 1e-3
    assert detect_images(marked.float(), KEY)["watermarked"]
    assert not detect_images(big.float(), KEY)["watermarked"]
    assert not detect_images(marked.float(), OTHER)["watermarked"]


def test_capacity_limit_is_an_error_and_never_a_weak_mark(digits):
    small, big = digits
    with pytest.raises(GenforgeError, match="cannot hold the mark"):
        posthoc.embed(small, KEY, strength=2.0)  # 8x8 digits at PSNR 42 dB
    out, report = posthoc.embed(small, KEY)  # default: what cannot hold it stays unmarked, counted
    z = posthoc.zscores(out, KEY)
    changed = (out != small).flatten(1).any(1)
    assert report["marked"] + report["unmarked"] == 40 and report["unmarked"] > 0
    assert int(changed.sum()) == report["marked"] and (z[changed] >= posthoc.TARGET_Z).all()
    for strength, s in ((2.0, 30.0), (8.0, 15.0)):  # the closed form agrees with itself
        need = posthoc.min_values(strength, s)
        assert posthoc.expected_z(strength, need, s) >= posthoc.TARGET_Z > posthoc.expected_z(strength, need - 1, s)
    for strength in (0.0, 1e-300):  # 1e-300 was a ZeroDivisionError (its square is 0), a 500 from serve
        with pytest.raises(GenforgeError, match="strength"):
            posthoc.embed(big, KEY, strength=strength)


def test_marker_says_what_it_marked(digits, tmp_path):
    small, big = digits
    marker = ImageMarker(KEY, fingerprint="f" * 16)
    marker.posthoc(big)
    marker.posthoc(small)
    line = marker.message()
    assert "post-hoc mark on" in line and "cannot hold" in line and "--no-watermark" in line
    assert ImageMarker(None).message() == "not watermarked (--no-watermark)"
    assert ImageMarker(None).posthoc(big) is big


# -- robustness --------------------------------------------------------------------------------
def test_every_transformation_runs_and_png_keeps_the_mark(diffusion_run, digits):
    model, _ = diffusion_run
    _, big = digits
    marked, _ = posthoc.embed(big[:8], KEY)
    assert torch.equal(attacks.png(marked), marked)
    table = attacks.attacks(model, sampling_steps=4)
    assert {"png", "jpeg90", "jpeg75", "jpeg50", "resize0.5", "noise0.05", "crop0.75", "sdedit0.3"} <= set(table)
    for name, attack in table.items():
        images = marked if name != "sdedit0.3" else to_gray(model.sample(2, torch.Generator()), model)
        out = attack(images)
        assert out.dtype == torch.uint8 and out.shape == images.shape, name
        if name not in ("none", "png"):
            assert not torch.equal(out, images), name
    assert posthoc.zscores(attacks.jpeg(marked, 90), KEY).mean() > 2  # mild JPEG keeps most of it


# -- files and the CLI -------------------------------------------------------------------------
def test_split_grid_recovers_the_images_of_a_sample_grid():
    import numpy as np

    from genforge.data.grids import make_grid
    from genforge.data.spec import DataSpec

    images = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    spec = DataSpec(name="digits", modality="image", shape=(1, 8, 8), pixel_range=(0.0, 1.0))
    for labels in (None, list(range(7))):
        grid = np.array(make_grid(images.float() / 255, spec, labels).convert("L"))[..., None]
        assert torch.equal(split_grid(grid, (1, 8, 8)), images.float())
    with pytest.raises(GenforgeError, match="neither"):
        split_grid(np.zeros((50, 51, 1), np.uint8), (1, 8, 8))


def test_sample_marks_by_default_and_detect_finds_it(diffusion_run, tmp_path, capsys):
    _, run_dir = diffusion_run
    marked, plain = tmp_path / "m.png", tmp_path / "u.png"
    assert main(["sample", str(run_dir), "--num-samples", "32", "--seed", "3", "--out", str(marked)]) == 0
    err = capsys.readouterr().err
    assert "watermarked: Tree-Ring" in err and "key fingerprint" in err
    assert main(["sample", str(run_dir), "--num-samples", "32", "--seed", "3", "--out", str(plain),
                 "--no-watermark"]) == 0
    assert "not watermarked (--no-watermark)" in capsys.readouterr().err
    assert main(["detect", str(marked), str(plain), "--run", str(run_dir), "--json"]) == 0
    out = capsys.readouterr().out
    rows = json.loads(out[out.index("["):])
    assert [r["watermarked"] for r in rows] == [True, False], rows
    key = (run_dir / "watermark.key").read_bytes()
    assert key.hex() not in out and "tree_ring" in {r["method"] for r in rows}
    assert main(["sample", str(run_dir), "--no-watermark", "--watermark-strength", "4"]) == 2
    assert "--no-watermark" in capsys.readouterr().err
