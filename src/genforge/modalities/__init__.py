"""Modalities as one registry: what a sample *is* (text, image, next molecule).

Each modality is one module with one :class:`Modality` object. It gives everything
that depends on the kind of data and not on the family: loading a dataset for a
run, the throughput unit, previews, the ``genforge sample`` options and printer,
and ``genforge eval``. The trainer, the CLI and ``runs`` call these and never
branch on a modality name.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from genforge import GenforgeError
from genforge.families.base import SampleOption

# Options every run accepts, whatever its modality and family.
COMMON_SAMPLE_OPTIONS = (
    SampleOption("seed", "random seed for reproducible samples (default: random, printed)", int,
                 metavar="S"),
    SampleOption("num_samples", "how many samples (text: per prompt, default 1; images: 64; molecules: 10; "
                                "music: 1 piece)", int, metavar="N", minimum=1),
    SampleOption("out", "write samples to this file (text: .txt or .jsonl; images: .png grid or "
                        ".npz array; molecules: .smi, .csv or .png grid; music, and piano-roll image runs "
                        "(jsb-roll): .mid, .wav, .png piano roll or .musicxml, FILE-1, FILE-2, ... for "
                        "several; default: print text and SMILES / RUN_DIR/samples/*.png or *.mid)",
                 str, metavar="FILE"),
    SampleOption("batch_size", "samples generated at once; large requests run in batches "
                               "(default 64)", int, 64, metavar="B", minimum=1),
)


# Declared by the modalities whose eval draws samples (image, molecule); one object, one meaning.
EVAL_NUM_SAMPLES = SampleOption("num_samples", "samples generated and scored (images: default 10000, "
                                "against as many test images; molecules: default 30000, as MOSES; "
                                "music: default 16 pieces for the music metrics)",
                                int, metavar="N", minimum=1)

# Output screening (genforge.filters, genforge.audit.privacy), declared by the modalities that
# apply them before anything is written. Both take several values or none (nargs), and a
# server never takes an option naming code to import from a request.
FILTER = SampleOption("filter", "screen samples before anything is written with your function "
                                "MODULE:FUNCTION or path/to/file.py:FUNCTION (samples in, one verdict per "
                                "sample out: True, False or (bool, reason)); blocked samples are counted "
                                "and reported; repeatable", str, nargs=1, repeat=True, metavar="MODULE:FUNCTION")
PRIVACY_FILTER = SampleOption("privacy_filter", "block near-copies of training items: images at an RMS "
                                                "pixel distance under THRESHOLD (default 0.025), text "
                                                "with >= THRESHOLD characters verbatim from the training "
                                                "text (default 50), molecules that are training molecules "
                                                "(no threshold), music copying >= THRESHOLD 16th steps of a "
                                                "training piece (default 48)", str, nargs="?", const="default",
                              metavar="THRESHOLD")

COMMON_EVAL_OPTIONS = (
    SampleOption("max_batches", "evaluate on at most this many batches", int, metavar="N", minimum=1),
)


class Modality(ABC):
    """The interface; one subclass instance per modality, registered in ``MODALITIES``."""

    name: str
    unit: str  # what throughput counts: "tokens", "examples" or "molecules"
    data_fields: frozenset[str] = frozenset()  # the [data] options this modality reads
    sample_options: tuple[SampleOption, ...] = ()
    eval_options: tuple[SampleOption, ...] = ()

    @abstractmethod
    def load(self, data_cfg, needs: dict[str, Any]):
        """The run's data (``.spec``, ``.train``, ``.val``, ``.test``, ``.save(run_dir)``)."""

    @abstractmethod
    def count(self, batch: dict[str, torch.Tensor]) -> int:
        """Items of ``unit`` in a batch."""

    @abstractmethod
    def write_preview(self, sample: Any, path_stem: Path, data) -> Path:
        """Write a training preview next to ``path_stem`` (suffix chosen here); return the path."""

    @abstractmethod
    def sample_command(self, run, generator: torch.Generator, **options: Any) -> None:
        """`genforge sample` for this modality: draw with ``generator``, print or write."""

    @abstractmethod
    def evaluate(self, run, **options: Any) -> dict[str, Any]:
        """The `genforge eval` report of ``run`` on its held-out data."""

    def run_options(self, run, kind: str) -> tuple[SampleOption, ...]:
        """Options of ``kind`` this modality takes on ``run`` beyond its declared ones (default
        none): an option only some of its runs take (a piano-roll image run's --tempo)."""
        return ()


MODALITIES = {
    "text": "genforge.modalities.text:TEXT",
    "image": "genforge.modalities.image:IMAGE",
    "molecule": "genforge.modalities.molecule:MOLECULE",
    "music": "genforge.modalities.music:MUSIC",
}
COMMON_DATA_FIELDS = frozenset({"name", "val_fraction"})


def modality(name: str) -> Modality:
    if name not in MODALITIES:
        raise GenforgeError(f"unknown modality '{name}'; genforge knows: {', '.join(MODALITIES)}")
    module, obj = MODALITIES[name].split(":")
    return getattr(importlib.import_module(module), obj)


def load_data(data_cfg, needs: dict[str, Any]):
    """Build a run's data from its data config and what the family needs (``data_needs``)."""
    from genforge.data import modality_of

    kind = modality(modality_of(data_cfg.name))
    check_data_fields(data_cfg, kind)
    return kind.load(data_cfg, needs)


def check_data_fields(data_cfg, kind: Modality) -> None:
    """Refuse [data] options set away from their defaults that this modality never reads
    (``data.hflip=true`` on text would otherwise be silently ignored)."""
    defaults = type(data_cfg)()
    wrong = [f"data.{k}" for k in type(data_cfg).model_fields
             if k not in COMMON_DATA_FIELDS | kind.data_fields and getattr(data_cfg, k) != getattr(defaults, k)]
    if wrong:
        raise GenforgeError(f"{', '.join(wrong)} does not apply to {kind.name} data ('{data_cfg.name}'); "
                            "remove it")


def _declared(kind: str, cls_or_obj) -> tuple[SampleOption, ...]:
    return cls_or_obj.sample_options if kind == "sample" else cls_or_obj.eval_options


def all_options(kind: str) -> dict[str, tuple[SampleOption, str]]:
    """Every declared ``kind`` ("sample" or "eval") option -> (option, who declares it), for
    building the CLI."""
    from genforge.families import FAMILIES, family_class

    common = COMMON_SAMPLE_OPTIONS if kind == "sample" else COMMON_EVAL_OPTIONS
    owners: dict[str, tuple[SampleOption, list[str]]] = {o.name: (o, ["all"]) for o in common}
    sources = [(m, _declared(kind, modality(m))) for m in MODALITIES]
    sources += [(f, _declared(kind, family_class(f))) for f in FAMILIES]
    for owner, options in sources:
        for option in options:
            if option.name in owners and owners[option.name][0] != option:
                raise RuntimeError(f"sample option {option.cli} is declared twice, differently")
            owners.setdefault(option.name, (option, []))[1].append(owner)
    # one option declared by several (--privacy-filter, --interp-points) names them all in --help
    return {name: (option, ", ".join(dict.fromkeys(who)) + " runs") for name, (option, who) in owners.items()}


def options_for(run, kind: str) -> tuple[SampleOption, ...]:
    common = COMMON_SAMPLE_OPTIONS if kind == "sample" else COMMON_EVAL_OPTIONS
    kind_of_data = modality(run.spec.modality)
    return (*common, *_declared(kind, kind_of_data), *kind_of_data.run_options(run, kind),
            *_declared(kind, type(run.model)))


def check_options(run, given: dict[str, Any], kind: str = "sample") -> dict[str, Any]:
    """Refuse ``kind`` options that do not apply to this run, or below their minimum; fill
    defaults for those that do. An option counts as given unless it is None (the CLI's "not
    typed") or a switch left off (False); 0, 0.0 and "" are values the user typed."""
    allowed = {o.name: o for o in options_for(run, kind)}
    wrong = [name for name, value in given.items() if _given(value) and name not in allowed]
    if wrong:
        flags = " ".join("--" + w.replace("_", "-") for w in wrong)
        valid = " ".join(o.cli for o in allowed.values())
        raise GenforgeError(f"{flags} does not apply to this {run.config.family} run "
                            f"({run.spec.modality}); its options are: {valid}")
    for name, value in given.items():
        minimum = allowed[name].minimum if name in allowed else None
        if minimum is not None and value is not None and value < minimum:
            raise GenforgeError(f"{allowed[name].cli} must be at least {minimum}, got {value}")
    return {name: (given.get(name) if given.get(name) is not None else o.default)
            for name, o in allowed.items()}


def _given(value: Any) -> bool:
    # identity, not equality: `0 in (None, False)` is True, so --temperature 0 looked untyped
    return value is not None and value is not False


def generator_for(device: torch.device, seed: int | None) -> tuple[torch.Generator, int]:
    """A per-call generator (the global RNG is never touched); a random seed when none is given."""
    if seed is None:
        import os

        seed = int.from_bytes(os.urandom(4), "little")
    if not -(2**63) <= seed < 2**64:  # what torch's manual_seed takes (it raised a traceback)
        raise GenforgeError(f"--seed {seed} is out of range; use a number from 0 to {2**64 - 1}")
    return torch.Generator(device=device).manual_seed(seed), seed


@contextlib.contextmanager
def step_progress(plan, desc: str, enabled: bool | None = None):
    """Extra keyword arguments for one ``model.sample`` call of a :class:`SamplingPlan` whose
    family reports every step (``plan.per_step``): a ``callback`` that advances a progress bar
    on stderr (by default only when stderr is a terminal; ``enabled`` forces it) and feeds the
    family's own observer (``plan.on_step``). The library samplers stay free of any bar."""
    if not plan.per_step:
        yield {}
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc=desc, unit="step", leave=False, file=sys.stderr, dynamic_ncols=True,
               disable=None if enabled is None else not enabled)

    def callback(info: dict) -> None:
        if bar.total != info["steps"]:
            bar.total = info["steps"]
        bar.update(1)
        if plan.on_step is not None:
            plan.on_step(info)

    try:
        yield {"callback": callback}
    finally:
        bar.close()
