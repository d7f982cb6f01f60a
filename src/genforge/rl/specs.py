"""What RL needs to know about each modality, in one table (``rl_spec(modality)``).

RL is the one place outside ``modalities/`` that must know what a sample *is*: whether a
prompt is part of it, what counts as one oracle call, how diverse a batch is, which
buckets the diversity filter uses. Each modality states that here once, so the policy,
the reward and the rollouts never branch on a modality name or on ``special_ids``.

- ``prompt_in_sample``: rewards, diversity and ``oracle.csv`` see prompt + continuation (a
  SMILES prefix is part of the molecule); otherwise the continuation alone (a text prompt is
  the question, not the answer; it reaches rewards as the ``prompt`` column).
- ``oracle_key``: sample -> the key an oracle call is counted and cached under (PMO, Gao et
  al. 2022: one call per distinct canonical molecule), or None for a sample no oracle
  would be asked about (an invalid SMILES: scored, never counted). ``None`` for the whole
  modality: every scored sample is one call and nothing is cached.
- ``diversity``: samples -> numbers, including ``primary``, the one ``--min-diversity``
  watches. Images are measured by the policy in the dataset's classifier features (they
  need the run's data), so their ``diversity`` is None here.
- ``filter_keys``: sample -> the buckets of REINVENT's diversity filter, or None (no filter).
- ``max_new_tokens``: the default generation budget of token policies (None: what fits).
- ``encode_prompt``: (prompt text, the run's data) -> token ids after ``<bos>``, when the
  modality reads prompts its own way (music: an opening as a MIDI file or grid tokens, in
  whole 16th steps); None: the tokenizer's ``encode``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from genforge import GenforgeError
from genforge.rl.diversity import (
    chord_ngrams,
    molecule_diversity,
    murcko_key,
    music_diversity,
    text_diversity,
    word_ngrams,
)


@dataclass(frozen=True)
class RLSpec:
    primary: str
    prompts: bool
    prompt_in_sample: bool = False
    oracle_key: Callable[[Any], Any] | None = None
    diversity: Callable[[Any], dict[str, float]] | None = None
    filter_keys: Callable[[Any], list] | None = None
    max_new_tokens: int | None = None
    encode_prompt: Callable[[str, Any], list[int]] | None = None


def canonical_key(smiles: str) -> str | None:
    """RDKit's canonical SMILES (so "CCO", "OCC" and "C(O)C" are one molecule, one call), or
    None when RDKit cannot parse it."""
    from genforge.metrics.molecules import _quiet_rdkit, canonicalize

    with _quiet_rdkit():
        return canonicalize(smiles)


def music_prompt(text: str, data) -> list[int]:
    """A music prompt is an opening the rollouts continue: a MIDI file (``.mid``/``.midi``, read
    as ``genforge sample --prompt-midi`` reads it) or the tokenizer's names ("p67 p62 p55 p43
    hold ..."). Grid prompts must be whole 16th steps (4 tokens: S, A, T, B), or every token the
    policy adds would sit in the wrong voice."""
    from pathlib import Path

    tok = data.tokenizer
    path = Path(text.strip()).expanduser()
    if path.suffix.lower() in (".mid", ".midi"):
        from genforge.data.music import read_midi, read_midi_notes

        if not path.is_file():
            raise GenforgeError(f"music prompt {text}: no such MIDI file")
        ids = tok.encode_grid(*read_midi(path)) if tok.kind == "grid" else tok.encode_notes(read_midi_notes(path)[0])
    else:
        ids = tok.encode(text)
    if not ids:
        raise GenforgeError(f"music prompt {text!r} holds no notes; give an opening (a .mid file or tokens)")
    if tok.kind == "grid" and len(ids) % 4:
        raise GenforgeError(f"music prompt {text[:40]!r} is {len(ids)} tokens; a grid prompt is whole 16th "
                            "steps of 4 tokens (soprano alto tenor bass)")
    return ids


SPECS = {
    "text": RLSpec(primary="distinct_1", prompts=True, diversity=text_diversity, filter_keys=word_ngrams,
                   max_new_tokens=64),
    "molecule": RLSpec(primary="intdiv", prompts=True, prompt_in_sample=True, oracle_key=canonical_key,
                       diversity=molecule_diversity, filter_keys=lambda s: [murcko_key(s)]),
    "image": RLSpec(primary="spread", prompts=False),
    # a music sample is the piece: an opening given as a prompt is part of what the rewards
    # (no parallels, key, ranges, cadence) and the diversity measures read, as a SMILES prefix is
    "music": RLSpec(primary="distinct_2", prompts=True, prompt_in_sample=True, diversity=music_diversity,
                    filter_keys=chord_ngrams, encode_prompt=music_prompt),
}


def rl_spec(modality: str) -> RLSpec:
    if modality not in SPECS:
        raise GenforgeError(f"RL fine-tuning has no rules for {modality} samples; it knows "
                            f"{', '.join(SPECS)}")
    return SPECS[modality]
