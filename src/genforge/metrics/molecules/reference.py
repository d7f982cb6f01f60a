"""The statistics of a reference set (e.g. MOSES test), computed once and cached, and the
canonical training set novelty compares against, cached too.

Both caches are keyed by the sha256 of the SMILES list *and* by the versions of the
libraries that computed them (:func:`library_versions`): RDKit's canonical SMILES change
between releases (11 of the first 20,000 MOSES training SMILES with RDKit 2026.09), and so
can ChemNet's activations with fcd-torch, torch or numpy; statistics from another version
are recomputed, never mixed with this one's samples.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import genforge.metrics.molecules.shipped as shipped  # the module itself, not through the package
from genforge import GenforgeError
from genforge.atomic import atomic_write, atomic_write_bytes
from genforge.metrics.molecules.chem import (
    canonical_smiles,
    map_molecules,
    mol_from_smiles,
    process_pool,
    rdkit_version,
    require_rdkit,
)
from genforge.metrics.molecules.fcd import fcd_stats
from genforge.metrics.molecules.features import FP_BITS, PROPERTIES, describe_reference, fingerprint

STATS_VERSION = 2  # bump when anything stored in a ReferenceStats changes meaning (2: version-keyed)


def library_versions(fcd: bool = True) -> dict[str, str]:
    """Versions of what computes a cache entry: RDKit (canonical SMILES, fingerprints,
    properties) and, with ``fcd``, fcd-torch, torch and numpy (ChemNet's activations)."""
    import importlib.metadata

    versions = {"rdkit": rdkit_version()}
    if fcd:
        import torch

        try:
            versions["fcd_torch"] = importlib.metadata.version("fcd_torch")
        except importlib.metadata.PackageNotFoundError:
            versions["fcd_torch"] = "unknown"
        versions.update(torch=torch.__version__, numpy=np.__version__)
    return versions


def _versions_key(versions: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:8]


def smiles_sha256(smiles: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for s in smiles:
        digest.update(s.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def canonical_cache_name(smiles: Sequence[str]) -> str:
    """File name of the cached canonical set of ``smiles`` under the installed RDKit."""
    key = _versions_key(library_versions(fcd=False))
    return f"canonical-v{STATS_VERSION}-{smiles_sha256(smiles)[:24]}-{key}.txt.gz"


def canonical_set(smiles: Sequence[str], n_jobs: int = 1, cache_dir: str | os.PathLike | None = None,
                  progress: bool = False, shipped_dir: str | os.PathLike | None = None) -> set[str]:
    """Set of RDKit canonical SMILES of ``smiles`` (invalid ones dropped), for novelty.

    The 1.6M MOSES training SMILES take minutes to canonicalize. When the package ships this
    list's changed rows for the installed RDKit (:mod:`.shipped`; ``shipped_dir`` overrides
    the package's folder), the set is built from them in seconds, exactly. Otherwise, with
    ``cache_dir``, the result is kept as ``canonical-v<N>-<sha256 of the list>-<RDKit
    version key>.txt.gz`` and read back next time by the same RDKit only.
    """
    require_rdkit()
    smiles = list(smiles)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / canonical_cache_name(smiles)
        if path.is_file():
            with gzip.open(path, "rt") as f:
                return set(f.read().split("\n")) - {""}
    changes = shipped.load_train_changes(smiles_sha256(smiles), library_versions(fcd=False), shipped_dir)
    if changes is not None:
        # Every other row is its own canonical SMILES (see the shipped module's docstring).
        return (set(smiles) - changes.keys()) | {c for c in changes.values() if c is not None}
    with process_pool(n_jobs) as pool:
        canonical = map_molecules(canonical_smiles, smiles, pool, "canonical train", progress, 2048)
    result = set(canonical) - {None}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, gzip.compress("\n".join(sorted(result)).encode()))
    return result


@dataclass
class ReferenceStats:
    """Everything the metrics need of one reference set (e.g. MOSES test), computed once.

    ``fingerprints`` are packed bits, uint8 (N, 128) (:meth:`dense_fingerprints` gives the
    0/1 (N, 1024) matrix); ``properties`` maps logP/SA/QED/weight to float64 (N,) arrays
    (empty for a set shipped without them: MOSES's scaffold test set, whose properties no
    metric reads);
    ``fragments`` and ``scaffolds`` count BRICS fragments and 2+-ring scaffolds. ``n`` is the
    number of valid reference molecules (``n_invalid`` were dropped); ``versions`` are the
    :func:`library_versions` that computed them.
    """

    sha256: str
    n: int
    fcd_mu: np.ndarray
    fcd_sigma: np.ndarray
    fingerprints: np.ndarray
    fragments: Counter
    scaffolds: Counter
    properties: dict[str, np.ndarray] = field(default_factory=dict)
    n_invalid: int = 0
    versions: dict[str, str] = field(default_factory=dict)

    def dense_fingerprints(self) -> np.ndarray:
        return np.unpackbits(self.fingerprints, axis=1, count=FP_BITS)

    def save(self, cache_dir: str | os.PathLike) -> Path:
        """Write ``<stem>.npz`` (arrays) then ``<stem>.json`` (counts, metadata), each
        atomically; the JSON, written last, marks the entry complete."""
        stem = Path(cache_dir) / _stats_stem(self.sha256, self.versions)
        stem.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"fcd_mu": self.fcd_mu, "fcd_sigma": self.fcd_sigma,
                  "fingerprints": self.fingerprints,
                  **{f"prop_{k}": v for k, v in self.properties.items()}}
        atomic_write(stem.with_suffix(".npz"), lambda f: np.savez(f, **arrays))
        meta = {"version": STATS_VERSION, "sha256": self.sha256, "versions": self.versions, "n": self.n,
                "n_invalid": self.n_invalid, "fragments": dict(self.fragments),
                "scaffolds": dict(self.scaffolds)}
        atomic_write_bytes(stem.with_suffix(".json"), json.dumps(meta).encode())
        return stem

    @classmethod
    def load(cls, cache_dir: str | os.PathLike, sha256: str,
             versions: dict[str, str] | None = None) -> ReferenceStats | None:
        """The cached statistics of the SMILES list with this hash, computed by these library
        ``versions`` (default: the installed ones), or None if absent or from another version."""
        versions = library_versions() if versions is None else versions
        stem = Path(cache_dir) / _stats_stem(sha256, versions)
        npz, meta_path = stem.with_suffix(".npz"), stem.with_suffix(".json")
        if not (npz.is_file() and meta_path.is_file()):
            return None
        meta = json.loads(meta_path.read_text())
        if (meta.get("version") != STATS_VERSION or meta.get("sha256") != sha256
                or meta.get("versions") != versions):
            return None
        with np.load(npz) as z:
            props = {k: z[f"prop_{k}"] for k in PROPERTIES if f"prop_{k}" in z}
            return cls(sha256=sha256, n=int(meta["n"]), fcd_mu=z["fcd_mu"], fcd_sigma=z["fcd_sigma"],
                       fingerprints=z["fingerprints"], fragments=Counter(meta["fragments"]),
                       scaffolds=Counter(meta["scaffolds"]), properties=props,
                       n_invalid=int(meta.get("n_invalid", 0)), versions=versions)


def _stats_stem(sha256: str, versions: dict[str, str]) -> str:
    return f"moses-ref-v{STATS_VERSION}-{sha256[:24]}-{_versions_key(versions)}"


def reference_stats(smiles: Sequence[str], cache_dir: str | os.PathLike | None = None,
                    progress: bool = True, n_jobs: int = 2, device: str = "cpu",
                    batch_size: int = 512, timings: dict | None = None,
                    shipped_dir: str | os.PathLike | None = None) -> ReferenceStats:
    """Statistics of a reference set (see :class:`ReferenceStats`), read from ``cache_dir``
    when this exact SMILES list (by sha256) was computed before by the same library versions;
    else taken from the package's shipped statistics (:mod:`.shipped`; ``shipped_dir``
    overrides the folder) when they hold this list for the installed RDKit and fcd-torch,
    with only the fingerprints recomputed (a fast RDKit pass); else computed. Either way
    saved to ``cache_dir``.

    Invalid (or overlong) reference SMILES are dropped and counted in ``n_invalid`` (the MOSES
    sets have none; :func:`~genforge.metrics.molecules.table.moses_metrics` notes them). The
    molecules are the references as given (not re-canonicalized), as MOSES computes them;
    ``timings`` (if given) receives the seconds of the RDKit pass and of ChemNet.
    """
    require_rdkit(fcd=True)
    smiles = list(smiles)
    sha, versions = smiles_sha256(smiles), library_versions()
    if cache_dir is not None:
        cached = ReferenceStats.load(cache_dir, sha, versions)
        if cached is not None:
            return cached
    fields = shipped.load_set(sha, versions, shipped_dir)
    stats = None if fields is None else _with_fingerprints(smiles, sha, versions, fields, n_jobs, progress)
    if stats is not None:
        if cache_dir is not None:
            stats.save(cache_dir)
        return stats
    t = time.perf_counter()
    with process_pool(n_jobs) as pool:
        records = map_molecules(describe_reference, smiles, pool, "reference molecules", progress)
        valid = [s for s, r in zip(smiles, records, strict=True) if r is not None]
        if timings is not None:
            timings["reference_rdkit_s"] = time.perf_counter() - t
        t = time.perf_counter()
        mu, sigma = (fcd_stats(valid, n_jobs=n_jobs, device=device, batch_size=batch_size,
                               progress=progress, pool=pool) if len(valid) >= 2 else (None, None))
        if timings is not None:
            timings["reference_chemnet_s"] = time.perf_counter() - t
    records = [r for r in records if r is not None]
    if len(records) < 2:
        raise GenforgeError(f"the reference set has {len(records)} valid molecules; need at least 2")
    fragments, scaffolds = Counter(), Counter()
    for r in records:
        fragments.update(r[2])
        if r[3] is not None:
            scaffolds[r[3]] += 1
    props = {name: np.array([r[4][i] for r in records]) for i, name in enumerate(PROPERTIES)}
    fps = np.stack([r[1] for r in records])
    stats = ReferenceStats(sha256=sha, n=len(records), fcd_mu=mu, fcd_sigma=sigma, fingerprints=fps,
                           fragments=fragments, scaffolds=scaffolds, properties=props,
                           n_invalid=len(smiles) - len(valid), versions=versions)
    if cache_dir is not None:
        stats.save(cache_dir)
    return stats


def reference_fingerprint(smiles: str) -> np.ndarray | None:
    """The packed Morgan fingerprint (128,) uint8 of one reference SMILES, or None where
    :func:`~genforge.metrics.molecules.features.describe_reference` gives None (it does not
    parse): the part of the reference pass the shipped statistics leave out."""
    mol = mol_from_smiles(smiles)
    return None if mol is None else np.packbits(fingerprint(mol))


def _with_fingerprints(smiles: list[str], sha: str, versions: dict[str, str], fields: dict,
                       n_jobs: int, progress: bool) -> ReferenceStats | None:
    """The shipped ``fields`` plus fingerprints computed here; None (after a notice) when this
    RDKit parses a different number of molecules than the one that computed them."""
    with process_pool(n_jobs) as pool:
        fps = [f for f in map_molecules(reference_fingerprint, smiles, pool, "reference fingerprints", progress)
               if f is not None]
    if len(fps) != fields["n"] or len(smiles) - len(fps) != fields["n_invalid"]:
        shipped.notice(f"the shipped statistics count {fields['n']} valid reference molecules, this RDKit "
                       f"parses {len(fps)}; computing them instead (minutes)")
        return None
    return ReferenceStats(sha256=sha, fingerprints=np.stack(fps), versions=versions, **fields)


def train_changes(train: Sequence[str], n_jobs: int = 2, progress: bool = False) -> dict[str, str | None]:
    """{row: canonical SMILES or None} for each training row that is not its own RDKit
    canonical SMILES (None: RDKit cannot parse it), what :mod:`.shipped` keeps for novelty."""
    require_rdkit()
    with process_pool(n_jobs) as pool:
        canonical = map_molecules(canonical_smiles, list(train), pool, "canonical train", progress, 2048)
    return {s: c for s, c in zip(train, canonical, strict=True) if c != s}


def build_shipped(references: dict[str, Sequence[str]], train: Sequence[str] | None,
                  folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None, n_jobs: int = 2,
                  progress: bool = False, changes: dict[str, str | None] | None = None,
                  properties_of: tuple[str, ...] = ("test",)) -> Path:
    """Compute (or read from ``cache_dir``) the statistics of each reference set (label ->
    SMILES) and the changed rows of ``train``, and write them as a shipped bundle in
    ``folder`` (:func:`.shipped.write_bundle`). ``changes`` passes :func:`train_changes`
    already computed for this ``train``; property values are kept for the labels in
    ``properties_of`` only (the property distances read the test set's alone; a set's four
    properties cost about 1 MB each)."""
    versions = library_versions()
    sets = {}
    for label, smiles in references.items():
        smiles = list(smiles)
        stats = reference_stats(smiles, cache_dir, progress=progress, n_jobs=n_jobs, shipped_dir=folder)
        sets[label] = (smiles_sha256(smiles), stats)
    train_entry = None
    if train is not None:
        train = list(train)
        changes = train_changes(train, n_jobs, progress) if changes is None else changes
        train_entry = (smiles_sha256(train), len(train), changes)
    return shipped.write_bundle(folder, sets, train_entry, versions, properties_of=properties_of)
