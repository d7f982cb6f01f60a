"""SMILES as a modality: tokenizer, files, packed sequences, the CLI from train to metrics."""

from __future__ import annotations

import gzip
import re
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


def test_a_csv_saved_by_excel_with_a_byte_order_mark_is_read(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM: the header read '\\ufeffSMILES' and the file was
    refused as having no SMILES column."""
    path = tmp_path / "excel.csv"
    path.write_bytes("SMILES,id\r\nCCO,1\r\nc1ccccc1,2\r\n".encode("utf-8-sig"))
    assert read_smiles_file(path) == ["CCO", "c1ccccc1"]
    (tmp_path / "excel.smi").write_bytes("CCO\r\nCCN\r\n".encode("utf-8-sig"))
    assert read_smiles_file(tmp_path / "excel.smi") == ["CCO", "CCN"]


def test_a_huge_row_is_left_out_unparsed(tmp_path):
    """RDKit writing a 10,000-atom chain took 1.7 s and a 20,000-atom one crashed the process
    (segfault), so `train data.name=file.smi` with one huge line died; rows over the metrics'
    500-character limit are now left out without parsing, and reported."""
    pytest.importorskip("rdkit")
    cleaned = clean_smiles(["CCO", "C" * 3000, "", "c1ccccc1"], canonicalize=True)
    assert cleaned.smiles == ["CCO", "c1ccccc1"]
    assert cleaned.counts == {"rows longer than 500 characters (not parsed)": 1, "empty rows": 1}
    assert "'" + "C" * 40 + "...'" in cleaned.report("m.smi")  # a short example, not 3,000 characters
    from genforge.modalities.molecule import _encode_one  # --around / --interpolate SMILES

    with pytest.raises(GenforgeError, match="has 30000 characters; genforge parses at most 500"):
        _encode_one(None, "C" * 30000)  # parsed before the run is read: it crashed RDKit
    (tmp_path / "empty.smi").write_text("")  # its error once ended "holds no valid molecules (None)"
    with pytest.raises(GenforgeError, match=r"holds no valid molecules \(it has no rows\)"):
        load_molecules(DataConfig(name=str(tmp_path / "empty.smi")), max_len=60)


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
    capsys.readouterr()
    assert main(["sample", str(run), "--num-samples", "12", "--seed", "0", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    drawn = re.search(r"wrote 12 molecules to .*: (\d+) drawn, (\d+) invalid SMILES", capsys.readouterr().out)
    assert drawn and int(drawn[1]) + int(drawn[2]) == 12
    capsys.readouterr()
    assert main(["sample", str(run), "--num-samples", "200", "--out", str(tmp_path / "big.png")]) == 2
    assert main(["sample", str(run), "--out", str(tmp_path / "x.jpg")]) == 2
    assert main(["sample", str(run), "--around", "CCO"]) == 2  # a GPT has no latent space
    assert main(["sample", str(run), "--temperature", "-1"]) == 2
    err = capsys.readouterr().err
    assert "do not fit one PNG grid" in err and ".smi, .txt, .csv" in err and "--around" in err


def test_eval_and_external_metrics_report_the_moses_table(smiles_run, tmp_path, capsys, recwarn):
    pytest.importorskip("fcd_torch")
    run, path = smiles_run
    assert main(["eval", str(run), "--num-samples", "40", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    for key in ("valid", "unique@1000", "FCD/Test", "SNN/Test", "IntDiv", "Novelty", "heldout_loss"):
        assert key in out
    samples = tmp_path / "ext.smi"
    # A 10,000-character SMILES once hung the scaffold search: now it is invalid, with a note.
    samples.write_text("CCO\nc1ccccc1\nnot_a_smiles\nCC(=O)Oc1ccccc1C(=O)O\n" + "C" * 10000 + "\n")
    js = tmp_path / "m.json"
    capsys.readouterr()
    assert main(["metrics", "molecules", str(samples), "--against", path, "--train", path,
                 "--workers", "1", "--json", str(js), "--no-progress"]) == 0
    printed = capsys.readouterr()
    assert "unique@1000, unique@10000 are over all 3 valid samples (fewer than 1000)" in printed.out
    assert "1 samples longer than 500 characters" in printed.out
    assert "Warning" not in printed.err and not [w for w in recwarn if "genforge" in w.filename]
    import json

    result = json.loads(js.read_text())
    assert result["valid"] == pytest.approx(3 / 5)  # the unparsable and the overlong rows count against it
    assert result["Novelty"] == pytest.approx(2 / 3)  # aspirin is in the training file
    assert main(["metrics", "molecules", str(tmp_path / "missing.smi"), "--against", path]) == 2


def test_a_user_file_is_checked_with_rdkit_on_every_preset(tmp_path, capsys, monkeypatch):
    """gpt-moses sets data.canonicalize=false for MOSES's canonical files; a user's file given to
    it is still checked, and its unparsable rows reported as gpt-demo reports them."""
    pytest.importorskip("rdkit")
    path = write_smi(tmp_path, "C1CC\nnot_a_molecule\n")
    cfg, _ = load_config("gpt-moses", [f"data.name={path}", "data.val_fraction=0.1"])
    assert not cfg.data.canonicalize
    data = load_molecules(cfg.data, max_len=60)
    assert "rows RDKit cannot parse: 2" in capsys.readouterr().err
    assert len(data.train) + len(data.val) == 40 and "C1CC" not in data.train_smiles
    assert load_molecules(cfg.data, max_len=60).report == data.report  # from the cache, same report
    monkeypatch.setitem(sys.modules, "rdkit", None)  # without RDKit: loads unchecked, and says so
    unchecked = load_molecules(cfg.data, max_len=60)
    assert "not checked with RDKit, which is not installed" in unchecked.report


def test_the_missing_column_error_names_the_flag_of_the_command(tmp_path, capsys):
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("id,structure\n1,CCO\n")
    with pytest.raises(GenforgeError, match="name it with data.smiles_column=NAME"):
        read_smiles_file(csv_path)
    with pytest.raises(GenforgeError, match="name it with --column NAME") as info:
        read_smiles_file(csv_path, None, "--column")
    assert "data.smiles_column" not in str(info.value)
    pytest.importorskip("fcd_torch")
    assert main(["metrics", "molecules", str(csv_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--column NAME" in err and "data.smiles_column" not in err and "Traceback" not in err


@pytest.mark.parametrize("train_rows", ["", "not_a_molecule\nxyz\n"])
def test_a_training_file_without_valid_molecules_is_refused_not_scored_novel(tmp_path, capsys, train_rows):
    """`--train` holding no valid molecule once gave Novelty 1.0 for any samples (nothing to match)."""
    pytest.importorskip("fcd_torch")
    samples = write_smi(tmp_path)
    train = tmp_path / "train.smi"
    train.write_text(train_rows)
    assert main(["metrics", "molecules", str(samples), "--against", str(samples), "--train", str(train),
                 "--workers", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"--train {train} holds no valid molecules" in err and "\n" not in err


def fake_moses(tmp_path, monkeypatch, train, test):
    files = {}
    for split, rows in (("train", train), ("test", test), ("test_scaffolds", test)):
        files[split] = tmp_path / f"{split}.csv.gz"
        files[split].write_bytes(gzip.compress(("SMILES,SPLIT\n" + "".join(f"{r},{split}\n" for r in rows)).encode()))
    monkeypatch.setattr("genforge.data.smiles.moses_file", lambda split: files[split])


def test_the_test_split_is_filtered_and_reported_like_the_training_split(tmp_path, monkeypatch, capsys):
    """A test molecule longer than the context crashed eval's held-out loss; one with a token
    training never saw was dropped silently. Both are left out of the loss and reported; the
    metrics' reference set keeps every test molecule."""
    from genforge.families.gpt import GPT, GPTConfig
    from genforge.modalities.molecule import heldout_scores

    train = MOLECULES.split()
    long_one = "CC(C)NCC(O)COc1cccc2ccccc12"  # 24 tokens framed
    test = ["CCO", "c1ccccc1O", "CC[Se]C", long_one, "CCN"]
    fake_moses(tmp_path, monkeypatch, train, test)
    block_size = 12
    data = load_molecules(DataConfig(name="moses", canonicalize=False, val_fraction=0.1), block_size + 1)
    note = capsys.readouterr().err
    assert "test split (held-out loss): kept 3 molecules" in note
    assert "with tokens training never saw: 1 (e.g. 'CC[Se]C')" in note
    assert f"longer than {block_size + 1} tokens: 1 (e.g. '{long_one}')" in note
    assert len(data.test) == 3 and data.test_smiles == test
    assert max(data.test.lengths()) <= block_size + 1
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=block_size), data.spec).eval()
    scores = heldout_scores(model, data.test, max_batches=4, batch_size=2)
    assert torch.isfinite(torch.tensor(scores["heldout_loss"]))


def test_the_molecule_grid_counts_what_it_could_not_draw(tmp_path):
    pytest.importorskip("rdkit")
    from genforge.modalities.molecule import draw_grid

    png = tmp_path / "g.png"
    assert draw_grid(["CCO", "C1CC", "", "c1ccccc1"], png) == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*"))


@pytest.fixture(scope="module")
def seqvae_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("seqvae_cli")
    path = write_smi(tmp)
    run = tmp / "run"
    assert main(["train", "vae-moses", f"data.name={path}", "data.val_fraction=0.1", "train.max_steps=4",
                 "model.embedding_size=8", "model.encoder_hidden=16", "model.decoder_hidden=16",
                 "model.latent_size=4", "model.max_length=48", "train.batch_size=8", "train.eval_every=4",
                 "train.eval_batches=1", "train.checkpoint_every=4", "train.plot=false",
                 "--run-dir", str(run), "--no-progress"]) == 0
    return run


def test_seqvae_latent_options_are_refused_where_they_do_not_apply(seqvae_run, tmp_path, capsys):
    pytest.importorskip("rdkit")
    run = str(seqvae_run)
    capsys.readouterr()
    assert main(["sample", run, "--around", ""]) == 2
    assert main(["sample", run, "--around", "  "]) == 2
    assert main(["sample", run, "--radius", "0.3"]) == 2  # was silently ignored
    assert main(["sample", run, "--radius", "0.3", "--interpolate", "CCO", "CCN"]) == 2
    err = capsys.readouterr().err
    assert err.count("--around needs a SMILES string") == 2
    assert err.count("--radius applies only with --around") == 2 and "Traceback" not in err
    out = tmp_path / "a.smi"
    assert main(["sample", run, "--around", "CCO", "--radius", "0.3", "--num-samples", "3",
                 "--out", str(out), "--seed", "1"]) == 0
    assert len(out.read_text().splitlines()) == 3


def test_the_canonical_smiles_cache_is_keyed_by_the_rdkit_version(tmp_path, monkeypatch):
    from genforge.data import smiles

    cfg = DataConfig(name=write_smi(tmp_path), val_fraction=0.1)
    key = smiles._cache_key(cfg)
    assert smiles._cache_key(cfg) == key
    monkeypatch.setattr("genforge.metrics.molecules.chem.rdkit_version", lambda: "1999.01")
    assert smiles._cache_key(cfg) != key  # another RDKit: a miss, canonicalized anew
