"""MOSES molecule metrics (genforge.metrics.molecules) on hand-checked cases.

Reference values come from outside genforge: RDKit's own Tanimoto and QED, published
QED values, and identities that hold by definition (a set against itself).
"""

import gzip
import math
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")

from rdkit import Chem, DataStructs  # noqa: E402
from rdkit.Chem import rdFingerprintGenerator  # noqa: E402

from genforge import GenforgeError  # noqa: E402
from genforge.metrics import molecules as M  # noqa: E402
from genforge.metrics.molecules import reference  # noqa: E402

# 52 marketed drugs, written by hand (structures as commonly drawn; exact stereo not needed).
DRUGS = [
    "CC(=O)Oc1ccccc1C(=O)O",  # aspirin
    "CC(=O)Nc1ccc(O)cc1",  # paracetamol
    "CC(C)Cc1ccc(cc1)C(C)C(=O)O",  # ibuprofen
    "Cn1cnc2c1c(=O)n(C)c(=O)n2C",  # caffeine
    "COc1ccc2cc(ccc2c1)C(C)C(=O)O",  # naproxen
    "OC(=O)Cc1ccccc1Nc1c(Cl)cccc1Cl",  # diclofenac
    "CN1CCCC1c1cccnc1",  # nicotine
    "CN(C)C(=N)N=C(N)N",  # metformin
    "CCN(CC)CC(=O)Nc1c(C)cccc1C",  # lidocaine
    "CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc12",  # diazepam
    "CNCCC(Oc1ccc(cc1)C(F)(F)F)c1ccccc1",  # fluoxetine
    "CNC1CCC(c2ccc(Cl)c(Cl)c2)c2ccccc12",  # sertraline
    "CC(C)NCC(O)COc1cccc2ccccc12",  # propranolol
    "CC(C)NCC(O)COc1ccc(CC(N)=O)cc1",  # atenolol
    "CC(C)(C)NCC(O)c1ccc(O)c(CO)c1",  # salbutamol
    "CC(=O)CC(c1ccccc1)c1c(O)c2ccccc2oc1=O",  # warfarin
    "COc1ccc2[nH]c(nc2c1)S(=O)Cc1ncc(C)c(OC)c1C",  # omeprazole
    "OC(=O)c1cn(C2CC2)c2cc(N3CCNCC3)c(F)cc2c1=O",  # ciprofloxacin
    "CCCc1nn(C)c2c1nc([nH]c2=O)-c1cc(ccc1OCC)S(=O)(=O)N1CCN(C)CC1",  # sildenafil
    "Cc1ccc(NC(=O)c2ccc(CN3CCN(C)CC3)cc2)cc1Nc1nccc(n1)-c1cccnc1",  # imatinib
    "CCOC(=O)N1CCC(=C2c3ccc(Cl)cc3CCc3cccnc23)CC1",  # loratadine
    "OC(=O)COCCN1CCN(CC1)C(c1ccccc1)c1ccc(Cl)cc1",  # cetirizine
    "OC1(CCN(CCCC(=O)c2ccc(F)cc2)CC1)c1ccc(Cl)cc1",  # haloperidol
    "CN(C)CCCN1c2ccccc2Sc2ccc(Cl)cc12",  # chlorpromazine
    "NC(=O)N1c2ccccc2C=Cc2ccccc12",  # carbamazepine
    "O=C1NC(=O)C(N1)(c1ccccc1)c1ccccc1",  # phenytoin
    "Cn1c2nc[nH]c2c(=O)n(C)c1=O",  # theophylline
    "CC(=O)Nc1nnc(s1)S(N)(=O)=O",  # acetazolamide
    "NS(=O)(=O)c1cc(C(=O)O)c(NCc2ccco2)cc1Cl",  # furosemide
    "NS(=O)(=O)c1cc2c(cc1Cl)NCNS2(=O)=O",  # hydrochlorothiazide
    "CC(CS)C(=O)N1CCCC1C(=O)O",  # captopril
    "CCOC(=O)C(CCc1ccccc1)NC(C)C(=O)N1CCCC1C(=O)O",  # enalapril
    "CCCCc1nc(Cl)c(CO)n1Cc1ccc(cc1)-c1ccccc1-c1nn[nH]n1",  # losartan
    "CCOC(=O)C1=C(COCCN)NC(C)=C(C1c1ccccc1Cl)C(=O)OC",  # amlodipine
    "COC(=O)C1=C(C)NC(C)=C(C1c1ccccc1[N+](=O)[O-])C(=O)OC",  # nifedipine
    "COc1ccc(CCN(C)CCCC(C#N)(C(C)C)c2ccc(OC)c(OC)c2)cc1OC",  # verapamil
    "COCCc1ccc(OCC(O)CNC(C)C)cc1",  # metoprolol
    "Cc1ccc(cc1)-c1cc(nn1-c1ccc(cc1)S(N)(=O)=O)C(F)(F)F",  # celecoxib
    "COc1ccc2n(C(=O)c3ccc(Cl)cc3)c(C)c(CC(=O)O)c2c1",  # indomethacin
    "CC(C(=O)O)c1cccc(c1)C(=O)c1ccccc1",  # ketoprofen
    "CCC(=C(c1ccccc1)c1ccc(OCCN(C)C)cc1)c1ccccc1",  # tamoxifen
    "Cc1ccc(cc1)-c1nc2ccc(C)cn2c1CC(=O)N(C)C",  # zolpidem
    "O=C1CC2(CCCC2)CC(=O)N1CCCCN1CCN(CC1)c1ncccn1",  # buspirone
    "COC(=O)C(c1ccccc1Cl)N1CCc2sccc2C1",  # clopidogrel
    "COc1ccc(cc1)C(CN(C)C)C1(O)CCCCC1",  # venlafaxine
    "CN1CCN2C(C1)c1ccccc1Cc1cccnc21",  # mirtazapine
    "Cc1nc2n(c(=O)c1CCN1CCC(CC1)c1noc3cc(F)ccc13)CCCC2",  # risperidone
    "OCCOCCN1CCN(CC1)C1=Nc2ccccc2Sc2ccccc12",  # quetiapine
    "CCOC(=O)c1ccc(N)cc1",  # benzocaine
    "CCN(CC)CCOC(=O)c1ccc(N)cc1",  # procaine
    "COc1cc(Cc2cnc(N)nc2N)cc(OC)c1OC",  # trimethoprim
    "Cc1cc(NS(=O)(=O)c2ccc(N)cc2)no1",  # sulfamethoxazole
]


def mols(smiles):
    return [Chem.MolFromSmiles(s) for s in smiles]


def rdkit_tanimoto_matrix(smiles):
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=1024)
    fps = [gen.GetFingerprint(m) for m in mols(smiles)]
    return np.array([DataStructs.BulkTanimotoSimilarity(fp, fps) for fp in fps])


# --------------------------------------------------------------------------- validity, uniqueness, novelty


def test_valid_and_invalid_smiles():
    assert M.canonicalize("c1ccccc1") == "c1ccccc1"
    assert M.canonicalize("OCC") == "CCO"
    assert M.canonicalize("C1CC") is None  # ring 1 never closed
    assert M.canonicalize("C(C)(C)(C)(C)C") is None  # pentavalent carbon
    assert M.canonicalize("") is None  # RDKit parses it to an empty molecule; MOSES calls it invalid
    assert M.fraction_valid(["c1ccccc1", "C1CC", "CCO", ""]) == 0.5
    assert all(M.canonicalize(s) is not None for s in DRUGS)


def test_fraction_unique_over_the_first_k_valid():
    canonical = ["CCO", "CCO", "c1ccccc1", "CCN"]
    assert M.fraction_unique(canonical) == pytest.approx(3 / 4)
    assert M.fraction_unique(canonical, k=2) == pytest.approx(1 / 2)
    assert M.fraction_unique(canonical, k=10) == pytest.approx(3 / 4)  # over the 4 there are
    with pytest.raises(GenforgeError, match="invalid"):
        M.fraction_unique(["CCO", None])
    assert math.isnan(M.fraction_unique([]))


def test_novelty_counts_distinct_samples():
    assert M.novelty(["CCO", "CCO", "CCN", "c1ccccc1"], {"CCO", "CCCC"}) == pytest.approx(2 / 3)
    assert M.novelty({"CCO"}, {"CCO"}) == 0.0
    assert math.isnan(M.novelty([], {"CCO"}))


def test_canonical_set_is_cached_per_rdkit_version(tmp_path, monkeypatch):
    first = M.canonical_set(["OCC", "C1CC", "c1ccccc1"], cache_dir=tmp_path)
    assert first == {"CCO", "c1ccccc1"}
    assert len(list(tmp_path.glob("canonical-*.txt.gz"))) == 1
    assert M.canonical_set(["OCC", "C1CC", "c1ccccc1"], cache_dir=tmp_path) == first
    # Another RDKit may write other canonical strings: its entry is a miss, computed anew.
    (cached,) = tmp_path.glob("canonical-*.txt.gz")
    cached.write_bytes(gzip.compress(b"stale"))
    assert M.canonical_set(["OCC", "C1CC", "c1ccccc1"], cache_dir=tmp_path) == {"stale"}  # read back
    monkeypatch.setattr(reference, "library_versions", lambda fcd=True: {"rdkit": "1999.01"})
    assert M.canonical_set(["OCC", "C1CC", "c1ccccc1"], cache_dir=tmp_path) == first
    assert len(list(tmp_path.glob("canonical-*.txt.gz"))) == 2


def test_reference_stats_are_cached_per_library_versions(tmp_path, monkeypatch):
    versions = {"rdkit": "2026.09.1", "fcd_torch": "1.0.7", "torch": "2.0", "numpy": "2.0"}
    stats = M.ReferenceStats(sha256="ab" * 32, n=2, fcd_mu=np.zeros(3), fcd_sigma=np.eye(3),
                             fingerprints=np.zeros((2, 128), np.uint8), fragments=Counter(a=1),
                             scaffolds=Counter(), properties={"QED": np.array([0.1, 0.2])}, versions=versions)
    stats.save(tmp_path)
    again = M.ReferenceStats.load(tmp_path, stats.sha256, versions)
    assert again is not None and again.versions == versions and again.fragments == Counter(a=1)
    for lib in versions:
        assert M.ReferenceStats.load(tmp_path, stats.sha256, {**versions, lib: "other"}) is None, lib
    assert set(M.library_versions()) == {"rdkit", "fcd_torch", "torch", "numpy"}
    assert set(M.library_versions(fcd=False)) == {"rdkit"}


def test_overlong_smiles_are_invalid_without_parsing():
    long_chain = "C" * (M.MAX_SMILES_LENGTH + 1)
    assert M.canonicalize("C" * M.MAX_SMILES_LENGTH) is not None
    assert M.canonicalize(long_chain) is None and M.mol_from_smiles(long_chain) is None
    assert M.describe("C" * 10000, reparse=True, filters=True) is None  # its scaffold search took minutes
    assert M.fraction_valid(["CCO", "C" * 10000]) == 0.5
    assert M.canonical_smiles("C(O)C") == M.canonical_smiles("OCC") == "CCO"
    assert M.canonical_smiles("C1CC") is None


# --------------------------------------------------------------------------- Tanimoto, SNN, IntDiv


@pytest.mark.parametrize("dtype", [None, torch.float32])
def test_chunked_tanimoto_matches_rdkit(dtype):
    fps = M.morgan_fingerprints(mols(DRUGS))
    assert fps.shape == (len(DRUGS), 1024) and fps.dtype == np.uint8
    sim = rdkit_tanimoto_matrix(DRUGS)
    gen, ref = slice(0, 20), slice(20, None)
    # Tiny blocks so that several blocks and ragged edges are exercised.
    rows = M.tanimoto_rows(fps[gen], fps[ref], "max", dtype=dtype, block_a=7, block_b=9)
    np.testing.assert_allclose(rows, sim[gen, ref].max(1), atol=1e-6)
    assert M.tanimoto_max_mean(fps[gen], fps[ref], dtype=dtype) == pytest.approx(sim[gen, ref].max(1).mean(),
                                                                                 abs=1e-6)
    assert M.tanimoto_max_mean(fps, fps, dtype=dtype) == pytest.approx(1.0)


def test_one_target_tanimoto_is_the_same_tanimoto():
    """The RL tanimoto reward and SNN share one Tanimoto (tanimoto_rows)."""
    fps = M.morgan_fingerprints(mols(DRUGS))
    np.testing.assert_allclose(M.tanimoto_to(fps, fps[0]), rdkit_tanimoto_matrix(DRUGS)[0], atol=1e-6)
    assert M.tanimoto_to(np.zeros((0, 1024), np.uint8), fps[0]).shape == (0,)


def test_two_empty_fingerprints_are_identical():
    empty, one = np.zeros((1, 1024), np.uint8), np.eye(1, 1024, dtype=np.uint8)
    assert M.tanimoto_max_mean(empty, empty) == 1.0  # MOSES sets 0/0 to 1
    assert M.tanimoto_max_mean(empty, one) == 0.0


def test_internal_diversity_includes_self_pairs():
    fps = M.morgan_fingerprints(mols(DRUGS))
    sim = rdkit_tanimoto_matrix(DRUGS)
    assert M.internal_diversity(fps) == pytest.approx(1 - sim.mean(), abs=1e-6)
    assert M.internal_diversity(fps, p=2) == pytest.approx(1 - np.sqrt((sim**2).mean(1)).mean(), abs=1e-6)
    same = M.morgan_fingerprints(mols(["CC(=O)Oc1ccccc1C(=O)O"] * 5))
    assert M.internal_diversity(same) == pytest.approx(0.0, abs=1e-7)
    assert M.internal_diversity(same, p=2) == pytest.approx(0.0, abs=1e-7)


# --------------------------------------------------------------------------- fragments, scaffolds, filters


def test_scaffolds_need_two_rings_and_fragments_are_brics():
    assert M.scaffold(Chem.MolFromSmiles("CCO")) is None  # no ring: empty scaffold
    assert M.scaffold(Chem.MolFromSmiles("Cc1ccccc1")) is None  # one ring: not counted by MOSES
    assert M.scaffold(Chem.MolFromSmiles("CCc1ccc2ccccc2c1")) == "c1ccc2ccccc2c1"
    assert M.scaffold_counts(mols(["Cc1ccccc1", "CCO"])) == Counter()
    assert math.isnan(M.scaffold_similarity(mols(["Cc1ccccc1"]), Counter({"c1ccc2ccccc2c1": 1})))
    # Aspirin: the ester's two BRICS bonds and the acid's bond to the ring are cut.
    assert sorted(M.fragments(Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O"))) == sorted(
        ["[1*]C(C)=O", "[16*]c1ccccc1[16*]", "[3*]O[3*]", "[6*]C(=O)O"])
    drugs = mols(DRUGS)
    assert M.fragment_similarity(drugs, M.fragment_counts(drugs)) == pytest.approx(1.0)
    assert M.scaffold_similarity(drugs, M.scaffold_counts(drugs)) == pytest.approx(1.0)


def test_cosine_of_counts():
    assert M.cosine_similarity_counts(Counter(a=1), Counter(b=1)) == 0.0
    assert M.cosine_similarity_counts(Counter(a=1, b=1), Counter(a=2)) == pytest.approx(1 / math.sqrt(2))


def test_filters():
    passing = ["CC(=O)Oc1ccccc1C(=O)O", "C1CCCCCC1"]
    failing = ["C[N+](C)(C)C",  # charge
               "CCI",  # iodine is not an allowed atom
               "C1CCCCCCC1",  # 8-membered ring
               "S=C1SC(=Cc2ccccc2)C(=O)N1"]  # benzylidene rhodanine, PAINS ene_rhod
    assert M.filters_pass(mols(passing)) == 1.0
    assert M.filters_pass(mols(failing)) == 0.0


# --------------------------------------------------------------------------- properties


def test_qed_matches_published_values():
    # Bickerton et al. 2012 examples as listed, with Biscu-it reference values, in the
    # docstring of rdkit.Chem.QED.qed: famotidine 0.253..., cimetidine 0.234..., tegaserod 0.234...
    assert M.qed(Chem.MolFromSmiles("N=C(CCSCc1csc(N=C(N)N)n1)NS(N)(=O)=O")) == pytest.approx(0.2535, abs=6e-4)
    assert M.qed(Chem.MolFromSmiles("CNC(=NCCSCc1nc[nH]c1C)NC#N")) == pytest.approx(0.2345, abs=6e-4)
    assert M.qed(Chem.MolFromSmiles("CCCCCNC(=N)NN=Cc1c[nH]c2ccc(CO)cc12")) == pytest.approx(0.2345, abs=6e-4)
    # Aspirin: QED about 0.55 (e.g. the insilicolab ADMET tutorial's aspirin example).
    assert M.qed(Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O")) == pytest.approx(0.55, abs=0.01)


def test_other_properties_and_wasserstein():
    aspirin = Chem.MolFromSmiles("CC(=O)Oc1ccccc1C(=O)O")
    assert M.weight(aspirin) == pytest.approx(180.16, abs=0.01)  # C9H8O4
    assert 1.0 < M.sa(aspirin) < 2.5  # a simple, easily made molecule
    assert M.logp(aspirin) == pytest.approx(1.31, abs=0.01)  # Crippen logP as RDKit computes it
    assert M.wasserstein([0.0, 1.0], [1.0, 2.0]) == pytest.approx(1.0)


# --------------------------------------------------------------------------- FCD, reference stats, the table


def test_a_set_against_itself(tmp_path, recwarn):
    """FCD ~ 0, SNN = Frag = Scaf = 1, property distances 0, through the cache and a pool."""
    pytest.importorskip("fcd_torch")
    timings = {}
    stats = M.reference_stats(DRUGS, cache_dir=tmp_path, progress=False, n_jobs=1, timings=timings)
    assert stats.n == len(DRUGS) and stats.fingerprints.shape == (len(DRUGS), 128)
    assert {"reference_rdkit_s", "reference_chemnet_s"} <= set(timings)
    again = M.reference_stats(DRUGS, cache_dir=tmp_path, progress=False)  # from the cache
    np.testing.assert_array_equal(again.fcd_sigma, stats.fcd_sigma)
    np.testing.assert_array_equal(again.fingerprints, stats.fingerprints)
    assert again.fragments == stats.fragments and again.scaffolds == stats.scaffolds
    assert M.fcd(DRUGS[:8], (stats.fcd_mu, stats.fcd_sigma)) > 1.0  # a subset is farther away

    samples = [*DRUGS, "C1CC", "", "C" * 10000]
    out = M.moses_metrics(samples, train=DRUGS[:10], test=stats, test_scaffolds=stats,
                          k=(10, 1000), n_jobs=2, progress=False, cache_dir=tmp_path)
    # What the numbers do not say goes into one note line, not Python warnings with source paths.
    assert not [w for w in recwarn if "genforge" in w.filename], [str(w.message) for w in recwarn]
    assert "unique@1000 is over all 52 valid samples" in out["note"]
    assert "1 samples longer than 500 characters" in out["note"] and "\n" not in out["note"]
    assert out["samples"] == len(samples)
    assert out["valid"] == pytest.approx(len(DRUGS) / len(samples))
    assert out["unique@10"] == 1.0
    for ref in ("Test", "TestSF"):
        assert out[f"FCD/{ref}"] == pytest.approx(0.0, abs=1e-3)
        assert out[f"SNN/{ref}"] == pytest.approx(1.0)
        assert out[f"Frag/{ref}"] == pytest.approx(1.0)
        assert out[f"Scaf/{ref}"] == pytest.approx(1.0)
    for name in M.PROPERTIES:
        assert out[name] == pytest.approx(0.0, abs=1e-9)
    assert out["Novelty"] == pytest.approx(1 - 10 / len(DRUGS))
    assert out["Filters"] == pytest.approx(1 - 1 / len(DRUGS))  # nifedipine's nitro group is charged
    assert 0.8 < out["IntDiv"] < 1.0


# --------------------------------------------------------------------------- without RDKit


def test_missing_rdkit_gives_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "fcd_torch", None)  # `import fcd_torch` now raises ImportError
    M.require_rdkit()  # RDKit alone is enough for the RDKit metrics
    with pytest.raises(GenforgeError, match=r"needs fcd-torch, which is not installed: pip install 'genforge\[molecules\]'"):
        M.require_rdkit(fcd=True)
    monkeypatch.setitem(sys.modules, "rdkit", None)
    with pytest.raises(GenforgeError, match=r"needs RDKit, which is not installed: pip install") as info:
        M.fraction_valid(["CCO"])
    assert "\n" not in str(info.value)
    with pytest.raises(GenforgeError, match="RDKit"):
        M.reference_stats(["CCO", "CCN"], progress=False)


def test_the_package_imports_without_rdkit():
    code = ("import sys; sys.modules['rdkit'] = None; sys.modules['fcd_torch'] = None\n"
            "import genforge.metrics.molecules as M\n"
            "from genforge import GenforgeError\n"
            "try:\n    M.canonical_smiles('CCO')\nexcept GenforgeError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "this needs RDKit, which is not installed: pip install 'genforge[molecules]'"
