"""Text corpora -> token ids cached as memory-mapped arrays -> training windows.

Sources: Tiny Shakespeare (``shakespeare``), the standard library's pydoc help
topics (``pydoc``, the offline default every Python install carries), or any
text file / folder of ``.txt``/``.md`` files. Tokenized ids are written once to
``$GENFORGE_CACHE/text/<hash>.bin`` in chunks and then read through
``np.memmap``, so a large corpus is never held in memory twice.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from genforge import GenforgeError
from genforge.atomic import atomic_write, atomic_write_text
from genforge.data.locate import cache_dir, cache_write_error, locate
from genforge.data.spec import DataSpec
from genforge.data.tokenizers import BPETokenizer, CharTokenizer, load_tokenizer

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TEXT_SUFFIXES = {".txt", ".md", ".rst", ".text"}
CHUNK_CHARS = 1 << 20


def _shakespeare() -> list[Path]:
    return [locate("tinyshakespeare/input.txt", SHAKESPEARE_URL, SHAKESPEARE_SHA256)]


def _pydoc() -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key] + "\n\n"


CORPORA: dict[str, tuple[str, Callable]] = {
    "shakespeare": ("Tiny Shakespeare, 1.1M characters ($GENFORGE_DATA or download)", _shakespeare),
    "pydoc": ("Python's built-in help topics, 465k characters, always offline", _pydoc),
}


def _files_of(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
        if not files:
            raise GenforgeError(f"folder {path} holds no text files ({', '.join(sorted(TEXT_SUFFIXES))})")
        return files
    raise GenforgeError(f"dataset '{path}' is neither a known dataset nor an existing file or folder; "
                        "see `genforge list`")


def corpus_chunks(name: str) -> Callable[[], Iterator[str]]:
    """A re-iterable stream of text chunks for dataset ``name`` (registry name or path)."""
    if name in CORPORA:
        source = CORPORA[name][1]()
    else:
        source = _files_of(Path(name).expanduser())
    if not isinstance(source, list):  # a generator of strings: materialize the (small) corpus
        texts = list(source)
        return lambda: iter(texts)

    def read() -> Iterator[str]:
        for path in source:
            try:
                with open(path, encoding="utf-8") as f:
                    while chunk := f.read(CHUNK_CHARS):
                        yield chunk
            except UnicodeDecodeError:
                raise GenforgeError(f"{path} is not UTF-8 text") from None

    return read


def _corpus_hash(chunks: Callable[[], Iterator[str]], extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    for chunk in chunks():
        digest.update(chunk.encode("utf-8"))
    return digest.hexdigest()[:20]


@dataclass
class TextWindows:
    """Windows of ``block_size + 1`` tokens: inputs x = w[:-1], targets y = w[1:]."""

    tokens: np.ndarray  # (N,) memmap of token ids
    block_size: int
    stride: int = 1

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - self.block_size - 1) // self.stride + 1)

    def get(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        starts = indices.numpy() * self.stride
        offsets = np.arange(self.block_size + 1)
        windows = torch.from_numpy(self.tokens[starts[:, None] + offsets].astype(np.int64))
        return {"x": windows[:, :-1], "y": windows[:, 1:]}


@dataclass
class TextData:
    spec: DataSpec
    tokenizer: CharTokenizer | BPETokenizer
    train: TextWindows
    val: TextWindows  # the last val_fraction of the corpus: selection and training-time eval
    chars_per_token: float  # measured on the validation text, for bits per character
    test: None = None  # a corpus ships no test split; the attribute exists so every data object has one

    def save(self, run_dir: Path) -> None:
        self.tokenizer.save(run_dir / "tokenizer.json")

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def prompt_ids(self) -> list[int]:
        """A valid one-token start prompt: the newline id when the vocabulary has one, else the
        corpus's first token (a corpus without a newline has no newline id to start from)."""
        try:
            ids = self.tokenizer.encode("\n")
        except GenforgeError:  # a character vocabulary without "\n"
            ids = []
        return ids[:1] if len(ids) == 1 else [int(self.train.tokens[0])]


def _write_cache(chunks, tokenizer, bin_path: Path, tok_path: Path, meta_path: Path) -> None:
    """Tokenize the corpus chunk by chunk into ``bin_path`` (renamed into place last)."""
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    dtype = np.uint16 if tokenizer.vocab_size < 2**16 else np.uint32

    def write(out) -> None:  # stream: the corpus is never held whole
        n_chars = n_tokens = 0
        for chunk in chunks():
            ids = tokenizer.encode_array(chunk).astype(dtype)
            out.write(ids.tobytes())
            n_chars, n_tokens = n_chars + len(chunk), n_tokens + len(ids)
        # tokenizer and counts before the tokens file appears: its presence means a whole cache
        tokenizer.save(tok_path)
        atomic_write_text(meta_path, json.dumps({"dtype": np.dtype(dtype).name, "chars": n_chars,
                                                 "tokens": n_tokens}))

    atomic_write(bin_path, write)


def load_text(data_cfg, block_size: int) -> TextData:
    chunks = corpus_chunks(data_cfg.name)
    tok_key = f"{data_cfg.tokenizer}:{data_cfg.bpe_vocab_size if data_cfg.tokenizer == 'bpe' else ''}"
    key = _corpus_hash(chunks, tok_key)
    folder = cache_dir() / "text"
    bin_path, tok_path, meta_path = (folder / f"{key}{s}" for s in (".bin", ".tokenizer.json", ".json"))
    if not (bin_path.exists() and tok_path.exists() and meta_path.exists()):
        if data_cfg.tokenizer == "char":
            tokenizer = CharTokenizer.train(chunks())
        else:
            tokenizer = BPETokenizer.train(chunks(), data_cfg.bpe_vocab_size)
        try:
            _write_cache(chunks, tokenizer, bin_path, tok_path, meta_path)
        except OSError as e:  # read-only or full cache: say where and how to move it
            raise cache_write_error(folder, e) from None
        except GenforgeError as e:  # from the atomic writer (a full disk mid-write)
            raise GenforgeError(f"{e}, or set $GENFORGE_CACHE to another folder") from None
    meta = json.loads(meta_path.read_text())
    tokenizer = load_tokenizer(tok_path)
    tokens = np.memmap(bin_path, dtype=meta["dtype"], mode="r")
    split = int(len(tokens) * (1 - data_cfg.val_fraction))
    train, val = tokens[:split], tokens[split:]
    if len(val) < block_size + 2 or len(train) < block_size + 2:
        raise GenforgeError(
            f"corpus '{data_cfg.name}' has {len(tokens)} tokens: too few for context "
            f"{block_size} with a {data_cfg.val_fraction:.0%} validation split; use more text "
            "or a smaller model.block_size"
        )
    # Stride 1 (every start position) up to 64M tokens; beyond that the epoch permutation
    # would cost more memory than it is worth, so windows start every block_size tokens.
    stride = 1 if len(train) <= 2**26 else block_size
    val_text = tokenizer.decode(val[: min(len(val), 200_000)].tolist())
    spec = DataSpec(modality="text", vocab_size=tokenizer.vocab_size, name=data_cfg.name)
    return TextData(spec, tokenizer, TextWindows(train, block_size, stride),
                    TextWindows(val, block_size, block_size),
                    len(val_text) / min(len(val), 200_000))
