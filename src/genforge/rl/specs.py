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
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from genforge import GenforgeError
from genforge.rl.diversity import molecule_diversity, murcko_key, text_diversity, word_ngrams


@dataclass(frozen=True)
class RLSpec:
    primary: str
    prompts: bool
    prompt_in_sample: bool = False
    oracle_key: Callable[[Any], Any] | None = None
    diversity: Callable[[Any], dict[str, float]] | None = None
    filter_keys: Callable[[Any], list] | None = None
    max_new_tokens: int | None = None


def canonical_key(smiles: str) -> str | None:
    """RDKit's canonical SMILES (so "CCO", "OCC" and "C(O)C" are one molecule, one call), or
    None when RDKit cannot parse it."""
    from genforge.metrics.molecules import _quiet_rdkit, canonicalize

    with _quiet_rdkit():
        return canonicalize(smiles)


SPECS = {
    "text": RLSpec(primary="distinct_1", prompts=True, diversity=text_diversity, filter_keys=word_ngrams,
                   max_new_tokens=64),
    "molecule": RLSpec(primary="intdiv", prompts=True, prompt_in_sample=True, oracle_key=canonical_key,
                       diversity=molecule_diversity, filter_keys=lambda s: [murcko_key(s)]),
    "image": RLSpec(primary="spread", prompts=False),
}


def rl_spec(modality: str) -> RLSpec:
    if modality not in SPECS:
        raise GenforgeError(f"RL fine-tuning has no rules for {modality} samples; it knows "
                            f"{', '.join(SPECS)}")
    return SPECS[modality]
