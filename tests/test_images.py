"""Image data: readers of every format on small generated files, DataSpec, batches, grids, bad input."""

import gzip
import io
import json
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from genforge import GenforgeError
from genforge.cli import main
from genforge.config import DataConfig
from genforge.data import registry
from genforge.data.grids import nearest_neighbours, save_grid, save_nearest_grid
from genforge.data.image_sources import IMAGE_DATASETS, read_cifar10, read_idx
from genforge.data.images import SPLIT_SEED, load_images, saved_test_fingerprint
from genforge.data.spec import DataSpec
from genforge.modalities import load_data


def idx_bytes(array: np.ndarray) -> bytes:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_dataset(root, folder, n_train=20, n_test=10, size=6):
    rng = np.random.default_rng(0)
    out = root / folder
    out.mkdir(parents=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        y = (np.arange(n) % 10).astype(np.uint8)
        (out / f"{split}-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(x)))
        (out / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
        arrays[split] = (x, y)
    return arrays


@pytest.mark.parametrize("name,folder", [("fashion-mnist", "fashion-mnist"), ("mnist", "mnist")])
def test_idx_datasets_read_through_genforge_data(tmp_path, monkeypatch, name, folder):
    arrays = write_idx_dataset(tmp_path, folder)
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path))
    data = load_images(DataConfig(name=name))
    assert data.spec.shape == (1, 6, 6) and data.spec.num_classes == 10
    assert len(data.train) == 18 and len(data.val) == 2 and len(data.test) == 10
    if name == "fashion-mnist":
        assert data.spec.class_names[0] == "T-shirt/top" and data.spec.class_names[9] == "Ankle boot"
    batch = data.test.get(torch.tensor([0, 3]))  # the shipped test split, in file order
    x, y = arrays["t10k"]
    assert torch.allclose(batch["x"][0, 0], torch.from_numpy(x[0]).float() / 255)
    assert batch["y"].tolist() == [int(y[0]), int(y[3])]


def test_read_idx_plain_and_gzip_agree(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.idx").write_bytes(idx_bytes(a))
    (tmp_path / "a.idx.gz").write_bytes(gzip.compress(idx_bytes(a)))
    assert np.array_equal(read_idx(tmp_path / "a.idx"), a)
    assert np.array_equal(read_idx(tmp_path / "a.idx.gz"), a)


def test_truncated_and_corrupt_idx_are_one_line_errors(tmp_path):
    a = np.zeros((4, 5, 5), dtype=np.uint8)
    (tmp_path / "short.idx").write_bytes(idx_bytes(a)[:-7])
    with pytest.raises(GenforgeError, match="truncated") as e:
        read_idx(tmp_path / "short.idx")
    assert "\n" not in str(e.value)
    (tmp_path / "short.gz").write_bytes(gzip.compress(idx_bytes(a))[:-10])
    with pytest.raises(GenforgeError, match="corrupt or truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "junk.idx").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(GenforgeError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "junk.idx")


def test_mismatched_idx_images_and_labels(tmp_path, monkeypatch):
    write_idx_dataset(tmp_path, "mnist")
    labels = np.zeros(7, dtype=np.uint8)  # 7 labels for 20 images
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path))
    with pytest.raises(GenforgeError, match="expected"):
        load_images(DataConfig(name="mnist"))


def test_missing_download_is_a_clear_offline_error(tmp_path, monkeypatch):
    """Regression: the message said `$GENFORGE_DATA/<file>` while the loader reads `$GENFORGE_DATA/mnist/<file>`."""
    import urllib.error
    import urllib.request

    def offline(url, timeout=None):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path))
    with pytest.raises(GenforgeError, match="not on this machine.*offline") as e:
        load_images(DataConfig(name="mnist"))
    assert "$GENFORGE_DATA/mnist/train-images-idx3-ubyte.gz" in str(e.value) and "\n" not in str(e.value)


def cifar_archive(path, per_batch=3):
    rng = np.random.default_rng(1)
    batches = {}
    with tarfile.open(path, "w:gz") as tar:
        def add(name, obj):
            raw = pickle.dumps(obj)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))

        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = list(rng.integers(0, 10, per_batch).tolist())
            batches[name] = (data, labels)
            add(name, {b"data": data, b"labels": labels})
        add("batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return batches


def test_cifar10_archive_reader(tmp_path, monkeypatch):
    (tmp_path / "cifar10").mkdir()
    batches = cifar_archive(tmp_path / "cifar10" / "cifar-10-python.tar.gz")
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path))
    data = load_images(DataConfig(name="cifar10"))
    assert data.spec.shape == (3, 32, 32) and data.spec.class_names[3] == "c3"
    assert len(data.train) == 13 and len(data.val) == 2 and len(data.test) == 3
    first, labels = batches["test_batch"]
    got = data.test.images[0]
    # Rows hold the red plane, then green, then blue, each row-major 32x32.
    assert torch.equal(got[0].flatten(), torch.from_numpy(first[0, :1024]))
    assert torch.equal(got[2].flatten(), torch.from_numpy(first[0, 2048:]))
    assert data.test.labels[0] == labels[0]


def test_cifar10_archive_with_code_in_its_pickle_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        raw = pickle.dumps({b"data": Evil()})
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    with pytest.raises(GenforgeError, match="not allowed"):
        read_cifar10(path)


def test_digits_is_offline_with_a_fixed_split():
    a = load_images(DataConfig(name="digits", pixel_range=(-1.0, 1.0)))
    b = load_images(DataConfig(name="digits"))
    assert a.spec.shape == (1, 8, 8) and a.spec.num_classes == 10 and a.spec.pixel_range == (-1.0, 1.0)
    assert len(a.train) + len(a.val) + len(a.test) == 1797 and len(a.test) == 180 and len(a.val) == 162
    assert a.fingerprint == b.fingerprint  # the held-out split never moves
    # The same 180 held-out images as before the three-way split: old runs' fingerprints still match.
    assert a.fingerprint == "04af1fe1cdcbedd3"
    x = a.train.get(torch.arange(64))["x"]
    assert x.min() >= -1 and x.max() <= 1 and x.min() == -1
    assert torch.allclose((x + 1) / 2, b.train.get(torch.arange(64))["x"])


def test_hflip_is_an_option_on_the_training_split_only():
    data = load_images(DataConfig(name="digits", hflip=True))
    assert data.train.hflip and not data.val.hflip and not data.test.hflip
    torch.manual_seed(0)
    idx = torch.arange(200)
    x = data.train.get(idx)["x"]
    plain = load_images(DataConfig(name="digits")).train.get(idx)["x"]
    flipped = (x == plain.flip(-1)).flatten(1).all(1)
    same = (x == plain).flatten(1).all(1)
    assert (flipped | same).all() and 40 < int((flipped & ~same).sum()) < 160


def write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        for i in range(6):
            write_png(tmp_path / "pets" / cls / f"{i}.png", rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    data = load_images(DataConfig(name=str(tmp_path / "pets"), val_fraction=0.25))
    assert data.spec.shape == (3, 5, 7) and data.spec.class_names == ["cat", "dog"]
    assert len(data.train) == 7 and len(data.val) == 2 and len(data.test) == 3
    assert set(data.train.labels.tolist()) == {0, 1}


def test_image_folder_without_subfolders_is_unlabelled(tmp_path):
    for i in range(5):
        write_png(tmp_path / "flat" / f"{i}.jpg", np.full((4, 4), 30 * i, dtype=np.uint8))
    data = load_images(DataConfig(name=str(tmp_path / "flat"), val_fraction=0.2))
    assert data.spec.shape == (1, 4, 4) and data.spec.num_classes == 0
    assert "y" not in data.train.get(torch.tensor([0]))


def test_empty_folder_and_mixed_sizes_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.csv").write_text("a,b\n")
    with pytest.raises(GenforgeError, match="holds no images"):
        load_images(DataConfig(name=str(tmp_path / "empty")))
    write_png(tmp_path / "mixed" / "a.png", np.zeros((4, 4), dtype=np.uint8))
    write_png(tmp_path / "mixed" / "b.png", np.zeros((4, 6), dtype=np.uint8))
    with pytest.raises(GenforgeError, match="mixed sizes.*b.png is 6x4") as e:
        load_images(DataConfig(name=str(tmp_path / "mixed")))
    assert "\n" not in str(e.value)


def test_npz_arrays_in_either_layout(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (12, 6, 6, 3), dtype=np.uint8)  # NHWC
    np.savez(tmp_path / "a.npz", images=x, labels=np.arange(12) % 3, class_names=np.array(["r", "g", "b"]))
    data = load_images(DataConfig(name=str(tmp_path / "a.npz"), val_fraction=0.25))
    assert data.spec.shape == (3, 6, 6) and data.spec.class_names == ["r", "g", "b"]
    np.savez(tmp_path / "b.npz", x_train=rng.random((8, 1, 4, 4)), y_train=np.zeros(8),
             x_test=rng.random((4, 1, 4, 4)), y_test=np.ones(4))
    data = load_images(DataConfig(name=str(tmp_path / "b.npz")))
    assert len(data.train) == 7 and len(data.val) == 1 and len(data.test) == 4 and data.spec.shape == (1, 4, 4)
    np.savez(tmp_path / "c.npz", images=rng.random((4, 4, 4)) * 255)
    with pytest.raises(GenforgeError, match="outside \\[0, 1\\]"):
        load_images(DataConfig(name=str(tmp_path / "c.npz")))
    np.savez(tmp_path / "d.npz", pixels=x)
    with pytest.raises(GenforgeError, match="no 'images'"):
        load_images(DataConfig(name=str(tmp_path / "d.npz")))


def test_unknown_dataset_name_is_a_one_line_error(tmp_path):
    with pytest.raises(GenforgeError, match="unknown dataset 'no-such-set'"):
        load_data(DataConfig(name="no-such-set"), {})
    rc = main(["train", "vae-digits", "data.name=no-such-set", "--no-progress",
               "--run-dir", str(tmp_path / "run")])
    assert rc == 2


def test_registry_lists_image_datasets():
    reg = registry()
    for name in ("digits", "fashion-mnist", "mnist", "cifar10"):
        assert reg[name][0] == "image" and name in IMAGE_DATASETS


def test_image_spec_round_trips_through_json():
    spec = load_images(DataConfig(name="digits", pixel_range=(-1.0, 1.0))).spec
    again = DataSpec.from_json(spec.to_json())
    assert again == spec and again.shape == (1, 8, 8)


def test_save_grid_with_labels_and_nearest_neighbour_grid(tmp_path):
    data = load_images(DataConfig(name="digits"))
    batch = data.val.get(torch.arange(10))
    path = save_grid(batch["x"], tmp_path / "g.png", data.spec, labels=batch["y"].tolist())
    with Image.open(path) as im:
        # 8x8 cells are upscaled to 32 px; 4 columns of 10 images, each cell captioned.
        assert im.size == (4 * 34 + 2, 3 * (34 + 12) + 2) and im.mode == "RGB"
    near = save_nearest_grid(data.train.get(torch.arange(3))["x"], data.train, tmp_path / "n.png", data.spec)
    assert near.is_file()
    idx, dist = nearest_neighbours(torch.eye(3), torch.tensor([[0.0, 1, 0], [1, 0, 0], [5, 5, 5]]))
    assert idx.tolist() == [1, 0, 0] and torch.allclose(dist[:2], torch.zeros(2))


def rows(split):
    return {bytes(r) for r in split.images.flatten(1).numpy()}


def test_shipped_test_split_is_never_used_for_validation(tmp_path, monkeypatch):
    """Regression: `val` was the shipped test split, so `best` was selected on test images."""
    arrays = write_idx_dataset(tmp_path, "mnist", n_train=40, n_test=10)
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path))
    data = load_images(DataConfig(name="mnist", val_fraction=0.25))
    test_rows = {bytes(r) for r in arrays["t10k"][0].reshape(10, -1)}
    train_file = {bytes(r) for r in arrays["train"][0].reshape(40, -1)}
    assert rows(data.test) == test_rows
    assert len(data.val) == 10 and len(data.train) == 30
    assert rows(data.val) <= train_file and rows(data.train) <= train_file
    assert not rows(data.val) & rows(data.train) and not rows(data.val) & test_rows
    again = load_images(DataConfig(name="mnist", val_fraction=0.25))  # seeded: the split never moves
    assert torch.equal(again.val.images, data.val.images) and again.fingerprint == data.fingerprint


def test_unsplit_sources_hold_out_test_then_val_disjointly():
    data = load_images(DataConfig(name="digits"))
    train, val, test = rows(data.train), rows(data.val), rows(data.test)
    assert not train & val and not train & test and not val & test
    assert data.fingerprint != data.val_fingerprint


def test_data_json_records_the_split(tmp_path):
    data = load_images(DataConfig(name="digits"))
    data.save(tmp_path)
    info = json.loads((tmp_path / "data.json").read_text())
    assert info == {"name": "digits", "train": 1455, "val": 162, "test": 180, "split_seed": SPLIT_SEED,
                    "val_fingerprint": data.val_fingerprint, "test_fingerprint": data.fingerprint}
    assert saved_test_fingerprint(tmp_path) == data.fingerprint
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]  # no temporary files left


def test_data_json_is_replaced_atomically(tmp_path, monkeypatch):
    (tmp_path / "data.json").write_text("old")
    data = load_images(DataConfig(name="digits"))

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(GenforgeError, match="cannot write .*data.json"):  # genforge.atomic's one line
        data.save(tmp_path)
    assert (tmp_path / "data.json").read_text() == "old"  # never half-written
    assert [p.name for p in tmp_path.iterdir()] == ["data.json"]


def test_saved_test_fingerprint_reads_runs_from_before_the_three_way_split(tmp_path):
    # The old data.json stored the held-out (= test) images as `val_fingerprint`, with no `test`.
    (tmp_path / "data.json").write_text(json.dumps({"name": "digits", "train": 1617, "val": 180,
                                                    "val_fingerprint": "04af1fe1cdcbedd3"}))
    assert saved_test_fingerprint(tmp_path) == load_images(DataConfig(name="digits")).fingerprint
    assert saved_test_fingerprint(tmp_path / "missing") is None
