"""The MOSES metric table (Polykovskiy et al. 2020): validity, uniqueness, novelty, the
property distances, and :func:`moses_metrics`, which applies the whole protocol.

Where a number is not what its name promises (fewer valid samples than k, invalid reference
molecules, samples too long to parse), the table says so in its ``note`` entry, one line
for the report, instead of a Python warning.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from genforge import GenforgeError
from genforge.metrics.molecules.chem import (
    MAX_SMILES_LENGTH,
    canonical_smiles,
    map_molecules,
    process_pool,
    require_rdkit,
    too_long,
)
from genforge.metrics.molecules.fcd import fcd_stats, frechet
from genforge.metrics.molecules.features import FP_BITS, PROPERTIES, describe_sample
from genforge.metrics.molecules.reference import ReferenceStats, canonical_set
from genforge.metrics.molecules.similarity import (
    cosine_similarity_counts,
    internal_diversity,
    tanimoto_max_mean,
)


def fraction_valid(smiles: Sequence[str], n_jobs: int = 1) -> float:
    """Fraction of ``smiles`` that RDKit parses and sanitizes (NaN for an empty list)."""
    require_rdkit()
    if len(smiles) == 0:
        return math.nan
    with process_pool(n_jobs) as pool:
        canonical = map_molecules(canonical_smiles, list(smiles), pool)
    return sum(c is not None for c in canonical) / len(smiles)


def fraction_unique(canonical: Sequence[str], k: int | None = None) -> float:
    """unique@k: distinct SMILES among the first ``k`` of ``canonical`` (valid canonical
    SMILES in sample order, duplicates kept), divided by how many were looked at.

    As in MOSES, when fewer than ``k`` valid samples exist the fraction is taken over all
    of them (the number is then not unique@k proper: compare it only with runs of the same
    sample count; :func:`moses_metrics` notes it). None entries are an error: invalid
    samples must be removed first, or they would count as one more "unique" molecule.
    """
    canonical = list(canonical)
    if any(c is None for c in canonical):
        raise GenforgeError("unique@k got invalid (None) SMILES; pass only valid canonical SMILES")
    if k is not None:
        canonical = canonical[:k]
    if not canonical:
        return math.nan
    return len(set(canonical)) / len(canonical)


def novelty(canonical_unique: Iterable[str], train_set: set[str]) -> float:
    """Fraction of the distinct valid samples not in the training set.

    Both sides must be canonical SMILES from the same RDKit version: MOSES compares against
    the training strings as stored, which its RDKit wrote canonically; a newer RDKit writes
    a few of them differently (11 of the first 20,000 MOSES training SMILES with RDKit
    2026.09), so :func:`moses_metrics` re-canonicalizes the training set first
    (:func:`~genforge.metrics.molecules.reference.canonical_set`). NaN when there are no samples.
    """
    gen = set(canonical_unique) - {None}
    if not gen:
        return math.nan
    return len(gen - set(train_set)) / len(gen)


def wasserstein(gen_values, ref_values) -> float:
    """Wasserstein-1 (earth mover's) distance between two 1-D samples, MOSES's property
    distance (its paper's first version used a Frechet distance instead)."""
    from scipy.stats import wasserstein_distance

    gen_values, ref_values = np.asarray(gen_values, float), np.asarray(ref_values, float)
    if gen_values.size == 0 or ref_values.size == 0:
        return math.nan
    return float(wasserstein_distance(ref_values, gen_values))


def moses_metrics(samples: Sequence[str], train: Sequence[str] | set[str] | None,
                  test: ReferenceStats, test_scaffolds: ReferenceStats | None = None,
                  k: Sequence[int] = (1000, 10000), n_jobs: int = 2, progress: bool = True,
                  device: str = "cpu", batch_size: int = 512,
                  cache_dir: str | os.PathLike | None = None,
                  timings: dict | None = None) -> dict[str, float | str]:
    """The MOSES metric table of ``samples`` (Polykovskiy et al. 2020; README of molsets).

    Keys: ``valid``, ``unique@<k>`` per k, ``FCD/Test``, ``SNN/Test``, ``Frag/Test``,
    ``Scaf/Test`` (and ``/TestSF`` with ``test_scaffolds``), ``IntDiv``, ``IntDiv2``,
    ``Filters``, ``logP``, ``SA``, ``QED``, ``weight``, ``Novelty`` (with ``train``),
    ``samples`` (the number of samples given), and ``note`` (a string, only when something
    needs saying: fewer valid samples than k, overlong or invalid molecules). As in MOSES:

    - ``valid`` is over all samples; everything else over the valid ones only, as RDKit
      canonical SMILES in sample order, duplicates kept (a model that repeats a molecule
      is scored on the repeats); the molecules are parsed back from those canonical SMILES.
      A sample over ``MAX_SMILES_LENGTH`` characters is not parsed and counts as invalid.
    - ``unique@k`` looks at the first k valid samples (see :func:`fraction_unique` when
      there are fewer); ``Novelty`` at the distinct valid ones.
    - properties are Wasserstein-1 distances to the *test* set's values only.
    - ``Filters`` lacks MOSES's MCF patterns (see ``features.filters_pass``): an upper bound.
    - FCD and Scaf depend on how many samples are scored (finite-sample bias; MOSES asks
      for 30,000): 30,000 test molecules against the whole test set score FCD/Test 0.036
      and Scaf/Test 0.96 (``benchmarks/bench_moses_reference.py``), so compare runs only
      at equal sample counts.

    ``train`` is a list of training SMILES, canonicalized here (cached under ``cache_dir``,
    see ``reference.canonical_set``), or a set taken as already canonical. RDKit work runs in
    ``n_jobs`` processes, one parse per sample; the Tanimoto metrics and ChemNet run on
    ``device``. ``timings`` (if given) receives wall seconds per metric group, and CPU
    seconds per part of the RDKit pass summed over workers (``rdkit_cpu_s/<part>``).
    """
    require_rdkit(fcd=True)
    samples = list(samples)
    if not samples:
        raise GenforgeError("no samples to score")
    timings = {} if timings is None else timings
    refs = [("Test", test)] + ([("TestSF", test_scaffolds)] if test_scaffolds is not None else [])
    out: dict[str, float | str] = {}
    notes = _reference_notes(refs)
    overlong = sum(map(too_long, samples))
    if overlong:
        notes.append(f"{overlong} samples longer than {MAX_SMILES_LENGTH} characters were not parsed "
                     "and count as invalid")

    def timed(name):
        return _Timer(timings, name)

    with process_pool(n_jobs) as pool:
        with timed("rdkit_pass_s"):
            records = map_molecules(describe_sample, samples, pool, "sample molecules", progress)
        records = [r for r in records if r is not None]
        cpu = Counter()
        for r in records:
            cpu.update(r[6])
        for part, seconds in cpu.items():
            timings[f"rdkit_cpu_s/{part}"] = seconds
        out["valid"] = len(records) / len(samples)
        canonical = [r[0] for r in records]
        for kk in k:
            out[f"unique@{kk}"] = fraction_unique(canonical, kk)
        short = [kk for kk in k if len(canonical) < kk]
        if short and canonical:
            names = ", ".join(f"unique@{kk}" for kk in short)
            notes.append(f"{names} {'is' if len(short) == 1 else 'are'} over all {len(canonical)} valid "
                         f"samples (fewer than {short[0]}); compare only at equal sample counts")
        enough = len(canonical) >= 2
        if not enough:
            notes.append(f"only {len(canonical)} valid samples: the set metrics are NaN")

        with timed("fcd_s"):
            if enough:
                mu, sigma = fcd_stats(canonical, n_jobs=n_jobs, device=device, batch_size=batch_size,
                                      progress=progress, pool=pool)
            for name, ref in refs:
                out[f"FCD/{name}"] = (frechet(mu, sigma, ref.fcd_mu, ref.fcd_sigma)
                                      if enough else math.nan)

        gen_fps = (np.unpackbits(np.stack([r[1] for r in records]), axis=1, count=FP_BITS)
                   if records else np.zeros((0, FP_BITS), np.uint8))
        with timed("snn_s"):
            for name, ref in refs:
                out[f"SNN/{name}"] = (tanimoto_max_mean(gen_fps, ref.dense_fingerprints(), device=device)
                                      if records else math.nan)
        with timed("frag_scaf_s"):
            frags, scafs = Counter(), Counter()
            for r in records:
                frags.update(r[2])
                if r[3] is not None:
                    scafs[r[3]] += 1
            for name, ref in refs:
                out[f"Frag/{name}"] = cosine_similarity_counts(ref.fragments, frags)
                out[f"Scaf/{name}"] = cosine_similarity_counts(ref.scaffolds, scafs)
        with timed("intdiv_s"):
            out["IntDiv"] = internal_diversity(gen_fps, 1, device=device) if records else math.nan
            out["IntDiv2"] = internal_diversity(gen_fps, 2, device=device) if records else math.nan
        out["Filters"] = float(np.mean([r[5] for r in records])) if records else math.nan
        with timed("properties_s"):
            for i, name in enumerate(PROPERTIES):
                out[name] = wasserstein([r[4][i] for r in records], test.properties[name])
        if train is not None:
            with timed("novelty_s"):
                train_set = (train if isinstance(train, (set, frozenset))
                             else canonical_set(train, n_jobs=n_jobs, cache_dir=cache_dir, progress=progress))
                out["Novelty"] = novelty(canonical, train_set)
    out["samples"] = len(samples)
    if notes:
        out["note"] = "; ".join(notes)
    return out


def _reference_notes(refs) -> list[str]:
    return [f"{name}: {ref.n_invalid} of {ref.n + ref.n_invalid} reference SMILES are invalid and "
            "were left out" for name, ref in refs if ref.n_invalid]


class _Timer:
    """``with _Timer(d, name):`` adds the block's wall seconds to ``d[name]``."""

    def __init__(self, timings: dict, name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.t
        return False
