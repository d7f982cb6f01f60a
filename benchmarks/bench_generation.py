"""Generation speed: KV cache against full-context recompute, and against Hugging Face GPT-2.

Model: 6 layers, 6 heads, 384 wide, context 256, random weights, 65-token vocab
(the character vocabulary of Tiny Shakespeare). One prompt token per row, 500
new tokens, greedy decoding, batch 1 and 16. Each configuration runs in its own
process (so peak memory is its own); speed is the median of 3 repeats after a
warm-up, and the ratios compare configurations measured in the same script run.

The comparison with transformers' ``GPT2LMHeadModel.generate`` uses the GPT-2
layout on both sides (learned positions, biases) and context 512 on both
sides, since GPT-2's learned position table cannot run past its context and
500 tokens do not fit in 256. Past a full context, genforge now re-reads the last
256 tokens for every new token (exactly what full recompute sees, issue #6); the
committed results were measured before that change, when the cache was rebuilt
from the last 128 tokens each time the context filled.

Every worker also times a few 2048^3 fp32 matmuls on its own thread count; the median
over workers is the script's matmul peak, and each configuration's model FLOPs per
second are reported as a share of it (issue #20). A token's FLOPs are counted, as in
PaLM's MFU (Chowdhery et al., 2022, appendix B), as the work the model needs, not the
work a configuration does: 2 FLOPs per matmul weight (blocks and the output head) plus
QK^T and AV over the tokens it attends to, 4 * n_layer * n_embd * context. Full
recompute and the window re-read past a full context therefore score low by design.
The "within the context" row decodes block_size - 1 tokens at batch 16, so every
step is one cached step: the decode step the %-of-peak goal is about. That worker also
times the same steps' weight matmuls alone at M = batch, the ceiling of such a step
(attention over the fp32 cache and the other ops only add time). "window-compile" is
the same decode with ``torch.compile(model.logits, dynamic=True)``: its compile time is
reported apart, and the worker fails if its greedy tokens differ from eager's.

"static" is ``generate(..., static=True)``: the fixed-shape decode step of
genforge.sampling.static_decode, replayed as one CUDA graph per token on a GPU (run eagerly
on a CPU, where it only adds the masked full-window attention). Its first call, which
captures the graph, is timed apart as capture_s; its greedy tokens must equal eager's or the
worker fails. Past the context window it re-reads the last 256 tokens for every token, as "kv"
does, but with fixed shapes (a second graph on a GPU), so the 500-token rows mix cheap steps
and full-window forwards; "window-static" is the within-the-context decode alone. The worker
kinds "static-inductor" and "window-static-inductor" (run by benchmarks/gpu_check.sh static,
not by main) pass the step through torch.compile before the capture; capture_s then includes
compiling.

Usage: python benchmarks/bench_generation.py [--new-tokens 500] [--repeats 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, matmul_peak_gflops, peak_rss_mib, run_worker, write  # noqa: E402

DIMS = dict(n_layer=6, n_head=6, n_embd=384)
VOCAB = 65


def _time(fn, new_tokens: int, repeats: int) -> float:
    fn(8)  # warm-up: allocator, kernels, lazy imports
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(new_tokens)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def decode_flops(new_tokens: int, block: int) -> float:
    """Model FLOPs to decode ``new_tokens`` after a one-token prompt, per row, for the DIMS
    model of either layout: the step that draws token i attends over min(i + 1, block) tokens."""
    L, C = DIMS["n_layer"], DIMS["n_embd"]
    matmul = L * (3 * C * C + C * C + 2 * 4 * C * C) + C * VOCAB  # qkv, proj, MLP; tied output head
    contexts = sum(min(i + 1, block) for i in range(new_tokens))
    return 2 * matmul * new_tokens + 4 * L * C * contexts


def matmul_only_gflops(model, batch: int, steps: int, repeats: int) -> float:
    """The ceiling of a cached step: its weight matmuls alone, (batch, in) @ W^T for every
    Linear (the fused qkv, proj, MLP, output head), ``steps`` times; median GFLOP/s."""
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    xs = [torch.randn(batch, w.shape[1], device=w.device) for w in weights]
    flops = 2 * batch * steps * sum(w.numel() for w in weights)

    def run(_n):
        for _ in range(steps):
            for x, w in zip(xs, weights, strict=True):
                torch.nn.functional.linear(x, w)

    with torch.inference_mode():
        return flops / _time(run, steps, repeats) / 1e9


def worker(kind: str, batch: int, new_tokens: int, repeats: int) -> dict:
    torch.manual_seed(0)
    peak = matmul_peak_gflops(2048, 5)
    extra = {}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "hf":
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(n_layer=6, n_head=6, n_embd=384, n_positions=512,
                                           vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)).eval().to(device)
        ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        rss_before = peak_rss_mib()

        @torch.no_grad()
        def run(n):
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                 min_new_tokens=n, do_sample=False, pad_token_id=0)
            assert out.shape[1] == n + 1
    else:
        from genforge.data.spec import DataSpec
        from genforge.families.gpt import GPT, GPTConfig
        from genforge.sampling.text import generate

        layout = kind.split("-")  # kv|recompute|window|static [-gpt2|-compile|-static|-inductor]
        gpt2 = "gpt2" in layout
        cfg = GPTConfig(**DIMS, block_size=512 if gpt2 else 256,
                        pos_embedding="learned" if gpt2 else "rope", bias=gpt2)
        model = GPT(cfg, DataSpec(modality="text", vocab_size=VOCAB)).eval().to(device)
        prompts = [[0]] * batch
        if layout[0] == "window":  # every step a cached one: the decode step itself
            new_tokens = min(new_tokens, cfg.block_size - 1)
        if "compile" in layout:  # torch.compile of the forward; kept only if its tokens are eager's
            eager = generate(model, prompts, new_tokens, temperature=0).tokens
            model.logits = torch.compile(model.logits, dynamic=True)  # dynamic: one graph for every cache length
            t = time.perf_counter()
            generate(model, prompts, 8, temperature=0)
            extra["compile_s"] = time.perf_counter() - t
        static = "compile" if "inductor" in layout else "static" in layout
        if static:  # the static step (a CUDA graph on a GPU); kept only if its tokens are eager's
            eager = generate(model, prompts, new_tokens, temperature=0).tokens
            t = time.perf_counter()
            generate(model, prompts, 2, temperature=0, static=static)  # captures once per (model, batch)
            extra["capture_s"] = time.perf_counter() - t
        rss_before = peak_rss_mib()

        def run(n):
            out = generate(model, prompts, n, temperature=0, use_cache=layout[0] != "recompute", static=static)
            assert len(out.tokens[0]) == n
            if ("compile" in layout or static) and n == new_tokens and out.tokens != eager:
                raise SystemExit(f"{kind} changed the greedy tokens")

    seconds = _time(run, new_tokens, repeats)
    block = model.config.n_positions if kind == "hf" else model.config.block_size
    gflops = batch * decode_flops(new_tokens, block) / seconds / 1e9
    if kind == "window":
        extra["matmul_only_gflops"] = matmul_only_gflops(model, batch, new_tokens, repeats)
    return {**extra, "kind": kind, "batch": batch, "new_tokens": new_tokens, "tokens_per_s": batch * new_tokens / seconds,
            "seconds": seconds, "model_gflops_per_s": gflops, "matmul_peak_gflops": peak,
            "threads": torch.get_num_threads(), "peak_rss_mib": peak_rss_mib(),
            "rss_before_generation_mib": rss_before}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--recompute-batch16-repeats", type=int, default=1,
                   help="full-context recompute at batch 16 costs minutes per repeat on a CPU")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for generation_*.md/json (default benchmarks/results; smoke tests: elsewhere)")
    args = p.parse_args()
    if min(args.new_tokens, args.repeats, args.recompute_batch16_repeats) < 1:
        p.error("--new-tokens and the repeat counts must be >= 1")
    me, n = __file__, str(args.new_tokens)
    rows = {}
    for batch in (1, 16):
        for kind in ("kv", "recompute", "kv-gpt2", "hf", "static",
                     *(("window", "window-compile", "window-static") if batch == 16 else ())):
            reps = args.recompute_batch16_repeats if (kind == "recompute" and batch == 16) else args.repeats
            rows[f"{kind}@{batch}"] = run_worker(me, [kind, str(batch), n, str(reps)])
            print(json.dumps(rows[f"{kind}@{batch}"]), flush=True)
    ratio = {f"kv_vs_recompute@{b}": rows[f"kv@{b}"]["tokens_per_s"] / rows[f"recompute@{b}"]["tokens_per_s"]
             for b in (1, 16)}
    ratio.update({f"static_vs_recompute@{b}": rows[f"static@{b}"]["tokens_per_s"] / rows[f"recompute@{b}"]["tokens_per_s"]
                  for b in (1, 16)})
    ratio.update({f"genforge_vs_hf@{b}": rows[f"kv-gpt2@{b}"]["tokens_per_s"] / rows[f"hf@{b}"]["tokens_per_s"]
                  for b in (1, 16)})
    peak = statistics.median(r["matmul_peak_gflops"] for r in rows.values())
    for r in rows.values():
        r["percent_of_peak"] = 100 * r["model_gflops_per_s"] / peak
    import transformers

    result = {"benchmark": "generation speed", "new_tokens": args.new_tokens, "repeats": args.repeats,
              "machine": machine(), "transformers": transformers.__version__, "runs": rows, "ratios": ratio,
              "matmul_peak_gflops": peak}
    names = {"kv": "genforge, KV cache (rope, ctx 256)", "recompute": "genforge, recompute full context (ctx 256)",
             "kv-gpt2": "genforge, KV cache, GPT-2 layout (ctx 512)", "hf": "transformers GPT-2 generate (ctx 512)",
             "window": "genforge, KV cache, within the context (rope, ctx 256)",
             "window-compile": "the same, torch.compile'd forward (same tokens checked)",
             "static": "genforge, static decode step (CUDA graph on a GPU; same tokens checked)",
             "window-static": "within the context, static decode step (CUDA graph on a GPU; same tokens checked)"}
    lines = [f"# Generation speed, 6x384 GPT, {args.new_tokens} new tokens, greedy "
             f"({machine()['gpu'] or 'CPU, ' + str(torch.get_num_threads()) + ' threads'})", "",
             "| configuration | batch | new tokens | tokens/s | seconds | model GFLOP/s | % of matmul peak "
             "| peak RSS MiB |", "|---|---|---|---|---|---|---|---|"]
    for _key, r in rows.items():
        lines.append(f"| {names[r['kind']]} | {r['batch']} | {r['new_tokens']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['seconds']:.2f} | {r['model_gflops_per_s']:.1f} | {r['percent_of_peak']:.0f}% | "
                     f"{r['peak_rss_mib']:.0f} |")
    w = rows["window@16"]
    lines += ["", f"- fp32 matmul peak (median over the workers of 2048^3 sgemm, {w['threads']} threads): "
              f"**{peak:.1f} GFLOP/s**",
              f"- decoding within the context at batch 16: **{w['percent_of_peak']:.0f}% of the peak** "
              f"({w['model_gflops_per_s']:.1f} GFLOP/s; model FLOPs: 2 per matmul weight + attention over the context)",
              f"- its ceiling, the same steps' weight matmuls alone at M={w['batch']} (no attention, no other op): "
              f"{100 * w['matmul_only_gflops'] / peak:.0f}% of the peak ({w['matmul_only_gflops']:.1f} GFLOP/s)",
              f"- torch.compile (dynamic shapes) of that decode: {rows['window-compile@16']['percent_of_peak']:.0f}% "
              f"of the peak, the greedy tokens of eager, after {rows['window-compile@16']['compile_s']:.0f} s "
              "of compiling (not counted in its tokens/s)",
              f"- the static decode step of that decode: {rows['window-static@16']['percent_of_peak']:.0f}% of the "
              f"peak, the greedy tokens of eager; its first call (the capture on a GPU) took "
              f"{rows['window-static@16']['capture_s']:.2f} s, not counted",
              *(f"- {k}: **{v:.2f}x**" for k, v in ratio.items())]
    write("generation_cpu" if not torch.cuda.is_available() else "generation_gpu", result, "\n".join(lines),
          folder=args.out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        kind, batch, n, reps = sys.argv[2:6]
        print(json.dumps(worker(kind, int(batch), int(n), int(reps))))
    else:
        main()
