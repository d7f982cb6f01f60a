"""Tokenizers: a character vocabulary and byte-level BPE (Hugging Face `tokenizers`).

Both expose the same small interface: ``encode(str) -> list[int]``,
``encode_array(str) -> np.ndarray``, ``decode(ids) -> str``, ``vocab_size``,
``save(path)``, and :func:`load_tokenizer` reads either (or the SMILES tokenizer of
:mod:`genforge.data.smiles_tokenizer`) back from a run directory.

Optional special tokens (``specials=("<pad>", "<bos>", "<eos>")``) take the first
ids, 0..k-1, in the order given; ``pad_id``/``bos_id``/``eos_id`` are their ids, or
None when the tokenizer was built without them. Specials are only ever added by id
(e.g. by :mod:`genforge.data.sequences`): ``encode`` treats the text "<eos>" as plain
characters, so a prompt cannot inject an end-of-sequence, and ``decode`` skips them.
Tokenizer files written before specials existed load with none. The specials themselves
live in :mod:`genforge.data.specials`, which every tokenizer imports and which imports none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from genforge import GenforgeError
from genforge.data.smiles_tokenizer import SmilesTokenizer
from genforge.data.specials import BOS, DEFAULT_SPECIALS, EOS, PAD, SpecialIds, check_specials

__all__ = ["BOS", "BPETokenizer", "CharTokenizer", "DEFAULT_SPECIALS", "EOS", "PAD", "load_tokenizer"]

BYTE_ALPHABET = 256  # byte-level BPE always holds the 256 byte symbols before any merge


class CharTokenizer(SpecialIds):
    kind = "char"

    def __init__(self, chars: list[str], specials: Sequence[str] = ()):
        self.chars = list(chars)
        self.specials = check_specials(specials)
        k = len(self.specials)
        self.itos = list(self.specials) + self.chars  # id -> string
        self.stoi = {c: i + k for i, c in enumerate(self.chars)}
        # Lookup table from code point to id for fast vectorized encoding (-1 = unknown).
        self._table = np.full(max(map(ord, self.chars), default=0) + 1, -1, dtype=np.int64)
        self._table[[ord(c) for c in self.chars]] = np.arange(len(self.chars)) + k

    @classmethod
    def train(cls, texts: Iterable[str], specials: Sequence[str] = ()) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        if not seen:
            raise GenforgeError("cannot build a vocabulary: the corpus is empty")
        return cls(sorted(seen), specials)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

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

    def decode(self, ids: Iterable[int], skip_specials: bool = True) -> str:
        k = len(self.specials) if skip_specials else 0
        return "".join(self.itos[i] for i in map(int, ids) if i >= k)

    def save(self, path: Path) -> None:
        raw = {"genforge_char_vocab": self.chars}
        if self.specials:  # written only when present: files stay identical to older versions
            raw["specials"] = list(self.specials)
        Path(path).write_text(json.dumps(raw))


class BPETokenizer(SpecialIds):
    """Byte-level BPE (GPT-2 style): every string encodes, nothing is out of vocabulary."""

    kind = "bpe"

    def __init__(self, tokenizer):
        self.tok = tokenizer
        # Specials live in the HF JSON as added tokens marked special, in id order.
        added = json.loads(tokenizer.to_str()).get("added_tokens") or []
        self.specials = tuple(t["content"] for t in sorted(added, key=lambda t: t["id"]) if t.get("special"))
        # Not persisted by HF: text that spells "<eos>" must encode as characters, not as EOS.
        self.tok.encode_special_tokens = True

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int, specials: Sequence[str] = ()) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        specials = check_specials(specials)
        minimum = BYTE_ALPHABET + len(specials)
        if vocab_size < minimum:
            raise GenforgeError(f"data.bpe_vocab_size={vocab_size} is too small: byte-level BPE needs at "
                                f"least {minimum} ({BYTE_ALPHABET} bytes + {len(specials)} special tokens)")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=list(specials), show_progress=False,
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

    def decode(self, ids: Iterable[int], skip_specials: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_specials)

    def save(self, path: Path) -> None:
        self.tok.save(str(path))


def load_tokenizer(path: Path) -> CharTokenizer | BPETokenizer | SmilesTokenizer:
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GenforgeError(f"cannot read tokenizer {path}: {e}") from None
    if "genforge_char_vocab" in raw:
        return CharTokenizer(raw["genforge_char_vocab"], raw.get("specials", ()))
    if "genforge_music_tokens" in raw:
        from genforge.data.music_tokens import load_music_tokenizer

        return load_music_tokenizer(raw)
    if "genforge_smiles_vocab" in raw:
        return SmilesTokenizer(raw["genforge_smiles_vocab"], raw["specials"])
    from tokenizers import Tokenizer

    return BPETokenizer(Tokenizer.from_str(json.dumps(raw)))
