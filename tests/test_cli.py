"""CLI happy paths and error paths: exit codes and one-line messages, never tracebacks."""

import json
import subprocess
import sys

import pytest

from genforge.cli import main

TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
        "train.batch_size=4", "train.max_steps=4", "train.eval_every=2", "train.log_every=1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    corpus = root / "c.txt"
    corpus.write_text("to be or not to be, that is the question.\n" * 80)
    assert main(["train", "gpt-demo", f"data.name={corpus}", *TINY, "--run-dir", str(root / "run"),
                 "--no-progress"]) == 0
    return root / "run"


def test_train_prints_run_dir_and_sample_works(run_dir, capsys):
    assert main(["sample", str(run_dir), "--prompt", "to be", "--max-new-tokens", "20", "--seed", "1",
                 "--no-stream"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- sample") == 1 and "to be" in out


def test_sample_streaming_batched_and_stop(run_dir, capsys):
    assert main(["sample", str(run_dir), "--prompt", "to", "--max-new-tokens", "30", "--seed", "3"]) == 0
    streamed = capsys.readouterr().out
    assert streamed.startswith("to") and len(streamed.strip()) > 2
    assert main(["sample", str(run_dir), "--prompt", "to", "--prompt", "that", "--num-samples", "2",
                 "--max-new-tokens", "10", "--top-k", "5", "--top-p", "0.9", "--seed", "1"]) == 0
    assert capsys.readouterr().out.count("--- sample") == 4
    assert main(["sample", str(run_dir), "--prompt", "t", "--max-new-tokens", "200", "--stop", " ",
                 "--temperature", "0", "--no-stream"]) == 0
    body = capsys.readouterr().out.split("---\n", 1)[1]
    assert " " not in body.strip()


def test_seeded_samples_repeat(run_dir, capsys):
    args = ["sample", str(run_dir), "--prompt", "to", "--max-new-tokens", "40", "--seed", "9", "--no-stream"]
    main(args)
    first = capsys.readouterr().out
    main(args)
    assert capsys.readouterr().out == first


def test_eval_reports_loss_bpc_perplexity(run_dir, capsys):
    assert main(["eval", str(run_dir)]) == 0
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["perplexity"] == pytest.approx(2.718281828 ** saved["val_loss"], rel=1e-6)
    assert saved["bits_per_char"] == pytest.approx(saved["val_loss"] / 0.693147, rel=1e-4)


def test_list_shows_presets_and_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "gpt-shakespeare-char" in out and "pydoc" in out and "shakespeare" in out


@pytest.mark.parametrize("argv, message", [
    (["sample", "/no/such/run"], "does not exist"),
    (["sample", "{run}", "--prompt", "§§ unknown ¤"], "outside the model's vocabulary"),
    (["sample", "{run}", "--temperature", "-1"], "temperature"),
    (["sample", "{run}", "--num-samples", "0"], "num-samples"),
    (["sample", "{run}", "--num-samples", "10000000000000"], "at most 1e+12 samples per call"),
    (["train", "gpt-demo", "model.n_layerz=2"], "unknown config key 'model.n_layerz'"),
    (["train", "nope"], "unknown preset"),
    (["train", "gpt-demo", "data.name=/no/such/corpus"], "unknown dataset"),
    (["train", "--resume", "/no/such/run"], "does not exist"),
    (["train", "--resume", "{run}"], "already at step 4"),
    (["train", "gpt-demo", "--resume", "{run}"], "drop the preset 'gpt-demo'"),
    (["sample", "{run}/config.json"], "is a file, not a run directory"),
    (["sample", "{run}", "--temperature", "nan"], "temperature"),
    (["sample", "{run}", "--top-p", "nan"], "top-p"),
    (["sample", "{run}", "--out", "grid.png"], ".txt or .jsonl"),
    (["sample", "{run}", "--interpolate", "test:0", "test:1"], "--interpolate does not apply to this gpt run"),
    (["sample", "{run}", "--class-label", "3"], "--class-label does not apply"),
    (["eval", "{run}", "--num-samples", "10"], "--num-samples does not apply to this gpt run"),
    (["eval", "{run}", "--iwae-k", "5"], "--iwae-k does not apply"),
    (["eval", "{run}", "--max-batches", "-1"], "--max-batches must be at least 1"),
    (["train", "gpt-demo", "train.max_steps=-5"], "train.max_steps"),
    (["train", "gpt-demo", "data.val_fraction=1.5"], "data.val_fraction"),
    (["train", "gpt-demo", "train.lr=nan"], "train.lr"),
    (["train", "gpt-demo", "train.optim.main.betas=[1.5, 0.9]"], "train.optim.main.betas"),
    (["eval", "/no/such/run"], "does not exist"),
    (["sample", "{run}", "--seed", "99999999999999999999"], "--seed 99999999999999999999 is out of range"),
    (["train", "gpt-demo", "train.seed=99999999999999999999"], "train.seed"),
])
def test_user_errors_exit_2_with_one_line(run_dir, capsys, argv, message):
    argv = [a.replace("{run}", str(run_dir)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_request_too_big_for_memory_is_one_line(run_dir, capsys):
    """--max-new-tokens 10**15 (8 PB of token buffer) ended in torch's allocator traceback."""
    assert main(["sample", str(run_dir), "--max-new-tokens", str(10**15), "--no-stream"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "genforge: error: out of memory: tried to allocate")


def test_corrupt_checkpoint_is_a_clear_error(run_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    for weights in (broken / "checkpoints").glob("*/model.safetensors"):
        weights.write_bytes(b"not a safetensors file")
    assert main(["sample", str(broken)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_real_process_has_no_traceback_and_nonzero_exit():
    proc = subprocess.run([sys.executable, "-m", "genforge", "sample", "/no/such/run"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "does not exist" in proc.stderr


def test_help_on_every_option():
    for cmd in ["train", "sample", "eval"]:
        proc = subprocess.run([sys.executable, "-m", "genforge", cmd, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0
        options = [line for line in proc.stdout.splitlines() if line.strip().startswith("--")]
        assert options and all(len(line.split()) > 1 for line in options), proc.stdout


def test_resume_extends_a_finished_run(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "extend"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--resume", str(copy), "train.max_steps=6", "--no-progress"]) == 0
    steps = [json.loads(r)["step"] for r in (copy / "metrics.jsonl").read_text().splitlines()
             if "split" not in json.loads(r)]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert json.loads((copy / "config.json").read_text())["train"]["max_steps"] == 6


def test_many_text_samples_go_to_a_file_in_batches(run_dir, tmp_path, capsys):
    out = tmp_path / "many.jsonl"
    assert main(["sample", str(run_dir), "--prompt", "to", "--num-samples", "150", "--batch-size", "64",
                 "--max-new-tokens", "5", "--seed", "0", "--out", str(out)]) == 0
    rows = [json.loads(r) for r in out.read_text().splitlines()]
    assert len(rows) == 150 and all(r["prompt"] == "to" for r in rows)
    # batching does not change what a seed gives: the first batch equals a run of 64 alone
    first = tmp_path / "first.jsonl"
    assert main(["sample", str(run_dir), "--prompt", "to", "--num-samples", "64", "--max-new-tokens", "5",
                 "--seed", "0", "--out", str(first)]) == 0
    assert [json.loads(r) for r in first.read_text().splitlines()] == rows[:64]


def test_many_prompts_are_not_built_as_a_list_before_sampling(run_dir, monkeypatch):
    """--num-samples 10**11 built a list of 10**11 prompts before the first batch: memory, then a
    hang with no output. The first batch must come at once, holding each prompt n times in a row."""
    import genforge.sampling.text as sampling_text
    from genforge.modalities.text import Repeated

    rows = Repeated(["a", "b"], 10**11)
    assert len(rows) == 2 * 10**11 and rows[0] == "a" and rows[10**11] == "b" and rows[-1] == "b"
    assert rows[10**11 - 1 : 10**11 + 1] == ["a", "b"] and list(Repeated(["x", "y"], 2)) == ["x", "x", "y", "y"]

    class FirstBatch(Exception):
        pass

    def first_batch(model, tokenizer, chunk, **kwargs):
        raise FirstBatch(chunk)

    monkeypatch.setattr(sampling_text, "generate_text", first_batch)
    with pytest.raises(FirstBatch) as got:
        main(["sample", str(run_dir), "--prompt", "to", "--num-samples", str(10**11), "--batch-size", "3",
              "--max-new-tokens", "2"])
    assert got.value.args[0] == ["to"] * 3


def test_a_read_only_run_gives_one_line_errors_and_eval_still_prints(run_dir, tmp_path, capsys,
                                                                     monkeypatch):
    import errno
    import os

    import genforge.checkpoint as ckpt

    real_replace = os.replace

    def read_only(src, dst):  # what a read-only folder does to our atomic writes (tests run as root)
        if str(dst).startswith(str(run_dir)):
            raise PermissionError(errno.EACCES, "Permission denied", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", read_only)
    assert main(["eval", str(run_dir), "--max-batches", "1"]) == 2
    captured = capsys.readouterr()
    assert "val_loss" in captured.out  # the numbers came first
    errors = [line for line in captured.err.splitlines() if line.startswith("genforge:")]
    assert len(errors) == 1 and "cannot write" in errors[0] and "Traceback" not in captured.err
    assert main(["sample", str(run_dir), "--prompt", "to", "--max-new-tokens", "3", "--seed", "0",
                 "--num-samples", "2", "--out", str(run_dir / "s.txt")]) == 2
    assert "cannot write" in capsys.readouterr().err
