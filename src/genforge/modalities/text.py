"""Text: token streams from corpora; samples are strings; eval is held-out loss.

Text corpora ship no test split, so ``eval`` reports on the validation split (the
last ``data.val_fraction`` of the corpus), as nanoGPT does; the name says so.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from genforge import GenforgeError
from genforge.checkpoint import atomic_write_text
from genforge.families.base import PROMPT, TEMPERATURE, SampleOption
from genforge.modalities import FILTER, PRIVACY_FILTER, Modality
from genforge.provenance import sample_stamp
from genforge.watermark import NO_WATERMARK


class TextModality(Modality):
    name = "text"
    unit = "tokens"
    data_fields = frozenset({"tokenizer", "bpe_vocab_size"})
    sample_options = (
        PROMPT,
        SampleOption("max_new_tokens", "tokens to generate per sample (default 500)", int, 500, metavar="N",
                     minimum=0),
        TEMPERATURE,
        SampleOption("top_k", "sample only from the k most likely tokens", int, metavar="K", minimum=1),
        SampleOption("top_p", "nucleus sampling: the smallest set of tokens with this mass", float,
                     metavar="P"),
        SampleOption("stop", "end a sample at this string; repeatable", str, metavar="S", repeat=True),
        SampleOption("no_stream", "print when done instead of token by token", flag=True),
        NO_WATERMARK,
        SampleOption("watermark_gamma", "text watermark: share of the vocabulary on each step's green "
                                        "list (default 0.25; `genforge detect --gamma` must match)", float,
                     metavar="G"),
        SampleOption("watermark_delta", "text watermark: logit bias added to green tokens; larger is "
                                        "easier to detect and costs more quality (default 2.0, at most 100)", float,
                     metavar="D"),
        SampleOption("watermark_context", "text watermark: previous tokens hashed to pick each green "
                                          "list (default 1, at most 64; `genforge detect --context` must match)", int,
                     metavar="N", minimum=1),
        FILTER,
        PRIVACY_FILTER,
    )
    eval_options = ()

    def load(self, data_cfg, needs: dict[str, Any]):
        from genforge.data.text import load_text

        if "block_size" not in needs:
            raise GenforgeError(f"dataset '{data_cfg.name}' is text; this family does not model "
                                "token sequences (use a text family such as gpt)")
        return load_text(data_cfg, needs["block_size"])

    def count(self, batch) -> int:
        return batch["x"].numel()

    def write_preview(self, sample: str, path_stem: Path, data) -> Path:
        path = path_stem.with_suffix(".txt")
        atomic_write_text(path, sample)
        return path

    # -- sample ------------------------------------------------------------------------
    def sample_command(self, run, generator, *, prompt=None, max_new_tokens, temperature, top_k, top_p,
                       stop, no_stream, num_samples, out, batch_size, seed, no_watermark=False,
                       watermark_gamma=None, watermark_delta=None, watermark_context=None, filter=None,
                       privacy_filter=None) -> None:
        from genforge.audit.privacy import sample_filters
        from genforge.sampling.text import check_settings, generate_text, stream_text

        temperature = 0.8 if temperature is None else temperature
        check_settings(temperature, top_k, top_p, max_new_tokens)
        n = 1 if num_samples is None else num_samples
        given = prompt or ["\n"]
        if n * len(given) > MAX_SAMPLES:  # ranges and len() overflow near 2**63 anyway
            raise GenforgeError(f"--num-samples {n}: at most {MAX_SAMPLES:.0e} samples per call (years of "
                                "decoding); ask for fewer, or make several calls")
        prompts = Repeated(given, n)
        if out is not None and Path(out).suffix not in (".txt", ".jsonl"):
            raise GenforgeError(f"--out {out}: text samples are written as .txt or .jsonl")
        for p in dict.fromkeys(given):  # a bad prompt is the one line printed, before any notice
            run.tokenizer.encode(p)
        hook = text_watermark(run, no_watermark, watermark_gamma, watermark_delta, watermark_context)
        settings = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, stop=stop or (), logits_hook=hook)
        screens = sample_filters(run, filter, privacy_filter)  # loaded before sampling: fails fast
        # a screened sample is printed only once judged: filters turn streaming off
        if out is None and len(prompts) == 1 and not no_stream and not screens:
            sys.stdout.write(prompts[0])
            for piece in stream_text(run.model, run.tokenizer, prompts[0], generator=generator, **settings):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return
        # the file's provenance goes to a sidecar (FILE.provenance.json): the text stays as sampled
        stamp = None if out is None else sample_stamp(run, generator, {
            "prompt": prompt, "max_new_tokens": max_new_tokens, "temperature": temperature, "top_k": top_k,
            "top_p": top_p, "stop": stop, "num_samples": num_samples, "out": out, "batch_size": batch_size,
            "seed": seed, "no_watermark": no_watermark, "watermark_gamma": watermark_gamma,
            "watermark_delta": watermark_delta, "watermark_context": watermark_context}, png=False)
        texts: list[str] = []
        batches = range(0, len(prompts), batch_size)
        # Batches bound memory (a 100k request once took 12.7 GB in one batch); the bar shows progress.
        for s in tqdm(batches, desc="sample", unit="batch", disable=len(batches) < 2, file=sys.stderr):
            chunk = prompts[s : s + batch_size]
            outs = generate_text(run.model, run.tokenizer, chunk, generator=generator, **settings)
            if out is None and not screens:
                for i, (p, t) in enumerate(zip(chunk, outs, strict=True)):
                    print(f"--- sample {s + i + 1} ---")
                    print(p + t)
            else:
                texts += outs
        if screens:  # the generated continuations, before anything is printed or written
            from genforge.filters import screen, summary

            kept, blocked = screen(texts, screens, "samples")
            if stamp is not None:
                stamp.record["screening"] = summary(screens, len(texts), blocked)
            if out is None:
                for i in kept:
                    print(f"--- sample {i + 1} ---")
                    print(prompts[i] + texts[i])
            prompts, texts = [prompts[i] for i in kept], [texts[i] for i in kept]
        if out is not None:
            path = Path(out)
            if path.suffix == ".jsonl":
                body = "".join(json.dumps({"prompt": p, "text": t}) + "\n" for p, t in zip(prompts, texts, strict=True))
            else:
                body = "".join(f"{p}{t}\n\n" for p, t in zip(prompts, texts, strict=True))
            atomic_write_text(path, body)
            stamp.sidecar(path)
            print(f"wrote {len(texts)} samples to {path}")

    # -- eval --------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, run, max_batches: int | None = None, batch_size: int = 32,
                 progress: bool = True) -> dict[str, Any]:
        """Mean cross-entropy over every non-overlapping window of the validation split.

        bits per character = loss / ln 2 * tokens / characters (equal to bits per token
        for a character vocabulary); perplexity = exp(loss) per token.
        """
        data = self.load(run.config.data, type(run.model).data_needs(run.model_config))
        vocab = [data.tokenizer.decode([i]) for i in range(data.tokenizer.vocab_size)]
        if vocab != [run.tokenizer.decode([i]) for i in range(run.tokenizer.vocab_size)]:
            raise GenforgeError(f"dataset '{run.config.data.name}' changed since this run was trained "
                                "(its vocabulary differs); evaluate on the original data")
        device = next(run.model.parameters()).device
        n = len(data.val)
        starts = list(range(0, n, batch_size))
        if max_batches is not None:
            starts = starts[:max_batches]
        total, count = 0.0, 0
        for s in tqdm(starts, desc="eval", disable=not progress, unit="batch"):
            batch = {k: v.to(device) for k, v in data.val.get(torch.arange(s, min(s + batch_size, n))).items()}
            rows = batch["x"].shape[0]
            total, count = total + run.model(batch)["loss"].item() * rows, count + rows
        loss = total / count
        return {"val_loss": loss, "bits_per_char": loss / math.log(2) / data.chars_per_token,
                "perplexity": math.exp(loss), "tokens": count * batch["x"].shape[1], "step": run.step}


def text_watermark(run, off: bool, gamma: float | None, delta: float | None, context: int | None):
    """The logits hook that marks this run's samples (None when ``off``), announced on stderr.

    On by default, with the run-local key made at first use (genforge.watermark.keys.run_key);
    only the key's fingerprint is ever shown."""
    from genforge.watermark.keys import key_fingerprint
    from genforge.watermark.text import (
        DEFAULT_CONTEXT,
        DEFAULT_DELTA,
        DEFAULT_GAMMA,
        check_params,
        run_watermark,
    )

    given = {"--watermark-gamma": gamma, "--watermark-delta": delta, "--watermark-context": context}
    if off:
        typed = [flag for flag, value in given.items() if value is not None]
        if typed:
            raise GenforgeError(f"{', '.join(typed)} does not apply with --no-watermark; remove one of them")
        print("not watermarked (--no-watermark): `genforge detect` will not recognise these samples",
              file=sys.stderr)
        return None
    gamma = DEFAULT_GAMMA if gamma is None else gamma
    delta = DEFAULT_DELTA if delta is None else delta
    context = DEFAULT_CONTEXT if context is None else context
    check_params(gamma, delta, context)  # so that an error below can only be the key's
    try:
        mark = run_watermark(run.run_dir, gamma, delta, context)
    except GenforgeError as e:
        raise GenforgeError(f"{e} (the watermark key is made in the run directory at first use; "
                            "pass --no-watermark to sample without it)") from None
    print(f"watermarked (key fingerprint {key_fingerprint(mark.key)}, gamma {gamma}, delta {delta}, "
          f"context {context}, --no-watermark to turn off)", file=sys.stderr)
    return mark


TEXT = TextModality()


MAX_SAMPLES = 10**12


class Repeated(Sequence):
    """Each of ``prompts`` ``n`` times in a row, without the list: ``--num-samples 10**20`` once built
    that list before the first batch (memory, then a hang with no output); now sampling starts at
    once, its progress bar shows the scale, and Ctrl-C stops it."""

    def __init__(self, prompts: list[str], n: int):
        self.prompts, self.n = list(prompts), n

    def __len__(self) -> int:
        return len(self.prompts) * self.n

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return self.prompts[(i % len(self)) // self.n]
