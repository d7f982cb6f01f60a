"""DataSpec: the only thing a family learns about the data it models."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Literal

Modality = Literal["text", "image", "molecule", "music"]


@dataclass
class DataSpec:
    """Shape of the data, independent of any family.

    modality     what a sample is decoded into.
    shape        per-example tensor shape: (C, H, W) for images, None for token streams.
    vocab_size   number of token ids for text and molecules, None for images.
    num_classes  0 when the data carries no labels.
    class_names  one name per class, for grids and the CLI.
    pixel_range  (low, high) of image tensors as families see them.
    special_ids  token sequences per example (molecules): {"pad", "bos", "eos"} -> id, so a
                 family can start samples at BOS and stop them at EOS; empty otherwise.
    max_length   the longest framed sequence (BOS and EOS included) in training, or None.
    """

    modality: Modality
    shape: tuple[int, ...] | None = None
    vocab_size: int | None = None
    num_classes: int = 0
    class_names: list[str] = field(default_factory=list)
    pixel_range: tuple[float, float] = (0.0, 1.0)
    name: str = ""
    special_ids: dict[str, int] = field(default_factory=dict)
    max_length: int | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> DataSpec:
        raw = json.loads(text)
        if raw.get("shape") is not None:
            raw["shape"] = tuple(raw["shape"])
        raw["pixel_range"] = tuple(raw.get("pixel_range", (0.0, 1.0)))
        return cls(**raw)
