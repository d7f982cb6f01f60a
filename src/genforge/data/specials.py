"""Special tokens shared by every tokenizer (char, BPE, SMILES): their names, their check,
and the ids they take.

Specials take the first ids, 0..k-1, in the order given; ``pad_id``/``bos_id``/``eos_id``
are their ids, or None when a tokenizer was built without them. This module imports no
tokenizer, so :mod:`genforge.data.tokenizers` and :mod:`genforge.data.smiles_tokenizer` both
build on it without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence

from genforge import GenforgeError

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
DEFAULT_SPECIALS = (PAD, BOS, EOS)


def check_specials(specials: Sequence[str]) -> tuple[str, ...]:
    """``specials`` as a tuple, or a one-line error when they repeat or are not 2+ characters."""
    specials = tuple(specials)
    if len(set(specials)) != len(specials) or any(not isinstance(s, str) or len(s) < 2 for s in specials):
        raise GenforgeError(f"special tokens {specials!r} must be distinct strings of 2+ characters "
                            "such as '<pad>', '<bos>', '<eos>'")
    return specials


class SpecialIds:
    """Mixin of every tokenizer: ids of its special tokens (the first ids, 0..k-1)."""

    specials: tuple[str, ...] = ()

    def special_id(self, token: str) -> int | None:
        return self.specials.index(token) if token in self.specials else None

    @property
    def pad_id(self) -> int | None:
        return self.special_id(PAD)

    @property
    def bos_id(self) -> int | None:
        return self.special_id(BOS)

    @property
    def eos_id(self) -> int | None:
        return self.special_id(EOS)
