"""`genforge sample` on a music run of a latent-variable family (seqvae on fixed-length phrases).

The GPT continues ``<bos>`` for as long as asked; a phrase VAE draws whole phrases from its
prior (z ~ N(0, I), decoded autoregressively), samples around one phrase (``--around FILE.mid``)
or walks the latent path between two phrases (``--interpolate A.mid B.mid``), MusicVAE's
interpolation demo (Roberts et al., ICML 2018, sec. 5.2). A MIDI file given here is read as a
four-voice grid (``read_midi``) and cut to the model's phrase length (padded with rests when
shorter), so any chorale excerpt can be an endpoint.
"""

from __future__ import annotations

import numpy as np
import torch

from genforge import GenforgeError

GPT_ONLY = ("prompt_midi", "melody", "steps")  # options that continue or force a token stream


class PhraseRefs:
    """What a family's ``plan_sampling`` may turn into tensors on a phrase run: a MIDI file,
    framed as a training phrase (``encode``: ids (1, max_length) and mask)."""

    what = "MIDI file"  # what --around takes here, for the family's messages

    def __init__(self, run):
        self.run = run

    def encode(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        return encode_phrase(self.run, path)


def phrase_grid(grid: np.ndarray, steps: int) -> np.ndarray:
    """``grid`` (T, 4) cut or rest-padded to exactly ``steps`` steps."""
    out = np.full((steps, 4), -1, dtype=np.int64)
    out[:min(steps, len(grid))] = grid[:steps]
    return out


def encode_phrase(run, path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The first phrase of the MIDI file ``path`` -> framed ids (1, max_length) and mask."""
    from pathlib import Path

    from genforge.data.music import read_midi
    from genforge.data.sequences import pad_sequences

    if not Path(path).is_file():
        raise GenforgeError(f"{path}: no such MIDI file")
    grid, _ = read_midi(path)
    if not (grid != -1).any():
        raise GenforgeError(f"{path} holds no notes")
    tok, max_len = run.tokenizer, run.spec.max_length
    row = [tok.bos_id, *tok.encode_grid(phrase_grid(grid, (max_len - 2) // 4)), tok.eos_id]
    ids, mask = pad_sequences([row], tok.pad_id, max_len)
    device = next(run.model.parameters()).device
    return ids.to(device), mask.to(device)


def latent_rows(run, generator, family_options: dict, num_samples: int | None, batch_size: int,
                temperature: float, gpt_options: dict) -> list[list[int]]:
    """Token rows drawn by a latent-variable family; an interpolation path is one row, its points'
    phrases in sequence, each cut or rest-padded to the phrase length so the voices stay aligned.
    ``gpt_options`` given are refused."""
    given = [f"--{k.replace('_', '-')}" for k, v in gpt_options.items() if v is not None]
    if given:
        raise GenforgeError(f"{' '.join(given)} continue a token stream (gpt runs); a {run.config.family} "
                            "run draws whole phrases: use --around FILE.mid or --interpolate A.mid B.mid")
    options = dict(family_options)
    interpolate = options.pop("interpolate", None)
    points, method = options.pop("interp_points", 8), options.pop("interp_method", "slerp")
    if options.pop("attribute", None):
        raise GenforgeError("--attribute needs class labels; music phrases carry none")
    plan = run.model.plan_sampling(options, num_samples, PhraseRefs(run))
    if interpolate:
        if plan.options or num_samples is not None:
            raise GenforgeError("--interpolate draws --interp-points phrases; drop --num-samples, --around "
                                "and --radius")
        a, b = (encode_phrase(run, p) for p in interpolate)
        rows = run.model.interpolate(*a, *b, points, method)
        steps, tok = (run.spec.max_length - 2) // 4, run.tokenizer
        return [[t for row in rows for t in tok.encode_grid(phrase_grid(tok.to_grid(row), steps))]]
    n = 1 if num_samples is None else num_samples
    rows: list[list[int]] = []
    for s in range(0, n, batch_size):
        rows += run.model.sample(min(batch_size, n - s), generator, temperature=temperature, **plan.options)
    # a row that never drew <eos> runs to max_length - 1 tokens: one token past the last whole step
    steps = (run.spec.max_length - 2) // 4
    return [[t for t in row if t != run.tokenizer.eos_id][:4 * steps] for row in rows]


@torch.no_grad()
def evaluate_phrases(run, data, num_samples: int | None, max_batches: int | None, batch_size: int,
                     seed: int) -> dict:
    """`genforge eval` of a phrase VAE: the negative ELBO (an upper bound on -log p in nats; the
    KL and each phrase's ``<eos>`` included) per phrase and per note (one voice at one 16th) on
    the validation and test phrases, then the music metrics of ``num_samples`` prior samples."""
    from genforge.metrics.music import evaluate_grids

    device = next(run.model.parameters()).device
    notes = 4 * data.steps
    report: dict = {"step": run.step, "note": "one voice at one 16th step (grid token)", "phrase_steps": data.steps}
    for name, split in (("val", data.val), ("test", data.test)):
        if split is None:
            continue
        starts = list(range(0, len(split), batch_size))[:max_batches]
        batches = [{k: v.to(device) for k, v in split.get(torch.arange(s, min(s + batch_size, len(split)))).items()}
                   for s in starts]
        m = run.model.evaluate(batches)
        report[f"nll_bound_per_phrase_{name}"] = m["nll_bound"]
        report[f"nll_bound_per_note_{name}"] = m["nll_bound"] / notes
        report[f"kl_per_phrase_{name}"] = m["kl"]
        report[f"phrases_{name}"] = sum(int(b["y"].shape[0]) for b in batches)
    generator = torch.Generator(device=device).manual_seed(seed)
    rows = latent_rows(run, generator, {}, 16 if num_samples is None else num_samples, batch_size, 1.0, {})
    grids = [phrase_grid(run.tokenizer.to_grid(r), data.steps) for r in rows]
    reference = data.pieces.get("test") or data.pieces["val"]  # held-out phrases
    report.update(evaluate_grids(grids, reference=reference, train=data.pieces.get("train")))
    return report
