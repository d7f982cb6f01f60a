"""No lost runs, no lost files, clean errors (issue #16, items 13 and 15-19).

`--overwrite` replaces only genforge runs; re-saving a checkpoint never leaves `latest` without
a loadable folder; `sample` never replaces a file and gives every default output its own name;
every grid obeys one size limit; a short test split is reported; errors are one line.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_trainer

from genforge import GenforgeError
from genforge import checkpoint as ckpt
from genforge.cli import main
from genforge.config import load_config
from genforge.families.base import GenerativeModel

TOY = str(Path(__file__).with_name("toy-digits.toml"))
QUIET = ["train.plot=false", "train.eval_every=0", "train.sample_every=0"]
GAN_TINY = ["model.g_width=8", "model.d_width=8", "model.z_dim=8", "model.eval_samples=32",
            "train.plot=false", "train.batch_size=16", "train.max_steps=2", "train.eval_every=2",
            "train.sample_every=0"]


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def train_toy(run_dir, *extra, **kwargs):
    cfg, mcfg = load_config(TOY, [*QUIET, "train.max_steps=2", *extra])
    return make_trainer(cfg, mcfg, run_dir, progress=False, **kwargs).fit()


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --------------------------------------------------------------------------- --overwrite (16)


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    sandbox = tmp_path / "sandbox"
    (sandbox / "photos").mkdir(parents=True)
    (sandbox / "thesis.txt").write_text("four years of work")
    (sandbox / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    before = tree(sandbox)
    assert main(["train", TOY, "--run-dir", str(sandbox), "--overwrite", "--no-progress", *QUIET]) == 2
    err = one_line(capsys)
    assert "--overwrite" in err and "thesis.txt" in err and "nothing was deleted" in err
    assert tree(sandbox) == before  # not a file touched, no stale .lock
    assert (sandbox / "thesis.txt").read_text() == "four years of work"


def test_overwrite_refuses_the_parent_of_runs(tmp_path):
    runs = tmp_path / "runs"
    train_toy(runs / "base")
    train_toy(runs / "sibling")
    before = tree(runs)
    with pytest.raises(GenforgeError, match="replaces only a genforge run folder.*base"):
        ckpt.claim_run_dir(runs / "base" / "..", resume=False, overwrite=True)
    assert tree(runs) == before  # both runs intact, no .lock left in runs/


def test_overwrite_replaces_a_real_run(tmp_path):
    run = tmp_path / "run"
    train_toy(run)
    (run / "eval.json").write_text("{}")  # what eval, rl, sample and plot leave in a run
    (run / "oracle.csv").write_text("call\n")
    (run / "reference").mkdir()
    (run / "samples" / "sample-x.png").parent.mkdir(exist_ok=True)
    (run / "samples" / "sample-x.png").write_bytes(b"png")
    assert ckpt.foreign_entries(run) == []
    train_toy(run, "train.seed=7", overwrite=True)
    assert not (run / "eval.json").exists() and not (run / "oracle.csv").exists()
    assert not (run / "reference").exists() and not (run / "samples" / "sample-x.png").exists()
    assert json.loads((run / "config.json").read_text())["train"]["seed"] == 7


def test_overwrite_refuses_a_folder_of_run_names_without_a_run(tmp_path):
    folder = tmp_path / "mine"
    (folder / "samples").mkdir(parents=True)
    (folder / "samples" / "holiday.png").write_bytes(b"png")
    with pytest.raises(GenforgeError, match="not a genforge run"):
        ckpt.claim_run_dir(folder, resume=False, overwrite=True)
    assert (folder / "samples" / "holiday.png").exists() and not (folder / ".lock").exists()


def test_a_run_killed_before_its_first_checkpoint_is_not_sent_to_resume(tmp_path, capsys):
    """SIGKILL before the first checkpoint leaves config.json but no checkpoints/: the refusal
    told the user to --resume, and --resume then said 'not a genforge run directory'."""
    import shutil

    run = tmp_path / "run"
    train_toy(run)
    shutil.rmtree(run / "checkpoints")  # what a kill before the first checkpoint leaves
    assert main(["train", TOY, "--run-dir", str(run), "--no-progress", *QUIET]) == 2
    err = one_line(capsys)
    assert "--resume" not in err and "no checkpoint to resume" in err and "--overwrite" in err
    for argv in (["train", "--resume", str(run)], ["rl", "--resume", str(run)], ["sample", str(run)]):
        assert main(argv) == 2
        err = one_line(capsys)
        assert "has no checkpoint yet" in err and "--overwrite" in err and "not a genforge run" not in err
    assert main(["train", TOY, "--run-dir", str(run), "--overwrite", "--no-progress", *QUIET,
                 "train.max_steps=2"]) == 0
    assert ckpt.require_checkpoint(run, "latest").is_dir()


def test_a_failed_start_leaves_no_lock_in_an_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    cfg, mcfg = load_config(TOY, [*QUIET, "train.optim.nope.lr=1e-3"])
    with pytest.raises(GenforgeError, match="no optimizer 'nope'"):
        make_trainer(cfg, mcfg, empty, progress=False)
    assert list(empty.iterdir()) == []


def test_a_refused_overwrite_keeps_the_run_it_would_replace(tmp_path, capsys):
    """A bad override that the trainer refuses at start (an unknown optimizer) deleted the run
    --overwrite was to replace before the refusal; now the folder is cleared only once the new
    run has started."""
    run = tmp_path / "run"
    train_toy(run)
    before = tree(run)
    assert main(["train", TOY, "--run-dir", str(run), "--overwrite", "--no-progress", *QUIET,
                 "train.optim.nope.lr=1e-3"]) == 2
    assert "no optimizer 'nope'" in one_line(capsys)
    assert tree(run) == before and ckpt.require_checkpoint(run, "latest").is_dir()


# --------------------------------------------------------------------------- checkpoints (15)


class Tiny(GenerativeModel):
    def __init__(self):
        torch.nn.Module.__init__(self)
        self.w = torch.nn.Linear(2, 2)

    def frozen_parts(self):
        return {}


def save(run, step, model, **kw):
    return ckpt.save_checkpoint(run, step, model, None, {"optimizers": {}}, {"family": "tiny"}, **kw)


def loadable_latest(run) -> torch.Tensor:
    path = ckpt.require_checkpoint(run, "latest")
    ckpt.verify_checkpoint(path)
    model = Tiny()
    ckpt.load_weights(model, path)
    return model.w.weight.detach().clone()


@pytest.mark.parametrize("crash_at", [1, 2])  # 1: moving the old one aside; 2: renaming the new in
def test_resaving_a_step_always_leaves_a_loadable_latest(tmp_path, monkeypatch, crash_at):
    run = tmp_path / "run"
    old = Tiny()
    save(run, 5, old, keep=1)
    new = Tiny()
    with torch.no_grad():
        new.w.weight.fill_(3.0)
    real, calls = os.replace, []

    def crashing(src, dst):
        calls.append((src, dst))
        if len(calls) == crash_at:
            raise KeyboardInterrupt("power cut")
        return real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crashing)
    with pytest.raises(KeyboardInterrupt):
        save(run, 5, new, keep=1)  # a resumed run's first save re-saves the step it resumed at
    monkeypatch.setattr(ckpt.os, "replace", real)
    assert torch.equal(loadable_latest(run), old.w.weight)  # the old checkpoint, whole and named
    save(run, 5, new, keep=1)  # the next save recovers and completes
    assert torch.equal(loadable_latest(run), new.w.weight)
    assert not list((run / "checkpoints").glob(".old-*"))


def test_resave_crash_after_the_new_one_is_in_place_keeps_the_new_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    save(run, 5, Tiny(), keep=1)
    new = Tiny()
    real_rmtree, seen = ckpt.shutil.rmtree, []

    def crash_on_trash(path, *a, **k):
        if Path(path).name.startswith(".old-"):
            seen.append(path)
            if len(seen) == 2:  # the first clears a stale trash name; the second is the old checkpoint
                raise KeyboardInterrupt("power cut")
        return real_rmtree(path, *a, **k)

    monkeypatch.setattr(ckpt.shutil, "rmtree", crash_on_trash)
    with pytest.raises(KeyboardInterrupt):
        save(run, 5, new, keep=1)
    monkeypatch.setattr(ckpt.shutil, "rmtree", real_rmtree)
    assert torch.equal(loadable_latest(run), new.w.weight)
    save(run, 5, new, keep=1)  # the left-over trash is cleared by the next save
    assert not list((run / "checkpoints").glob(".old-*"))


# --------------------------------------------------------------------------- one-line errors (17, 19)


def test_train_resume_of_an_rl_run_points_to_rl_resume(tmp_path, capsys):
    run = tmp_path / "run"
    train_toy(run)
    config = ckpt.latest_checkpoint(run) / "config.json"
    raw = json.loads(config.read_text())
    config.write_text(json.dumps({**raw, "rl": {"base_run": "elsewhere", "reward": ["length"]}}))
    assert main(["train", "--resume", str(run), "train.max_steps=4"]) == 2
    assert f"genforge rl --resume {run}" in one_line(capsys)


def test_resume_with_a_foreign_batch_state_is_one_line(tmp_path):
    run = tmp_path / "run"
    train_toy(run)

    class Other:
        def next(self):
            raise AssertionError("never reached")

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            return state["epoch_of_something_else"]

    cfg, mcfg = load_config(TOY, [*QUIET, "train.max_steps=4"])
    with pytest.raises(GenforgeError, match="genforge rl --resume"):
        make_trainer(cfg, mcfg, run, resume=True, batches=Other())


@pytest.mark.parametrize("kind", ["npz", "folder"])
def test_metrics_images_on_zero_images_is_one_line(tmp_path, capsys, kind):
    if kind == "npz":
        path = tmp_path / "none.npz"
        np.savez(path, images=np.zeros((0, 8, 8), np.uint8))
    else:
        path = tmp_path / "none"
        path.mkdir()
    assert main(["metrics", "images", str(path), "--against", "digits"]) == 2
    assert "images" in one_line(capsys)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_sample_device_cuda_without_a_gpu_names_the_flag(tmp_path, capsys):
    run = tmp_path / "run"
    train_toy(run)
    assert main(["sample", str(run), "--device", "cuda", "--num-samples", "2"]) == 2
    err = one_line(capsys)
    assert "--device cuda" in err and "train.device" not in err


def test_warnings_are_one_clean_line(monkeypatch, capsys):
    import genforge.cli as cli

    def warn(args):
        warnings.warn("only 200 valid samples\nsecond line", UserWarning, stacklevel=1)

    monkeypatch.setattr(cli, "_list", warn)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert main(["list"]) == 0
    err = capsys.readouterr().err
    assert err == "genforge: warning: only 200 valid samples\n"  # no source path, no code line


# --------------------------------------------------------------------------- outputs (16, 18)


def test_sample_never_replaces_a_file_or_a_folder(tmp_path, capsys):
    run = tmp_path / "run"
    train_toy(run)
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"cat")
    (tmp_path / "keep.png").write_bytes(b"mine")
    for out in ("photos", "keep.png"):
        assert main(["sample", str(run), "--num-samples", "4", "--out", str(tmp_path / out)]) == 2
        assert str(tmp_path / out) in one_line(capsys)
    assert (tmp_path / "photos" / "cat.jpg").read_bytes() == b"cat"
    assert (tmp_path / "keep.png").read_bytes() == b"mine"
    assert main(["sample", str(run), "--num-samples", "4", "--out", str(tmp_path / "new.png")]) == 0
    assert (tmp_path / "new.png").stat().st_size > 0
    # a companion file (-nearest.png, -trajectory.png) follows the same rule, checked before writing
    (tmp_path / "b-nearest.png").write_bytes(b"mine")
    assert main(["sample", str(run), "--num-samples", "4", "--nearest", "--out", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert "b-nearest.png already exists" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert (tmp_path / "b-nearest.png").read_bytes() == b"mine" and not (tmp_path / "b.png").exists()


def test_two_samples_in_the_same_second_get_two_files(tmp_path, monkeypatch):
    import datetime as dt

    import genforge.modalities.image as image

    run = tmp_path / "run"
    train_toy(run)

    class Frozen(dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 1, 2, 3, 4, 5)

    monkeypatch.setattr(image, "datetime", Frozen)
    for seed in ("1", "2"):
        assert main(["sample", str(run), "--num-samples", "4", "--seed", seed]) == 0
    written = sorted(p.name for p in (run / "samples").glob("sample-20240102-030405*.png"))
    assert written == ["sample-20240102-030405-2.png", "sample-20240102-030405.png"]
    a, b = ((run / "samples" / n).read_bytes() for n in written)
    assert a != b  # two seeds, two pictures: neither overwrote the other


def test_every_grid_obeys_the_size_limit(tmp_path):
    from genforge.data.grids import MAX_GRID, make_grid, save_grid
    from genforge.data.spec import DataSpec

    spec = DataSpec("image", shape=(1, 2, 2))
    with pytest.raises(GenforgeError, match=f"at most {MAX_GRID}.*lower --interp-points"):
        save_grid(torch.zeros(MAX_GRID + 1, 1, 2, 2), tmp_path / "g.png", spec,
                  too_many="lower --interp-points")
    assert not (tmp_path / "g.png").exists()
    assert make_grid(torch.zeros(MAX_GRID, 1, 2, 2), spec).size[0] > 0


def test_interp_points_beyond_the_grid_limit_is_refused_before_sampling(tmp_path, capsys):
    cfg, mcfg = load_config("gan-digits", [*GAN_TINY, "train.eval_every=0"])
    make_trainer(cfg, mcfg, tmp_path / "gan", progress=False).fit()
    rc = main(["sample", str(tmp_path / "gan"), "--interpolate-seeds", "1", "2", "--interp-points", "100000"])
    assert rc == 2 and "--interp-points" in one_line(capsys)
    assert not list((tmp_path / "gan").glob("samples/*"))


# --------------------------------------------------------------------------- GAN and eval (13, 18)


def test_gan_selects_in_the_extractor_of_its_own_split(tmp_path):
    from genforge.metrics.extractor import fit_extractor, load_extractor

    cfg, mcfg = load_config("gan-digits", [*GAN_TINY, "data.val_fraction=0.3"])
    with pytest.raises(GenforgeError, match="fit-extractor digits.*--val-fraction"):
        make_trainer(cfg, mcfg, tmp_path / "unfitted", progress=False).fit()  # not the default split's
    fit_extractor("digits", epochs=1, max_train=128, progress=False, val_fraction=0.3)
    trainer = make_trainer(cfg, mcfg, tmp_path / "run", progress=False)
    trainer.fit()
    used = trainer.model.extractor()
    assert used.meta["test_fingerprint"] == trainer.data.fingerprint
    assert used.path != load_extractor("digits").path  # the shipped one saw part of this test split


def test_eval_says_when_the_test_split_is_smaller_than_asked(tmp_path, capsys):
    train_toy(tmp_path / "run")
    assert main(["eval", str(tmp_path / "run"), "--num-samples", "5000"]) == 0
    out = capsys.readouterr().out
    assert "scored 180 of 5000 requested: the test split of 'digits' has 180 images" in out
    saved = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert saved["samples"] == 180 and saved["samples_requested"] == 5000 and "180 of 5000" in saved["note"]


def test_molecule_workers_leave_ctrl_c_to_the_parent():
    """A Ctrl-C during `metrics molecules` prints genforge's one line, not a worker traceback."""
    import signal

    pytest.importorskip("rdkit")
    from genforge.metrics.molecules.chem import process_pool

    with process_pool(2) as pool:
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
