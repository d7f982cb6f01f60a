"""The privacy filter: blocks, at generation time, samples that are near-copies of training
items (``genforge sample --privacy-filter [THRESHOLD]``). One :class:`~genforge.filters.Filter`
per modality; the thresholds and their rationale are in ``audit.memorization``:

- images: RMS pixel distance to the nearest training image below THRESHOLD (default 0.025, on
  [0, 1] pixels);
- text: a verbatim overlap with the training text of at least THRESHOLD characters (default 50);
- molecules: an exact training molecule (canonical SMILES; no threshold);
- music: a verbatim run of at least THRESHOLD 16th steps (all four voices) from a training piece,
  or from one of its transpositions the run trained on (default 48; ``audit.music``).

The training data come from the run's own data config, as ``genforge eval`` loads them; this
is audit's one table per modality, as ``rl/specs.py`` is RL's.
"""

from __future__ import annotations

import math

from genforge import GenforgeError
from genforge.audit.memorization import IMAGE_NEAR_COPY_RMS, TEXT_MIN_OVERLAP
from genforge.filters import Filter

DEFAULT = "default"  # what a bare --privacy-filter means (argparse's const)


def training_data(run):
    """The run's dataset, loaded as training loaded it (images without flips)."""
    from genforge.modalities import modality

    cfg = run.config.data
    if run.spec.modality == "image":
        cfg = cfg.model_copy(update={"hflip": False})
    try:
        return modality(run.spec.modality).load(cfg, type(run.model).data_needs(run.model_config))
    except GenforgeError as e:
        raise GenforgeError(f"the privacy filter and the audit need the run's training data '{cfg.name}', "
                            f"which is not available: {e}") from None


def training_text(data) -> str:
    """The whole training split of a text run, decoded to characters."""
    import numpy as np

    return data.tokenizer.decode(np.asarray(data.train.tokens).tolist())


def training_molecules(data) -> set[str]:
    """Canonical SMILES of the training molecules (cached as ``genforge eval`` caches them)."""
    from genforge.data.locate import cache_dir
    from genforge.metrics.molecules import canonical_set

    # the folder of modalities.molecule.metrics_cache (not imported: the modality imports this module)
    return canonical_set(data.train_smiles, cache_dir=cache_dir() / "moses")


def _number(value: str, kind, what: str, low: float, high: float, default):
    if value is None or value == DEFAULT:
        return default
    try:
        x = kind(value)
    except (TypeError, ValueError):
        x = math.nan
    if not (isinstance(x, (int, float)) and math.isfinite(x) and low <= x <= high):
        raise GenforgeError(f"--privacy-filter {value}: {what} (default {default})")
    return x


def image_privacy(run, value: str | None) -> Filter:
    from genforge.audit.memorization import image_distances

    t = _number(value, float, "for images, give an RMS pixel distance in (0, 1]", 1e-9, 1.0, IMAGE_NEAR_COPY_RMS)
    train = training_data(run).train.images  # (M, C, H, W) uint8

    def near_copies(samples):  # (N, C, H, W) in [0, 1]
        idx, rms = image_distances(samples, train)
        return [(True, None) if d >= t else
                (False, f"near-copy of training image {int(j)} (RMS pixel distance {d:.4f} < {t:g})")
                for j, d in zip(idx.tolist(), rms.tolist(), strict=True)]

    return Filter(f"privacy (images: RMS pixel distance < {t:g})", near_copies)


def text_privacy(run, value: str | None) -> Filter:
    from genforge.audit.textindex import SuffixIndex

    n = _number(value, int, "for text, give a whole number of characters >= 1", 1, 10**9, TEXT_MIN_OVERLAP)
    index = SuffixIndex(training_text(training_data(run)))

    def verbatim(samples):  # strings
        out = []
        for s in samples:
            length = int(index.matching_statistics(s)[0].max()) if s else 0
            out.append((True, None) if length < n else
                       (False, f"{length} characters verbatim from the training text (>= {n})"))
        return out

    return Filter(f"privacy (text: >= {n} characters verbatim)", verbatim)


def molecule_privacy(run, value: str | None) -> Filter:
    from genforge.metrics.molecules import canonical_smiles, require_rdkit

    if value not in (None, DEFAULT):
        raise GenforgeError(f"--privacy-filter {value}: molecules are blocked only as exact training "
                            "molecules (canonical SMILES); give --privacy-filter without a threshold")
    require_rdkit()
    train = training_molecules(training_data(run))

    def exact(samples):  # SMILES strings
        out = []
        for s in samples:
            c = canonical_smiles(s)
            out.append((False, f"training molecule {c}") if c is not None and c in train else (True, None))
        return out

    return Filter("privacy (molecules: exact training molecule)", exact)


def music_index(run, data=None):
    """The run's training pieces as an ``audit.music.TrainingIndex`` (with the transpositions it
    trained on)."""
    from genforge.audit.music import TrainingIndex

    data = training_data(run) if data is None else data
    return TrainingIndex(data.pieces["train"], int(run.config.data.transpose or 0))


def music_grid(run, sample):
    """A music sample as the filters get it (token text, as RL rewards read it) -> (T, 4) grid."""
    import numpy as np

    tok = run.tokenizer
    return tok.to_grid(tok.encode(sample)) if isinstance(sample, str) else np.asarray(sample)


def music_privacy(run, value: str | None) -> Filter:
    from genforge.audit.music import MUSIC_MIN_COPY

    n = _number(value, int, "for music, give a whole number of 16th steps >= 1", 1, 10**9, MUSIC_MIN_COPY)
    index = music_index(run)

    def verbatim(samples):  # token text ("p67 p62 p55 p43 hold ...")
        out = []
        for s in samples:
            c = index.longest(music_grid(run, s))
            shift = f", transposed {c['shift']:+d}" if c["shift"] else ""
            out.append((True, None) if c["steps"] < n else
                       (False, f"{c['steps']} 16th steps verbatim from training piece {c['train_index']} "
                               f"(from step {c['train_start']}{shift}; >= {n})"))
        return out

    return Filter(f"privacy (music: >= {n} 16th steps verbatim)", verbatim)


PRIVACY = {"image": image_privacy, "text": text_privacy, "molecule": molecule_privacy, "music": music_privacy}


def privacy_filter_for(run, value: str | None = DEFAULT) -> Filter:
    """The privacy filter for ``run`` at threshold ``value`` (a string as typed; ``"default"``
    or None for the modality's default)."""
    make = PRIVACY.get(run.spec.modality)
    if make is None:
        raise GenforgeError(f"the privacy filter has no near-copy test for {run.spec.modality} runs yet; "
                            f"it covers {', '.join(PRIVACY)}")
    return make(run, value)


def sample_filters(run, filter=None, privacy_filter: str | None = None) -> list[Filter]:
    """`genforge sample`'s ``--privacy-filter [THRESHOLD]`` and ``--filter`` for ``run``, privacy
    first (a near-copy is blocked whatever a user filter says). Built before sampling, so a bad
    path or threshold fails before minutes of work."""
    from genforge.filters import filter_specs, load_filter

    out = [] if privacy_filter is None else [privacy_filter_for(run, privacy_filter)]
    return out + [load_filter(s) for s in filter_specs(filter)]
