"""Rewards: plain functions ``reward(samples, **columns) -> list[float | None]``.

``samples`` are strings for text and SMILES, an (N, C, H, W) float tensor in [0, 1] for
images; ``columns`` are the extra columns of a prompt file, one value per sample. A
reward returns one float per sample, or None where it does not apply. Several rewards
combine with weights (:class:`Reward`), each logged under its own name. A reward that
raises, or returns the wrong length, NaN or inf, stops the run with a :class:`RewardError`;
it is never silently zero.

What counts as an oracle call (``oracle_calls``, ``--max-oracle-calls``): each scoring of
a training rollout's sample. For molecules (PMO's rule, Gao et al. 2022) only the first
scoring of each distinct canonical SMILES counts (repeats and other spellings are answered
from the cache) and invalid SMILES never count. The pre-flight check and the evaluation
rollouts never count, and never fill the cache.

Built-ins are small documented functions registered in :data:`BUILTINS`; a user's own
reward is named ``package.module:function`` or ``path/to/file.py:function``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import io
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from genforge.rl.music_rewards import cadence, in_key, no_parallels, voice_ranges
from genforge.rl.oracle import (  # Reward and RewardError: public here too
    Reward,
    RewardError,
    RewardTerm,
)

# --------------------------------------------------------------------------- text


@functools.lru_cache(maxsize=1)
def _vader():
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise RewardError("the sentiment reward needs vaderSentiment: pip install 'genforge[text]'") from None
    return SentimentIntensityAnalyzer()


def sentiment(samples: Sequence[str]) -> list[float]:
    """VADER compound sentiment in [-1, 1] (Hutto & Gilbert 2014): +1 most positive. A
    lexicon-and-rules model that ships its lexicon, so it runs offline."""
    analyzer = _vader()
    return [float(analyzer.polarity_scores(s)["compound"]) for s in samples]


def keyword(samples: Sequence[str], word: str, case_sensitive: bool = False) -> list[float]:
    """1 if ``word`` occurs in the sample, else 0."""
    if not word:
        raise RewardError("keyword reward: give the word with --reward-arg word=TEXT")
    if case_sensitive:
        return [float(word in s) for s in samples]
    return [float(word.lower() in s.lower()) for s in samples]


def regex(samples: Sequence[str], pattern: str) -> list[float]:
    """1 if the regular expression ``pattern`` matches anywhere in the sample, else 0."""
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise RewardError(f"regex reward: pattern {pattern!r} is not a valid regular expression ({e})") from None
    return [float(compiled.search(s) is not None) for s in samples]


def length(samples: Sequence[str], target: int, unit: str = "words") -> list[float]:
    """1 at exactly ``target`` words (or characters), falling linearly to 0 at 0 and 2x target:
    max(0, 1 - |n - target| / target)."""
    if target < 1 or unit not in ("words", "chars"):
        raise RewardError("length reward: target must be >= 1 and unit 'words' or 'chars'")
    counts = [len(s.split()) if unit == "words" else len(s) for s in samples]
    return [max(0.0, 1.0 - abs(n - target) / target) for n in counts]


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def repetition(samples: Sequence[str], n: int = 3) -> list[float]:
    """Minus the fraction of the sample's word n-grams that repeat an earlier one in the same
    sample: 0 for no repetition, toward -1 for a loop. None for samples shorter than n words."""
    out: list[float | None] = []
    for s in samples:
        grams = _ngrams(s.split(), n)
        out.append(None if not grams else -(1.0 - len(set(grams)) / len(grams)))
    return out


@functools.lru_cache(maxsize=1)
def _sentence_encoder():
    from genforge.nn.text_encoder import SentenceEncoder

    return SentenceEncoder()


def similarity(samples: Sequence[str], target: str) -> list[float]:
    """Cosine similarity in [-1, 1] of the all-MiniLM-L6-v2 sentence embeddings (the frozen
    encoder text-to-image diffusion uses, offline) of the sample and ``target``."""
    if not target:
        raise RewardError("similarity reward: give the phrase with --reward-arg target=TEXT")
    encoder = _sentence_encoder()
    with torch.no_grad():
        pooled = encoder([target, *[s if s.strip() else "." for s in samples]])[2].float()
    pooled = torch.nn.functional.normalize(pooled, dim=-1)
    return (pooled[1:] @ pooled[0]).tolist()


# --------------------------------------------------------------------------- molecules
# Invalid SMILES score the reward's floor (0 for QED, validity and similarity; -10 for
# penalized logP), so validity is folded into every molecule reward.

PLOGP_FLOOR = -10.0


def _mols(samples: Sequence[str]) -> list:
    from genforge.metrics.molecules import _mol, _quiet_rdkit, require_rdkit

    require_rdkit()
    with _quiet_rdkit():
        return [_mol(s) for s in samples]


def validity(samples: Sequence[str]) -> list[float]:
    """1 if RDKit parses and sanitizes the SMILES, else 0."""
    return [float(m is not None) for m in _mols(samples)]


def qed(samples: Sequence[str]) -> list[float]:
    """QED drug-likeness in [0, 1] (Bickerton et al. 2012); 0 for invalid SMILES."""
    from genforge.metrics.molecules import qed as qed_of

    return [0.0 if m is None else qed_of(m) for m in _mols(samples)]


def _largest_ring_excess(mol) -> int:
    rings = mol.GetRingInfo().AtomRings()
    return max([len(r) - 6 for r in rings if len(r) > 6], default=0)


def plogp(samples: Sequence[str]) -> list[float]:
    """Penalized logP: logP - SA - (atoms of the largest ring beyond 6), each standardized by
    its ZINC250k mean and standard deviation as in JT-VAE (Jin et al. 2018) and the
    benchmarks that copied it (GCPN, MolDQN). Floored at -10; invalid SMILES score -10."""
    from genforge.metrics.molecules import logp, sa

    out = []
    for m in _mols(samples):
        if m is None:
            out.append(PLOGP_FLOOR)
            continue
        value = ((logp(m) - 2.4570953396190123) / 1.434324401111988
                 - (sa(m) - 3.0525811293166134) / 0.8335207024513095
                 - (_largest_ring_excess(m) - 0.0485696876403053) / 0.2860212110245455)
        out.append(max(PLOGP_FLOOR, value))
    return out


@functools.lru_cache(maxsize=8)
def _target_fingerprint(target: str):
    from genforge.metrics.molecules import fingerprint

    mols = _mols([target])
    if mols[0] is None:
        raise RewardError(f"tanimoto reward: target {target!r} is not a valid SMILES")
    return fingerprint(mols[0])


def tanimoto(samples: Sequence[str], target: str) -> list[float]:
    """Tanimoto similarity in [0, 1] of Morgan fingerprints (radius 2, 1024 bits, as MOSES)
    to the ``target`` SMILES, by the metrics' one Tanimoto (SNN's); 0 for invalid SMILES."""
    from genforge.metrics.molecules import morgan_fingerprints, tanimoto_to

    ref = _target_fingerprint(target)
    mols = _mols(samples)
    sims = iter(tanimoto_to(morgan_fingerprints([m for m in mols if m is not None]), ref).tolist())
    return [0.0 if m is None else next(sims) for m in mols]


# --------------------------------------------------------------------------- images
# Images arrive as (N, C, H, W) floats in [0, 1].


def brightness(samples: torch.Tensor) -> list[float]:
    """Mean pixel value in [0, 1]."""
    return samples.float().mean(dim=(1, 2, 3)).tolist()


def _jpeg_kb(samples: torch.Tensor, quality: int) -> list[float]:
    from PIL import Image

    pixels = (samples.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    sizes = []
    for img in pixels:
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=quality)
        sizes.append(buf.tell() / 1000.0)
    return sizes


def jpeg_compressibility(samples: torch.Tensor, quality: int = 95) -> list[float]:
    """Minus the JPEG size in kB at ``quality`` (Black et al. 2023, DDPO): smaller files score higher."""
    return [-s for s in _jpeg_kb(samples, quality)]


def jpeg_incompressibility(samples: torch.Tensor, quality: int = 95) -> list[float]:
    """The JPEG size in kB at ``quality`` (DDPO's incompressibility): more detail scores higher."""
    return _jpeg_kb(samples, quality)


def classifier(samples: torch.Tensor, target: int | str, data: Any = None) -> list[float]:
    """Probability of class ``target`` (index or name) under the dataset's fixed domain
    classifier, the same network whose features FD uses. ``data`` is the run's dataset
    (filled in by genforge)."""
    from genforge.metrics.extractor import load_extractor

    if data is None:
        raise RewardError("classifier reward: needs the run's image dataset")
    names = list(data.spec.class_names or ())
    if isinstance(target, str) and not target.lstrip("-").isdigit():
        if target not in names:
            raise RewardError(f"classifier reward: no class {target!r}; classes are: {', '.join(names)}")
        index = names.index(target)
    else:
        index = int(target)
    k = data.spec.num_classes
    if not 0 <= index < k:
        raise RewardError(f"classifier reward: target class {index} is outside 0..{k - 1}")
    if data.fingerprint not in _EXTRACTORS:  # loaded once per dataset (by its test images' hash)
        _EXTRACTORS[data.fingerprint] = load_extractor(data)
    _, probs = _EXTRACTORS[data.fingerprint].run(samples.float().cpu())
    return probs[:, index].tolist()


_EXTRACTORS: dict[str, Any] = {}


BUILTINS: dict[str, tuple[str, Callable]] = {
    "sentiment": ("text", sentiment),
    "keyword": ("text", keyword),
    "regex": ("text", regex),
    "length": ("text", length),
    "repetition": ("text", repetition),
    "similarity": ("text", similarity),
    "validity": ("molecule", validity),
    "qed": ("molecule", qed),
    "plogp": ("molecule", plogp),
    "tanimoto": ("molecule", tanimoto),
    "brightness": ("image", brightness),
    "jpeg_compressibility": ("image", jpeg_compressibility),
    "jpeg_incompressibility": ("image", jpeg_incompressibility),
    "classifier": ("image", classifier),
    "no_parallels": ("music", no_parallels),  # music rewards: rl/music_rewards.py
    "in_key": ("music", in_key),
    "voice_ranges": ("music", voice_ranges),
    "cadence": ("music", cadence),
}


def builtin_names(modality: str) -> list[str]:
    return [name for name, (m, _) in BUILTINS.items() if m == modality]


# --------------------------------------------------------------------------- resolving


def load_user_function(path: str, what: str = "reward", error: type[Exception] = RewardError) -> Callable:
    """``package.module:function`` or ``path/to/file.py:function`` (relative to the current
    folder). ``what`` names the kind in messages and ``error`` is what failures raise: output
    filters (``genforge.filters``) resolve their functions here too."""
    module_name, _, attr = path.rpartition(":")
    if not module_name or not attr:
        builtin = "a built-in or " if what == "reward" else ""
        raise error(f"{what} '{path}': name {builtin}MODULE:FUNCTION (e.g. mypkg.{what}s:score)")
    try:
        if module_name.endswith(".py"):
            file = Path(module_name)
            if not file.is_file():
                raise error(f"{what} '{path}': no file {file}")
            spec = importlib.util.spec_from_file_location(f"genforge_user_{what}_{file.stem}", file)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = _import_with_cwd(module_name)
    except error:
        raise
    except Exception as e:  # the user's module: any import error is theirs to see
        raise error(f"{what} '{path}': importing {module_name} failed ({type(e).__name__}: {e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise error(f"{what} '{path}': {module_name} has no function '{attr}'")
    return fn


def _import_with_cwd(name: str):
    """``import name`` with the current folder on the import path for this lookup only, so
    ``--reward myrewards:fn`` finds ./myrewards.py as users expect (``python -m`` does the same)."""
    cwd = str(Path.cwd())
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(name)
    finally:
        if added and cwd in sys.path:
            sys.path.remove(cwd)


def parse_spec(spec: str) -> tuple[str, float]:
    """``NAME`` or ``NAME=WEIGHT`` -> (name, weight)."""
    name, sep, weight = spec.rpartition("=")
    if not sep:
        return spec.strip(), 1.0
    try:
        value = float(weight)
    except ValueError:
        raise RewardError(f"--reward {spec!r}: the weight after '=' must be a number") from None
    if not math.isfinite(value):
        raise RewardError(f"--reward {spec!r}: the weight must be finite")
    return name.strip(), value


def build_reward(specs: Sequence[str], args: dict[str, dict[str, Any]], modality: str,
                 data: Any = None) -> Reward:
    """Rewards from ``--reward`` specs and ``--reward-arg`` values ({reward name: {key: value}}),
    counting oracle calls by the modality's oracle key (``rl.specs``).

    A built-in of another modality, an unknown name, or an argument the function does not
    take are errors that list what would work."""
    if not specs:
        raise RewardError(f"name at least one --reward; built-ins for {modality}: "
                          f"{', '.join(builtin_names(modality))} (or MODULE:FUNCTION)")
    terms = []
    seen = set()
    for spec in specs:
        name, weight = parse_spec(spec)
        if name in seen:
            raise RewardError(f"--reward {name} is given twice; give each reward once with its weight")
        seen.add(name)
        if name in BUILTINS:
            kind, fn = BUILTINS[name]
            if kind != modality:
                raise RewardError(f"reward '{name}' scores {kind} samples, but this run makes {modality}; "
                                  f"built-ins for {modality}: {', '.join(builtin_names(modality))}")
        elif ":" in name:
            fn = load_user_function(name)
        else:
            raise RewardError(f"unknown reward '{name}'; built-ins for {modality}: "
                              f"{', '.join(builtin_names(modality))}, or MODULE:FUNCTION for your own")
        bound = dict(args.get(name, {}))
        params = inspect.signature(fn).parameters
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        for key in bound:
            if key not in params and not accepts_any:
                takes = [p for p in list(params)[1:] if p != "data"]
                raise RewardError(f"reward '{name}' takes no argument '{key}'; it takes: "
                                  f"{', '.join(takes) or 'none'}")
        if "data" in params and "data" not in bound and name in BUILTINS:
            bound["data"] = data
        missing = [p.name for p in list(params.values())[1:]
                   if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD
                   and p.name not in bound and name in BUILTINS]
        if missing:
            raise RewardError(f"reward '{name}' needs --reward-arg {missing[0]}=VALUE")
        label = f"{Path(name.rpartition(':')[0]).stem}:{name.rpartition(':')[2]}" if ".py:" in name else name
        takes = None if accepts_any else frozenset(list(params)[1:]) - set(bound)
        terms.append(RewardTerm(label, weight, functools.partial(fn, **bound) if bound else fn, takes))
    unused = sorted(set(args) - seen)
    if unused:
        raise RewardError(f"--reward-arg {unused[0]}.…: no reward '{unused[0]}' was named with --reward")
    if all(t.weight == 0 for t in terms):
        raise RewardError("every --reward has weight 0, so every sample scores 0 and there is nothing to "
                          "learn; give at least one reward a nonzero weight (NAME=WEIGHT)")
    from genforge.rl.specs import rl_spec

    return Reward(terms, key=rl_spec(modality).oracle_key)
