"""MOSES distribution-learning metrics for SMILES samples, computed with RDKit.

The metrics and the protocol are those of the MOSES benchmark (Polykovskiy et al. 2020,
"Molecular Sets (MOSES): A Benchmarking Platform for Molecular Generation Models",
Frontiers in Pharmacology 11:565644, arXiv:1811.12823), written anew here so that their
numbers can be set beside the published table. Where the paper's formula and the
reference implementation (``molsets``, github.com/molecularsets/moses) differ, genforge
follows the implementation, because the published numbers came from it; each such case
is named in the function's docstring.

The protocol, in the order :func:`moses_metrics` applies it:

- ``valid`` is the fraction of all samples that RDKit parses and sanitizes (an empty
  string is invalid). Every later metric sees only the valid samples, as their RDKit
  canonical SMILES, in sample order and *with* duplicates; only ``unique@k`` and
  ``Novelty`` deduplicate.
- ``unique@k``: distinct canonical SMILES among the first k valid samples.
- ``FCD``, ``SNN``, ``Frag``, ``Scaf`` against a reference set (``/Test``: MOSES test;
  ``/TestSF``: MOSES scaffold test), whose statistics are computed once
  (:func:`reference_stats`) and cached.
- ``IntDiv``, ``IntDiv2``, ``Filters`` within the samples; ``logP``, ``SA``, ``QED``,
  ``weight``: Wasserstein-1 distance to the test set's values; ``Novelty``: fraction of
  the distinct valid samples absent from the training set.

RDKit, fcd-torch and tqdm are imported inside the functions that need them, so importing
this module never fails; :func:`require_rdkit` turns their absence into one line.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from genforge import GenforgeError
from genforge.metrics.frechet import frechet_from_stats

INSTALL_HINT = "molecule metrics need RDKit and fcd-torch: pip install 'genforge[molecules]'"
FP_RADIUS = 2  # Morgan radius 2 folded to 1024 bits, MOSES's fingerprint (ECFP4-like)
FP_BITS = 1024
PROPERTIES = ("logP", "SA", "QED", "weight")
ALLOWED_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})
MAX_RING_SIZE = 7  # MOSES rejects any ring of 8 or more atoms
SCAFFOLD_MIN_RINGS = 2  # MOSES's Scaf counts only scaffolds with at least 2 rings
STATS_VERSION = 1  # bump when anything stored in a ReferenceStats changes meaning


# --------------------------------------------------------------------------- availability


def require_rdkit(fcd: bool = False) -> None:
    """Raise a one-line :class:`GenforgeError` when RDKit (or, with ``fcd``, fcd-torch) is
    missing, instead of an ImportError from deep inside a metric."""
    try:
        import rdkit  # noqa: F401
    except ImportError as e:
        raise GenforgeError(INSTALL_HINT) from e
    if fcd:
        try:
            import fcd_torch  # noqa: F401
        except ImportError as e:
            raise GenforgeError(INSTALL_HINT) from e


@contextlib.contextmanager
def _quiet_rdkit():
    """RDKit prints one line per unparsable SMILES; a model's invalid samples are expected,
    so they are counted, not printed."""
    from rdkit import rdBase

    blocker = rdBase.BlockLogs()
    try:
        yield
    finally:
        del blocker


def _worker_init() -> None:
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    torch.set_num_threads(1)


def _progress(iterable, total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not progress, file=sys.stderr,
                unit="mol", dynamic_ncols=True, leave=False)


@contextlib.contextmanager
def _pool(n_jobs: int):
    """A process pool of ``n_jobs`` workers, or None to run in this process.

    Workers receive SMILES strings, never RDKit molecules: pickling a Mol costs about as
    much as parsing it again, so each worker parses and computes everything it needs.
    """
    if n_jobs <= 1:
        yield None
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ctx.Pool(n_jobs, initializer=_worker_init)
    try:
        yield pool
    finally:
        pool.terminate()
        pool.join()


def _map(fn: Callable, items: Sequence, pool, desc: str = "", progress: bool = False,
         chunksize: int = 256) -> list:
    """``[fn(x) for x in items]`` in order, across ``pool`` when there is one."""
    if pool is None:
        with _quiet_rdkit():
            return [fn(x) for x in _progress(items, len(items), desc, progress)]
    it = pool.imap(fn, items, chunksize=chunksize)
    return list(_progress(it, len(items), desc, progress))


# --------------------------------------------------------------------------- one molecule


def _mol(smiles):
    """RDKit molecule of a SMILES string, or None when it does not parse or sanitize (as
    MOSES's ``get_mol``: the empty string is invalid, although RDKit parses it)."""
    from rdkit import Chem

    if not isinstance(smiles, str) or not smiles:
        return None
    mol = Chem.MolFromSmiles(smiles)  # sanitizes; None on failure
    if mol is None or mol.GetNumAtoms() == 0:
        return None
    return mol


def canonicalize(smiles: str) -> str | None:
    """RDKit canonical (isomeric) SMILES, or None when RDKit cannot parse ``smiles``."""
    require_rdkit()
    from rdkit import Chem

    mol = _mol(smiles)
    return None if mol is None else Chem.MolToSmiles(mol)


def _canonicalize_quiet(smiles: str) -> str | None:
    with _quiet_rdkit():
        return canonicalize(smiles)


@functools.lru_cache(maxsize=1)
def _morgan_generator():
    from rdkit.Chem import rdFingerprintGenerator

    # Same bits as the legacy GetMorganFingerprintAsBitVect(mol, 2, nBits=1024) MOSES calls.
    return rdFingerprintGenerator.GetMorganGenerator(radius=FP_RADIUS, fpSize=FP_BITS)


def _fingerprint(mol) -> np.ndarray:
    """Morgan bits of one molecule: uint8 (1024,)."""
    return _morgan_generator().GetFingerprintAsNumPy(mol).astype(np.uint8, copy=False)


def _fragments(mol) -> list[str]:
    """SMILES of the pieces left after cutting every BRICS bond (Degen et al. 2008), with
    the attachment points as labelled dummy atoms (``[3*]``), as MOSES's Frag counts them."""
    from rdkit import Chem

    return Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(mol)).split(".")


def _scaffold(mol, min_rings: int = SCAFFOLD_MIN_RINGS) -> str | None:
    """Canonical SMILES of the Bemis-Murcko scaffold (Bemis & Murcko 1996), or None when it
    is empty (acyclic molecule) or has fewer than ``min_rings`` rings: MOSES's Scaf counts
    only scaffolds of two or more rings (``compute_scaffolds(..., min_rings=2)`` in molsets),
    so a set of single-benzene molecules has no scaffolds at all."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    try:
        scaffold = MurckoScaffold.GetScaffoldForMol(mol)
    except (ValueError, RuntimeError):
        return None
    smiles = Chem.MolToSmiles(scaffold)
    if not smiles or scaffold.GetRingInfo().NumRings() < min_rings:
        return None
    return smiles


@functools.lru_cache(maxsize=1)
def _pains_catalog():
    from rdkit.Chem import FilterCatalog

    params = FilterCatalog.FilterCatalogParams()
    params.AddCatalog(FilterCatalog.FilterCatalogParams.FilterCatalogs.PAINS)  # A + B + C, 480
    return FilterCatalog.FilterCatalog(params)


def _passes_filters(mol) -> bool:
    """MOSES's structural rules, then PAINS; see :func:`filters_pass`."""
    from rdkit import Chem

    if any(len(ring) > MAX_RING_SIZE for ring in mol.GetRingInfo().AtomRings()):
        return False
    if any(atom.GetFormalCharge() != 0 for atom in mol.GetAtoms()):
        return False
    if any(atom.GetSymbol() not in ALLOWED_ATOMS for atom in mol.GetAtoms()):
        return False
    if _pains_catalog().HasMatch(mol):
        return False
    smiles = Chem.MolToSmiles(mol, isomericSmiles=False)  # must survive a round trip
    return bool(smiles) and Chem.MolFromSmiles(smiles) is not None


@functools.lru_cache(maxsize=1)
def _sascorer():
    """RDKit's contributed SA score module (Ertl & Schuffenhauer 2009), which is not a
    package in every RDKit build: fall back to its folder under ``RDConfig.RDContribDir``."""
    try:
        from rdkit.Contrib.SA_Score import sascorer
    except ImportError:
        from rdkit.Chem import RDConfig

        sys.path.append(os.path.join(RDConfig.RDContribDir, "SA_Score"))
        import sascorer
    return sascorer


def logp(mol) -> float:
    """Wildman-Crippen logP (Wildman & Crippen 1999), RDKit's ``MolLogP``."""
    from rdkit.Chem import Crippen

    return float(Crippen.MolLogP(mol))


def sa(mol) -> float:
    """Synthetic accessibility score, 1 (easy) to 10 (hard) (Ertl & Schuffenhauer 2009)."""
    return float(_sascorer().calculateScore(mol))


def qed(mol) -> float:
    """Quantitative estimate of drug-likeness in [0, 1] (Bickerton et al. 2012), RDKit's
    implementation with the paper's mean weights."""
    from rdkit.Chem import QED

    return float(QED.qed(mol))


def weight(mol) -> float:
    """Average molecular weight in daltons, implicit hydrogens included (``MolWt``)."""
    from rdkit.Chem import Descriptors

    return float(Descriptors.MolWt(mol))


PROPERTY_FUNCTIONS = {"logP": logp, "SA": sa, "QED": qed, "weight": weight}


def _describe(smiles: str, reparse: bool, filters: bool):
    """Everything the metrics need from one SMILES, in one parse (the pool's unit of work).

    Returns None for an invalid SMILES, else ``(canonical, packed fingerprint (128,) uint8,
    fragments, scaffold or None, (logP, SA, QED, weight), passes filters or None, seconds
    per part)``. With ``reparse`` the features come from the canonical SMILES parsed again,
    as MOSES computes them (it canonicalizes the samples first, then parses those).
    """
    from rdkit import Chem

    seconds = {}
    t = time.perf_counter()
    mol = _mol(smiles)
    if mol is None:
        return None
    canonical = Chem.MolToSmiles(mol)
    if reparse:
        mol = _mol(canonical) or mol
    t0 = time.perf_counter()
    seconds["parse"] = t0 - t
    fp = np.packbits(_fingerprint(mol))
    t1 = time.perf_counter()
    seconds["fingerprints"] = t1 - t0
    frags = _fragments(mol)
    t2 = time.perf_counter()
    seconds["fragments"] = t2 - t1
    scaffold = _scaffold(mol)
    t3 = time.perf_counter()
    seconds["scaffolds"] = t3 - t2
    props = tuple(PROPERTY_FUNCTIONS[name](mol) for name in PROPERTIES)
    t4 = time.perf_counter()
    seconds["properties"] = t4 - t3
    passes = None
    if filters:
        passes = _passes_filters(mol)
        seconds["filters"] = time.perf_counter() - t4
    return canonical, fp, frags, scaffold, props, passes, seconds


def _describe_sample(smiles):
    return _describe(smiles, reparse=True, filters=True)


def _describe_reference(smiles):
    return _describe(smiles, reparse=False, filters=False)


# --------------------------------------------------------------------------- set metrics


def fraction_valid(smiles: Sequence[str], n_jobs: int = 1) -> float:
    """Fraction of ``smiles`` that RDKit parses and sanitizes (NaN for an empty list)."""
    require_rdkit()
    if len(smiles) == 0:
        return math.nan
    with _pool(n_jobs) as pool:
        canonical = _map(_canonicalize_quiet, list(smiles), pool)
    return sum(c is not None for c in canonical) / len(smiles)


def fraction_unique(canonical: Sequence[str], k: int | None = None) -> float:
    """unique@k: distinct SMILES among the first ``k`` of ``canonical`` (valid canonical
    SMILES in sample order, duplicates kept), divided by how many were looked at.

    As in MOSES, when fewer than ``k`` valid samples exist the fraction is taken over all
    of them and a warning says so (the number is then not unique@k proper: compare it
    only with runs of the same sample count). None entries are an error: invalid samples
    must be removed first, or they would count as one more "unique" molecule.
    """
    canonical = list(canonical)
    if any(c is None for c in canonical):
        raise GenforgeError("unique@k got invalid (None) SMILES; pass only valid canonical SMILES")
    if k is not None:
        if len(canonical) < k:
            warnings.warn(f"unique@{k}: only {len(canonical)} valid samples; the fraction is "
                          f"over those {len(canonical)}", stacklevel=2)
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
    (:func:`canonical_set`). NaN when there are no samples.
    """
    gen = set(canonical_unique) - {None}
    if not gen:
        return math.nan
    return len(gen - set(train_set)) / len(gen)


def canonical_set(smiles: Sequence[str], n_jobs: int = 1, cache_dir: str | os.PathLike | None = None,
                  progress: bool = False) -> set[str]:
    """Set of RDKit canonical SMILES of ``smiles`` (invalid ones dropped), for novelty.

    The 1.6M MOSES training SMILES take minutes to canonicalize, so with ``cache_dir`` the
    result is kept as ``canonical-<sha256 of the list>.txt.gz`` and read back next time.
    """
    import gzip

    require_rdkit()
    smiles = list(smiles)
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"canonical-v{STATS_VERSION}-{_sha256_of(smiles)[:24]}.txt.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                return set(f.read().split("\n")) - {""}
    with _pool(n_jobs) as pool:
        canonical = _map(_canonicalize_quiet, smiles, pool, "canonical train", progress, 2048)
    result = set(canonical) - {None}
    if path is not None:
        _atomic_write(path, lambda f: f.write(gzip.compress("\n".join(sorted(result)).encode())))
    return result


def morgan_fingerprints(mols) -> np.ndarray:
    """Morgan fingerprints, radius 2, folded to 1024 bits (MOSES's SNN and IntDiv
    fingerprint): uint8 (N, 1024) of 0/1."""
    require_rdkit()
    if len(mols) == 0:
        return np.zeros((0, FP_BITS), np.uint8)
    return np.stack([_fingerprint(m) for m in mols])


def _fast_bf16(device: torch.device) -> bool:
    """True where a bfloat16 matmul is much faster than float32: CUDA, or a CPU with AMX or
    AVX512-BF16 (measured here: AMX bf16 at 770 GFLOP/s against 120 for float32)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    probes = (getattr(torch.cpu, "_is_amx_tile_supported", None),
              getattr(torch.cpu, "_is_avx512_bf16_supported", None))
    return any(probe is not None and probe() for probe in probes)


def _as_bits(fps) -> torch.Tensor:
    if torch.is_tensor(fps):
        t = fps.detach().to("cpu")
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(fps)))
    if t.ndim != 2:
        raise GenforgeError(f"fingerprints must be a matrix (N, bits), got shape {tuple(t.shape)}")
    return t.to(torch.uint8)


def _tanimoto_rows(a, b, reduce: str, p: float = 1.0, device=None, dtype=None,
                   block_a: int = 2048, block_b: int = 8192) -> np.ndarray:
    """Per row of ``a`` (Na, bits), the max (``reduce='max'``) or the mean of T**p
    (``reduce='mean'``) of its Tanimoto similarity T to every row of ``b`` (Nb, bits): (Na,).

    T(x, y) = |x & y| / (|x| + |y| - |x & y|), with the intersections of a whole block from
    one matmul of 0/1 matrices. In bfloat16 the 0/1 inputs are exact and the products
    accumulate in float32; the rounded output is exact for counts up to 256, so bfloat16 is
    used (where it is fast) only when no fingerprint has more than 256 bits set, and the
    result equals the float32 one. Blocks of (block_a, block_b) bound the memory to a few
    (block_a, block_b) float32 buffers whatever the set sizes. Two empty fingerprints have
    T = 1, as in MOSES (their 0/0 is set to 1).
    """
    a, b = _as_bits(a), _as_bits(b)
    if a.shape[1] != b.shape[1]:
        raise GenforgeError(f"fingerprint lengths differ: {a.shape[1]} vs {b.shape[1]}")
    if len(a) == 0 or len(b) == 0:
        raise GenforgeError("Tanimoto similarity needs non-empty fingerprint sets")
    device = torch.device(device or "cpu")
    na, nb = a.sum(1, dtype=torch.int32), b.sum(1, dtype=torch.int32)
    if dtype is None:
        fits = max(int(na.max()), int(nb.max())) <= 256
        dtype = torch.bfloat16 if fits and _fast_bf16(device) else torch.float32
    both_empty_possible = bool((na == 0).any()) and bool((nb == 0).any())
    a_dev = a.to(device=device, dtype=dtype)
    na_dev = na.to(device=device, dtype=torch.float32)
    acc = torch.zeros(len(a), dtype=torch.float64 if reduce == "mean" else torch.float32, device=device)
    buffers: dict[tuple[int, int], tuple] = {}  # reused: fresh 64 MB tensors cost page faults

    def block_buffers(rows, cols):
        if (rows, cols) not in buffers:
            inter = torch.empty(rows, cols, device=device)
            raw = inter if dtype == torch.float32 else torch.empty(rows, cols, dtype=dtype, device=device)
            buffers[(rows, cols)] = (raw, inter, torch.empty(rows, cols, device=device))
        return buffers[(rows, cols)]

    with torch.no_grad():
        for j in range(0, len(b), block_b):
            b_blk_t = b[j:j + block_b].to(device=device, dtype=dtype).T
            nb_blk = nb[j:j + block_b].to(device=device, dtype=torch.float32)
            for i in range(0, len(a), block_a):
                a_blk = a_dev[i:i + block_a]
                raw, inter, sim = block_buffers(len(a_blk), len(nb_blk))
                torch.mm(a_blk, b_blk_t, out=raw)  # (bi, bj) intersection counts
                if raw is not inter:
                    inter.copy_(raw)
                torch.add(na_dev[i:i + block_a, None], nb_blk[None, :], out=sim)
                sim.sub_(inter)  # union
                torch.div(inter, sim, out=sim)
                if both_empty_possible:
                    torch.nan_to_num_(sim, nan=1.0)
                if reduce == "max":
                    torch.maximum(acc[i:i + block_a], sim.amax(1), out=acc[i:i + block_a])
                else:
                    if p != 1:
                        sim.pow_(p)
                    acc[i:i + block_a] += sim.sum(1, dtype=torch.float64)
    if reduce == "mean":
        acc /= len(b)
    return acc.double().cpu().numpy()


def tanimoto_max_mean(gen_fps, ref_fps, device=None, dtype=None) -> float:
    """SNN: mean over generated molecules of the Tanimoto similarity to their nearest
    reference neighbour, on Morgan bit fingerprints (N, bits) and (M, bits) of 0/1.

    Computed blockwise by matmul (see ``_tanimoto_rows``): 30,000 x 176,000 molecules is
    about 5e9 pairs, under a minute on two CPU cores with AMX bfloat16.
    """
    return float(_tanimoto_rows(gen_fps, ref_fps, "max", device=device, dtype=dtype).mean())


def internal_diversity(fps, p: int = 1, device=None, dtype=None) -> float:
    """IntDiv_p: one minus the generalized mean similarity within a set (N, bits).

    As implemented by MOSES (the published IntDiv/IntDiv2 come from it), the average runs
    over all N^2 ordered pairs, *self-pairs included* (each contributes T = 1, which pulls
    IntDiv down by about 1/N), and the power mean is taken per molecule before averaging:
    ``1 - mean_i (mean_j T_ij^p)^(1/p)``. For p = 1 this is the paper's
    1 - (1/N^2) sum T_ij; for p = 2 it differs from the paper's
    1 - ((1/N^2) sum T_ij^2)^(1/2) by moving the square root inside the mean over i.
    A set of identical molecules has IntDiv 0.
    """
    rows = _tanimoto_rows(fps, fps, "mean", p=p, device=device, dtype=dtype)
    if p != 1:
        rows = rows ** (1.0 / p)
    return float(1.0 - rows.mean())


def cosine_similarity_counts(ref_counts: Counter, gen_counts: Counter) -> float:
    """Cosine similarity of two count vectors given as {key: count}, absent keys counting
    zero. NaN when either is empty (as in MOSES: e.g. Scaf of samples with no 2-ring
    scaffold)."""
    if not ref_counts or not gen_counts:
        return math.nan
    keys = set(ref_counts) | set(gen_counts)
    r = np.array([ref_counts.get(k, 0) for k in keys], dtype=np.float64)
    g = np.array([gen_counts.get(k, 0) for k in keys], dtype=np.float64)
    return float(r @ g / (np.linalg.norm(r) * np.linalg.norm(g)))


def fragment_counts(mols) -> Counter:
    """Occurrences of each BRICS fragment over ``mols`` (duplicated molecules count twice)."""
    require_rdkit()
    counts = Counter()
    for mol in mols:
        counts.update(_fragments(mol))
    return counts


def scaffold_counts(mols) -> Counter:
    """Occurrences of each Bemis-Murcko scaffold with 2 or more rings over ``mols``."""
    require_rdkit()
    counts = Counter(_scaffold(mol) for mol in mols)
    counts.pop(None, None)
    return counts


def fragment_similarity(gen_mols, ref_counts: Counter) -> float:
    """Frag: cosine similarity of BRICS fragment counts of the samples and the reference."""
    return cosine_similarity_counts(ref_counts, fragment_counts(gen_mols))


def scaffold_similarity(gen_mols, ref_counts: Counter) -> float:
    """Scaf: cosine similarity of 2+-ring Bemis-Murcko scaffold counts (see ``_scaffold``)."""
    return cosine_similarity_counts(ref_counts, scaffold_counts(gen_mols))


def filters_pass(mols) -> float:
    """Fraction of molecules that pass MOSES's filters, *minus its MCF list*.

    A molecule passes when it has no ring of 8 or more atoms, no charged atom, only the
    atoms C, N, S, O, F, Cl, Br, H, no PAINS match, and its SMILES round-trips. These are
    the rules the MOSES data set was built with. PAINS (Baell & Holloway 2010) is RDKit's
    FilterCatalog PAINS A+B+C (480 patterns), the same source (Saubern et al. 2011, as
    curated for RDKit) as MOSES's ``wehi_pains.csv``; MOSES matches its file on the
    molecule with explicit hydrogens, and on RDKit's 10,000 WEHI test molecules the
    catalog without added hydrogens flags exactly the same 840.

    MOSES's medicinal-chemistry filters (its ``mcf.csv`` SMARTS) are NOT included: that
    list is not shipped here. The value is therefore an upper bound of MOSES's Filters
    (a molecule failing only an MCF pattern passes here).
    """
    require_rdkit()
    if len(mols) == 0:
        return math.nan
    return float(np.mean([_passes_filters(m) for m in mols]))


def wasserstein(gen_values, ref_values) -> float:
    """Wasserstein-1 (earth mover's) distance between two 1-D samples, MOSES's property
    distance (its paper's first version used a Frechet distance instead)."""
    from scipy.stats import wasserstein_distance

    gen_values, ref_values = np.asarray(gen_values, float), np.asarray(ref_values, float)
    if gen_values.size == 0 or ref_values.size == 0:
        return math.nan
    return float(wasserstein_distance(ref_values, gen_values))


# --------------------------------------------------------------------------- FCD


@functools.lru_cache(maxsize=4)
def _chemnet(device: str):
    from fcd_torch import FCD

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FCD(device=device, n_jobs=1)


def _chemnet_moments(smiles: Sequence[str], device: str = "cpu", batch_size: int = 512,
                     loader_workers: int = 0) -> tuple[int, np.ndarray, np.ndarray]:
    """(count, mean (512,), centred scatter (512, 512)) of ChemNet activations of one chunk,
    in float64: the unit of work of :func:`fcd_stats`, in this process or a pool worker."""
    model = _chemnet(device)
    model.n_jobs, model.batch_size = loader_workers, batch_size
    with _quiet_rdkit(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fcd-torch's np.row_stack
        act = np.asarray(model.get_predictions(list(smiles)), dtype=np.float64)  # (chunk, 512)
    mean = act.mean(0)
    centred = act - mean
    return len(act), mean, centred.T @ centred


def _merge_moments(a, b):
    """Combine two (count, mean, scatter) triples exactly (Chan, Golub & LeVeque 1979)."""
    (na, ma, sa_), (nb, mb, sb) = a, b
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), sa_ + sb + np.outer(delta, delta) * (na * nb / n)


def fcd_stats(smiles: Sequence[str], n_jobs: int = 1, device: str = "cpu", batch_size: int = 512,
              progress: bool = False, pool=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean (512,) and covariance (512, 512) of ChemNet's penultimate activations over
    ``smiles`` (Preuer et al. 2018), through fcd-torch's port of ChemNet (as MOSES).

    Activations are reduced chunk by chunk to float64 means and centred scatter matrices,
    merged exactly, so memory stays at one chunk (all of 176,000 x 512 would be 360 MB) and
    the result equals ``np.cov`` of all activations. On the CPU with ``n_jobs`` > 1 the
    chunks go to ``n_jobs`` single-threaded processes (or ``pool``'s): ChemNet's LSTMs make
    88 small sequential steps per batch, and on a busy 2-core machine one thread ran them
    2.5x faster than two fighting over the cores. On CUDA the model runs here and
    ``n_jobs`` processes prepare its one-hot inputs (fcd-torch's DataLoader).
    """
    require_rdkit(fcd=True)
    smiles = list(smiles)
    if len(smiles) < 2:
        raise GenforgeError(f"FCD needs at least 2 valid molecules, got {len(smiles)}")
    device = str(device)
    parallel = device == "cpu" and (n_jobs > 1 or pool is not None)
    chunk = 1024 if parallel else 8192
    chunks = [smiles[i:i + chunk] for i in range(0, len(smiles), chunk)]
    bar = _progress(None, len(smiles), "ChemNet", progress)
    total = None
    with contextlib.ExitStack() as stack:
        if parallel:
            pool = pool or stack.enter_context(_pool(n_jobs))
            parts = pool.imap_unordered(functools.partial(_chemnet_moments, batch_size=batch_size), chunks)
        else:
            loader_workers = n_jobs if n_jobs > 1 else 0
            parts = (_chemnet_moments(c, device, batch_size, loader_workers) for c in chunks)
        for part in parts:
            total = part if total is None else _merge_moments(total, part)
            bar.update(part[0])
    bar.close()
    n, mean, scatter = total
    return mean, scatter / (n - 1)


def _frechet(mu1, sigma1, mu2, sigma2) -> float:
    """:func:`~genforge.metrics.frechet.frechet_from_stats` with BLAS held to one thread when
    threadpoolctl is there: ``scipy.linalg.sqrtm`` of 512 x 512 makes many small BLAS calls,
    and on a loaded 2-core machine two OpenBLAS threads took 16 s where one took 0.3 s."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        limit = contextlib.nullcontext()
    else:
        limit = threadpool_limits(1, user_api="blas")
    with limit:
        return frechet_from_stats(mu1, sigma1, mu2, sigma2)


def fcd(gen_smiles: Sequence[str], ref_stats, n_jobs: int = 1, device: str = "cpu",
        batch_size: int = 512, progress: bool = False) -> float:
    """Frechet ChemNet Distance (Preuer et al. 2018) of ``gen_smiles`` to a reference given
    as a :class:`ReferenceStats` or a ``(mu, sigma)`` pair; the Frechet distance itself is
    genforge's :func:`~genforge.metrics.frechet.frechet_from_stats`."""
    mu_ref, sigma_ref = ((ref_stats.fcd_mu, ref_stats.fcd_sigma)
                         if isinstance(ref_stats, ReferenceStats) else ref_stats)
    mu, sigma = fcd_stats(gen_smiles, n_jobs=n_jobs, device=device, batch_size=batch_size,
                          progress=progress)
    return _frechet(mu, sigma, mu_ref, sigma_ref)


# --------------------------------------------------------------------------- reference sets


@dataclass
class ReferenceStats:
    """Everything the metrics need of one reference set (e.g. MOSES test), computed once.

    ``fingerprints`` are packed bits, uint8 (N, 128) (:meth:`dense_fingerprints` gives the
    0/1 (N, 1024) matrix); ``properties`` maps logP/SA/QED/weight to float64 (N,) arrays;
    ``fragments`` and ``scaffolds`` count BRICS fragments and 2+-ring scaffolds. ``n`` is the
    number of valid reference molecules (``n_invalid`` were dropped).
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

    def dense_fingerprints(self) -> np.ndarray:
        return np.unpackbits(self.fingerprints, axis=1, count=FP_BITS)

    def save(self, cache_dir: str | os.PathLike) -> Path:
        """Write ``<stem>.npz`` (arrays) then ``<stem>.json`` (counts, metadata), each
        atomically (temporary file, then ``os.replace``); the JSON, written last, marks the
        entry complete."""
        stem = Path(cache_dir) / _stats_stem(self.sha256)
        arrays = {"fcd_mu": self.fcd_mu, "fcd_sigma": self.fcd_sigma,
                  "fingerprints": self.fingerprints,
                  **{f"prop_{k}": v for k, v in self.properties.items()}}
        _atomic_write(stem.with_suffix(".npz"), lambda f: np.savez(f, **arrays))
        meta = {"version": STATS_VERSION, "sha256": self.sha256, "n": self.n,
                "n_invalid": self.n_invalid, "fragments": dict(self.fragments),
                "scaffolds": dict(self.scaffolds)}
        _atomic_write(stem.with_suffix(".json"), lambda f: f.write(json.dumps(meta).encode()))
        return stem

    @classmethod
    def load(cls, cache_dir: str | os.PathLike, sha256: str) -> ReferenceStats | None:
        """The cached statistics of the SMILES list with this hash, or None if absent or
        from another version."""
        stem = Path(cache_dir) / _stats_stem(sha256)
        npz, meta_path = stem.with_suffix(".npz"), stem.with_suffix(".json")
        if not (npz.is_file() and meta_path.is_file()):
            return None
        meta = json.loads(meta_path.read_text())
        if meta.get("version") != STATS_VERSION or meta.get("sha256") != sha256:
            return None
        with np.load(npz) as z:
            props = {k: z[f"prop_{k}"] for k in PROPERTIES if f"prop_{k}" in z}
            return cls(sha256=sha256, n=int(meta["n"]), fcd_mu=z["fcd_mu"], fcd_sigma=z["fcd_sigma"],
                       fingerprints=z["fingerprints"], fragments=Counter(meta["fragments"]),
                       scaffolds=Counter(meta["scaffolds"]), properties=props,
                       n_invalid=int(meta.get("n_invalid", 0)))


def _sha256_of(smiles: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for s in smiles:
        digest.update(s.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _stats_stem(sha256: str) -> str:
    return f"moses-ref-v{STATS_VERSION}-{sha256[:24]}"


def _atomic_write(path: Path, write: Callable) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def reference_stats(smiles: Sequence[str], cache_dir: str | os.PathLike | None = None,
                    progress: bool = True, n_jobs: int = 2, device: str = "cpu",
                    batch_size: int = 512, timings: dict | None = None) -> ReferenceStats:
    """Statistics of a reference set (see :class:`ReferenceStats`), read from ``cache_dir``
    when this exact SMILES list (by sha256) was computed before, else computed and saved.

    Invalid reference SMILES are dropped with a warning (the MOSES sets have none). The
    molecules are the references as given (not re-canonicalized), as MOSES computes them;
    ``timings`` (if given) receives the seconds of the RDKit pass and of ChemNet.
    """
    require_rdkit(fcd=True)
    smiles = list(smiles)
    sha = _sha256_of(smiles)
    if cache_dir is not None:
        cached = ReferenceStats.load(cache_dir, sha)
        if cached is not None:
            return cached
    t = time.perf_counter()
    with _pool(n_jobs) as pool:
        records = _map(_describe_reference, smiles, pool, "reference molecules", progress)
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
    if len(valid) < len(smiles):
        warnings.warn(f"{len(smiles) - len(valid)} of {len(smiles)} reference SMILES are invalid "
                      "and were dropped", stacklevel=2)
    fragments, scaffolds = Counter(), Counter()
    for r in records:
        fragments.update(r[2])
        if r[3] is not None:
            scaffolds[r[3]] += 1
    props = {name: np.array([r[4][i] for r in records]) for i, name in enumerate(PROPERTIES)}
    fps = np.stack([r[1] for r in records])
    stats = ReferenceStats(sha256=sha, n=len(records), fcd_mu=mu, fcd_sigma=sigma, fingerprints=fps,
                           fragments=fragments, scaffolds=scaffolds, properties=props,
                           n_invalid=len(smiles) - len(valid))
    if cache_dir is not None:
        stats.save(cache_dir)
    return stats


# --------------------------------------------------------------------------- the MOSES table


def moses_metrics(samples: Sequence[str], train: Sequence[str] | set[str] | None,
                  test: ReferenceStats, test_scaffolds: ReferenceStats | None = None,
                  k: Sequence[int] = (1000, 10000), n_jobs: int = 2, progress: bool = True,
                  device: str = "cpu", batch_size: int = 512,
                  cache_dir: str | os.PathLike | None = None,
                  timings: dict | None = None) -> dict[str, float]:
    """The MOSES metric table of ``samples`` (Polykovskiy et al. 2020; README of molsets).

    Keys: ``valid``, ``unique@<k>`` per k, ``FCD/Test``, ``SNN/Test``, ``Frag/Test``,
    ``Scaf/Test`` (and ``/TestSF`` with ``test_scaffolds``), ``IntDiv``, ``IntDiv2``,
    ``Filters``, ``logP``, ``SA``, ``QED``, ``weight``, ``Novelty`` (with ``train``),
    ``samples`` (the number of samples given). As in MOSES:

    - ``valid`` is over all samples; everything else over the valid ones only, as RDKit
      canonical SMILES in sample order, duplicates kept (a model that repeats a molecule
      is scored on the repeats); the molecules are parsed back from those canonical SMILES.
    - ``unique@k`` looks at the first k valid samples (see :func:`fraction_unique` when
      there are fewer); ``Novelty`` at the distinct valid ones.
    - properties are Wasserstein-1 distances to the *test* set's values only.
    - ``Filters`` lacks MOSES's MCF patterns (see :func:`filters_pass`): an upper bound.
    - FCD and Scaf depend on how many samples are scored (finite-sample bias; MOSES asks
      for 30,000): 30,000 test molecules against the whole test set score FCD/Test 0.036
      and Scaf/Test 0.96 (``benchmarks/bench_moses_reference.py``), so compare runs only
      at equal sample counts.

    ``train`` is a list of training SMILES, canonicalized here (cached under ``cache_dir``,
    see :func:`canonical_set`), or a set taken as already canonical. RDKit work runs in
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
    out: dict[str, float] = {}

    def timed(name):
        return _Timer(timings, name)

    with _pool(n_jobs) as pool:
        with timed("rdkit_pass_s"):
            records = _map(_describe_sample, samples, pool, "sample molecules", progress)
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
        enough = len(canonical) >= 2
        if not enough:
            warnings.warn(f"only {len(canonical)} valid samples: the set metrics are NaN", stacklevel=2)

        with timed("fcd_s"):
            if enough:
                mu, sigma = fcd_stats(canonical, n_jobs=n_jobs, device=device, batch_size=batch_size,
                                      progress=progress, pool=pool)
            for name, ref in refs:
                out[f"FCD/{name}"] = (_frechet(mu, sigma, ref.fcd_mu, ref.fcd_sigma)
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
    out["samples"] = float(len(samples))
    return out


class _Timer:
    """``with _Timer(d, name):`` adds the block's wall seconds to ``d[name]``."""

    def __init__(self, timings: dict, name: str):
        self.timings, self.name = timings, name

    def __enter__(self):
        self.t = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.t
        return False
