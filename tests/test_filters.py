"""Output filters (genforge.filters): a user function screens samples before anything is
written; blocked samples are counted with their reasons; a broken filter is a one-line error
(exit 2 from the CLI), never a silent pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import subprocess_env, toy_image_run

from genforge.cli import main
from genforge.filters import Filter, FilterError, apply_filters, load_filter, verdicts

TINY_GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
            "train.batch_size=4", "train.max_steps=2", "train.eval_every=2", "train.plot=false", "--no-progress"]

USER_FILTERS = '''
def no_e(samples):
    return [("e" not in s, "contains an e") for s in samples]

def every_other(samples):
    return [(i % 2 == 0, "an odd one") for i in range(len(samples))]

def keep_all(samples):
    return [True] * len(samples)

def block_all(samples):
    return [False for _ in samples]

def short(samples):
    return [True]

def boom(samples):
    raise ValueError("the filter broke")

def dark(samples):  # images: (N, C, H, W) in [0, 1]
    return [(bool(x.mean() < 0.5), "too bright") for x in samples]
'''


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("filters")
    corpus = root / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 40)
    assert main(["train", "gpt-demo", f"data.name={corpus}", *TINY_GPT, "--run-dir", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture
def user_filters(monkeypatch, tmp_path):
    (tmp_path / "myfilters.py").write_text(USER_FILTERS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_user_filter_blocks_what_it_should_with_its_reason(user_filters):
    check = load_filter("myfilters.py:no_e")  # a file, resolved from the current folder
    kept, blocked = apply_filters(["abc", "bee", "xyz", "tree"], [check])
    assert kept == ["abc", "xyz"]
    assert blocked == [(1, "myfilters.py:no_e: contains an e"), (3, "myfilters.py:no_e: contains an e")]
    kept, blocked = apply_filters(["abc", "bee"], [load_filter("myfilters:keep_all")])  # a module name
    assert kept == ["abc", "bee"] and blocked == []


def test_filters_run_in_order_and_keep_the_container_type():
    images = torch.stack([torch.full((1, 2, 2), v) for v in (0.1, 0.9, 0.2, 0.3)])
    bright = Filter("dark", lambda x: [(bool(i.mean() < 0.5), "too bright") for i in x])
    seen = []

    def second(x):
        seen.append(x.shape[0])
        return np.array([True, False, True])  # a bool array is one verdict per row too

    kept, blocked = apply_filters(images, [bright, second])
    assert seen == [3]  # the second filter sees only what the first kept
    assert torch.equal(kept, images[[0, 3]])
    assert blocked == [(1, "dark: too bright"), (2, "second")]


@pytest.mark.parametrize("out, message", [
    ([True], "returned 1 verdicts for 2 samples"),
    ("yes", "returned str"),
    ([1, 0], "returned 1 (int) for sample 0"),
    ([(True, 3), True], "reason for sample 0 is int"),
    (np.array([0.5, 1.0]), "array of float64"),
])
def test_wrong_verdicts_are_one_line_errors(out, message):
    with pytest.raises(FilterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        verdicts("f", out, 2)


def test_a_raising_filter_and_a_bad_path_are_one_line_errors(user_filters):
    with pytest.raises(FilterError, match="filter 'myfilters:boom' raised ValueError: the filter broke"):
        apply_filters(["a"], [load_filter("myfilters:boom")])
    for spec, message in [("nosuchmodule:fn", "importing nosuchmodule failed"), ("myfilters:absent", "no function"),
                          ("missing.py:fn", "no file missing.py"), ("justaname", "MODULE:FUNCTION")]:
        with pytest.raises(FilterError, match=message):
            load_filter(spec)


def test_cli_filter_blocks_and_reports(text_run, user_filters, capsys):
    import json

    args = ["sample", str(text_run), "--num-samples", "6", "--max-new-tokens", "12", "--seed", "0", "--no-watermark"]
    plain, out = user_filters / "all.jsonl", user_filters / "s.jsonl"
    assert main([*args, "--out", str(plain)]) == 0
    assert main([*args, "--filter", "myfilters.py:every_other", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    every = [json.loads(r)["text"] for r in plain.read_text().splitlines()]
    kept = [json.loads(r)["text"] for r in out.read_text().splitlines()]
    assert kept == every[0::2]  # the same draws, the blocked ones left out
    assert "filters blocked 3 of 6 samples" in err and "#2 myfilters.py:every_other: an odd one" in err
    screening = json.loads(Path(str(out) + ".provenance.json").read_text())["screening"]
    assert screening["blocked"] == 3 and screening["drawn"] == 6
    assert [b["index"] for b in screening["blocked_samples"]] == [1, 3, 5]


def test_cli_all_blocked_writes_nothing(text_run, user_filters, capsys):
    out = user_filters / "none.txt"
    assert main(["sample", str(text_run), "--num-samples", "2", "--max-new-tokens", "5", "--no-watermark",
                 "--filter", "myfilters.py:block_all", "--out", str(out)]) == 2
    assert not out.exists() and "nothing was written" in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ("nosuch.mod:fn", "importing nosuch.mod failed"),
    ("myfilters.py:short", "returned 1 verdicts for 2 samples"),
    ("myfilters.py:boom", "raised ValueError"),
])
def test_cli_bad_filters_exit_2_with_one_line(text_run, user_filters, capsys, spec, message):
    assert main(["sample", str(text_run), "--num-samples", "2", "--max-new-tokens", "5", "--no-stream",
                 "--no-watermark", "--filter", spec]) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("genforge: error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in captured.err
    assert "--- sample" not in captured.out  # nothing was printed before the verdict


def test_cli_image_filter_and_no_traceback_in_a_real_process(user_filters, tmp_path):
    run = toy_image_run(tmp_path / "img")
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--num-samples", "8", "--seed", "0", "--filter", "myfilters.py:dark",
                 "--out", str(out)]) == 0
    kept = np.load(out)["images"]
    assert kept.shape[0] <= 8 and (kept.reshape(len(kept), -1).mean(1) / 255 < 0.5).all()
    proc = subprocess.run([sys.executable, "-m", "genforge", "sample", str(run), "--filter", "myfilters.py:short"],
                          capture_output=True, text=True, env=subprocess_env(), cwd=user_filters)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "returned 1 verdicts for 64 samples" in proc.stderr
