"""`genforge rl` from the command line: train.* overrides reach a resumed run, a flag never loses
silently to its train.* override, a run without its reference weights says so, the help names
every built-in reward, and prompt files saved by Excel or not in UTF-8 are read or refused in one line."""

from __future__ import annotations

import json

from test_rl import _rl, text_base  # noqa: F401 - text_base is the module's fixture

from genforge.cli import main


def test_train_overrides_reach_a_resumed_run_and_flags_never_lose_silently(text_base, tmp_path, capsys):  # noqa: F811
    """`rl --resume RUN train.k=v` was refused ('BASE_RUN does not apply': argparse took the override
    for BASE_RUN); `--steps 2 train.max_steps=3` silently ran 3 steps; `--resume --seed` was kept in
    the config but could not change the restored generators."""
    base, rewards = text_base
    run = tmp_path / "rl"
    assert _rl(base, rewards, tmp_path / "x", "--steps", "2", "train.max_steps=3") == 2
    assert "--steps and train.max_steps set the same thing" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert _rl(base, rewards, run, "--steps", "1") == 0
    assert main(["rl", "--resume", str(run), "--seed", "3", "--steps", "2", "--no-progress"]) == 2
    assert "--seed does not apply" in capsys.readouterr().err
    assert main(["rl", "--resume", str(run), "train.eval_every=2", "--steps", "2", "--no-progress"]) == 0
    saved = json.loads((run / "checkpoints" / "step_0000002" / "config.json").read_text())
    assert saved["train"]["eval_every"] == 2 and saved["train"]["max_steps"] == 2


def test_resume_without_the_reference_weights_does_not_advise_deleting(text_base, tmp_path, capsys):  # noqa: F811
    """A missing RUN/reference said "delete that checkpoint folder to fall back to an earlier one",
    advice that cannot help: the RL run needs its starting weights."""
    import shutil

    base, rewards = text_base
    assert _rl(base, rewards, tmp_path / "rl", "--steps", "1") == 0
    shutil.rmtree(tmp_path / "rl" / "reference")
    capsys.readouterr()
    assert main(["rl", "--resume", str(tmp_path / "rl"), "--steps", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot continue without it" in err and "delete" not in err and "\n" not in err


def test_rl_help_names_every_built_in_reward(capsys):
    """The help listed text, molecule and image rewards but none of the four music ones."""
    import pytest

    from genforge.rl.rewards import BUILTINS

    with pytest.raises(SystemExit):
        main(["rl", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert [name for name in BUILTINS if name not in text] == []


def test_prompt_files_from_excel_or_in_another_encoding(tmp_path):
    """A prompt CSV saved by Excel (a BOM before 'prompt') was refused as having no 'prompt' field,
    and a file that is not UTF-8 was a UnicodeDecodeError traceback."""
    import pytest

    from genforge import GenforgeError
    from genforge.rl.prompts import _read_prompt_file

    excel = tmp_path / "p.csv"
    excel.write_bytes("prompt,target\r\nthe,1\r\nwe,2\r\n".encode("utf-8-sig"))
    assert _read_prompt_file(excel) == (["the", "we"], {"target": ["1", "2"]})
    for name in ("latin.csv", "latin.jsonl"):
        (tmp_path / name).write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
        with pytest.raises(GenforgeError, match="give a UTF-8 .jsonl or .csv file"):
            _read_prompt_file(tmp_path / name)
