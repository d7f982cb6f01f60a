"""Curves as pictures (`genforge plot`) and the grouped eval printout (`genforge.report`)."""

import json
import sys

import pytest

from genforge import GenforgeError
from genforge.cli import main
from genforge.plot import plot_run, plot_runs, read_metrics
from genforge.report import format_report, group_report

PNG = b"\x89PNG\r\n\x1a\n"


def fake_run(folder, scale=1.0, extra=True):
    folder.mkdir(parents=True)
    rows = []
    for step in range(1, 41):
        row = {"step": step, "loss": scale * 3.0 / step, "lr": 1e-3, "examples_per_s": 900.0 + step,
               "elapsed_s": step * 0.1}
        if extra:
            row["kl"] = 0.5 * step
        rows.append(row)
        if step % 10 == 0:
            rows.append({"step": step, "split": "val", "loss": scale * 3.2 / step, "best": True,
                         "weights": "ema", "recon": 1.0 / step})
    lines = [json.dumps(r) for r in rows] + ['{"step": 41, "loss": 0.0']  # a line cut short by a crash
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_read_metrics_splits_train_and_val_rows(tmp_path):
    train, val = read_metrics(fake_run(tmp_path / "a"))
    assert len(train["loss"]) == 40 and len(val["loss"]) == 4
    assert "elapsed_s" not in train and "best" not in val and "weights" not in val
    assert val["recon"][0] == (10.0, 0.1)


def test_plot_runs_writes_one_loss_and_one_metrics_picture(tmp_path):
    a, b = fake_run(tmp_path / "runs" / "a"), fake_run(tmp_path / "runs" / "b", scale=2.0, extra=False)
    out = tmp_path / "cmp"
    paths = plot_runs([a, b], out)
    assert [p.name for p in paths] == ["loss.png", "metrics.png"]
    for p in paths:
        assert p.parent == out and p.stat().st_size > 5000
    # lr, examples_per_s, kl, val/recon: four panels in rows of three
    assert png_size(out / "metrics.png") == (1260, 640)
    assert sorted(f.name for f in out.iterdir()) == ["loss.png", "metrics.png"]  # no temp files left

    written = plot_run(a)
    assert [p.name for p in written] == ["loss.png", "metrics.png"]
    assert all(p.parent == a / "plots" for p in written)


def test_plot_cli_and_bad_input(tmp_path, capsys):
    a, b = fake_run(tmp_path / "runs" / "a"), fake_run(tmp_path / "runs" / "b")
    assert main(["plot", str(a), str(b)]) == 0  # several runs: plots/ beside them
    assert (tmp_path / "runs" / "plots" / "loss.png").is_file()
    assert "loss.png" in capsys.readouterr().out
    assert main(["plot", str(a), "--out", str(tmp_path / "elsewhere")]) == 0
    assert (tmp_path / "elsewhere" / "metrics.png").is_file()

    (tmp_path / "empty").mkdir()
    for bad, message in ((tmp_path / "empty", "no metrics.jsonl"), (tmp_path / "missing", "no such folder")):
        assert main(["plot", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err
    assert not (tmp_path / "empty" / "plots").exists()  # nothing written on bad input


def test_plot_names_the_extra_when_matplotlib_is_missing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(GenforgeError, match=r"genforge\[images\]"):
        plot_run(fake_run(tmp_path / "a"))


def test_format_report_groups_keys_and_prints_ints_as_ints():
    result = {"step": 500, "samples": 1000, "fd": 6.0312, "kid": 0.1143, "kid_se": 0.00001234,
              "precision": 0.67, "recall": 0.2, "memorization_median_ratio": 1.0,
              "floor_fd_train_test": 0.0123, "floor_fd_noise": 54.9, "class_entropy_norm": 0.99,
              "class_frac/Bag": 0.1, "nll_iwae_nats": 229.81, "iwae_k": 100.0, "active_units": 12,
              "extractor_version": 1, "val_loss": 1.74, "bits_per_char": 2.51}
    groups = group_report(result)
    assert list(groups) == ["quality", "diversity", "memorization", "likelihood", "floors", "other"]
    assert "fd" in groups["quality"] and "floor_fd_noise" in groups["floors"]
    assert "class_frac/Bag" in groups["diversity"] and "val_loss" in groups["likelihood"]
    assert set(groups["other"]) == {"step", "samples", "extractor_version"}
    lines = {line.split(":")[0].strip(): line.split(":", 1)[1].strip()
             for line in format_report(result).splitlines() if line.startswith("  ")}
    assert lines["iwae_k"] == "100" and lines["active_units"] == "12" and lines["step"] == "500"
    assert lines["fd"] == "6.0312" and lines["precision"] == "0.6700" and lines["kid_se"] == "1.234e-05"
    assert format_report(result).splitlines()[0] == "quality:"
