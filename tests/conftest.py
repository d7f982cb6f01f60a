import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own data cache and working folder (so nothing writes runs/ into the
    repository); GENFORGE_DATA is unset so nothing reads shared data."""
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("GENFORGE_DATA", raising=False)
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


@pytest.fixture
def device():
    """The test device (see helpers.device_under_test): GENFORGE_TEST_DEVICE=cuda forces the GPU."""
    from helpers import device_under_test

    return device_under_test()


def pytest_report_header(config):
    from helpers import device_under_test

    return f"genforge test device: {device_under_test()} (set GENFORGE_TEST_DEVICE to choose)"


@pytest.fixture
def corpus(tmp_path):
    """A small text file with a fixed vocabulary."""
    path = tmp_path / "corpus.txt"
    lines = [f"the {w} sat on the mat number {i}.\n" for i, w in enumerate(["cat", "dog", "fox", "owl"] * 150)]
    path.write_text("".join(lines))
    return path


@pytest.fixture(scope="session")
def serve_runs(tmp_path_factory):
    """Tiny trained runs loaded for `genforge serve` (see serve_helpers.train_serve_runs), shared
    by test_serve.py and test_serve_queue.py so they are trained once a session, not per file."""
    from serve_helpers import train_serve_runs

    return train_serve_runs(tmp_path_factory.mktemp("serve"))
