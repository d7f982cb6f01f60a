"""`genforge sample` on a piano-roll image run (``jsb-roll``: diffusion, the GAN) written as music.

The image families train on 2-bar piano rolls (1 x 48 pitches x 32 16ths, data/music_roll.py)
with no family code changed, so their samples are images. With ``--out`` ending in .mid/.midi,
.wav, .png or .musicxml, this module draws those images as the image modality does (class
labels, the family's sampler options, the output filters on the rolls themselves), decodes
each one to a four-voice grid (threshold 0.5, voices by pitch order: ``roll_to_grid``) and
writes it as a music run writes a piece: one file per sample (FILE-1.mid, FILE-2.mid, ...),
each with its provenance (a PNG's own chunk, else a FILE.provenance.json sidecar). On these
runs a .png is the piece's piano-roll picture, as on music runs; the raw image grid is what
`genforge sample RUN` writes without ``--out``, and ``--out FILE.npz`` keeps the rolls.

Nothing here marks the output: a watermark in pixels or in the initial noise does not survive
thresholding into notes, so none is applied and ``--watermark-strength`` is refused.

``--tempo`` (the music modality's own option, one object) sets the written MIDI/WAV tempo as on
music runs. `genforge eval` on these runs adds the music metric table of the decoded samples beside
real Bach (:func:`roll_music_metrics`), next to the image metrics.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genforge import GenforgeError
from genforge.modalities.music import MUSIC, resolve_tempo

# --tempo, declared by the music modality; the image modality declares the same object, so the CLI
# has one definition (``all_options`` refuses two different ones).
TEMPO = next(o for o in MUSIC.sample_options if o.name == "tempo")
SUFFIXES = (".mid", ".midi", ".wav", ".png", ".musicxml")
# Image options with no meaning once a roll becomes notes: name -> why, for a one-line refusal.
NOT_FOR_MUSIC = {
    "nearest": "draws an image grid beside training images",
    "sign": "signs PNG image grids (C2PA)",
    "sign_cert": "goes with --sign",
    "sign_key": "goes with --sign",
    "watermark_strength": "sets a pixel watermark, which thresholding into notes removes",
    "trajectory": "draws an image grid of denoising steps",
    "interpolate": "writes an image grid",
    "attribute": "writes an image grid",
}
PATH_SETTINGS = ("interp_points", "interp_method")  # a latent model's --interpolate settings, with defaults


def writes_music(run, out) -> bool:
    """Whether this `genforge sample` call on an image run writes music: a piano-roll run
    (``ROLL_DATASETS``) with ``--out`` ending in one of ``SUFFIXES``."""
    from genforge.data.music_roll import ROLL_DATASETS

    return out is not None and run.spec.name in ROLL_DATASETS and Path(out).suffix.lower() in SUFFIXES


def sample_roll_music(run, generator, refs, labels, *, num_samples, out, batch_size, seed, class_label=None,
                      nearest=False, filter=None, privacy_filter=None, no_watermark=False, watermark_strength=None,
                      tempo=None, **family_options) -> list[Path]:
    """Draw ``num_samples`` rolls (default 1: one piece, as on music runs), decode and write them.
    The image modality hands over what it resolves for any image run (this module does not import
    it: it calls here): ``refs``, its ``ImageRefs`` without a noise mark (a Tree-Ring key cannot be
    read back from notes), and ``labels(n)``, the (n,) class labels of ``--class-label`` or None."""
    from genforge.audit.privacy import sample_filters
    from genforge.data.images import to_unit
    from genforge.data.music_roll import roll_to_grid
    from genforge.modalities import step_progress
    from genforge.modalities.music import stamp_piece
    from genforge.outputs import check_out
    from genforge.provenance import sample_stamp

    given = {"nearest": nearest, "watermark_strength": watermark_strength, **family_options}
    wrong = [k for k, v in given.items() if k in NOT_FOR_MUSIC and v not in (None, False)]
    if wrong:
        k = wrong[0]
        raise GenforgeError(f"--{k.replace('_', '-')} {NOT_FOR_MUSIC[k]}; it does not apply when a piano-roll "
                            f"run writes music (--out {out}); use --out FILE.npz or no --out for images")
    from genforge.families.base import LatentVariableModel

    # a VAE's path settings (defaults filled in) belong to --interpolate, refused above
    drop = set(NOT_FOR_MUSIC) | (set(PATH_SETTINGS) if isinstance(run.model, LatentVariableModel) else set())
    family_options = {k: v for k, v in family_options.items() if k not in drop}
    model, spec, suffix = run.model, run.spec, Path(out).suffix.lower()
    tempo = resolve_tempo(tempo, suffix)
    stamp = sample_stamp(run, generator, dict(num_samples=num_samples, out=out, batch_size=batch_size, seed=seed,
                                              class_label=class_label, filter=filter,
                                              privacy_filter=privacy_filter, tempo=tempo, **family_options),
                         png=False)
    plan = model.plan_sampling(family_options, num_samples, refs)
    n = plan.count or (1 if num_samples is None else num_samples)
    if plan.one_row:  # a latent path (the GAN's --interpolate-seeds): one call
        batch_size = n

    def names(k: int) -> list[Path]:  # one piece: --out itself; several: FILE-1.mid, FILE-2.mid, ...
        return [Path(out)] if n == 1 else [Path(out).with_name(f"{Path(out).stem}-{i + 1}{suffix}") for i in range(k)]

    for path in names(n)[1:]:  # every name checked before minutes of sampling (--out itself by the CLI)
        check_out(path)
    if suffix == ".wav":  # FluidSynth missing is said before sampling, not after
        from genforge.data.music_render import wav_tools

        wav_tools()
    screens = sample_filters(run, filter, privacy_filter)  # loaded before sampling: fails fast
    prompts = plan.options.get("prompt")
    if prompts and class_label is not None:
        raise GenforgeError("give either --prompt or --class-label, not both")
    y = None if prompts else labels(n)
    chunks = []
    for s in range(0, n, batch_size):
        batch_y = None if y is None else y[s:s + batch_size]
        with step_progress(plan, f"batch {s // batch_size + 1}") as per_step:
            x = model.sample(min(batch_size, n - s), generator, labels=batch_y, **plan.options, **per_step)
        # (b, 1, 48, 32) uint8, rounded as the image path stores rolls (.npz), so both decode alike
        chunks.append((to_unit(x.cpu(), spec.pixel_range) * 255).round().to(torch.uint8))
    images = torch.cat(chunks)
    stamp.record["watermark"] = {"watermarked": False, "why": "piano rolls written as notes"}
    kept = list(range(n))
    if screens:  # on the rolls, as on any image run: a near-copy of a training roll is blocked
        from genforge.filters import screen, summary

        kept, blocked = screen(images.float() / 255.0, screens, "rolls")
        stamp.record["screening"] = summary(screens, n, blocked)
    paths = names(len(kept))
    grids = [roll_to_grid(images[i, 0].numpy() / 255.0) for i in kept]  # (32, 4) each, voices by pitch order
    for grid, path in zip(grids, paths, strict=True):
        write_grid(grid, path, tempo)
        stamp_piece(stamp, path)
    print(f"wrote {len(paths)} piece(s) of {len(grids[0])} 16th steps decoded from piano rolls "
          f"(threshold 0.5): " + ", ".join(str(p) for p in paths))
    return paths


def write_grid(grid: np.ndarray, path: Path, tempo: float = 100.0) -> Path:
    """A (T, 4) grid -> ``path`` by its suffix, as a music run writes a piece (four named parts,
    General MIDI 52 = choir aahs; a repeated pitch is a held note, as in the JSB grid)."""
    from genforge.data import music_render
    from genforge.data.music import VOICES, grid_notes
    from genforge.modalities.music import write_notes

    return write_notes(grid_notes(grid), path, tempo, [v.capitalize() for v in VOICES], 52,
                       lambda p: music_render.musicxml(grid, p, tempo=tempo))


def roll_music_metrics(run):
    """For `genforge eval` on a piano-roll run, a function (rolls, data) -> the music metric
    table of the samples beside real Bach (``metrics.music.evaluate_grids``, the keys GPT and
    seqvae music runs report); None on other image runs. ``rolls``: the drawn samples (n, 1,
    ROWS, STEPS) in [0, 1]; ``data``: the run's image data.

    Both sides go through the same pipeline, so the floor is what a perfect roll model would
    score: the samples are rounded to 8 bits (as ``sample --out FILE.mid`` writes them) and
    decoded by ``roll_to_grid``; the held-out row is the test split's excerpts (the images the
    feature metrics use) decoded the same way, and the memorization index is every chorale the
    roll dataset trains on (JSB train + valid) through roll and back, so a copied passage
    matches row for row (decoding uncrosses voices and merges unisons)."""
    from genforge.data.music_roll import ROLL_DATASETS

    if run.spec.name not in ROLL_DATASETS:
        return None

    def score(rolls: torch.Tensor, data) -> dict:
        from genforge.data.music import load_jsb
        from genforge.data.music_roll import grid_to_roll, roll_to_grid
        from genforge.metrics.music import evaluate_grids

        quantized = (rolls.clamp(0, 1) * 255).round().numpy() / 255.0  # (n, 1, ROWS, STEPS)
        grids = [roll_to_grid(r) for r in quantized]
        heldout = [roll_to_grid(x / 255.0) for x in data.test.images.numpy()]
        splits = load_jsb()
        train = [roll_to_grid(grid_to_roll(g) / 255.0) for g in splits["train"] + splits["val"]]
        return evaluate_grids(grids, reference=heldout, train=train)

    return score
