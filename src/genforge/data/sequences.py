"""Variable-length sequences per example (molecules, RL prompts): padded batches with a mask.

Text corpora are one long token stream cut into windows (:mod:`genforge.data.text`);
here every example is its own sequence, ``<bos> tokens... <eos>``, and a batch pads
the rows to one length. The mask, not a comparison with ``pad_id``, says which
positions are real, so PAD may share an id with EOS (as in GPT-2).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from genforge import GenforgeError


def pad_sequences(seqs: Sequence[Sequence[int]], pad_id: int, max_len: int | None = None,
                  left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``B`` token-id lists to one length ``T``.

    Returns ``ids`` (B, T) int64 and ``mask`` (B, T) bool, True on real tokens.
    ``T`` is ``max_len`` when given, else the longest sequence. ``left=True`` pads
    on the left (prompts for generation, so every row ends at the same column);
    the default pads on the right (training). A sequence longer than ``max_len``
    is an error: truncating would silently drop its EOS.
    """
    lengths = [len(s) for s in seqs]
    T = max(lengths, default=0) if max_len is None else int(max_len)
    if max_len is not None and lengths and max(lengths) > T:
        i = max(range(len(lengths)), key=lengths.__getitem__)
        raise GenforgeError(f"sequence {i} has {lengths[i]} tokens, more than max_len={T}; "
                            "raise max_len or drop the longer examples")
    ids = torch.full((len(seqs), T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(seqs), T), dtype=torch.bool)
    for row, (s, n) in enumerate(zip(seqs, lengths, strict=True)):
        cols = slice(T - n, T) if left else slice(0, n)
        ids[row, cols] = torch.as_tensor(list(s), dtype=torch.long)
        mask[row, cols] = True
    return ids, mask


class SequenceSplit:
    """A dataset of token-id sequences, each framed as ``<bos> s <eos>`` and right-padded per batch.

    ``max_len`` (optional) counts the framed sequence, BOS and EOS included; every
    batch is then padded to exactly ``max_len`` (fixed shapes, e.g. for ``torch.compile``),
    else to the longest framed sequence in the batch.
    """

    def __init__(self, seqs: Iterable[Sequence[int]], bos_id: int | None, eos_id: int | None,
                 pad_id: int | None, max_len: int | None = None):
        missing = [n for n, v in (("<bos>", bos_id), ("<eos>", eos_id), ("<pad>", pad_id)) if v is None]
        if missing:
            raise GenforgeError(f"sequences need a tokenizer with {', '.join(missing)}; build it with "
                                "specials=('<pad>', '<bos>', '<eos>')")
        self.bos_id, self.eos_id, self.pad_id, self.max_len = int(bos_id), int(eos_id), int(pad_id), max_len
        self.rows = [[self.bos_id, *map(int, s), self.eos_id] for s in seqs]
        if max_len is not None:
            too_long = [i for i, r in enumerate(self.rows) if len(r) > max_len]
            if too_long:
                i = too_long[0]
                raise GenforgeError(f"{len(too_long)} sequences are longer than max_len={max_len} with "
                                    f"<bos> and <eos> (e.g. sequence {i}: {len(self.rows[i])} tokens); "
                                    "raise max_len or drop them")

    @classmethod
    def from_texts(cls, texts: Iterable[str], tokenizer, max_len: int | None = None) -> SequenceSplit:
        """Encode each string with ``tokenizer`` (which must have PAD, BOS and EOS)."""
        return cls((tokenizer.encode(t) for t in texts), tokenizer.bos_id, tokenizer.eos_id,
                   tokenizer.pad_id, max_len)

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """A batch of ``B = len(indices)`` examples, with ``T`` the padded framed length.

        - ``x`` (B, T-1) int64: inputs, ``<bos> s`` then PAD;
        - ``y`` (B, T-1) int64: next-token targets, ``s <eos>`` then PAD;
        - ``mask`` (B, T-1) bool: True where ``y`` is a real target (EOS included,
          PAD excluded), the positions a loss or ``token_logprobs`` must sum over.
        """
        ids, mask = pad_sequences([self.rows[int(i)] for i in indices], self.pad_id, self.max_len)
        return {"x": ids[:, :-1], "y": ids[:, 1:], "mask": mask[:, 1:]}
