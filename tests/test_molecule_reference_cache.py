"""Shipped reference statistics (metrics/molecules/shipped.py): the shipped path gives the
computed path's numbers exactly, is used only for the versions and checksum it was made
with, and the bundle in the package stays small and intact.

The bundle here is built by the test from a tiny reference and training set, then a fresh
cache scores the same samples through it; the computing functions are patched to fail, so
the shipped path provably computed no RDKit reference pass, ChemNet or canonicalization."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("rdkit")
pytest.importorskip("fcd_torch")

from genforge.metrics import molecules as M  # noqa: E402
from genforge.metrics.molecules import reference, shipped  # noqa: E402

REF = ["CC(=O)Oc1ccccc1C(=O)O", "CC(=O)Nc1ccc(O)cc1", "CC(C)Cc1ccc(cc1)C(C)C(=O)O", "Cn1cnc2c1c(=O)n(C)c(=O)n2C",
       "COc1ccc2cc(ccc2c1)C(C)C(=O)O", "OC(=O)Cc1ccccc1Nc1c(Cl)cccc1Cl", "CN1CCCC1c1cccnc1",
       "CNCCC(Oc1ccc(cc1)C(F)(F)F)c1ccccc1", "CNC1CCC(c2ccc(Cl)c(Cl)c2)c2ccccc12", "CC(C)NCC(O)COc1cccc2ccccc12",
       "CN1C(=O)CN=C(c2ccccc2)c2cc(Cl)ccc12", "NC(=O)N1c2ccccc2C=Cc2ccccc12", "CN1CCCC1c1cccnc1",  # a repeat
       "C1CC", "CCO"]  # one unparsable row (left out, counted), one tiny molecule
SCAFFOLD_REF = ["O=C1NC(=O)C(N1)(c1ccccc1)c1ccccc1", "CN(C)CCCN1c2ccccc2Sc2ccc(Cl)cc12",
                "OC1(CCN(CCCC(=O)c2ccc(F)cc2)CC1)c1ccc(Cl)cc1", "CC(CS)C(=O)N1CCCC1C(=O)O", "c1ccc2ccccc2c1"]
TRAIN = ["OCC", "C(O)C", "CCO", "c1ccccc1", "C1=CC=CC=C1", "CC(=O)Nc1ccc(O)cc1", "C1CC", "N[C@@H](C)C(=O)O"]
SAMPLES = [*REF[:6], "CCO", "c1ccccc1", "CCCCCCN", "C1CC", "", "CC(=O)Oc1ccccc1C(=O)O"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (isinstance(v, float) and math.isnan(v) and math.isnan(b[k])) or v == b[k] for k, v in a.items())


def _score(cache, train=TRAIN):
    test = M.reference_stats(REF, cache, progress=False, n_jobs=1)
    sf = M.reference_stats(SCAFFOLD_REF, cache, progress=False, n_jobs=1)
    out = M.moses_metrics(SAMPLES, train, test, sf, k=(5,), n_jobs=1, progress=False, cache_dir=cache)
    return out, test, sf


@pytest.fixture
def bundle(tmp_path, monkeypatch):
    """(computed metrics and stats, the folder of a bundle built from REF, SCAFFOLD_REF, TRAIN)."""
    monkeypatch.setenv("GENFORGE_SHIPPED_DIR", str(tmp_path / "nothing-shipped"))
    computed = _score(tmp_path / "computed")
    folder = tmp_path / "weights"
    reference.build_shipped({"test": REF, "test_scaffolds": SCAFFOLD_REF}, TRAIN, folder,
                            cache_dir=tmp_path / "build", n_jobs=1)
    monkeypatch.setenv("GENFORGE_SHIPPED_DIR", str(folder))
    return computed, folder


def test_shipped_path_gives_the_computed_numbers(bundle, tmp_path, monkeypatch):
    (want, test, sf), folder = bundle

    def forbidden(*a, **k):
        raise AssertionError("the shipped path recomputed what it ships")

    monkeypatch.setattr(reference, "describe_reference", forbidden)
    monkeypatch.setattr(reference, "fcd_stats", forbidden)
    monkeypatch.setattr(reference, "canonical_smiles", forbidden)
    got, test2, sf2 = _score(tmp_path / "fresh")
    assert _same(got, want), (got, want)
    assert "Novelty" in got and 0 < got["Novelty"] < 1
    for a, b in ((test, test2), (sf, sf2)):
        np.testing.assert_array_equal(a.fcd_mu, b.fcd_mu)
        np.testing.assert_array_equal(a.fcd_sigma, b.fcd_sigma)
        np.testing.assert_array_equal(a.fingerprints, b.fingerprints)
        assert a.fragments == b.fragments and a.scaffolds == b.scaffolds
        assert (a.n, a.n_invalid, a.sha256) == (b.n, b.n_invalid, b.sha256)
    for name in M.PROPERTIES:
        np.testing.assert_array_equal(np.sort(test.properties[name]), test2.properties[name])
    assert sf2.properties == {}  # shipped without them: the property distances read the test set only
    assert test2.n_invalid == 1
    # The completed statistics went to the cache: the next call reads them from there.
    assert M.ReferenceStats.load(tmp_path / "fresh", test2.sha256) is not None


def test_shipped_canonical_set_is_exact(bundle, monkeypatch, tmp_path):
    _, folder = bundle
    computed = M.canonical_set(TRAIN, shipped_dir=tmp_path / "empty")
    monkeypatch.setattr(reference, "map_molecules", lambda *a, **k: pytest.fail("canonicalized the training set"))
    assert M.canonical_set(TRAIN, shipped_dir=folder) == computed == {"CCO", "c1ccccc1", "CC(=O)Nc1ccc(O)cc1",
                                                                      "C[C@H](N)C(=O)O"}
    manifest = json.loads((folder / f"{shipped.BUNDLE}.json").read_text())
    assert manifest["train"]["changed"] == 5  # OCC, C(O)C, C1=CC=CC=C1, C1CC (unparsable), the alanine


def test_other_versions_are_not_used_and_say_so(bundle, tmp_path, capsys):
    (want, _, _), folder = bundle
    path = folder / f"{shipped.BUNDLE}.json"
    manifest = json.loads(path.read_text())
    manifest["versions"]["fcd_torch"] = "0.0.1"
    path.write_text(json.dumps(manifest))
    shipped._manifests.cache_clear()
    versions = M.library_versions()
    sha = M.smiles_sha256(REF)
    assert shipped.load_set(sha, versions, folder) is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fcd_torch 0.0.1" in err and "computing them once" in err
    got, _, _ = _score(tmp_path / "fresh")  # recomputed, same numbers
    assert _same(got, want)
    # Torch and numpy are recorded, not matched: the fields load under another torch.
    manifest["versions"]["fcd_torch"] = versions["fcd_torch"]
    path.write_text(json.dumps(manifest))
    shipped._manifests.cache_clear()
    assert shipped.load_set(sha, {**versions, "torch": "9.9"}, folder) is not None
    # The training set needs only RDKit's version.
    assert shipped.load_train_changes(M.smiles_sha256(TRAIN), {"rdkit": "1999.01"}, folder) is None
    assert "rdkit 1999.01" in capsys.readouterr().err


def test_a_different_valid_count_falls_back_to_computing(bundle, tmp_path, capsys):
    """Fingerprints are computed here; if this RDKit parses another number of reference
    molecules than the one that made the bundle, the shipped fields would not line up."""
    (want, _, _), folder = bundle
    path = folder / f"{shipped.BUNDLE}.json"
    manifest = json.loads(path.read_text())
    manifest["sets"][M.smiles_sha256(REF)]["n"] += 1
    path.write_text(json.dumps(manifest))
    shipped._manifests.cache_clear()
    got, test, _ = _score(tmp_path / "fresh")
    assert "this RDKit parses 14" in capsys.readouterr().err
    assert _same(got, want) and test.n == 14


def test_a_damaged_bundle_is_refused(bundle, capsys):
    _, folder = bundle
    npz = folder / f"{shipped.BUNDLE}.npz"
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    assert shipped.load_set(M.smiles_sha256(REF), M.library_versions(), folder) is None
    assert "fail their checksum" in capsys.readouterr().err


def test_packed_properties_and_covariance_round_trip_exactly():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    values = np.array([3.5, 1.25, 3.5, 0.1 + 0.2, -7.0, 1.25, -0.0, 0.0, -1e-300, 5e300])
    stats = M.ReferenceStats(sha256="x", n=10, fcd_mu=rng.normal(size=6), fcd_sigma=a @ a.T,
                             fingerprints=np.zeros((6, 128), np.uint8), fragments=M.fragment_counts([]),
                             scaffolds=M.scaffold_counts([]), properties={"QED": values})
    arrays = shipped.pack_set("t", stats)
    assert arrays["t/prop_QED_values"].shape == (8, 7)  # distinct values only (-0.0 == 0.0), byte planes
    back = shipped.unpack_set(arrays, "t", {"n": 10, "n_invalid": 0, "properties": ["QED"]})
    np.testing.assert_array_equal(back["fcd_sigma"], stats.fcd_sigma)
    np.testing.assert_array_equal(back["properties"]["QED"], np.sort(values))
    assert back["properties"]["QED"].tobytes() == np.repeat(*np.unique(values, return_counts=True)).tobytes()
    assert M.wasserstein([0.2, 4.0], back["properties"]["QED"]) == M.wasserstein([0.2, 4.0], values)


def test_the_shipped_moses_bundle_is_small_and_intact():
    """The bundle in the package: a few MB, its checksum right, keyed by versions, both MOSES
    reference sets and the training set present."""
    folder = Path(shipped.__file__).resolve().parents[2] / "weights"
    path = folder / f"{shipped.BUNDLE}.json"
    if not path.is_file():
        pytest.skip("no MOSES bundle shipped in this checkout")
    manifest = json.loads(path.read_text())
    npz = folder / manifest["file"]
    assert npz.stat().st_size == manifest["file_bytes"] < 6_000_000
    assert shipped._open_checked(npz, manifest) is not None
    assert set(shipped.KEYED_VERSIONS) <= set(manifest["versions"])
    assert sorted(e["label"] for e in manifest["sets"].values()) == ["test", "test_scaffolds"]
    assert manifest["train"]["n"] > 1_000_000
