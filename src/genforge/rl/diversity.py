"""Guard rails against reward hacking: diversity measures and a diversity filter.

A policy pushed toward one reward tends to collapse onto the few samples that score
best. These pure functions measure a rollout batch's diversity per modality (each with
one *primary* number the automatic stop watches), and :class:`DiversityFilter` is
REINVENT's memory (Blaschke et al. 2020): once a bucket (a Murcko scaffold, or a word
n-gram) has been produced often, further samples in it lose their reward.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence

import torch


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct word n-grams over all n-grams in the set (Li et al. 2016); 0 for no n-grams."""
    grams = [tuple(words[i:i + n]) for t in texts for words in [t.split()] for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def text_diversity(texts: Sequence[str]) -> dict[str, float]:
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "unique": len(set(texts)) / max(len(texts), 1)}


def molecule_diversity(smiles: Sequence[str]) -> dict[str, float]:
    """Validity, uniqueness of valid SMILES, IntDiv1 of the valid ones (MOSES's definition,
    ``metrics.molecules.internal_diversity``) and distinct Murcko scaffolds per valid molecule."""
    from genforge.metrics.molecules import (
        _mol,
        _quiet_rdkit,
        internal_diversity,
        morgan_fingerprints,
    )

    with _quiet_rdkit():
        parsed = [(s, _mol(s)) for s in smiles]
    valid = [s for s, m in parsed if m is not None]
    mols = [m for _, m in parsed if m is not None]
    out = {"valid": len(mols) / max(len(smiles), 1), "unique": len(set(valid)) / max(len(valid), 1)}
    out["intdiv"] = internal_diversity(morgan_fingerprints(mols)) if len(mols) >= 2 else 0.0
    out["scaffolds"] = len({murcko_key(s) for s in valid}) / max(len(valid), 1)
    return out


def chords(sample) -> list[tuple[int, ...]]:
    """A music sample's sonorities in order: its (T, 4) grid's rows with consecutive repeats
    merged (a held chord is one chord), all-rest rows left out. ``sample``: what
    ``rl.music_rewards.sample_grid`` reads (token text or a grid)."""
    from genforge.rl.music_rewards import sample_grid

    out: list[tuple[int, ...]] = []
    for row in sample_grid(sample).tolist():
        if any(p >= 0 for p in row) and (not out or out[-1] != tuple(row)):
            out.append(tuple(row))
    return out


def music_diversity(samples: Sequence) -> dict[str, float]:
    """distinct-n (Li et al. 2016) with chords as the words: ``distinct_1`` distinct chords per
    chord, ``distinct_2`` distinct chord pairs per pair over the batch (the primary: a policy that
    repeats one cadence drives it down while a batch of different chorales keeps it high), and
    ``unique`` distinct pieces per piece."""
    seqs = [chords(s) for s in samples]
    out = {}
    for n in (1, 2):
        grams = [tuple(c[i:i + n]) for c in seqs for i in range(len(c) - n + 1)]
        out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    out["unique"] = len({tuple(c) for c in seqs}) / max(len(seqs), 1)
    return out


def chord_ngrams(sample, n: int = 3) -> list[tuple]:
    """The distinct chord n-grams of a music sample: its diversity-filter buckets, as word 3-grams
    are text's."""
    c = chords(sample)
    return list(dict.fromkeys(tuple(c[i:i + n]) for i in range(len(c) - n + 1)))


def murcko_key(smiles: str) -> str:
    """The Bemis-Murcko scaffold's SMILES (any number of rings; an acyclic molecule is its own
    bucket); the SMILES itself when RDKit cannot parse it."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    from genforge.metrics.molecules import _mol, _quiet_rdkit

    with _quiet_rdkit():
        mol = _mol(smiles)
        if mol is None:
            return smiles
        try:
            scaffold = Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(mol))
        except (ValueError, RuntimeError):
            scaffold = ""
    return scaffold or Chem.MolToSmiles(mol)


def image_diversity(features: torch.Tensor, probs: torch.Tensor, reference_spread: float) -> dict[str, float]:
    """``spread``: mean pairwise distance of the samples' classifier features over that of real
    images (1: as varied as the data; 0: one image repeated); ``class_entropy``: entropy of
    the predicted-class histogram over log K (1: every class equally often)."""
    from genforge.metrics.classes import class_histogram, histogram_entropy

    spread = float(torch.pdist(features.double()).mean()) / reference_spread if features.shape[0] > 1 else 0.0
    _, entropy = histogram_entropy(class_histogram(probs))
    return {"spread": spread, "class_entropy": float(entropy)}


def word_ngrams(text: str, n: int = 3) -> list[tuple[str, ...]]:
    """The distinct word n-grams of a text, words lower-cased with punctuation dropped: a
    filter on raw tokens is dodged by "Love! Love? Love." (measured: benchmarks/results/rl.md)."""
    words = re.findall(r"[\w']+", text.lower())
    return list(dict.fromkeys(tuple(words[i:i + n]) for i in range(len(words) - n + 1)))


class DiversityFilter:
    """REINVENT's diversity filter (Blaschke et al. 2020), generalized to several keys per sample.

    ``keys(sample)`` names the buckets a sample falls in (its scaffold; its word 3-grams).
    A bucket is full once ``bucket_size`` samples that scored at least ``min_score`` fell in
    it. A sample keeps the share of its reward belonging to buckets that are not full:
    one scaffold -> all or nothing, as in REINVENT; text -> the fraction of its n-grams not
    yet overused. A negative reward is left as is (zeroing it would reward repetition).
    """

    def __init__(self, keys: Callable[[object], Sequence], bucket_size: int, min_score: float = 0.0):
        self.keys, self.bucket_size, self.min_score = keys, bucket_size, min_score
        self.counts: Counter = Counter()

    def __call__(self, samples: Sequence, rewards: torch.Tensor) -> tuple[torch.Tensor, float]:
        """-> (filtered rewards (N,), fraction of samples penalized)."""
        out = rewards.clone()
        penalized = 0
        for i, sample in enumerate(samples):
            keys = self.keys(sample)
            if not keys:
                continue
            full = sum(self.counts[k] >= self.bucket_size for k in keys)
            if full and out[i] > 0:
                out[i] = out[i] * (1.0 - full / len(keys))
                penalized += 1
            if float(rewards[i]) >= self.min_score:
                self.counts.update(keys)
        return out, penalized / max(len(samples), 1)

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts)}

    def load_state_dict(self, state: dict) -> None:
        self.counts = Counter(state["counts"])
