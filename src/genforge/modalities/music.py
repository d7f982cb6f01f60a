"""Music: four-voice chorales or any MIDI as tokens; samples are MIDI, WAV, PNG or MusicXML.

Any family that models token sequences with a context (``data_needs`` gives a ``block_size``:
the GPT) trains here. A sample is one context of tokens after ``<bos>`` (or after the opening
given with ``--prompt-midi``), up to its ``<eos>``. ``genforge eval`` reports the held-out NLL
per note in nats on the validation and test splits, where a note is one token of the grid
serialization: one voice at one 16th-note step (pitch, hold or rest), as in the note-wise
numbers of Huang et al., "Music Transformer" (ICLR 2019), Table 1 (JSB Chorales); the ``<eos>``
after each chorale is not a note and is left out. Each token is scored once, with at least half a
context before it (sliding windows, :mod:`genforge.data.music_splits`).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genforge import GenforgeError
from genforge.data.music import DEFAULT_TEMPO, TEMPO_RANGE, check_tempo
from genforge.families.base import TEMPERATURE, LatentVariableModel, SampleOption
from genforge.modalities import EVAL_NUM_SAMPLES, FILTER, PRIVACY_FILTER, Modality

OUT_SUFFIXES = (".mid", ".midi", ".wav", ".png", ".musicxml")


class MusicModality(Modality):
    name = "music"
    unit = "notes"  # grid tokens: one voice at one 16th step
    data_fields = frozenset({"music_tokens", "transpose", "key_to_c"})
    sample_options = (
        TEMPERATURE,
        SampleOption("prompt_midi", "music runs: continue the opening in this MIDI file", str, metavar="FILE"),
        SampleOption("melody", "music runs: harmonize the soprano (top voice) of this MIDI file: the GPT on "
                               "grid tokens is given each step's soprano and samples alto, tenor and bass "
                               "(it sees the melody up to the current step, not ahead)", str, metavar="FILE"),
        SampleOption("key", "music runs on chorale tokens: start the piece in this key, e.g. 'D major' or "
                            "'F# minor' (without it the model picks the key; a data.key_to_c run composes in C major or A "
                            "minor and the piece is moved to KEY)", str, metavar="KEY"),
        SampleOption("tempo", "music runs: quarter notes per minute in the written MIDI, WAV and MusicXML "
                              f"(piano-roll runs too; default 100, {TEMPO_RANGE[0]:g} to {TEMPO_RANGE[1]:g}; a .png piano "
                              "roll has no tempo)",
                     float, metavar="BPM"),
        SampleOption("steps", "music runs: grid runs: 16th steps to add after the opening; events runs: "
                              "event tokens (default: what fits the context; longer pieces crop the context)",
                     int, metavar="N", minimum=1),
        FILTER,
        PRIVACY_FILTER,
    )
    eval_options = (EVAL_NUM_SAMPLES,)

    def load(self, data_cfg, needs: dict[str, Any]):
        from genforge.data.music_splits import load_music

        if "max_length" in needs:  # one sequence per example: fixed-length phrases (seqvae)
            from genforge.data.music_phrases import load_phrases

            return load_phrases(data_cfg, needs["max_length"])
        if "block_size" not in needs:
            raise GenforgeError(f"dataset '{data_cfg.name}' is music (token sequences with a context); "
                                "this family does not model those (use gpt)")
        return load_music(data_cfg, needs["block_size"])

    def count(self, batch) -> int:
        """Tokens trained on: the masked targets of a data batch, the generated tokens (the
        action mask) of an RL rollout batch."""
        return int(batch["mask" if "mask" in batch else "action"].sum())

    def write_preview(self, sample: str, path_stem: Path, data) -> Path:
        """The first previewed piece as MIDI (a preview is token names, one piece per line)."""
        from genforge.data.music import notes_to_midi

        first = sample.splitlines()[0] if sample.strip() else ""
        path = path_stem.with_suffix(".mid")
        notes = data.tokenizer.to_notes(data.tokenizer.encode(first))
        notes_to_midi(notes, path, parts=_parts(data.tokenizer))
        return path

    # -- sample ------------------------------------------------------------------------
    def sample_command(self, run, generator, *, num_samples, out, batch_size, seed, temperature,
                       prompt_midi=None, melody=None, key=None, tempo=None, steps=None, filter=None, privacy_filter=None,
                       **family_options) -> None:
        from genforge.audit.privacy import sample_filters
        from genforge.outputs import check_out, unique_output

        temperature = 1.0 if temperature is None else temperature
        if not math.isfinite(temperature) or temperature < 0:
            raise GenforgeError(f"--temperature must be >= 0 (0 is greedy), got {temperature}")
        suffix = Path(out).suffix.lower() if out else ".mid"
        if suffix not in OUT_SUFFIXES:
            raise GenforgeError(f"--out {out}: music is written as {', '.join(OUT_SUFFIXES)}")
        tempo = resolve_tempo(tempo, suffix)
        n = 1 if num_samples is None else num_samples
        # FILE-1.mid, FILE-2.mid, ...: each checked like --out itself, before sampling (not after it)
        numbered = [check_out(Path(out).with_name(f"{Path(out).stem}-{i + 1}{suffix}"))
                    for i in range(n)] if out is not None and n > 1 else []
        if suffix == ".wav":  # FluidSynth missing is said before sampling, not after
            from genforge.data.music_render import wav_tools

            wav_tools()
        screens = sample_filters(run, filter, privacy_filter)  # loaded before sampling: fails fast
        # Every written piece records its origin: PNG piano rolls in their own chunk, MIDI, WAV and
        # MusicXML in a FILE.provenance.json sidecar (a MIDI meta event would be lost by re-saving).
        from genforge.provenance import sample_stamp

        stamp = sample_stamp(run, generator, {
            "num_samples": num_samples, "out": out, "batch_size": batch_size, "seed": seed,
            "temperature": temperature, "prompt_midi": prompt_midi, "melody": melody, "key": key,
            "tempo": tempo, "steps": steps, "filter": filter, "privacy_filter": privacy_filter,
            **family_options}, png=False)
        if isinstance(run.model, LatentVariableModel):  # whole phrases (seqvae): modalities/music_latent.py
            from genforge.modalities.music_latent import latent_rows

            ids = latent_rows(run, generator, family_options, num_samples, batch_size, temperature,
                              dict(prompt_midi=prompt_midi, melody=melody, steps=steps))
        else:
            ids = self._continue(run, generator, n, batch_size, temperature, prompt_midi, melody, steps,
                                 family_options, key)
        if screens:  # filters read token text, as RL rewards do; blocked pieces are never written
            from genforge.filters import screen

            kept, _ = screen([run.tokenizer.decode(row) for row in ids], screens, "pieces")
            ids = [ids[i] for i in kept]
        if out is None:
            paths = [unique_output(run.run_dir / "samples", "music", ".mid") for _ in ids]
        elif n == 1:
            paths = [Path(out)]
        else:
            paths = [check_out(path) for path in numbered[:len(ids)]]  # again: one may have appeared since
        for row, path in zip(ids, paths, strict=True):
            write_piece(run.tokenizer, row, path, tempo)
            stamp_piece(stamp, path)
        steps = sorted(len(run.tokenizer.to_grid(row)) for row in ids)
        span = f"{steps[0]}" if steps[0] == steps[-1] else f"{steps[0]}-{steps[-1]}"
        print(f"wrote {len(paths)} piece(s) of {span} 16th steps: " + ", ".join(str(p) for p in paths))

    def _continue(self, run, generator, n, batch_size, temperature, prompt_midi, melody, steps, family_options,
                  key=None):
        """Token rows of a token-stream family (the GPT): ``<bos>`` (and a key) or the opening continued."""
        plan = run.model.plan_sampling(family_options, n, None)
        prompt = prompt_ids(run, prompt_midi, key, need_key=melody is not None)
        shift = home_shift(run, key)  # a data.key_to_c run composes in C major / A minor, then moves
        length = {} if steps is None else {"max_new_tokens": steps * tokens_per_step(run.tokenizer)}
        room = -(-(run.model_config.block_size - len(prompt)) // tokens_per_step(run.tokenizer))  # a partial step counts
        if prompt_midi is not None and steps is None and melody is None and room < 16:
            # without --steps a continuation stops where the context is full: a long opening gets a bar or less
            unit = ("16th step" if run.tokenizer.grid_like else "event token") + ("" if room == 1 else "s")
            print(f"note: the opening fills this model's context, so at most {room} {unit} are added; give "
                  "--steps N to continue further (the context then slides)", file=sys.stderr)
        if melody is not None:
            if prompt_midi is not None or steps is not None:
                raise GenforgeError("--melody sets the piece and its length: drop --prompt-midi and --steps")
            hook = melody_hook(run, melody, len(prompt), -shift)
            length = {"max_new_tokens": hook.length + 1, "logits_hook": hook}  # + the closing <eos>
        ids = []
        for s in range(0, n, batch_size):
            rows = run.model.sample(min(batch_size, n - s), generator, prompts=[prompt] * min(batch_size, n - s),
                                    temperature=temperature, **length, **plan.options)
            ids += [move(run.tokenizer, prompt[1:] + row, shift, fold=True) for row in rows]  # the opening is kept
        return ids

    # -- eval --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, run, num_samples: int | None = None, max_batches: int | None = None,
                 batch_size: int = 16, seed: int = 0, progress: bool = True) -> dict[str, Any]:
        """Note-wise NLL (nats) on the validation and test splits, then the music metrics of
        ``num_samples`` pieces drawn at temperature 1 when :mod:`genforge.metrics.music` offers them."""
        data = self.load(run.config.data, type(run.model).data_needs(run.model_config))
        if data.tokenizer.itos != run.tokenizer.itos:
            raise GenforgeError(f"this run's tokens ({run.tokenizer.kind}) differ from data.music_tokens="
                                f"{data.tokenizer.kind}; evaluate with the run's own data settings")
        if isinstance(run.model, LatentVariableModel):  # phrases: modalities/music_latent.py
            from genforge.modalities.music_latent import evaluate_phrases

            return evaluate_phrases(run, data, num_samples, max_batches, batch_size, seed)
        if type(run.model).policy_kind != "tokens":
            raise GenforgeError(f"note-wise NLL needs a token model with log-probabilities (gpt); "
                                f"this is a {run.config.family} run")
        report: dict[str, Any] = {"step": run.step, "note": "one voice at one 16th step (grid token)"
                                  if data.tokenizer.grid_like else "one event token"}
        for name, split in (("val", data.val), ("test", data.test)):
            if split is None:
                continue
            nll, count = note_nll(run.model, split, data.tokenizer.eos_id, batch_size, max_batches,
                                  skip_ids=data.tokenizer.meta_ids())
            report[f"nll_per_note_{name}"] = nll
            report[f"notes_{name}"] = count
        n = 16 if num_samples is None else num_samples
        device = next(run.model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(seed)
        ids = []
        for s in range(0, n, batch_size):
            ids += run.model.sample(min(batch_size, n - s), generator, temperature=1.0)
        grids = [run.tokenizer.to_grid(row) for row in ids]
        report.update(sample_metrics(grids, data))
        return report


def _parts(tokenizer) -> list[str] | None:
    from genforge.data.music import VOICES

    return [v.capitalize() for v in VOICES] if tokenizer.grid_like else None


def melody_hook(run, path: str, prompt_len: int = 1, shift: int = 0):
    """The soprano of the MIDI file ``path`` (its top voice, read as ``--prompt-midi`` reads a
    file) as forced tokens: every 4th grid token is that step's soprano and the model samples
    alto, tenor and bass after it (``sampling.forcing``: it sees the soprano up to the current
    step, never a future note)."""
    import inspect

    from genforge.data.music import read_midi
    from genforge.sampling.forcing import ForcedSlots

    tok = run.tokenizer
    if not tok.grid_like or "logits_hook" not in inspect.signature(run.model.sample).parameters:
        raise GenforgeError(f"--melody needs a token model on four-voice grids (gpt with data.music_tokens=grid); "
                            f"this is a {run.config.family} run on {tok.kind} tokens: use --prompt-midi FILE")
    if not Path(path).is_file():
        raise GenforgeError(f"--melody {path}: no such file")
    grid, onsets = read_midi(path)
    soprano = move(tok, tok.encode_grid(grid, onsets)[0::4], shift)  # one token per 16th step: pitch, hold or rest
    if not soprano or all(t == tok.stoi["rest"] for t in soprano):
        raise GenforgeError(f"--melody {path} holds no notes")
    return ForcedSlots(soprano, period=4, slot=0, prompt_len=prompt_len, eos_id=tok.eos_id,
                       banned=[tok.bos_id, tok.pad_id, *tok.meta_ids()])


def tokens_per_step(tokenizer) -> int:
    return 4 if tokenizer.grid_like else 1


def home_shift(run, key: str | None) -> int:
    """Semitones from the key a ``data.key_to_c`` run composes in (C major or A minor: the only
    keys it saw) up to ``key`` (-6..5); 0 without ``--key`` or on other runs."""
    if key is None or not getattr(run.config.data, "key_to_c", False):
        return 0
    from genforge.data.music_chorales import parse_key

    pc, mode = parse_key(key)
    return (pc - (0 if mode == "major" else 9) + 6) % 12 - 6


def move(tok, ids, k: int, fold: bool = False) -> list[int]:
    """``ids`` transposed ``k`` semitones (key token included). A pitch that would leave MIDI's
    0..127 is a one-line error, or with ``fold`` (sampled pieces) moved an octave back inside."""
    if not k:
        return list(ids)
    out = [int(i) for i in tok.transpose_ids(list(ids), k)]
    for j, i in enumerate(ids):
        for base in (tok.pitch0, getattr(tok, "fpitch0", None)):
            if base is not None and base <= i < base + 128 and not 0 <= i - base + k <= 127:
                if not fold:
                    raise GenforgeError(f"moving this piece {k:+d} semitones (to the key asked for) leaves "
                                        "MIDI's pitch range 0..127")
                out[j] = i + k + (12 if i - base + k < 0 else -12)
    return out


def prompt_ids(run, path: str | None, key: str | None = None, need_key: bool = False) -> list[int]:
    """``<bos>``, the ``--key`` token (chorale tokens) and, with ``--prompt-midi``, the tokens of
    that opening (at most the context). A chorale run always reads its key token right after
    ``<bos>``, so an opening or a melody on one needs ``--key``."""
    tok = run.tokenizer
    if key is not None and tok.kind != "chorale":
        raise GenforgeError(f"--key needs a run trained on chorale tokens (data.music_tokens=chorale); "
                            f"this run's tokens are {tok.kind} and carry no key")
    shift = home_shift(run, key)  # a data.key_to_c run reads C major / A minor: the opening moves there
    head = [tok.bos_id] + (move(tok, [tok.key_id(key)], -shift) if key is not None else [])
    if tok.kind == "chorale" and key is None and (path is not None or need_key):
        raise GenforgeError("a chorale run reads the key first: give --key (e.g. 'D major') with "
                            "--prompt-midi or --melody")
    if path is None:
        return head
    from genforge.data.music import read_midi, read_midi_notes

    if not Path(path).is_file():
        raise GenforgeError(f"--prompt-midi {path}: no such file")
    body = tok.encode_grid(*read_midi(path)) if tok.grid_like else tok.encode_notes(read_midi_notes(path)[0])
    body = move(tok, body, -shift)
    if not body:
        raise GenforgeError(f"--prompt-midi {path} holds no notes")
    block = run.model_config.block_size
    if len(body) + len(head) >= block:
        room = block - len(head) - 1  # one token left to sample
        most = f"{room // 4} 16th steps" if tok.grid_like else f"{room} event tokens"  # events: not steps
        raise GenforgeError(f"--prompt-midi {path} is {len(body)} tokens; this model's context is {block}: "
                            f"give an opening of at most {most}")
    return [*head, *body]


def resolve_tempo(tempo: float | None, suffix: str) -> float:
    """``--tempo`` for a file ending in ``suffix``: None (not typed) is DEFAULT_TEMPO; a typed tempo
    must lie in TEMPO_RANGE (what a MIDI file can carry), and is refused for a .png piano roll,
    which has no time in seconds."""
    if tempo is None:
        return DEFAULT_TEMPO
    check_tempo(tempo, "--tempo")
    if suffix == ".png":
        raise GenforgeError("--tempo sets the tempo of .mid, .wav and .musicxml files; a .png piano roll has "
                            "none (drop --tempo, or write one of those)")
    return tempo


def write_notes(notes, path: Path, tempo: float, parts: list[str] | None, program: int, score) -> Path:
    """A piece's notes -> ``path`` by its suffix (.mid/.midi, .wav, .png, .musicxml); ``score``
    (path -> path) writes the .musicxml, which needs the grid, not the notes. Shared by music
    runs (``write_piece``) and piano-roll runs (``roll_music.write_grid``)."""
    from genforge.data import music_render
    from genforge.data.music import notes_to_midi

    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".mid", ".midi"):
        return notes_to_midi(notes, path, tempo, parts, program=program)
    if suffix == ".wav":
        return music_render.render_wav(notes, path, tempo, parts)
    if suffix == ".png":
        return music_render.piano_roll_png(notes, path, title=path.stem)
    return score(path)


def write_piece(tokenizer, ids, path: Path, tempo: float) -> Path:
    """One sample's ids -> ``path`` by its suffix (.mid/.midi, .wav, .png, .musicxml)."""
    from genforge.data import music_render

    def score(p: Path) -> Path:
        return music_render.musicxml(tokenizer.to_grid(ids), p,
                                     tokenizer.decode_grid(ids)[1] if tokenizer.grid_like else None,
                                     tokenizer.fermatas(ids) if tokenizer.kind == "chorale" else None, tempo)

    return write_notes(tokenizer.to_notes(ids), path, tempo, _parts(tokenizer),
                       52 if tokenizer.grid_like else 0, score)


@torch.no_grad()
def note_nll(model, split, eos_id: int, batch_size: int, max_batches: int | None,
             skip_ids=()) -> tuple[float, int]:
    """Mean -log p (nats) over the notes of ``split`` (its masked targets that are not ``<eos>``
    nor one of ``skip_ids``: chorale key tokens) and their count; every note is scored once (see
    ``WindowSplit``)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    starts = list(range(0, len(split), batch_size))[:max_batches]
    was_training = model.training
    model.eval()
    try:
        for s in starts:
            b = split.get(torch.arange(s, min(s + batch_size, len(split))))
            x, y, mask = b["x"].to(device), b["y"].to(device), b["mask"].to(device)
            ids = torch.cat([x[:, :1], y], 1)  # (B, T+1): the window, so logits are over x
            logp = model.token_logprobs(ids)  # (B, T): log p(y | x[: t + 1])
            notes = mask & (y != eos_id) & ~torch.isin(y, torch.as_tensor(list(skip_ids), dtype=y.dtype, device=device))
            total -= float(logp[notes].double().sum())
            count += int(notes.sum())
    finally:
        model.train(was_training)
    return (total / count if count else float("nan")), count


def sample_metrics(grids: list[np.ndarray], data) -> dict[str, Any]:
    """The music metrics of sampled grids beside the held-out pieces', when the metrics module
    provides ``evaluate_grids``; nothing otherwise (eval then reports the NLL alone)."""
    try:
        from genforge.metrics.music import evaluate_grids
    except ImportError:
        return {}
    reference = data.pieces.get("test") or data.pieces.get("val")
    try:
        return evaluate_grids(grids, reference=reference, train=data.pieces.get("train"))
    except GenforgeError as e:
        print(f"note: music metrics skipped: {e}", file=sys.stderr)
        return {}


MUSIC = MusicModality()


def stamp_piece(stamp, path: Path) -> None:
    """Add the sample record to a written piece: a PNG's own chunk, else a sidecar."""
    if path.suffix.lower() == ".png":
        from PIL import Image

        from genforge.provenance import write_png

        with Image.open(path, formats=["PNG"]) as im:  # matplotlib wrote it without the chunk
            im.load()
        write_png(im, path, stamp)
    else:
        stamp.sidecar(path)
