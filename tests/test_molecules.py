"""SMILES as a modality: tokenizer, files, packed sequences, the CLI from train to metrics."""

from __future__ import annotations

import gzip
import sys

import pytest
import torch

from genforge import GenforgeError
from genforge.cli import main
from genforge.config import DataConfig, load_config
from genforge.data import modality_of
from genforge.data.sequences import SequenceSplit
from genforge.data.smiles import (
    SmilesTokenizer,
    clean_smiles,
    load_molecules,
    moses_file,
    read_smiles_file,
    tokenize,
)
from genforge.data.tokenizers import load_tokenizer

TRICKY = [
    "C[C@@H](N)C(=O)O",           # stereo centre in a bracket atom
    "F/C=C/F", "F/C=C\\Cl",        # double-bond stereo with both slashes
    "[NH4+].[Cl-]",                # charges, two fragments
    "[13CH3]C(=O)[O-]",            # isotope and a negative charge
    "[2H]C([2H])([2H])Br",         # deuterium, Br
    "c1ccc2[nH]ccc2c1",            # aromatic atoms, [nH]
    "C%10CCCCC%10", "C1CC%12CCC1CCCC%12",  # two-digit ring closures
    "ClC(Cl)(Cl)Cl", "O=S(=O)(O)O", "C#N", "[Se]", "c1ccsc1", "[Fe+2]",
]

# Forty-odd real drug-like molecules (MOSES-style), enough to train a tiny model for seconds.
MOLECULES = """CC(=O)Oc1ccccc1C(=O)O
CC(C)Cc1ccc(C(C)C(=O)O)cc1
CN1C=NC2=C1C(=O)N(C)C(=O)N2C
CC(=O)Nc1ccc(O)cc1
COc1ccc2[nH]cc(CCN(C)C)c2c1
CCN(CC)CC(=O)Nc1c(C)cccc1C
Cc1ccccc1NC(=O)C(C)NCCC
CC1=C(C(=O)OCC)C(c2ccccc2Cl)NC(C)=C1C(=O)OC
O=C(O)c1ccccc1O
CCOC(=O)c1ccc(N)cc1
Nc1ccc(S(N)(=O)=O)cc1
CC(C)NCC(O)COc1cccc2ccccc12
COc1cc(C=O)ccc1O
Cc1cc(C)nc(NS(=O)(=O)c2ccc(N)cc2)n1
CC(N)Cc1ccccc1
OC(c1ccccc1)c1ccccc1
CCCCc1ccc(C(=O)O)cc1
Clc1ccc(cc1)C(c1ccccc1)N1CCNCC1
CN(C)CCCN1c2ccccc2CCc2ccccc21
O=C1CCCN1
CC(C)(C)c1ccc(O)cc1
c1ccc2c(c1)ccc1ccccc12
CCOc1ccc(NC(C)=O)cc1
CC(=O)c1ccc(O)cc1
COC(=O)c1ccccc1O
Cc1ccc(S(=O)(=O)N)cc1
NC(=O)c1cccnc1
Oc1ccc(Cl)cc1Cl
CC1CCCCC1N
OCCN1CCOCC1
CCN1CCN(c2ccccc2)CC1
COc1ccccc1N
Cc1ncc(CO)c(CO)c1O
CC(O)C(=O)O
O=C(Nc1ccccc1)c1ccccc1
CCCCCCCC(=O)O
Brc1ccc(cc1)C#N
CS(=O)(=O)c1ccc(C)cc1
FC(F)(F)c1ccc(O)cc1
c1ccc(cc1)-c1ccncc1
"""


def write_smi(tmp_path, extra: str = "") -> str:
    path = tmp_path / "mols.smi"
    path.write_text(MOLECULES + extra)
    return str(path)


def test_tokenizer_round_trips_tricky_smiles():
    tok = SmilesTokenizer.train(TRICKY)
    for s in TRICKY:
        assert tok.decode(tok.encode(s)) == s
    assert tokenize("C%10CCCCC%10") == ["C", "%10", "C", "C", "C", "C", "C", "%10"]
    assert tokenize("ClCBr[nH]") == ["Cl", "C", "Br", "[nH]"]  # two-letter elements stay whole
    assert "[C@@H]" in tokenize(TRICKY[0]) and "[13CH3]" in tokenize(TRICKY[4])


def test_tokenizer_refuses_what_it_cannot_represent(tmp_path):
    with pytest.raises(GenforgeError, match="outside the SMILES grammar"):
        tokenize("CC{O}")
    tok = SmilesTokenizer.train(["CCO"])
    with pytest.raises(GenforgeError, match="never saw"):
        tok.encode("CCN")
    tok.save(tmp_path / "tok.json")
    again = load_tokenizer(tmp_path / "tok.json")
    assert again.itos == tok.itos and (again.bos_id, again.eos_id, again.pad_id) == (1, 2, 0)
    # decode stops at <eos>: what a model emits after it is not part of the molecule
    assert tok.decode([tok.bos_id, *tok.encode("CCO"), tok.eos_id, *tok.encode("CC")]) == "CCO"


def test_files_and_bad_rows_are_counted_and_reported(tmp_path, capsys):
    pytest.importorskip("rdkit")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("id,smiles,score\n1,OCC,0.5\n2,C1CC,0.1\n3,,0\n4,c1ccccc1,2\n")
    assert read_smiles_file(csv_path) == ["OCC", "C1CC", "", "c1ccccc1"]
    with pytest.raises(GenforgeError, match="no column 'smi'"):
        read_smiles_file(csv_path, "smi")
    gz = tmp_path / "m.smi.gz"
    gz.write_bytes(gzip.compress(b"CCO ethanol\n#C=O\nc1ccccc1 benzene\n"))
    assert read_smiles_file(gz) == ["CCO", "#C=O", "c1ccccc1"]  # every row counts, broken ones too
    cleaned = clean_smiles(read_smiles_file(csv_path), canonicalize=True)
    assert cleaned.smiles == ["CCO", "c1ccccc1"]  # canonical: OCC -> CCO
    assert cleaned.counts == {"rows RDKit cannot parse": 1, "empty rows": 1}
    assert "'C1CC'" in cleaned.report("m.csv")
    path = write_smi(tmp_path, "C1CC\nnot_a_molecule\n" + "C" * 80 + "\n")
    data = load_molecules(DataConfig(name=path, val_fraction=0.1), max_len=60)
    note = capsys.readouterr().err
    assert "rows RDKit cannot parse: 2" in note and "longer than 60 tokens" in note
    assert len(data.train) + len(data.val) == 40  # the 80-carbon chain is left out, and reported
    assert data.test is None and data.spec.modality == "molecule"


def test_packed_batches_equal_the_list_based_sequence_split(tmp_path):
    pytest.importorskip("rdkit")
    data = load_molecules(DataConfig(name=write_smi(tmp_path), val_fraction=0.1), max_len=64)
    rows = [data.train.sequence(i) for i in range(len(data.train))]
    reference = SequenceSplit(rows, data.tokenizer.bos_id, data.tokenizer.eos_id, data.tokenizer.pad_id)
    idx = torch.tensor([3, 0, 7, 1])
    got, want = data.train.get(idx), reference.get(idx)
    for key in ("x", "y", "mask"):
        assert torch.equal(got[key], want[key])
    assert data.decode(got["y"][0]) == data.decode(rows[3])


def test_datasets_route_to_the_molecule_modality_and_refuse_foreign_options(tmp_path):
    path = write_smi(tmp_path)
    assert modality_of(path) == "molecule"
    (tmp_path / "a.csv").write_text("SMILES\nCCO\n")
    assert modality_of(str(tmp_path / "a.csv")) == "molecule"
    assert main(["train", "gpt-demo", f"data.name={path}", "data.hflip=true", "--run-dir",
                 str(tmp_path / "r")]) == 2
    assert main(["train", "gpt-demo", "data.canonicalize=false", "--run-dir", str(tmp_path / "r2")]) == 2


def test_moses_is_found_in_the_molsets_package_and_fails_offline_with_its_path(tmp_path, monkeypatch):
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("genforge.data.locate._copy_url", _offline)
    with pytest.raises(GenforgeError, match="moses/test.csv.gz"):
        moses_file("test")
    pkg = tmp_path / "site" / "moses"
    (pkg / "dataset" / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "dataset" / "data" / "test.csv.gz").write_bytes(gzip.compress(b"SMILES,SPLIT\nCCO,test\n"))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    sys.modules.pop("moses", None)
    assert moses_file("test") == pkg / "dataset" / "data" / "test.csv.gz"
    assert read_smiles_file(moses_file("test")) == ["CCO"]


def _offline(url, out, relative):
    raise GenforgeError(f"cannot download {url}: offline; put the file at $GENFORGE_DATA/{relative}")


def test_moses_presets_load_and_need_no_rdkit_to_train():
    cfg, model_cfg = load_config("gpt-moses", [])
    assert cfg.data.name == "moses" and not cfg.data.canonicalize
    assert model_cfg.block_size >= 57 - 1  # the longest MOSES molecule, framed


TINY = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=48",
        "train.batch_size=16", "train.eval_every=20", "train.eval_batches=2", "train.plot=false",
        "train.checkpoint_every=20", "train.lr=3e-3", "train.warmup_steps=5"]


@pytest.fixture(scope="module")
def smiles_run(tmp_path_factory):
    pytest.importorskip("rdkit")
    tmp = tmp_path_factory.mktemp("smiles")
    path = write_smi(tmp)
    run = tmp / "run"
    assert main(["train", "gpt-demo", f"data.name={path}", "data.val_fraction=0.1", "train.max_steps=40",
                 *TINY, "--run-dir", str(run), "--no-progress"]) == 0
    return run, path


def test_sampling_writes_smiles_files_grids_and_stops_at_eos(smiles_run, tmp_path, capsys):
    run, _ = smiles_run
    assert sorted(p.suffix for p in (run / "samples").iterdir()) == [".smi", ".smi"]
    out = tmp_path / "s.smi"
    assert main(["sample", str(run), "--num-samples", "30", "--seed", "3", "--out", str(out),
                 "--batch-size", "7"]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 30 and all("<" not in s for s in lines)
    again = tmp_path / "t.smi"
    assert main(["sample", str(run), "--num-samples", "30", "--seed", "3", "--out", str(again),
                 "--batch-size", "7"]) == 0
    assert again.read_text() == out.read_text()  # same seed, same molecules
    png = tmp_path / "g.png"
    assert main(["sample", str(run), "--num-samples", "12", "--seed", "0", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()
    assert main(["sample", str(run), "--num-samples", "200", "--out", str(tmp_path / "big.png")]) == 2
    assert main(["sample", str(run), "--out", str(tmp_path / "x.jpg")]) == 2
    assert main(["sample", str(run), "--around", "CCO"]) == 2  # a GPT has no latent space
    assert main(["sample", str(run), "--temperature", "-1"]) == 2
    err = capsys.readouterr().err
    assert "do not fit one PNG grid" in err and ".smi, .txt, .csv" in err and "--around" in err


def test_eval_and_external_metrics_report_the_moses_table(smiles_run, tmp_path, capsys):
    pytest.importorskip("fcd_torch")
    run, path = smiles_run
    assert main(["eval", str(run), "--num-samples", "40", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    for key in ("valid", "unique@1000", "FCD/Test", "SNN/Test", "IntDiv", "Novelty", "heldout_loss"):
        assert key in out
    samples = tmp_path / "ext.smi"
    samples.write_text("CCO\nc1ccccc1\nnot_a_smiles\nCC(=O)Oc1ccccc1C(=O)O\n")
    js = tmp_path / "m.json"
    assert main(["metrics", "molecules", str(samples), "--against", path, "--train", path,
                 "--workers", "1", "--json", str(js), "--no-progress"]) == 0
    import json

    result = json.loads(js.read_text())
    assert result["valid"] == pytest.approx(0.75)  # the unparsable row counts against validity
    assert result["Novelty"] == pytest.approx(2 / 3)  # aspirin is in the training file
    assert main(["metrics", "molecules", str(tmp_path / "missing.smi"), "--against", path]) == 2
