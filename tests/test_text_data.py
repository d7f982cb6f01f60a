import numpy as np
import pytest
import torch

from genforge import GenforgeError
from genforge.config import DataConfig
from genforge.data import modality_of
from genforge.data.locate import download, locate, sha256_file
from genforge.data.sampler import EpochSampler
from genforge.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer
from genforge.modalities import load_data

TEXT = "Hello, world!\nThe quick brown fox — naïve café.\n" * 20


def test_char_tokenizer_round_trip(tmp_path):
    tok = CharTokenizer.train([TEXT])
    assert tok.decode(tok.encode(TEXT)) == TEXT
    tok.save(tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert again.encode("fox café") == tok.encode("fox café")


def test_char_tokenizer_rejects_unknown_characters():
    tok = CharTokenizer.train(["abc"])
    with pytest.raises(GenforgeError, match="outside the model's vocabulary: 'z'"):
        tok.encode("abz")


def test_bpe_tokenizer_round_trip_and_compresses(tmp_path):
    tok = BPETokenizer.train(iter([TEXT]), vocab_size=300)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert len(ids) < len(TEXT) / 2
    assert tok.decode(tok.encode("never seen: ∑ß")) == "never seen: ∑ß"  # byte-level: nothing is unknown
    tok.save(tmp_path / "b.json")
    assert load_tokenizer(tmp_path / "b.json").encode(TEXT) == ids


def test_text_file_is_cached_as_memmap_and_split(corpus):
    cfg = DataConfig(name=str(corpus))
    data = load_data(cfg, {"block_size": 16})
    assert isinstance(data.train.tokens, np.memmap)
    total = len(data.train.tokens) + len(data.val.tokens)
    assert total == len(corpus.read_text())
    assert abs(len(data.val.tokens) / total - 0.1) < 0.01
    batch = data.train.get(torch.tensor([0, 5]))
    assert batch["x"].shape == (2, 16) and torch.equal(batch["x"][:, 1:], batch["y"][:, :-1])
    assert data.decode(batch["x"][0].tolist()) == corpus.read_text()[:16]
    again = load_data(cfg, {"block_size": 16})  # second load reads the cache
    assert np.array_equal(np.asarray(again.train.tokens), np.asarray(data.train.tokens))


def test_folder_of_text_files(tmp_path):
    (tmp_path / "a.txt").write_text("alpha " * 200)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("beta " * 200)
    data = load_data(DataConfig(name=str(tmp_path)), {"block_size": 8})
    assert set(data.tokenizer.chars) == set("alphbet ")


def test_offline_default_corpus_needs_no_files():
    data = load_data(DataConfig(name="pydoc"), {"block_size": 32})
    assert data.spec.vocab_size > 50 and len(data.train) > 100_000


def test_bad_datasets_are_clear_errors(tmp_path):
    with pytest.raises(GenforgeError, match="unknown dataset"):
        modality_of("no/such/thing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x.txt").write_text("")
    with pytest.raises(GenforgeError, match="empty"):
        load_data(DataConfig(name=str(tmp_path / "empty")), {"block_size": 8})
    (tmp_path / "small.txt").write_text("tiny")
    with pytest.raises(GenforgeError, match="too few"):
        load_data(DataConfig(name=str(tmp_path / "small.txt")), {"block_size": 64})


def test_download_verifies_checksum_and_reports_offline(tmp_path, monkeypatch):
    src = tmp_path / "remote.txt"
    src.write_text("payload")
    good = sha256_file(src)
    monkeypatch.setenv("GENFORGE_CACHE", str(tmp_path / "cache"))
    path = locate("set/remote.txt", src.as_uri(), good)
    assert path.read_text() == "payload" and "cache" in str(path)
    with pytest.raises(GenforgeError, match="checksum mismatch"):
        download(src.as_uri(), tmp_path / "other.txt", "0" * 64)
    assert not (tmp_path / "other.txt").exists()
    with pytest.raises(GenforgeError, match="offline"):
        locate("set/missing.txt", (tmp_path / "nope.txt").as_uri(), good)


def test_data_env_is_searched_first(tmp_path, monkeypatch):
    (tmp_path / "tinyshakespeare").mkdir()
    (tmp_path / "tinyshakespeare" / "input.txt").write_text("x")
    monkeypatch.setenv("GENFORGE_DATA", str(tmp_path))
    assert locate("tinyshakespeare/input.txt", "http://unreachable.invalid/x", None) == \
        tmp_path / "tinyshakespeare" / "input.txt"


def test_sampler_shards_are_disjoint_and_cover_an_epoch():
    n, bs, world = 103, 5, 2
    seen = []
    for rank in range(world):
        s = EpochSampler(n, bs, seed=3, rank=rank, world=world)
        seen.append(torch.cat([s.next_batch() for _ in range(s.batches_per_epoch)]))
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    assert len(set(torch.cat(seen).tolist())) == world * bs * EpochSampler(n, bs, 3, 0, world).batches_per_epoch


def test_sampler_resume_is_exact():
    a = EpochSampler(50, 7, seed=1)
    for _ in range(9):  # crosses an epoch boundary
        a.next_batch()
    b = EpochSampler(50, 7, seed=1)
    b.load_state_dict(a.state_dict())
    assert all(torch.equal(a.next_batch(), b.next_batch()) for _ in range(10))


def test_prompt_ids_without_a_newline_in_the_corpus(tmp_path):
    """Regression: GPT's preview encoded "\\n", which a newline-free corpus has no id for."""
    (tmp_path / "flat.txt").write_text("abcab cab " * 100)
    data = load_data(DataConfig(name=str(tmp_path / "flat.txt")), {"block_size": 8})
    with pytest.raises(GenforgeError, match="outside the model's vocabulary: '\\\\n'"):
        data.tokenizer.encode("\n")  # what crashed the preview
    assert data.prompt_ids() == [data.tokenizer.stoi["a"]]  # the corpus's first token
    assert data.test is None  # a corpus has train and val only


def test_prompt_ids_is_the_newline_when_the_vocabulary_has_one(corpus):
    data = load_data(DataConfig(name=str(corpus)), {"block_size": 8})
    assert data.prompt_ids() == [data.tokenizer.stoi["\n"]]
    bpe = load_data(DataConfig(name=str(corpus), tokenizer="bpe", bpe_vocab_size=300), {"block_size": 8})
    assert bpe.decode(bpe.prompt_ids()) == "\n"


def test_prompt_outside_the_vocabulary_is_still_a_clear_error(corpus):
    data = load_data(DataConfig(name=str(corpus)), {"block_size": 8})
    with pytest.raises(GenforgeError, match="outside the model's vocabulary: 'Z'.*data.tokenizer=bpe"):
        data.tokenizer.encode("Zebra")


def test_bpe_vocab_size_below_the_byte_alphabet_is_an_error(corpus):
    """Regression: data.bpe_vocab_size=10 silently became 256."""
    with pytest.raises(GenforgeError, match="bpe_vocab_size=10 is too small: .*at least 256") as e:
        load_data(DataConfig(name=str(corpus), tokenizer="bpe", bpe_vocab_size=10), {"block_size": 8})
    assert "\n" not in str(e.value)
    with pytest.raises(GenforgeError, match="at least 259"):
        BPETokenizer.train(iter([TEXT]), 258, specials=("<pad>", "<bos>", "<eos>"))
    assert BPETokenizer.train(iter([TEXT]), 256).vocab_size == 256  # the minimum itself is fine
