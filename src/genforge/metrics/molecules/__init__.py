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
  string, or one over ``MAX_SMILES_LENGTH`` characters, is invalid). Every later metric
  sees only the valid samples, as their RDKit canonical SMILES, in sample order and *with*
  duplicates; only ``unique@k`` and ``Novelty`` deduplicate.
- ``unique@k``: distinct canonical SMILES among the first k valid samples.
- ``FCD``, ``SNN``, ``Frag``, ``Scaf`` against a reference set (``/Test``: MOSES test;
  ``/TestSF``: MOSES scaffold test), whose statistics are computed once
  (:func:`reference_stats`) and cached, keyed by the library versions.
- ``IntDiv``, ``IntDiv2``, ``Filters`` within the samples; ``logP``, ``SA``, ``QED``,
  ``weight``: Wasserstein-1 distance to the test set's values; ``Novelty``: fraction of
  the distinct valid samples absent from the training set.

One module per idea: :mod:`.chem` (RDKit access, parsing, canonical SMILES, the pool),
:mod:`.features` (fingerprints, fragments, scaffolds, filters, properties),
:mod:`.similarity` (Tanimoto and count cosines), :mod:`.fcd`, :mod:`.reference` (the
versioned caches) and :mod:`.table` (the MOSES table). This package re-exports their
public names. RDKit, fcd-torch and tqdm are imported inside the functions that need them,
so importing it never fails; :func:`require_rdkit` turns their absence into one line.
"""

from genforge.metrics.molecules.chem import (
    INSTALL_HINT,
    MAX_SMILES_LENGTH,
    canonical_smiles,
    canonicalize,
    map_molecules,
    mol_from_smiles,
    process_pool,
    quiet_rdkit,
    rdkit_version,
    require_rdkit,
    too_long,
)
from genforge.metrics.molecules.fcd import fcd, fcd_stats, frechet
from genforge.metrics.molecules.features import (
    ALLOWED_ATOMS,
    FP_BITS,
    FP_RADIUS,
    MAX_RING_SIZE,
    PROPERTIES,
    PROPERTY_FUNCTIONS,
    SCAFFOLD_MIN_RINGS,
    describe,
    filters_pass,
    fingerprint,
    fragment_counts,
    fragments,
    logp,
    morgan_fingerprints,
    qed,
    sa,
    scaffold,
    scaffold_counts,
    weight,
)
from genforge.metrics.molecules.reference import (
    STATS_VERSION,
    ReferenceStats,
    canonical_cache_name,
    canonical_set,
    library_versions,
    reference_stats,
    smiles_sha256,
)
from genforge.metrics.molecules.similarity import (
    cosine_similarity_counts,
    fragment_similarity,
    internal_diversity,
    scaffold_similarity,
    tanimoto_max_mean,
    tanimoto_rows,
    tanimoto_to,
)
from genforge.metrics.molecules.table import (
    fraction_unique,
    fraction_valid,
    moses_metrics,
    novelty,
    wasserstein,
)

# The private names rl/ imported before the split; kept until every caller uses the public ones.
_mol = mol_from_smiles
_quiet_rdkit = quiet_rdkit
_fingerprint = fingerprint

__all__ = [
    "ALLOWED_ATOMS", "FP_BITS", "FP_RADIUS", "INSTALL_HINT", "MAX_RING_SIZE", "MAX_SMILES_LENGTH",
    "PROPERTIES", "PROPERTY_FUNCTIONS", "SCAFFOLD_MIN_RINGS", "STATS_VERSION", "ReferenceStats",
    "canonical_cache_name", "canonical_set", "canonical_smiles", "canonicalize",
    "cosine_similarity_counts", "describe", "fcd", "fcd_stats", "filters_pass", "fingerprint",
    "fraction_unique", "fraction_valid", "fragment_counts", "fragment_similarity", "fragments",
    "frechet", "internal_diversity", "library_versions", "logp", "map_molecules",
    "mol_from_smiles", "morgan_fingerprints", "moses_metrics", "novelty", "process_pool", "qed",
    "quiet_rdkit", "rdkit_version", "reference_stats", "require_rdkit", "sa", "scaffold", "scaffold_counts",
    "scaffold_similarity", "smiles_sha256", "tanimoto_max_mean", "tanimoto_rows", "tanimoto_to", "too_long",
    "weight", "wasserstein",
]
