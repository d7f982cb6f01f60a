"""Tokenizers: a character vocabulary and byte-level BPE (Hugging Face `tokenizers`).

Both expose the same small interface: ``encode(str) -> list[int]``,
``encode_array(str) -> np.ndarray``, ``decode(ids) -> str``, ``vocab_size``,
``save(path)``, and :func:`load_tokenizer` reads either back from a run directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from genforge import GenforgeError


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}
        # Lookup table from code point to id for fast vectorized encoding (-1 = unknown).
        self._table = np.full(max(map(ord, chars), default=0) + 1, -1, dtype=np.int64)
        self._table[[ord(c) for c in chars]] = np.arange(len(chars))

    @classmethod
    def train(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise GenforgeError("cannot build a vocabulary: the corpus is empty")
        return cls(sorted(seen))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.where(codes < len(self._table), self._table[np.minimum(codes, len(self._table) - 1)], -1)
        if (ids < 0).any():
            bad = sorted({text[i] for i in np.flatnonzero(ids < 0)[:50]})
            raise GenforgeError(
                f"text contains characters outside the model's vocabulary: {''.join(bad)!r}; "
                "remove them or train with data.tokenizer=bpe"
            )
        return ids

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"genforge_char_vocab": self.chars}))


class BPETokenizer:
    """Byte-level BPE (GPT-2 style): every string encodes, nothing is out of vocabulary."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tok = tokenizer

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text).ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids))

    def save(self, path: Path) -> None:
        self.tok.save(str(path))


def load_tokenizer(path: Path) -> CharTokenizer | BPETokenizer:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GenforgeError(f"cannot read tokenizer {path}: {e}") from None
    if "genforge_char_vocab" in raw:
        return CharTokenizer(raw["genforge_char_vocab"])
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_str(json.dumps(raw)))
