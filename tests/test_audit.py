"""Memorization and bias audits (genforge.audit) and the privacy filter: planted copies of
training items are found by the audit and blocked by the filter; the chi-square test flags a
one-class sampler and not a balanced one; `genforge audit` writes audit.json atomically."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from helpers import toy_image_run

from genforge.audit.bias import class_balance, per_class_quality
from genforge.audit.memorization import (
    IMAGE_NEAR_COPY_RMS,
    image_memorization,
    molecule_memorization,
    text_memorization,
)
from genforge.audit.privacy import privacy_filter_for, training_data, training_text
from genforge.audit.textindex import SuffixIndex, ngram_share, suffix_array
from genforge.cli import main
from genforge.filters import apply_filters
from genforge.runs import load_run

TINY_GPT = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16", "model.block_size=16",
            "train.batch_size=4", "train.max_steps=2", "train.eval_every=2", "train.plot=false", "--no-progress"]
PASSAGE = "Now is the winter of our discontent made glorious summer by this sun of York."
CORPUS = "".join(f"line {i}: the cat sat on mat number {i * 7 % 13}.\n" for i in range(60)) + PASSAGE + "\n"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit_text")
    corpus = root / "c.txt"
    corpus.write_text(CORPUS * 3)
    assert main(["train", "gpt-demo", f"data.name={corpus}", *TINY_GPT, "--run-dir", str(root / "run")]) == 0
    return root / "run"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return toy_image_run(tmp_path_factory.mktemp("audit_img") / "img")


# --------------------------------------------------------------------------- the suffix array


def test_suffix_array_and_matching_statistics_agree_with_brute_force():
    rng = random.Random(0)
    for _ in range(100):
        text = "".join(rng.choice("ab c") for _ in range(rng.randint(1, 50)))
        assert suffix_array(text).tolist() == sorted(range(len(text)), key=lambda i: text[i:])
        index = SuffixIndex(text)
        query = "".join(rng.choice("ab cd") for _ in range(rng.randint(1, 25)))
        lengths, offsets = index.matching_statistics(query)
        for i in range(len(query)):
            want = max(k for k in range(len(query) - i + 1) if query[i:i + k] in text)
            assert lengths[i] == want
            if want:
                assert text[offsets[i]: offsets[i] + want] == query[i: i + want]
    found, total = ngram_share(np.array([9, 8, 3, 0, 0, 0, 0, 0, 0]), 8)
    assert (found, total) == (2, 2)


# --------------------------------------------------------------------------- planted copies


def test_a_planted_training_passage_is_found_and_unseen_text_is_not():
    index = SuffixIndex(CORPUS)
    novel = "zebras quietly juggle violet pineapples under a frozen moon"
    planted = "xq" + PASSAGE + "qx"
    report = text_memorization([novel, planted], index, threshold=50)
    assert report["longest_overlap"] == len(PASSAGE) and report["longest_overlap_sample"] == 1
    assert report["longest_overlap_text"] == PASSAGE
    assert report["copies"] == 1 and report["overlap_lengths"][0] < 20
    assert 0 < report["ngram_share"] < 1 and report["unit"] == "characters"


def test_a_planted_training_image_is_a_near_copy():
    g = torch.Generator().manual_seed(0)
    train = (torch.rand(50, 1, 8, 8, generator=g) * 255).to(torch.uint8)
    planted = train[7].float() / 255.0 + 0.003 * torch.randn(1, 8, 8, generator=g)  # a copy plus noise
    samples = torch.stack([torch.rand(1, 8, 8, generator=g), planted.clamp(0, 1)])
    report = image_memorization(samples, train, heldout=(torch.rand(5, 1, 8, 8, generator=g) * 255).to(torch.uint8))
    assert report["near_copies"] == 1 and report["threshold"] == IMAGE_NEAR_COPY_RMS
    assert report["worst"][0][:2] == [1, 7] and report["worst"][0][2] < 0.01
    assert report["heldout_near_copies"] == 0 and "pixels" in report["space"]


def test_a_training_molecule_in_another_spelling_is_a_copy():
    pytest.importorskip("rdkit")
    from genforge.metrics.molecules import canonical_smiles

    train = {canonical_smiles(s) for s in ("CCO", "c1ccccc1O", "CC(=O)O")}
    report = molecule_memorization(["OCC", "CCCCN", "not a molecule"], train)  # OCC is ethanol, CCO
    assert report["copies"] == 1 and report["valid"] == 2 and report["novelty"] == 0.5
    assert report["copied"] == ["CCO"]


def test_the_privacy_filter_blocks_planted_copies_of_a_text_run(text_run):
    run = load_run(text_run, device="cpu")
    block = privacy_filter_for(run, "40")
    kept, blocked = apply_filters(["hello there, nothing copied here at all", "ab " + PASSAGE], [block])
    assert kept == ["hello there, nothing copied here at all"]
    assert [i for i, _ in blocked] == [1] and "verbatim from the training text" in blocked[0][1]
    assert PASSAGE in training_text(training_data(run))


def test_the_privacy_filter_blocks_a_training_image(image_run):
    run = load_run(image_run, device="cpu")
    train = training_data(run).train.images
    samples = torch.stack([train[3].float() / 255.0, torch.rand(train.shape[1:], generator=torch.Generator().manual_seed(1))])
    kept, blocked = apply_filters(samples, [privacy_filter_for(run, "default")])
    assert kept.shape[0] == 1 and torch.equal(kept[0], samples[1])
    assert blocked[0][0] == 0 and "training image 3" in blocked[0][1]


def test_the_privacy_filter_blocks_a_training_molecule(tmp_path, capsys):
    pytest.importorskip("rdkit")
    smi = tmp_path / "mols.smi"
    smi.write_text("CC(=O)Oc1ccccc1C(=O)O\nCC(C)Cc1ccc(C(C)C(=O)O)cc1\nCN1C=NC2=C1C(=O)N(C)C(=O)N2C\n"
                   "CC(=O)Nc1ccc(O)cc1\nc1ccccc1\nCCO\nCCN\nCCCC\nc1ccncc1\nOCCO\n" * 3)
    run_dir = tmp_path / "run"
    assert main(["train", "gpt-demo", f"data.name={smi}", "data.val_fraction=0.2", *TINY_GPT[:3],
                 "model.block_size=48", *TINY_GPT[4:], "--run-dir", str(run_dir)]) == 0
    run = load_run(run_dir, device="cpu")
    block = privacy_filter_for(run)
    # paracetamol written another way is still the training molecule; caffeine-like novel one passes
    kept, blocked = apply_filters(["O=C(C)Nc1ccc(O)cc1", "CCCCCCCCO", "not smiles"], [block])
    assert kept == ["CCCCCCCCO", "not smiles"] and blocked[0][0] == 0 and "training molecule" in blocked[0][1]
    assert main(["sample", str(run_dir), "--privacy-filter", "0.5"]) == 2
    assert "exact training molecules" in capsys.readouterr().err
    assert main(["audit", str(run_dir), "--num-samples", "5"]) == 0
    memo = json.loads((run_dir / "audit.json").read_text())["memorization"]
    assert memo["samples"] == 5 and 0 <= memo["copies"] <= memo["valid"] and "novelty" in memo
    assert "exact copies of training molecules" in capsys.readouterr().out


def test_privacy_thresholds_are_checked(text_run, image_run, capsys):
    assert main(["sample", str(text_run), "--privacy-filter", "0", "--no-stream"]) == 2
    assert main(["sample", str(image_run), "--privacy-filter", "2.5"]) == 2
    err = capsys.readouterr().err
    assert "whole number of characters" in err and "RMS pixel distance in (0, 1]" in err
    assert sum(line.startswith("genforge: error:") for line in err.splitlines()) == 2
    assert "Traceback" not in err


# --------------------------------------------------------------------------- bias


def test_chi_square_flags_one_class_and_passes_a_balanced_sampler():
    names = [str(k) for k in range(10)]
    even = [0.1] * 10
    collapsed = class_balance([500] + [0] * 9, even, names)
    assert collapsed["imbalanced"] and collapsed["p_value"] < 1e-12
    assert collapsed["over"][0]["class"] == "0" and collapsed["over"][0]["sample_share"] == 1.0
    assert {r["class"] for r in collapsed["under"]} <= set(names[1:]) and len(collapsed["under"]) == 3
    balanced = class_balance([50, 49, 51, 50, 50, 48, 52, 50, 50, 50], even, names)
    assert not balanced["imbalanced"] and balanced["p_value"] > 0.9 and balanced["dof"] == 9
    with pytest.raises(Exception, match="expected fraction"):
        class_balance([5, 5], [1.0, 0.0], ["a", "b"])


def test_per_class_quality_reports_fd_and_label_agreement():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 3, generator=g)
    real_labels = torch.arange(40) % 2
    fake = torch.cat([real[real_labels == 0][:10], real[real_labels == 1][:10] + 5.0])
    requested = torch.tensor([0] * 10 + [1] * 10)
    probs = torch.nn.functional.one_hot(torch.tensor([0] * 10 + [0] * 10), 2).float()  # class 1 mislabelled
    out = per_class_quality(fake, probs, requested, real, real_labels, ["a", "b"])
    assert out["classes"]["a"]["label_agreement"] == 1.0 and out["classes"]["b"]["label_agreement"] == 0.0
    assert out["classes"]["b"]["fd"] > out["classes"]["a"]["fd"] and out["worst_fd_class"] == "b"


# --------------------------------------------------------------------------- `genforge audit`


def test_audit_cli_text_writes_audit_json(text_run, capsys):
    assert main(["audit", str(text_run), "--num-samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "longest verbatim overlap" in out and "8-grams" in out
    report = json.loads((text_run / "audit.json").read_text())
    assert report["modality"] == "text" and report["num_samples"] == 2
    assert report["memorization"]["unit"] == "characters" and report["bias"] is None


def test_audit_cli_images_bias_pairs_and_json(image_run, tmp_path, capsys):
    out_file = tmp_path / "a.json"
    assert main(["audit", str(image_run), "--num-samples", "40", "--json", "--out", str(out_file)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((image_run / "audit.json").read_text())
    assert printed["memorization"]["near_copies"] == saved["memorization"]["near_copies"]
    assert json.loads(out_file.read_text())["run"] == saved["run"]
    assert (image_run / "audit-pairs.png").stat().st_size > 0 and saved["pairs_png"] == "audit-pairs.png"
    bias = saved["bias"]
    assert bias["test"] == "chi-square goodness of fit" and 0 <= bias["p_value"] <= 1 and bias["samples"] == 40
    assert main(["audit", str(image_run), "--num-samples", "10", "--out", str(out_file)]) == 2  # never replaces


def test_audit_json_is_written_atomically(text_run, monkeypatch, capsys):
    before = (text_run / "audit.json").read_text() if (text_run / "audit.json").exists() else None
    real_replace = os.replace

    def crash(src, dst, *a, **k):
        if str(dst).endswith("audit.json"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", crash)
    assert main(["audit", str(text_run), "--num-samples", "1"]) == 2
    after = (text_run / "audit.json").read_text() if (text_run / "audit.json").exists() else None
    assert after == before  # the old report or none, never half a file
    assert not [p for p in text_run.iterdir() if "audit" in p.name and p.name != "audit.json"]
    assert "genforge: error:" in capsys.readouterr().err


def test_audit_refuses_bad_input(text_run, capsys):
    assert main(["audit", str(text_run), "--num-samples", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
