"""The ``--mode text`` and ``--mode image`` halves of bench_responsible_overhead.py: samples/s with
and without the watermark and the output filters, conditions in alternation, medians (see that
script's docstring for what each condition does)."""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import machine, write


def _keep_all(samples):
    """The trivial user filter: one True per sample (what the filter path costs with no work)."""
    return [True] * (len(samples) if isinstance(samples, list) else samples.shape[0])


def _alternate(conditions: dict[str, Callable[[int], int]], rounds: int) -> dict[str, list[float]]:
    """Run every condition once per round, in order, ``rounds`` times: {name: samples/s per round}.
    A condition is ``fn(round) -> samples made`` and is timed whole (sampling + its extra step)."""
    rates: dict[str, list[float]] = {c: [] for c in conditions}
    for r in range(rounds):
        for name, fn in conditions.items():
            t = time.perf_counter()
            n = fn(r)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            rates[name].append(n / (time.perf_counter() - t))
    return rates


def _text_conditions(run, args) -> tuple[dict, dict]:
    from genforge.audit.privacy import privacy_filter_for
    from genforge.data.text import load_text
    from genforge.filters import Filter, apply_filters
    from genforge.sampling.text import generate
    from genforge.watermark.text import TextWatermark

    tokens = args.tokens or 256
    val = load_text(run.config.data, run.model.config.block_size).val.tokens
    step = max(1, (len(val) - 33) // max(1, args.num_samples))
    prompts = [[int(t) for t in val[i * step: i * step + 32]] for i in range(args.num_samples)]
    mark = TextWatermark(b"\x07" * 32)  # a fixed bench key: nothing is written, nothing is secret
    privacy = privacy_filter_for(run)  # the suffix index over the training text, built before timing
    trivial = Filter("keep-all", _keep_all)
    device = next(run.model.parameters()).device

    def draw(r: int, hook=None) -> list[str]:
        g = torch.Generator(device=device).manual_seed(r)
        with torch.no_grad():
            out = generate(run.model, prompts, tokens, temperature=0.8, generator=g, logits_hook=hook)
        return [run.tokenizer.decode(t) for t in out.tokens]

    conditions = {
        "plain": lambda r: len(draw(r)),
        "text watermark": lambda r: len(draw(r, mark)),
        "plain + trivial filter": lambda r: _filtered(draw(r), trivial, apply_filters),
        "plain + privacy filter": lambda r: _filtered(draw(r), privacy, apply_filters),
    }
    return conditions, {"tokens": tokens, "privacy": privacy.name, "watermark": "gamma 0.25, delta 2, context 1"}


def _filtered(samples, flt, apply_filters) -> int:
    """Samples made (blocked ones included: the work was done) after running ``flt``."""
    apply_filters(samples, [flt])
    return len(samples)


def _image_conditions(run, args) -> tuple[dict, dict]:
    from genforge.audit.privacy import privacy_filter_for
    from genforge.filters import Filter, apply_filters
    from genforge.watermark import posthoc

    device = next(run.model.parameters()).device
    privacy = privacy_filter_for(run)  # loads the training images before timing
    trivial = Filter("keep-all", _keep_all)
    key = b"\x07" * 32
    marked = {"marked": 0, "unmarked": 0}

    def draw(r: int) -> torch.Tensor:
        g = torch.Generator(device=device).manual_seed(r)
        with torch.no_grad():
            x = run.model.sample(args.num_samples, g)
        return (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()  # what `genforge sample` writes

    def mark(r: int) -> int:
        out, report = posthoc.embed(draw(r), key)
        marked["marked"] += report["marked"]
        marked["unmarked"] += report["unmarked"]
        return out.shape[0]

    conditions = {
        "plain": lambda r: draw(r).shape[0],
        "post-hoc watermark": mark,
        "plain + trivial filter": lambda r: _filtered(draw(r).float() / 255, trivial, apply_filters),
        "plain + privacy filter": lambda r: _filtered(draw(r).float() / 255, privacy, apply_filters),
    }
    return conditions, {"privacy": privacy.name, "marked": marked, "shape": list(run.spec.shape)
                        if hasattr(run.spec, "shape") else None}


def run_mode(args) -> None:
    from genforge.runs import load_run

    tmp = Path(tempfile.mkdtemp(prefix="bench-responsible-"))
    if args.mode == "text":
        if not args.run:
            raise SystemExit("--mode text needs --run RUN (a GPT text run)")
        run = load_run(args.run, device="auto")
        if run.tokenizer is None:
            raise SystemExit(f"{args.run} is not a text run (no tokenizer.json)")
        conditions, info = _text_conditions(run, args)
    else:
        from bench_responsible_overhead import toy_run

        run = load_run(args.run or toy_run(tmp), device="auto")
        conditions, info = _image_conditions(run, args)
    for fn in conditions.values():  # one untimed warm-up each (allocator, kernels, caches)
        fn(10_000)
    if "marked" in info:
        info["marked"].update(marked=0, unmarked=0)  # count the timed rounds only
    rates = _alternate(conditions, args.rounds)
    med = {c: statistics.median(v) for c, v in rates.items()}
    unit = "samples/s"
    rows = [f"| {c} | {med[c]:,.2f} | {100 * (med['plain'] / med[c] - 1):+.1f}% |" for c in conditions]
    table = "\n".join([
        f"Overhead of the {args.mode} watermark and filters on {unit} ({args.num_samples} samples per call"
        + (f", {info['tokens']} tokens each" if args.mode == "text" else "")
        + f", {args.rounds} alternating rounds, medians; run {run.run_dir.name}, {run.config.family})", "",
        f"| condition | {unit} | time vs plain |", "| --- | --- | --- |", *rows, "", f"details: {info}"])
    result = {"machine": machine(), "mode": args.mode, "run": str(run.run_dir), "family": run.config.family,
              "num_samples": args.num_samples, "rounds": args.rounds, "samples_per_s": rates, "median": med,
              **info}
    if args.no_write:
        print(table)
    else:
        write(f"responsible_overhead_{args.mode}", result, table)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
