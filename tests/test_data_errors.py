"""Data-layer errors say what happened: offline vs. unwritable cache, bad image files, tiny datasets."""

import errno
import io
import os
import urllib.error
import urllib.request
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from genforge import GenforgeError
from genforge.config import DataConfig
from genforge.data import locate as locate_mod
from genforge.data.images import load_images
from genforge.data.locate import cache_dir, download, locate
from genforge.data.sampler import EpochSampler
from genforge.data.text import load_text

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def one_line(e) -> str:
    text = str(e.value)
    assert "\n" not in text
    return text


# --------------------------------------------------------------------------- network vs. disk


@pytest.mark.parametrize("error", [urllib.error.URLError("Temporary failure in name resolution"),
                                   TimeoutError("timed out"), ConnectionResetError(104, "reset")])
def test_network_errors_say_offline(tmp_path, monkeypatch, error):
    def fail(url, timeout=None):
        raise error

    monkeypatch.setattr(urllib.request, "urlopen", fail)
    with pytest.raises(GenforgeError, match="you look offline") as e:
        locate("set/file.bin", "http://example.invalid/file.bin", None)
    assert "$GENFORGE_DATA/set/file.bin" in one_line(e)


def test_http_error_is_not_called_offline(tmp_path, monkeypatch):
    def missing(url, timeout=None):
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)

    monkeypatch.setattr(urllib.request, "urlopen", missing)
    with pytest.raises(GenforgeError, match="HTTP 404") as e:
        locate("set/file.bin", "http://example.invalid/file.bin", None)
    assert "offline" not in one_line(e)


def fake_response(payload=b"data"):
    def urlopen(url, timeout=None):
        return io.BytesIO(payload)

    return urlopen


def test_unwritable_download_folder_is_not_called_offline(tmp_path, monkeypatch):
    """Regression: any OSError (permission denied, disk full) was reported as 'you look offline'."""
    monkeypatch.setattr(urllib.request, "urlopen", fake_response())
    dest = tmp_path / "ro" / "file.bin"
    dest.parent.mkdir()

    def denied(*args, **kwargs):  # what mkstemp raises in a read-only folder (root ignores chmod)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(locate_mod.tempfile, "mkstemp", denied)
    with pytest.raises(GenforgeError) as e:
        download("http://example.invalid/file.bin", dest, None)
    text = one_line(e)
    assert f"cannot write to {dest.parent} (Permission denied)" in text
    assert "$GENFORGE_CACHE" in text and "offline" not in text


@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only folders; the monkeypatched test covers it")
def test_read_only_cache_folder_for_real(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", fake_response())
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    try:
        with pytest.raises(GenforgeError, match="cannot write to .*ro.*GENFORGE_CACHE"):
            download("http://example.invalid/f", tmp_path / "ro" / "f", None)
    finally:
        os.chmod(tmp_path / "ro", 0o755)


def test_disk_full_while_writing_is_not_called_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", fake_response(b"x" * 100))
    real_fdopen = os.fdopen

    class Full:
        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, block):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locate_mod.os, "fdopen", Full)
    dest = tmp_path / "cache" / "f.bin"
    with pytest.raises(GenforgeError, match="No space left on device") as e:
        download("http://example.invalid/f.bin", dest, None)
    assert "offline" not in one_line(e) and "$GENFORGE_CACHE" in str(e.value)
    assert list(dest.parent.iterdir()) == []  # the partial file is removed


def test_cache_dir_that_cannot_be_created_is_a_one_line_error(tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path / "a_file" / "cache"))  # fails even as root
    with pytest.raises(GenforgeError, match="cannot write to .*a_file/cache .*set \\$GENFORGE_CACHE") as e:
        cache_dir()
    one_line(e)


def test_text_cache_that_cannot_be_written_is_a_one_line_error(tmp_path, monkeypatch, corpus):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "text").write_text("")  # a file where the cache wants a folder: fails even as root
    monkeypatch.setenv("GENFORGE_CACHE", str(cache))
    with pytest.raises(GenforgeError, match="cannot write to .*text .*GENFORGE_CACHE") as e:
        load_text(DataConfig(name=str(corpus)), block_size=8)
    one_line(e)


# --------------------------------------------------------------------------- image input


def npz_error(tmp_path, **arrays) -> str:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(GenforgeError) as e:
        load_images(DataConfig(name=str(tmp_path / "bad.npz")))
    text = one_line(e)
    assert "bad.npz" in text
    return text


def test_npz_object_array_is_a_one_line_error(tmp_path):
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = np.zeros((4, 4), np.uint8), np.zeros((5, 5), np.uint8)
    assert "'images' is an object array" in npz_error(tmp_path, images=ragged)


def test_npz_integers_outside_0_255_are_refused_not_clipped(tmp_path):
    x = np.zeros((6, 4, 4), dtype=np.int16)
    x[0, 0, 0], x[1, 0, 0] = 300, -1
    assert "integers -1..300, outside 0..255" in npz_error(tmp_path, images=x)
    ok = np.full((6, 4, 4), 255, dtype=np.int64)  # in range: loads exactly
    np.savez(tmp_path / "ok.npz", images=ok)
    assert load_images(DataConfig(name=str(tmp_path / "ok.npz"))).train.images.max() == 255


def test_npz_nan_floats_are_refused(tmp_path):
    x = np.full((6, 4, 4), 0.5)
    x[2, 1, 1] = np.nan
    assert "1 NaN or infinite" in npz_error(tmp_path, images=x)
    assert "outside [0, 1]" in npz_error(tmp_path, images=np.full((6, 4, 4), 1.5))
    assert "dtype complex" in npz_error(tmp_path, images=np.zeros((6, 4, 4), dtype=complex))


def test_16_bit_pngs_are_scaled_with_a_warning_not_clipped(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    values = np.array([[0, 257 * 100], [65535, 257 * 7]], dtype=np.uint16)
    for i in range(4):
        Image.fromarray(values).save(folder / f"{i}.png")
    with Image.open(folder / "0.png") as im:
        assert im.mode in ("I;16", "I")
    with pytest.warns(UserWarning, match="4 images in .*16-bit; scaled to 8 bits.*first: 0.png"):
        data = load_images(DataConfig(name=str(folder), val_fraction=0.25))
    assert data.test.images[0, 0].tolist() == [[0, 100], [255, 7]]  # not clipped to 255


def test_alpha_is_composited_on_white_with_a_warning(tmp_path):
    folder = tmp_path / "rgba"
    folder.mkdir()
    px = np.zeros((2, 2, 4), dtype=np.uint8)
    px[..., 3] = 255
    px[0, 0] = [0, 0, 0, 0]  # fully transparent black -> white
    px[0, 1] = [100, 0, 200, 128]  # half transparent
    for i in range(4):
        Image.fromarray(px, "RGBA").save(folder / f"{i}.png")
    with pytest.warns(UserWarning, match="transparent pixels; alpha is dropped after compositing them on white"):
        data = load_images(DataConfig(name=str(folder), val_fraction=0.25))
    img = data.test.images[0]  # (3, 2, 2)
    assert img[:, 0, 0].tolist() == [255, 255, 255]
    a = 128 / 255
    assert img[:, 0, 1].tolist() == [round(100 * a + 255 * (1 - a)), round(255 * (1 - a)), round(200 * a + 255 * (1 - a))]


def test_opaque_alpha_channel_loads_silently(tmp_path):
    folder = tmp_path / "opaque"
    folder.mkdir()
    px = np.full((3, 3, 4), 255, dtype=np.uint8)
    px[..., 0] = 10
    for i in range(4):
        Image.fromarray(px, "RGBA").save(folder / f"{i}.png")
    Image.fromarray(np.full((3, 3, 2), 255, np.uint8), "LA").save(folder / "gray.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_images(DataConfig(name=str(folder), val_fraction=0.2))
    assert data.spec.shape == (3, 3, 3)


def test_fewer_images_than_one_batch_is_a_genforge_error():
    """Regression: EpochSampler raised ValueError, which the CLI showed as a traceback."""
    with pytest.raises(GenforgeError, match="has 3 examples, fewer than one batch .*lower train.batch_size") as e:
        EpochSampler(3, 5, seed=0)
    one_line(e)
    assert len(EpochSampler(5, 5, seed=0).next_batch()) == 5
    assert torch.is_tensor(EpochSampler(10, 2, seed=0, rank=1, world=2).next_batch())
