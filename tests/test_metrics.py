"""Metric functions on analytic cases; the shipped extractors; the end-to-end image evaluation."""

import json
import math

import numpy as np
import pytest
import torch
from scipy import linalg

from genforge import GenforgeError
from genforge.cli import main
from genforge.config import DataConfig
from genforge.data.images import load_images
from genforge.metrics.classes import class_histogram, histogram_entropy, label_agreement
from genforge.metrics.extractor import SHIPPED_DIR, fit_extractor, load_extractor, user_dir
from genforge.metrics.frechet import (
    frechet_distance,
    frechet_from_stats,
    gaussian_stats,
    kernel_distance,
)
from genforge.metrics.inception import inception_fid
from genforge.metrics.manifold import density_coverage, memorization, precision_recall


def gaussian(n, d, mean=0.0, std=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * std + mean


# --------------------------------------------------------------------------- Frechet distance


def test_identical_sets_have_zero_frechet_distance():
    x = gaussian(500, 8)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_of_analytic_gaussians():
    # N(m1, S1) vs N(m2, S2) with commuting covariances: |m1 - m2|^2 + sum (s1 + s2 - 2 sqrt(s1 s2)).
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    m1, m2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    expected = 9.0 + (1 + 4 - 4) + (4 + 4 - 8) + (9 + 1 - 6)
    assert frechet_from_stats(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-9)
    # A non-diagonal case against the definition with a symmetric square root.
    a = np.array([[2.0, 0.5], [0.5, 1.0]])
    b = np.array([[1.0, -0.3], [-0.3, 3.0]])
    ra = linalg.sqrtm(a).real
    ref = np.trace(a) + np.trace(b) - 2 * np.trace(linalg.sqrtm(ra @ b @ ra).real)
    assert frechet_from_stats(np.zeros(2), a, np.zeros(2), b) == pytest.approx(ref, rel=1e-7)


def test_shifted_gaussian_samples_give_the_analytic_distance():
    d, shift = 4, 0.5
    a, b = gaussian(20000, d, seed=1), gaussian(20000, d, mean=shift, std=2.0, seed=2)
    # |shift|^2 * d + d * (1 + 4 - 2 * 2) = 1.0 + 4.0
    assert frechet_distance(a, b) == pytest.approx(d * shift**2 + d, rel=0.05)


def test_frechet_needs_a_matrix_and_two_points():
    with pytest.raises(GenforgeError, match="matrix"):
        frechet_distance(torch.zeros(5), torch.zeros(5))
    with pytest.raises(GenforgeError, match="at least 2"):
        gaussian_stats(torch.zeros(1, 3))


def test_frechet_survives_fewer_samples_than_dimensions():
    a, b = gaussian(20, 64, seed=3), gaussian(20, 64, seed=4)
    value = frechet_distance(a, b)
    assert math.isfinite(value) and value > 0


# --------------------------------------------------------------------------- KID


def test_kid_is_unbiased_near_zero_for_one_distribution_and_positive_for_two():
    a, b = gaussian(1000, 16, seed=5), gaussian(1000, 16, seed=6)
    same, same_se = kernel_distance(a, b, subsets=20, subset_size=400)
    assert abs(same) < 4 * same_se + 1e-3
    shifted, shifted_se = kernel_distance(a, gaussian(1000, 16, mean=1.0, seed=7), subsets=20, subset_size=400)
    assert shifted > 0.5 and shifted > 20 * shifted_se > 0


# --------------------------------------------------------------------------- manifolds


def test_precision_recall_of_identical_disjoint_and_collapsed_sets():
    real = gaussian(600, 4, seed=8)
    assert precision_recall(real, real) == (1.0, 1.0)
    assert precision_recall(real, real + 100.0) == (0.0, 0.0)
    # Mode collapse: every fake sample is a real point near one mode -> precise but low recall.
    two_modes = torch.cat([gaussian(300, 4, mean=-5, seed=9), gaussian(300, 4, mean=5, seed=10)])
    collapsed = two_modes[:300] + 0.01
    precision, recall = precision_recall(two_modes, collapsed)
    assert precision > 0.95 and 0.3 < recall < 0.6


def test_density_and_coverage():
    real = gaussian(800, 4, seed=11)
    density, coverage = density_coverage(real, gaussian(800, 4, seed=12))
    assert 0.8 < density < 1.2 and coverage > 0.9
    density, coverage = density_coverage(real, real[:50] * 0.0)  # all fakes at one point
    assert coverage < 0.1


def test_memorization_ratio_flags_copies():
    train, test = gaussian(300, 8, seed=13), gaussian(300, 8, seed=14)
    copies = memorization(train[:100] + 1e-4, train, test)
    assert copies["memorization_near_copy_fraction"] == 1.0 and copies["memorization_median_ratio"] < 0.01
    fresh = memorization(gaussian(100, 8, seed=15), train, test)
    assert fresh["memorization_near_copy_fraction"] < 0.1 and 0.7 < fresh["memorization_median_ratio"] < 1.4


# --------------------------------------------------------------------------- classes


def test_class_histogram_entropy_and_agreement():
    uniform = torch.eye(4).repeat(25, 1)  # 100 samples, 25 per class
    hist = class_histogram(uniform)
    assert hist.tolist() == [0.25] * 4
    assert histogram_entropy(hist)[1] == pytest.approx(1.0)
    collapsed = class_histogram(torch.eye(4)[[2] * 100])
    assert histogram_entropy(collapsed) == (0.0, 0.0)
    assert label_agreement(uniform, torch.arange(100) % 4) == 1.0
    assert label_agreement(uniform, (torch.arange(100) + 1) % 4) == 0.0


# --------------------------------------------------------------------------- extractors


def test_shipped_extractors_are_hashed_and_accurate():
    manifest = json.loads((SHIPPED_DIR / "extractors.json").read_text())
    for name, entry in manifest.items():
        assert (SHIPPED_DIR / name).is_file() and len(entry["sha256"]) == 64
    assert manifest["digits-extractor-v1.safetensors"]["test_accuracy"] >= 0.95
    if "fashion-mnist-extractor-v1.safetensors" in manifest:
        assert manifest["fashion-mnist-extractor-v1.safetensors"]["test_accuracy"] >= 0.90
    ext = load_extractor("digits")
    data = load_images(DataConfig(name="digits"))
    batch = data.test.get(torch.arange(len(data.test)))
    feats, probs = ext.run(batch["x"])
    assert feats.shape == (180, 128) and probs.shape == (180, 10)
    assert label_agreement(probs, batch["y"]) >= 0.95


def test_fit_extractor_and_tamper_check(tmp_path):
    rng = np.random.default_rng(0)
    # Two easy classes: dark and bright 8x8 images.
    x = np.concatenate([rng.integers(0, 60, (40, 8, 8)), rng.integers(190, 256, (40, 8, 8))]).astype(np.uint8)
    y = np.repeat([0, 1], 40)
    path = tmp_path / "two.npz"
    np.savez(path, images=x, labels=y)
    rc = main(["metrics", "fit-extractor", str(path), "--epochs", "2"])
    assert rc == 0
    ext = load_extractor(str(path))
    assert ext.meta["test_accuracy"] >= 0.9
    weights = next(user_dir().glob("*two*.safetensors"))
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(GenforgeError, match="sha256"):
        load_extractor(str(path))


def test_extractor_needs_labels_and_exists(tmp_path):
    np.savez(tmp_path / "unlabelled.npz", images=np.zeros((20, 4, 4), dtype=np.uint8))
    with pytest.raises(GenforgeError, match="no class labels"):
        fit_extractor(str(tmp_path / "unlabelled.npz"), out_dir=tmp_path)
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "unknown.npz", images=rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
             labels=np.arange(40) % 2)
    with pytest.raises(GenforgeError, match="fit-extractor"):
        load_extractor(str(tmp_path / "unknown.npz"))


def test_extractors_are_found_by_the_content_of_the_test_images(tmp_path):
    import dataclasses

    from genforge.data.image_sources import load_raw
    from genforge.metrics import extractor as extractor_module

    shipped = SHIPPED_DIR / "digits-extractor-v1.safetensors"
    # The same images under another path find the shipped digits extractor ...
    raw = load_raw("digits")
    copy = tmp_path / "some" / "digits-copy.npz"
    copy.parent.mkdir()
    np.savez(copy, images=raw.train, labels=raw.train_labels)
    ext = load_extractor(str(copy))
    assert ext.path == shipped and ext.meta["test_fingerprint"] == "04af1fe1cdcbedd3"
    # ... and so does a copy that ships its test split separately.
    digits = load_images(DataConfig(name="digits"))
    rest = torch.cat([digits.train.images, digits.val.images])
    labels = torch.cat([digits.train.labels, digits.val.labels])
    np.savez(tmp_path / "split.npz", images=rest.numpy(), labels=labels.numpy(),
             test_images=digits.test.images.numpy(), test_labels=digits.test.labels.numpy())
    assert load_extractor(str(tmp_path / "split.npz")).path == shipped
    # A different dataset called "digits" does not get the digits extractor.
    np.savez(tmp_path / "other.npz", images=raw.train[::-1].copy(), labels=raw.train_labels[::-1].copy())
    data = load_images(DataConfig(name=str(tmp_path / "other.npz")))
    impostor = dataclasses.replace(data, spec=dataclasses.replace(data.spec, name="digits"))
    with pytest.raises(GenforgeError, match="no feature extractor was fitted on the test images of 'digits'"):
        load_extractor(impostor)
    assert not hasattr(extractor_module, "weights_digest")  # dead code removed


def test_inception_fid_needs_a_weights_file(tmp_path):
    with pytest.raises(GenforgeError, match="not found"):
        inception_fid(torch.rand(4, 1, 8, 8), torch.rand(4, 1, 8, 8), tmp_path / "missing.pth")
