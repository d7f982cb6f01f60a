"""`genforge metrics images`: scoring images genforge did not make, with the report of `eval`."""

import json

import numpy as np
import pytest
import torch

from genforge import GenforgeError
from genforge.cli import main
from genforge.config import DataConfig
from genforge.data.image_sources import load_raw
from genforge.data.images import load_images
from genforge.metrics.evaluate_images import evaluate_images, load_samples, score_images
from genforge.report import format_report

FEATURE_KEYS = ("fd", "kid", "kid_se", "precision", "recall", "density", "coverage",
                "memorization_median_ratio", "memorization_near_copy_fraction", "floor_fd_train_test",
                "floor_kid_train_test", "floor_fd_noise", "class_entropy", "class_entropy_norm",
                "test_class_entropy_norm", "extractor_test_accuracy")


@pytest.fixture(scope="module")
def digits():
    return load_images(DataConfig(name="digits"))


def unit(split):
    return split.images.float() / 255.0


def test_real_images_score_near_the_floor_and_noise_near_the_noise_floor(digits):
    real = score_images(unit(digits.val), "digits")  # 162 real images the test split never saw
    assert set(FEATURE_KEYS) <= real.keys()
    assert real["samples"] == len(digits.val) and isinstance(real["samples"], int)
    floor, noise_floor = real["floor_fd_train_test"], real["floor_fd_noise"]
    assert 0 < real["fd"] < 1.5 * floor and noise_floor > 20 * floor
    assert real["precision"] > 0.8 and real["recall"] > 0.6
    assert real["extractor_test_accuracy"] > 0.95
    assert sum(v for k, v in real.items() if k.startswith("class_frac/")) == pytest.approx(1.0)

    noise = score_images(torch.rand(180, 1, 8, 8, generator=torch.Generator().manual_seed(1)), "digits")
    assert noise["fd"] > 20 * floor and noise["fd"] == pytest.approx(noise["floor_fd_noise"], rel=0.2)
    assert noise["precision"] < 0.2


class StubModel(torch.nn.Module):
    """Samples real test images: class-conditional, it returns images of the requested class."""

    sample_options = ()  # declares no family sample options, as a family would

    def __init__(self, data, k=0):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.images, self.labels, self.conditioning_classes = unit(data.test), data.test.labels, k
        self.cursor = 0

    def sample(self, n, generator, labels=None):
        if labels is None:
            out = self.images[self.cursor:self.cursor + n]
            self.cursor += n
            return out
        return torch.stack([self.images[self.labels == int(y)][i // 10] for i, y in enumerate(labels)])

    def heldout_metrics(self, batches, generator, **options):
        return {"nll_iwae_nats": 1.5, "iwae_k": 100.0, "active_units": 12.0}


def stub_run(tmp_path, data, k=0):
    from types import SimpleNamespace

    return SimpleNamespace(model=StubModel(data, k), spec=data.spec, step=7, run_dir=tmp_path,
                           config=SimpleNamespace(data=DataConfig(name="digits")))


def test_eval_and_metrics_images_share_one_report(tmp_path, digits):
    n = 100
    evaluated = evaluate_images(stub_run(tmp_path, digits), num_samples=n, progress=False, nll_images=50)
    scored = score_images(unit(digits.test)[:n], "digits")
    for key in FEATURE_KEYS:
        assert evaluated[key] == pytest.approx(scored[key], abs=1e-9), key
    # counts are ints, also when the family hands them over as floats
    assert evaluated["step"] == 7 and evaluated["samples"] == n and evaluated["nll_images"] == 50
    assert all(isinstance(evaluated[k], int) for k in ("step", "samples", "iwae_k", "active_units",
                                                        "nll_images", "extractor_version"))
    text = format_report(evaluated)
    assert "  iwae_k:" in text and text.split("iwae_k:")[1].split("\n")[0].strip() == "100"


def test_conditional_run_reports_label_agreement(tmp_path, digits):
    out = evaluate_images(stub_run(tmp_path, digits, k=10), num_samples=100, progress=False, nll_images=0)
    assert out["label_agreement"] > 0.9  # the stub returns real images of the requested class
    assert "nll_iwae_nats" not in out


def test_load_samples_layouts_and_folders(tmp_path, digits):
    from PIL import Image

    x = digits.val.images[:20]  # (20, 1, 8, 8) uint8
    want = x.float() / 255.0
    np.savez(tmp_path / "nchw.npz", images=x.numpy())
    np.savez(tmp_path / "nhwc.npz", x=x.numpy().transpose(0, 2, 3, 1))
    np.savez(tmp_path / "hw.npz", anything=x.numpy()[:, 0])
    np.savez(tmp_path / "float.npz", images=want.numpy())
    for name in ("nchw", "nhwc", "hw", "float"):
        assert torch.equal(load_samples(tmp_path / f"{name}.npz", (1, 8, 8)), want), name
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, img in enumerate(x.numpy()):
        Image.fromarray(img[0]).save(folder / f"{i:03d}.png")
    assert torch.equal(load_samples(folder), want)

    np.savez(tmp_path / "two.npz", a=x.numpy(), b=x.numpy())
    with pytest.raises(GenforgeError, match="'images'"):
        load_samples(tmp_path / "two.npz")
    np.savez(tmp_path / "big.npz", images=want.numpy() * 255)
    with pytest.raises(GenforgeError, match=r"outside \[0, 1\]"):
        load_samples(tmp_path / "big.npz")
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = x[0].numpy(), x[1, :, :4].numpy()
    np.savez(tmp_path / "obj.npz", images=ragged)
    with pytest.raises(GenforgeError, match="object array"):
        load_samples(tmp_path / "obj.npz")
    with pytest.raises(GenforgeError, match="not found"):
        load_samples(tmp_path / "missing.npz")


def test_cli_scores_an_npz_against_a_copy_of_the_dataset(tmp_path, capsys, digits):
    samples = tmp_path / "samples.npz"
    np.savez(samples, images=digits.val.images.numpy().transpose(0, 2, 3, 1))  # NHWC uint8
    out = tmp_path / "out" / "scores.json"
    assert main(["metrics", "images", str(samples), "--against", "digits", "--json", str(out),
                 "--num-samples", "50"]) == 0
    printed = capsys.readouterr().out
    assert "quality:" in printed and "floors:" in printed and "diversity:" in printed
    by_name = json.loads(out.read_text())
    assert by_name["samples"] == 50 and by_name["fd"] > 0

    raw = load_raw("digits")  # the same images under another path: same test split, same extractor
    copy = tmp_path / "elsewhere" / "my-digits.npz"
    copy.parent.mkdir()
    np.savez(copy, images=raw.train, labels=raw.train_labels)
    out2 = tmp_path / "copy.json"
    assert main(["metrics", "images", str(samples), "--against", str(copy), "--json", str(out2),
                 "--num-samples", "50"]) == 0
    by_path = json.loads(out2.read_text())
    assert by_path == by_name


def test_cli_refuses_mismatched_images_in_one_line(tmp_path, capsys):
    np.savez(tmp_path / "big.npz", images=np.zeros((20, 28, 28), np.uint8))
    assert main(["metrics", "images", str(tmp_path / "big.npz"), "--against", "digits"]) == 2
    err = capsys.readouterr().err.strip()
    assert "1x28x28" in err and "1x8x8" in err and "\n" not in err
    np.savez(tmp_path / "few.npz", images=np.zeros((5, 8, 8), np.uint8))
    assert main(["metrics", "images", str(tmp_path / "few.npz"), "--against", "digits"]) == 2
    assert "got 5" in capsys.readouterr().err
