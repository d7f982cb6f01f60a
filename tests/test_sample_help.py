"""`genforge sample --help` names the runs each option applies to once, and says what each
modality takes (a SMILES string on molecule runs, a MIDI file on music runs)."""

from __future__ import annotations

import re

import pytest
from tests.test_music_families import vae_run  # noqa: F401  (a tiny seqvae on chorales)

from genforge.cli import main


def sample_help(capsys, command: str = "sample") -> str:
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare words


def option_help(text: str, flag: str) -> str:
    """The help of ``flag``: from it up to the next option that starts a line in --help."""
    start = text.index(f" {flag} ", text.index("options:")) + 1
    rest = start + len(flag) + 1
    nxt = re.search(r" --[a-z-]+ (?=[A-Z{\[]|\w+ runs|all runs)", text[rest:])
    return text[start:rest + (nxt.start() if nxt else len(text))]


def test_each_option_names_its_runs_once(capsys):
    text = sample_help(capsys)
    assert not re.search(r"\b(\w+) runs: \1 runs\b", text), "owner said twice (music runs: music runs:)"
    assert not re.search(r"\b(\w+) runs: \1:", text), "owner said twice (diffusion runs: diffusion:)"
    # an option several modalities declare names all of them, not the first one found
    assert "text, image, molecule, music runs: block near-copies" in option_help(text, "--privacy-filter")
    assert "vae, gan, seqvae runs: points on an interpolation path" in option_help(text, "--interp-points")
    assert "music runs on chorale tokens" in option_help(text, "--key")


def test_around_and_out_say_what_music_runs_take(capsys):
    text = sample_help(capsys)
    around = option_help(text, "--around")
    assert around.startswith("--around SMILES|FILE.mid seqvae runs:")
    assert "molecule runs take a SMILES string, music runs a MIDI file" in around
    assert "music: MIDI files" in option_help(text, "--interpolate")
    out = option_help(text, "--out")
    assert ".mid" in out and ".musicxml" in out and "jsb-roll" in out
    evaluated = sample_help(capsys, "eval")
    assert "music: default 16 pieces" in option_help(evaluated, "--num-samples")


def test_seqvae_messages_on_a_music_run_ask_for_a_midi_file(vae_run, capsys):  # noqa: F811
    capsys.readouterr()
    assert main(["sample", str(vae_run), "--radius", "0.3"]) == 2
    assert main(["sample", str(vae_run), "--around", " "]) == 2
    err = capsys.readouterr().err
    assert "--radius applies only with --around (the noise around a MIDI file)" in err
    assert "--around needs a MIDI file" in err and "SMILES" not in err
