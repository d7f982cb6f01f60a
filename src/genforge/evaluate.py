"""`genforge eval`: held-out metrics of a trained run, by modality."""

from __future__ import annotations

import json
import math

import torch
from tqdm.auto import tqdm

from genforge import GenforgeError
from genforge.runs import LoadedRun
from genforge.train.checkpoint import atomic_write_text


@torch.no_grad()
def evaluate_text(run: LoadedRun, max_batches: int | None = None, batch_size: int = 32,
                  progress: bool = True) -> dict[str, float]:
    """Validation loss over every non-overlapping window of the held-out split.

    bits per character = loss / ln 2 * tokens / characters (equal to bits per
    token for a character vocabulary); perplexity = exp(loss) per token.
    """
    from genforge.data import load_data

    data = load_data(run.config.data, run.model_config)
    if data.tokenizer.vocab_size != run.tokenizer.vocab_size or (
        data.tokenizer.decode(range(min(50, data.tokenizer.vocab_size)))
        != run.tokenizer.decode(range(min(50, run.tokenizer.vocab_size)))
    ):
        raise GenforgeError(f"dataset '{run.config.data.name}' changed since this run was trained "
                            "(its vocabulary differs); evaluate on the original data")
    device = next(run.model.parameters()).device
    n = len(data.val)
    order = torch.arange(n)
    starts = list(range(0, n, batch_size))
    if max_batches:
        starts = starts[:max_batches]
    total, count = 0.0, 0
    for s in tqdm(starts, desc="eval", disable=not progress, unit="batch"):
        batch = {k: v.to(device) for k, v in data.val.get(order[s : s + batch_size]).items()}
        loss = run.model(batch)["loss"].item()
        rows = batch["x"].shape[0]
        total, count = total + loss * rows, count + rows
    loss = total / count
    return {"val_loss": loss, "bits_per_char": loss / math.log(2) / data.chars_per_token,
            "perplexity": math.exp(loss), "tokens": count * run.model_config.block_size,
            "step": run.step}


def evaluate_run(run: LoadedRun, **kwargs) -> dict[str, float]:
    if run.spec.modality == "text":
        result = evaluate_text(run, **kwargs)
    else:
        from genforge.metrics.evaluate_images import evaluate_images

        result = evaluate_images(run, **kwargs)
    atomic_write_text(run.run_dir / "eval.json", json.dumps(result, indent=2))
    return result
