"""Small helpers shared by the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def device_under_test() -> torch.device:
    """The one device the suite trains and samples on: $GENFORGE_TEST_DEVICE (cpu, cuda, cuda:1),
    else the GPU when one is visible, else the CPU. Tests never build a CPU generator or batch
    for a model that may live elsewhere: they use :func:`gen` and :func:`on`."""
    name = os.environ.get("GENFORGE_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_of(x) -> torch.device:
    """The device of a module (its first parameter or buffer), tensor or generator."""
    if isinstance(x, (torch.Tensor, torch.Generator)):
        return x.device
    for t in (*x.parameters(), *x.buffers()):
        return t.device
    return torch.device("cpu")


def gen(seed: int = 0, like=None) -> torch.Generator:
    """A seeded generator on the device of ``like`` (a model or tensor), else the test device."""
    device = device_of(like) if like is not None else device_under_test()
    return torch.Generator(device=device).manual_seed(seed)


def on(batch, like):
    """``batch`` (a tensor, or a dict, list or tuple of them) moved to the device of ``like``."""
    device = device_of(like)
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(on(v, like) for v in batch)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def subprocess_env(**extra) -> dict:
    """The environment for a test's child process: it finds this genforge however the suite
    found it (installed, or from source with PYTHONPATH=src) and the tests' own modules."""
    import genforge

    package_root = str(Path(genforge.__file__).resolve().parent.parent)
    paths = [str(Path(__file__).resolve().parent), package_root, os.environ.get("PYTHONPATH", "")]
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(p for p in paths if p), **extra}


def make_trainer(cfg, model_cfg, run_dir, **kwargs):
    """Build model and data from the config, then a Trainer over them (as the CLI does), on the
    test device unless the test chose one."""
    from genforge.train.trainer import Trainer, build

    if cfg.train.device == "auto":
        cfg.train.device = device_under_test().type
    model, data = build(cfg, model_cfg)
    return Trainer(cfg, model, data, Path(run_dir), **kwargs)


def train_losses(run_dir) -> list[float]:
    rows = [json.loads(r) for r in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "split" not in r]


def toy_image_run(run_dir) -> Path:
    """A two-step run of the test suite's toy family on digits (unconditional, labelled data),
    trained through the CLI: the quickest image run there is."""
    from genforge.cli import main

    toml = str(Path(__file__).with_name("toy-digits.toml"))
    assert main(["train", toml, "--run-dir", str(run_dir), "train.max_steps=2", "train.plot=false",
                 "--no-progress"]) == 0
    return Path(run_dir)
