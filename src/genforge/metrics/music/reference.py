"""Real Bach to measure samples against: the JSB Chorales or music21's Bach chorales.

A :class:`Reference` names three sets of real chorales:

- ``heldout``: what samples are compared with (the JS distances), and whose own table is the
  reference row;
- ``floor``: other real chorales the reference row's distances are measured against (two
  sets of real Bach are not identical either; that distance is the floor);
- ``train``: what memorization searches (a sample's copies), and ``floor_train``, what the
  reference row's memorization searches (never the held-out pieces themselves).

``jsb`` (Boulanger-Lewandowski et al. 2012 split): held-out = test (77), floor = valid (76),
train = floor_train = train (229). ``bach`` (music21's corpus, four-part chorales, in name
order): held-out = the odd-numbered half, floor = floor_train = the even half, train = all of
them (a sample copying any Bach chorale counts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from genforge import GenforgeError
from genforge.metrics.music.memorization import CopyIndex
from genforge.metrics.music.table import music_metrics

REFERENCES = {"jsb": "the JSB Chorales test split (found through $GENFORGE_DATA)",
              "bach": "music21's bundled Bach chorales (needs genforge[music]; parsed once, then cached)"}


@dataclass
class Reference:
    name: str
    heldout: list[np.ndarray]
    floor: list[np.ndarray]
    train: list[np.ndarray]
    floor_train: list[np.ndarray]
    _index: dict[str, CopyIndex] = field(default_factory=dict, repr=False)

    def copies(self, which: str = "train") -> CopyIndex:
        """The memorization index of ``train`` or ``floor_train``, built once."""
        if which not in self._index:
            self._index[which] = CopyIndex(getattr(self, which))
        return self._index[which]

    def table(self) -> dict[str, float]:
        """The reference row: real Bach measured as samples are."""
        return music_metrics(self.heldout, against=self.floor, copies=self.copies("floor_train"))

    def score(self, grids: Sequence) -> dict[str, float]:
        """The samples' row."""
        return music_metrics(grids, against=self.heldout, copies=self.copies("train"))


def reference_from_splits(name: str, splits: dict[str, list[np.ndarray]]) -> Reference:
    """A JSB-style reference from {"train", "val", "test"} lists of grids."""
    return Reference(name, list(splits["test"]), list(splits["val"]), list(splits["train"]),
                     list(splits["train"]))


def load_reference(name: str, progress: bool = True) -> Reference:
    """``jsb`` or ``bach`` (see the module docstring); anything else is a one-line error."""
    if name not in REFERENCES:
        raise GenforgeError(f"unknown music reference '{name}'; choose "
                            + " or ".join(f"'{k}' ({v})" for k, v in REFERENCES.items()))
    from genforge.data import music

    if name == "jsb":
        return reference_from_splits("jsb", music.load_jsb())
    from genforge.data.music_chorales import load_bach_music21

    _, grids, _ = load_bach_music21(progress=progress)
    if len(grids) < 2:
        raise GenforgeError("music21's Bach corpus gave fewer than two four-part chorales; "
                            "reinstall music21: pip install 'genforge[music]'")
    return Reference("bach", grids[1::2], grids[0::2], list(grids), grids[0::2])


def _eval_key(key: str) -> str:
    return f"memorization_{key}" if key.startswith("copy_") else key


def evaluate_grids(grids: Sequence, reference: Sequence, train: Sequence | None = None) -> dict[str, float]:
    """The flat numbers `genforge eval` reports for a music run: the samples' table (distances
    against ``reference``, the held-out pieces; memorization against ``train``), then the same
    table of ``reference`` itself as ``floor_*`` (its distances against ``train``, its
    memorization of ``train``). Without ``train`` the floor has no distances and neither row
    has memorization."""
    reference = list(reference)
    if not reference:
        raise GenforgeError("no held-out pieces to measure samples against")
    train = list(train) if train else []
    ref = Reference("run", reference, train, train, train)
    copies = ref.copies() if train else None
    samples = music_metrics(grids, against=reference, copies=copies)
    floor = music_metrics(reference, against=train or None, copies=copies)
    return {**{_eval_key(k): v for k, v in samples.items()},
            **{f"floor_{_eval_key(k)}": v for k, v in floor.items()}}
