"""Sequences per example: tokenizer specials, padded batches with masks."""

import json

import pytest
import torch

from genforge import GenforgeError
from genforge.data.sequences import SequenceSplit, pad_sequences
from genforge.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer

SPECIALS = ("<pad>", "<bos>", "<eos>")
SMILES = ["CCO", "c1ccccc1", "CC(=O)O", "N"]


def test_char_tokenizer_specials_round_trip(tmp_path):
    tok = CharTokenizer.train(SMILES, specials=SPECIALS)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == 3 + len(set("".join(SMILES)))
    ids = tok.encode("CCO")
    assert min(ids) >= 3 and tok.decode([tok.bos_id, *ids, tok.eos_id, tok.pad_id]) == "CCO"
    assert tok.decode([tok.bos_id, *ids], skip_specials=False) == "<bos>CCO"
    tok.save(tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert again.specials == SPECIALS and again.eos_id == 2 and again.encode("c1ccccc1") == tok.encode("c1ccccc1")


def test_tokenizers_without_specials_have_none_and_old_files_load(tmp_path):
    tok = CharTokenizer.train(SMILES)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (None, None, None)
    (tmp_path / "old.json").write_text(json.dumps({"genforge_char_vocab": ["a", "b"]}))  # pre-specials file
    old = load_tokenizer(tmp_path / "old.json")
    assert old.specials == () and old.encode("ba") == [1, 0] and old.pad_id is None
    tok.save(tmp_path / "plain.json")
    assert "specials" not in json.loads((tmp_path / "plain.json").read_text())


def test_bpe_tokenizer_specials_round_trip(tmp_path):
    tok = BPETokenizer.train(iter(SMILES * 20), 300, specials=SPECIALS)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    ids = tok.encode("CC(=O)O")
    assert not set(ids) & {0, 1, 2}
    assert tok.decode([1, *ids, 2, 0, 0]) == "CC(=O)O"
    # Text spelling a special token stays text: a prompt cannot inject an end of sequence.
    assert 2 not in tok.encode("C<eos>C") and tok.decode(tok.encode("C<eos>C")) == "C<eos>C"
    tok.save(tmp_path / "b.json")
    again = load_tokenizer(tmp_path / "b.json")
    assert again.specials == SPECIALS and again.encode("C<eos>C") == tok.encode("C<eos>C")
    assert BPETokenizer.train(iter(SMILES), 260).specials == ()


def test_bad_specials_are_refused():
    with pytest.raises(GenforgeError, match="distinct strings"):
        CharTokenizer(["a"], specials=("<pad>", "<pad>"))


def test_pad_sequences_right_and_left():
    ids, mask = pad_sequences([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and ids.dtype == torch.long
    assert mask.tolist() == [[True, True, True], [True, False, False]] and mask.dtype == torch.bool
    ids, mask = pad_sequences([[5, 6, 7], [8]], pad_id=9, max_len=4, left=True)
    assert ids.tolist() == [[9, 5, 6, 7], [9, 9, 9, 8]]
    assert mask.tolist() == [[False, True, True, True], [False, False, False, True]]
    with pytest.raises(GenforgeError, match="sequence 0 has 3 tokens, more than max_len=2"):
        pad_sequences([[1, 2, 3]], pad_id=0, max_len=2)
    ids, mask = pad_sequences([[], [4]], pad_id=0)  # an empty sequence is all padding
    assert ids.tolist() == [[0], [4]] and mask.tolist() == [[False], [True]]


def test_sequence_split_batches_shift_and_mask():
    tok = CharTokenizer.train(SMILES, specials=SPECIALS)
    data = SequenceSplit.from_texts(SMILES, tok)
    assert len(data) == 4
    batch = data.get(torch.tensor([0, 3]))  # "CCO" (5 framed tokens) and "N" (3)
    x, y, m = batch["x"], batch["y"], batch["mask"]
    assert x.shape == y.shape == m.shape == (2, 4)
    cco, n = tok.encode("CCO"), tok.encode("N")
    assert x.tolist() == [[1, *cco], [1, *n, 2, 0]]  # EOS is an input too; its target is PAD, masked
    assert y.tolist() == [[*cco, 2], [*n, 2, 0, 0]]
    assert m.tolist() == [[True] * 4, [True, True, False, False]]  # EOS counted, PAD not
    assert torch.equal(x[:, 1:][m[:, :-1]], y[:, :-1][m[:, :-1]])  # y is x shifted by one


def test_sequence_split_fixed_length_and_pad_equal_to_eos():
    data = SequenceSplit([[7, 8], [9]], bos_id=1, eos_id=2, pad_id=2, max_len=6)
    batch = data.get(torch.tensor([1]))
    assert batch["x"].tolist() == [[1, 9, 2, 2, 2]] and batch["y"].tolist() == [[9, 2, 2, 2, 2]]
    assert batch["mask"].tolist() == [[True, True, False, False, False]]  # the mask, not the id, decides
    with pytest.raises(GenforgeError, match="1 sequences are longer than max_len=3"):
        SequenceSplit([[7, 8], [9]], 1, 2, 0, max_len=3)


def test_sequence_split_needs_special_tokens():
    with pytest.raises(GenforgeError, match="<bos>, <eos>, <pad>.*specials="):
        SequenceSplit.from_texts(SMILES, CharTokenizer.train(SMILES))
