"""The SMILES tokenizer: Schwaller et al.'s regex splits a SMILES string into atoms, bonds,
branches and ring closures, and :class:`SmilesTokenizer` maps those tokens to ids with the
shared special tokens first (same interface as the text tokenizers).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from genforge import GenforgeError
from genforge.data.specials import DEFAULT_SPECIALS, SpecialIds, check_specials

# The SMILES tokenization regex of Schwaller et al. 2019 ("Molecular Transformer", ACS Cent.
# Sci. 5:1572): bracket atoms whole ([nH], [C@@H], [13CH3+]), two-letter organic-subset
# elements (Br, Cl) before their one-letter prefixes, bonds, branches, and ring-closure
# digits, with %nn for two-digit ring numbers.
SMILES_REGEX = re.compile(
    r"(\[[^\]]+]|Br?|Cl?|N|O|S|P|F|I|b|c|n|o|s|p|\(|\)|\.|=|#|-|\+|\\|/|:|~|@|\?|>|\*|\$|%[0-9]{2}|[0-9])"
)


def tokenize(smiles: str) -> list[str]:
    """SMILES -> tokens; an error when some characters match no token (so nothing is lost)."""
    tokens = SMILES_REGEX.findall(smiles)
    if sum(map(len, tokens)) != len(smiles):
        raise GenforgeError(f"cannot tokenize SMILES {smiles!r}: characters outside the SMILES grammar")
    return tokens


class SmilesTokenizer(SpecialIds):
    """Regex SMILES tokens <-> ids; specials first (``<pad>``, ``<bos>``, ``<eos>``), then the
    vocabulary seen in training data, sorted. Same interface as the text tokenizers."""

    kind = "smiles"

    def __init__(self, tokens: Sequence[str], specials: Sequence[str] = DEFAULT_SPECIALS):
        self.tokens = list(tokens)
        self.specials = check_specials(specials)
        self.itos = [*self.specials, *self.tokens]
        self.stoi = {t: i for i, t in enumerate(self.itos) if i >= len(self.specials)}

    @classmethod
    def train(cls, smiles: Iterable[str], specials: Sequence[str] = DEFAULT_SPECIALS) -> SmilesTokenizer:
        seen: set[str] = set()
        for s in smiles:
            seen.update(tokenize(s))
        if not seen:
            raise GenforgeError("cannot build a SMILES vocabulary: no molecules")
        return cls(sorted(seen), specials)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, smiles: str) -> list[int]:
        tokens = tokenize(smiles)
        unknown = sorted({t for t in tokens if t not in self.stoi})
        if unknown:
            raise GenforgeError(f"SMILES {smiles!r} has tokens this model never saw in training: "
                                f"{' '.join(unknown)}")
        return [self.stoi[t] for t in tokens]

    def encode_array(self, smiles: str) -> np.ndarray:
        return np.asarray(self.encode(smiles), dtype=np.int64)

    def decode(self, ids: Iterable[int], skip_specials: bool = True) -> str:
        """Ids -> SMILES, stopping at the first ``<eos>`` (what follows it is not part of the
        molecule); other specials are skipped."""
        k = len(self.specials)
        out = []
        for i in map(int, ids):
            if i == self.eos_id:
                break
            if i >= k or not skip_specials:
                out.append(self.itos[i])
        return "".join(out)

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps({"genforge_smiles_vocab": self.tokens, "specials": list(self.specials)}))
