"""What the MOSES metrics read off one molecule: Morgan fingerprint, BRICS fragments,
Bemis-Murcko scaffold, MOSES's filters and the four properties, plus :func:`describe`,
which computes all of them in one parse (the process pool's unit of work).

Definitions follow MOSES (Polykovskiy et al. 2020) as implemented in ``molsets``; each
function names where that matters.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections import Counter

import numpy as np

from genforge.metrics.molecules.chem import mol_from_smiles, require_rdkit

FP_RADIUS = 2  # Morgan radius 2 folded to 1024 bits, MOSES's fingerprint (ECFP4-like)
FP_BITS = 1024
PROPERTIES = ("logP", "SA", "QED", "weight")
ALLOWED_ATOMS = frozenset({"C", "N", "S", "O", "F", "Cl", "Br", "H"})
MAX_RING_SIZE = 7  # MOSES rejects any ring of 8 or more atoms
SCAFFOLD_MIN_RINGS = 2  # MOSES's Scaf counts only scaffolds with at least 2 rings


@functools.lru_cache(maxsize=1)
def _morgan_generator():
    from rdkit.Chem import rdFingerprintGenerator

    # Same bits as the legacy GetMorganFingerprintAsBitVect(mol, 2, nBits=1024) MOSES calls.
    return rdFingerprintGenerator.GetMorganGenerator(radius=FP_RADIUS, fpSize=FP_BITS)


def fingerprint(mol) -> np.ndarray:
    """Morgan bits of one molecule: uint8 (1024,) of 0/1."""
    return _morgan_generator().GetFingerprintAsNumPy(mol).astype(np.uint8, copy=False)


def morgan_fingerprints(mols) -> np.ndarray:
    """Morgan fingerprints, radius 2, folded to 1024 bits (MOSES's SNN and IntDiv
    fingerprint): uint8 (N, 1024) of 0/1."""
    require_rdkit()
    if len(mols) == 0:
        return np.zeros((0, FP_BITS), np.uint8)
    return np.stack([fingerprint(m) for m in mols])


def fragments(mol) -> list[str]:
    """SMILES of the pieces left after cutting every BRICS bond (Degen et al. 2008), with
    the attachment points as labelled dummy atoms (``[3*]``), as MOSES's Frag counts them."""
    from rdkit import Chem

    return Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(mol)).split(".")


def scaffold(mol, min_rings: int = SCAFFOLD_MIN_RINGS) -> str | None:
    """Canonical SMILES of the Bemis-Murcko scaffold (Bemis & Murcko 1996), or None when it
    is empty (acyclic molecule) or has fewer than ``min_rings`` rings: MOSES's Scaf counts
    only scaffolds of two or more rings (``compute_scaffolds(..., min_rings=2)`` in molsets),
    so a set of single-benzene molecules has no scaffolds at all."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    try:
        found = MurckoScaffold.GetScaffoldForMol(mol)
    except (ValueError, RuntimeError):
        return None
    smiles = Chem.MolToSmiles(found)
    if not smiles or found.GetRingInfo().NumRings() < min_rings:
        return None
    return smiles


def fragment_counts(mols) -> Counter:
    """Occurrences of each BRICS fragment over ``mols`` (duplicated molecules count twice)."""
    require_rdkit()
    counts = Counter()
    for mol in mols:
        counts.update(fragments(mol))
    return counts


def scaffold_counts(mols) -> Counter:
    """Occurrences of each Bemis-Murcko scaffold with 2 or more rings over ``mols``."""
    require_rdkit()
    counts = Counter(scaffold(mol) for mol in mols)
    counts.pop(None, None)
    return counts


@functools.lru_cache(maxsize=1)
def _pains_catalog():
    from rdkit.Chem import FilterCatalog

    params = FilterCatalog.FilterCatalogParams()
    params.AddCatalog(FilterCatalog.FilterCatalogParams.FilterCatalogs.PAINS)  # A + B + C, 480
    return FilterCatalog.FilterCatalog(params)


def passes_filters(mol) -> bool:
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
        return float("nan")
    return float(np.mean([passes_filters(m) for m in mols]))


# --------------------------------------------------------------------------- properties


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


# --------------------------------------------------------------------------- one parse, everything


def describe(smiles: str, reparse: bool, filters: bool):
    """Everything the metrics need from one SMILES, in one parse (the pool's unit of work).

    Returns None for an invalid SMILES, else ``(canonical, packed fingerprint (128,) uint8,
    fragments, scaffold or None, (logP, SA, QED, weight), passes filters or None, seconds
    per part)``. With ``reparse`` the features come from the canonical SMILES parsed again,
    as MOSES computes them (it canonicalizes the samples first, then parses those).
    """
    from rdkit import Chem

    seconds = {}
    t = time.perf_counter()
    mol = mol_from_smiles(smiles)
    if mol is None:
        return None
    canonical = Chem.MolToSmiles(mol)
    if reparse:
        mol = mol_from_smiles(canonical) or mol
    t0 = time.perf_counter()
    seconds["parse"] = t0 - t
    fp = np.packbits(fingerprint(mol))
    t1 = time.perf_counter()
    seconds["fingerprints"] = t1 - t0
    frags = fragments(mol)
    t2 = time.perf_counter()
    seconds["fragments"] = t2 - t1
    scaf = scaffold(mol)
    t3 = time.perf_counter()
    seconds["scaffolds"] = t3 - t2
    props = tuple(PROPERTY_FUNCTIONS[name](mol) for name in PROPERTIES)
    t4 = time.perf_counter()
    seconds["properties"] = t4 - t3
    passes = None
    if filters:
        passes = passes_filters(mol)
        seconds["filters"] = time.perf_counter() - t4
    return canonical, fp, frags, scaf, props, passes, seconds


def describe_sample(smiles):
    return describe(smiles, reparse=True, filters=True)


def describe_reference(smiles):
    return describe(smiles, reparse=False, filters=False)
