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

Usage: python benchmarks/bench_generation.py [--new-tokens 500] [--repeats 3]
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
from common import machine, peak_rss_mib, run_worker, write  # noqa: E402

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


def worker(kind: str, batch: int, new_tokens: int, repeats: int) -> dict:
    torch.manual_seed(0)
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

        layout = kind.split("-")  # kv|recompute [-gpt2layout]
        gpt2 = "gpt2" in layout
        cfg = GPTConfig(**DIMS, block_size=512 if gpt2 else 256,
                        pos_embedding="learned" if gpt2 else "rope", bias=gpt2)
        model = GPT(cfg, DataSpec(modality="text", vocab_size=VOCAB)).eval().to(device)
        prompts = [[0]] * batch
        rss_before = peak_rss_mib()

        def run(n):
            out = generate(model, prompts, n, temperature=0, use_cache=layout[0] == "kv")
            assert len(out.tokens[0]) == n

    seconds = _time(run, new_tokens, repeats)
    return {"kind": kind, "batch": batch, "tokens_per_s": batch * new_tokens / seconds, "seconds": seconds,
            "peak_rss_mib": peak_rss_mib(), "rss_before_generation_mib": rss_before}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--new-tokens", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--recompute-batch16-repeats", type=int, default=1,
                   help="full-context recompute at batch 16 costs minutes per repeat on a CPU")
    args = p.parse_args()
    me, n = __file__, str(args.new_tokens)
    rows = {}
    for batch in (1, 16):
        for kind in ("kv", "recompute", "kv-gpt2", "hf"):
            reps = args.recompute_batch16_repeats if (kind == "recompute" and batch == 16) else args.repeats
            rows[f"{kind}@{batch}"] = run_worker(me, [kind, str(batch), n, str(reps)])
            print(json.dumps(rows[f"{kind}@{batch}"]), flush=True)
    ratio = {f"kv_vs_recompute@{b}": rows[f"kv@{b}"]["tokens_per_s"] / rows[f"recompute@{b}"]["tokens_per_s"]
             for b in (1, 16)}
    ratio.update({f"genforge_vs_hf@{b}": rows[f"kv-gpt2@{b}"]["tokens_per_s"] / rows[f"hf@{b}"]["tokens_per_s"]
                  for b in (1, 16)})
    import transformers

    result = {"benchmark": "generation speed", "new_tokens": args.new_tokens, "repeats": args.repeats,
              "machine": machine(), "transformers": transformers.__version__, "runs": rows, "ratios": ratio}
    names = {"kv": "genforge, KV cache (rope, ctx 256)", "recompute": "genforge, recompute full context (ctx 256)",
             "kv-gpt2": "genforge, KV cache, GPT-2 layout (ctx 512)", "hf": "transformers GPT-2 generate (ctx 512)"}
    lines = [f"# Generation speed, 6x384 GPT, {args.new_tokens} new tokens, greedy "
             f"({machine()['gpu'] or 'CPU, ' + str(torch.get_num_threads()) + ' threads'})", "",
             "| configuration | batch | tokens/s | seconds | peak RSS MiB |", "|---|---|---|---|---|"]
    for _key, r in rows.items():
        lines.append(f"| {names[r['kind']]} | {r['batch']} | {r['tokens_per_s']:,.0f} | {r['seconds']:.2f} | "
                     f"{r['peak_rss_mib']:.0f} |")
    lines += ["", *(f"- {k}: **{v:.2f}x**" for k, v in ratio.items())]
    write("generation_cpu" if not torch.cuda.is_available() else "generation_gpu", result, "\n".join(lines))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        kind, batch, n, reps = sys.argv[2:6]
        print(json.dumps(worker(kind, int(batch), int(n), int(reps))))
    else:
        main()
