"""Load test of `genforge serve` on loopback: N concurrent clients for D seconds, batching on and off.

Two small runs are trained first when missing (``runs/bench-serve/text``: gpt-demo's 3x4x128
character GPT on Tiny Shakespeare; ``runs/bench-serve/image``: the class-conditional digits VAE).
Each round starts a real server (``genforge serve``, uvicorn, a separate process on 127.0.0.1)
with batching on, then one with ``--no-batching`` (requests decoded one at a time), and runs
two workloads against each for ``--seconds``:

- text: every client streams ``POST /v1/completions`` (``stream: true``, ``max_tokens`` new
  tokens, its own seed), one request after another; time to first token is the time to the
  first server-sent event that carries text;
- text_json: the same requests without streaming (one JSON answer; tokens from its ``usage``),
  which separates the decoding's batching gain from the cost of one server-sent event per token;
- image: every client calls ``POST /v1/images/generations`` (one image of a class, its own seed).

Text is continuously batched (serve/decoder.py: requests join the running batch at the next
decode step); compatible image requests are drawn in one sampler call (serve/images.py), each
with its own generator; with --no-batching both are served one at a time.
Throughput is work completed over the time from the phase's start to its last completion
(clients stop starting requests at ``--seconds``; the backlog drains and is counted).
A 429 (queue full) is counted apart from errors and retried after its Retry-After; the server
admits ``--max-queue`` requests (default: one per client, so none is expected).
``--text-preset gpt-shakespeare-char-gpu`` also serves a more realistic text model (6x6x384,
context 256, trained 100 steps into ``runs/bench-serve/text-gpt-shakespeare-char-gpu``) and runs
both text workloads against it too; its rows share the results file.
Each phase also records the CPU cores the load generator (this process) and the server used, to
tell whether the clients, not the server, set the pace on a small machine.
Reported: medians over rounds; per-round values in the JSON.

Usage: GENFORGE_DATA=/work/shared/data python benchmarks/bench_serve.py [--clients 32] [--seconds 60] [--rounds 2]
       [--text-preset gpt-shakespeare-char-gpu]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, run_process, tail  # noqa: E402

from genforge.atomic import atomic_write_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "bench-serve"
GENFORGE = [sys.executable, "-m", "genforge.cli"]
TRAIN = {  # tiny on purpose: the server is measured, not the model (about a minute each on 2 cores)
    "text": ["gpt-demo", "data.name=shakespeare", "train.max_steps=300", "train.eval_every=0", "train.plot=false"],
    "image": ["vae-digits", "model.conditional=true", "train.max_steps=300", "train.eval_every=0",
              "train.plot=false"],
}
# --text-preset: a second, more realistic text model served beside gpt-demo (trained briefly: the
# server is measured, not the samples): nanoGPT's Shakespeare GPU shape, 6x6x384, context 256.
EXTRA_TEXT = {
    "gpt-shakespeare-char-gpu": ["gpt-shakespeare-char-gpu", "train.max_steps=100", "train.batch_size=8",
                                 "train.compile=false", "train.eval_every=0", "train.plot=false"],
}
TRAIN.update({f"text-{name}": cmd for name, cmd in EXTRA_TEXT.items()})
PROMPTS = ["ROMEO:\n", "First Citizen:\n", "KING HENRY:\n", "To be, or ", "O, ", "What ", "I will ", "The "]
NAMES = {"text": "text, streamed", "text_json": "text, JSON", "image": "image"}
WORKLOADS = ("text", "text_json", "image")  # text: streamed
GOAL = ("with batching, 32 concurrent text clients get >= 5x the aggregate tokens/s of the same clients "
        "served one at a time, with p99 time to first token under 1 s")


def ensure_run(name: str, root: Path = RUNS) -> Path:
    """The run, trained now unless a finished one is there (a run is finished when it loads)."""
    run = root / name
    if run.is_dir():
        try:
            from genforge.runs import load_run

            load_run(run, device="cpu")
            return run
        except Exception as e:  # half-written or stale: train it again
            print(f"{run} does not load ({e}); training it again", flush=True)
    root.mkdir(parents=True, exist_ok=True)
    cmd = [*GENFORGE, "train", *TRAIN[name], "--run-dir", str(run), "--overwrite", "--no-progress"]
    print("genforge " + " ".join(cmd[3:]), flush=True)
    if run_process(cmd, root / f"train-{name}.log")["returncode"] != 0:
        raise SystemExit(f"training {name} failed:\n{tail(root / f'train-{name}.log')}")
    return run


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> dict:
    """Resident memory now and its peak (VmHWM) from /proc, in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return {"rss_mib": round(fields["VmRSS"], 1), "peak_rss_mib": round(fields["VmHWM"], 1)}


class Server:
    """`genforge serve` in its own process on 127.0.0.1; stopped with SIGINT (uvicorn's clean stop)."""

    def __init__(self, runs: list[Path], batching: bool, max_queue: int, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [*GENFORGE, "serve", *map(str, runs), "--host", "127.0.0.1", "--port", str(self.port),
                    "--max-queue", str(max_queue), "--device", "cpu", *([] if batching else ["--no-batching"])]
        self.log = log
        self.out = open(log, "w")
        self.proc = subprocess.Popen(self.cmd, stdout=self.out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited ({self.proc.returncode}):\n{tail(self.log)}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"the server did not answer /healthz in {timeout:.0f} s:\n{tail(self.log)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


async def text_request(client, url: str, model: str, prompt: str, max_tokens: int, seed: int) -> dict:
    """One streamed completion: latency, time to first token, tokens (one event per token: char model)."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8,
            "seed": seed, "stream": True}
    t0 = time.perf_counter()
    first, tokens, error = None, 0, None
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"status": r.status_code, "retry_after": r.headers.get("retry-after"), "error": r.text[:200]}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                error = event["error"]["message"]
                break
            if event["choices"][0]["text"]:
                tokens += 1
                if first is None:
                    first = time.perf_counter() - t0
    out = {"status": 200, "latency": time.perf_counter() - t0, "ttft": first, "tokens": tokens}
    if error is not None or tokens != max_tokens:
        out["error"] = error or f"{tokens} tokens, asked for {max_tokens}"
    return out


async def text_json_request(client, url: str, model: str, prompt: str, max_tokens: int, seed: int) -> dict:
    """One completion answered as JSON; its tokens are the answer's ``usage.completion_tokens``."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": seed}
    t0 = time.perf_counter()
    r = await client.post(f"{url}/v1/completions", json=body)
    if r.status_code != 200:
        return {"status": r.status_code, "retry_after": r.headers.get("retry-after"), "error": r.text[:200]}
    tokens = r.json()["usage"]["completion_tokens"]
    out = {"status": 200, "latency": time.perf_counter() - t0, "tokens": tokens}
    if tokens != max_tokens:
        out["error"] = f"{tokens} tokens, asked for {max_tokens}"
    return out


async def image_request(client, url: str, model: str, label: int, seed: int) -> dict:
    t0 = time.perf_counter()
    r = await client.post(f"{url}/v1/images/generations",
                          json={"model": model, "prompt": str(label), "n": 1, "seed": seed})
    if r.status_code != 200:
        return {"status": r.status_code, "retry_after": r.headers.get("retry-after"), "error": r.text[:200]}
    images = len(r.json()["data"])
    out = {"status": 200, "latency": time.perf_counter() - t0, "tokens": images}
    if images != 1:
        out["error"] = f"{images} images, asked for 1"
    return out


async def load(url: str, workload: str, model: str, clients: int, seconds: float, max_tokens: int) -> dict:
    """``clients`` loops, each sending its next request when the last one ends, until ``seconds``."""
    import httpx

    done: list[dict] = []
    rejected = [0]
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(300.0)) as client:
        start = time.perf_counter()
        stop_at = start + seconds

        async def one_client(c: int) -> None:
            k = 0
            while time.perf_counter() < stop_at:
                seed = c * 1_000_003 + k
                try:
                    prompt = PROMPTS[(c + k) % len(PROMPTS)]
                    if workload == "text":
                        res = await text_request(client, url, model, prompt, max_tokens, seed)
                    elif workload == "text_json":
                        res = await text_json_request(client, url, model, prompt, max_tokens, seed)
                    else:
                        res = await image_request(client, url, model, (c + k) % 10, seed)
                except httpx.HTTPError as e:
                    res = {"status": None, "error": f"{type(e).__name__}: {e}"}
                k += 1
                if res["status"] == 429:  # the queue is full: counted apart, retried as told
                    rejected[0] += 1
                    await asyncio.sleep(min(float(res.get("retry_after") or 1), 5.0))
                    continue
                res["end"] = time.perf_counter()
                done.append(res)

        await asyncio.gather(*(one_client(c) for c in range(clients)))
        wall = max((r["end"] for r in done), default=time.perf_counter()) - start
    return summarize(done, rejected[0], wall, workload)


def pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of ``values``; None when there are none."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def summarize(done: list[dict], rejected: int, wall: float, workload: str) -> dict:
    ok = [r for r in done if "error" not in r]
    errors = [r["error"] for r in done if "error" in r]
    lat = [r["latency"] for r in ok]
    out = {"requests": len(ok), "wall_s": round(wall, 3), "requests_per_s": len(ok) / wall,
           "images_per_s" if workload == "image" else "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
           "latency_p50_s": pct(lat, 50), "latency_p99_s": pct(lat, 99),
           "errors": len(errors), "error_examples": errors[:3], "rejected_429": rejected}
    if workload == "text":
        ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
        out.update(ttft_p50_s=pct(ttft, 50), ttft_p99_s=pct(ttft, 99))
    return out


def warm_up(url: str, text: str, image: str) -> None:
    """One request of each kind, so first-call costs stay out of the measurement."""
    import httpx

    r = httpx.post(f"{url}/v1/completions", json={"model": text, "prompt": "The ", "max_tokens": 8, "seed": 0},
                   timeout=120)
    r.raise_for_status()
    r = httpx.post(f"{url}/v1/images/generations", json={"model": image, "prompt": "3", "seed": 0}, timeout=120)
    r.raise_for_status()


def phases(runs: dict[str, Path]) -> list[tuple[str, str, str]]:
    """(result key, workload, run key): gpt-demo's text, text_json and image, then each extra text
    model's text and text_json (keys ``text@NAME``)."""
    out = [(w, w, "image" if w == "image" else "text") for w in WORKLOADS]
    for key in runs:
        if key.startswith("text-"):
            out += [(f"{w}@{key[5:]}", w, key) for w in ("text", "text_json")]
    return out


def cpu_seconds(pid: int | None = None) -> float:
    """CPU time (user + system) of process ``pid`` from /proc, or of this process (all threads)."""
    if pid is None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime (fields 14, 15)


def measure(args, runs: dict[str, Path], batching: bool, round_: int) -> dict:
    import httpx

    mode = "on" if batching else "off"
    server = Server(list(runs.values()), batching, args.max_queue or args.clients,
                    Path(args.runs_dir) / f"serve-{mode}-{round_}.log")
    try:
        server.wait_ready()
        for key, run in runs.items():
            if key != "image":
                warm_up(server.url, run.name, runs["image"].name)
        served = httpx.get(f"{server.url}/v1/models", timeout=30).json()["data"]
        result = {"batching": mode, "round": round_, "server": " ".join(["genforge", *server.cmd[3:]]),
                  "models": {m["id"]: {"family": m["family"], "step": m["step"],
                                       "weights_sha256": m["weights_sha256"]} for m in served},
                  "memory_before": rss_mib(server.proc.pid)}
        for key, workload, run_key in phases(runs):
            t, mine, theirs = time.perf_counter(), cpu_seconds(), cpu_seconds(server.proc.pid)
            result[key] = asyncio.run(load(server.url, workload, runs[run_key].name, args.clients, args.seconds,
                                           args.max_tokens))
            # Is the load generator the bottleneck? CPU cores each side used over the phase.
            t = time.perf_counter() - t
            result[key].update(client_cores=(cpu_seconds() - mine) / t,
                               server_cores=(cpu_seconds(server.proc.pid) - theirs) / t)
            print(f"round {round_} batching {mode} {key}: "
                  + json.dumps({k: v for k, v in result[key].items() if k != "error_examples"}), flush=True)
        result["memory_after"] = rss_mib(server.proc.pid)
        return result
    finally:
        server.stop()


def median_of(rounds: list[dict], workload: str, key: str) -> float | None:
    values = [r[workload][key] for r in rounds if r[workload].get(key) is not None]
    return statistics.median(values) if values else None


def fmt(value, digits: int = 1, scale: float = 1.0) -> str:
    return "" if value is None else f"{value * scale:,.{digits}f}"


def render(result: dict) -> str:
    rows, lines = result["rounds"], []
    m = result["machine"]
    lines += ["# genforge serve under load (loopback)", "",
              f"Command: `{result['command']}`", "",
              f"Machine: {m['cores']} CPU cores ({m['cpu']}), torch {m['torch']}, Python {m['python']}; "
              f"{result['clients']} clients, {result['seconds']:g} s per phase, {result['max_tokens']} new "
              f"tokens per text request, rounds alternate batching on, off ({len(rows) // 2} of each). "
              "The clients (asyncio + httpx) share the machine with the server. Runs served (trained by this "
              "script when missing): " + "; ".join(f"`{c}`" for c in result["train"].values()) + ".", "",
              f"Goal: {GOAL}.", "",
              "| batching | model | workload | requests/s | tokens/s (images/s) | p50 latency (ms) "
              "| p99 latency (ms) | p50 TTFT (ms) | p99 TTFT (ms) | errors | 429s | client / server cores |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode in ("on", "off"):
        mine = [r for r in rows if r["batching"] == mode]
        for w, workload, model in result["phases"]:
            rate = "images_per_s" if workload == "image" else "tokens_per_s"
            lines.append(f"| {mode} | {model} | {NAMES[workload]} | {fmt(median_of(mine, w, 'requests_per_s'), 2)} "
                         f"| {fmt(median_of(mine, w, rate))} "
                         f"| {fmt(median_of(mine, w, 'latency_p50_s'), 0, 1e3)} "
                         f"| {fmt(median_of(mine, w, 'latency_p99_s'), 0, 1e3)} "
                         f"| {fmt(median_of(mine, w, 'ttft_p50_s'), 0, 1e3)} "
                         f"| {fmt(median_of(mine, w, 'ttft_p99_s'), 0, 1e3)} "
                         f"| {sum(r[w]['errors'] for r in mine)} | {sum(r[w]['rejected_429'] for r in mine)} "
                         f"| {fmt(median_of(mine, w, 'client_cores'), 2)} / {fmt(median_of(mine, w, 'server_cores'), 2)} |")
    g = result["gain"]
    lines += ["", "Server memory (RSS MiB, before -> after the load; peak): "
              + "; ".join(f"{r['batching']} round {r['round']}: {r['memory_before']['rss_mib']:.0f} -> "
                          f"{r['memory_after']['rss_mib']:.0f} ({r['memory_after']['peak_rss_mib']:.0f})"
                          for r in rows), "",
              f"- Text tokens/s with batching / without: **{fmt(g['text_tokens_per_s'], 2)}x** (median of "
              f"rounds; per pair: {', '.join(fmt(x, 2) for x in g['text_pairs'])}). "
              f"p99 time to first token with batching: {fmt(g['ttft_p99_on_s'], 0, 1e3)} ms. "
              f"Without streaming (JSON answers): **{fmt(g['text_json_tokens_per_s'], 2)}x**.",
              f"- Goal ({GOAL}): **{'met' if g['goal_met'] else 'not met'}**"
              + ("" if result["clients"] == 32 else f" (measured with {result['clients']} clients, not 32)") + ".",
              *(f"- {model} (a second text model, {arch}): tokens/s with batching / without: streamed "
                f"**{fmt(x['text'], 2)}x**, JSON **{fmt(x['text_json'], 2)}x**; p99 TTFT with batching "
                f"{fmt(x['ttft_p99_on_s'], 0, 1e3)} ms." for model, arch, x in g["extra_text"]),
              f"- Images (compatible requests in one sampler call): images/s on / off = "
              f"{fmt(g['image_per_s'], 2)}x.",
              "- Load generator: the clients (asyncio + httpx, one process) and the server each used the CPU "
              "cores in the table's last column (CPU seconds over the phase's wall time, median of rounds; "
              f"the machine has {m['cores']}): a client share near a whole core means the clients, not the "
              "server, may set the pace.",
              "- Anchor: vLLM's continuous batching (Kwon et al. 2023) reports 2-4x throughput over earlier "
              "servers; genforge's is the same iteration-level scheduling (Orca, Yu et al. 2022): a request "
              "joins the running batch at the next decode step and leaves after its last token.",
              "- Errors count failed requests (not 200, a stream error event, or fewer tokens than asked); "
              "429s (queue full) are counted apart and retried after Retry-After."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds of load per phase (default 60)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of (batching on, batching off) (default 2)")
    p.add_argument("--max-tokens", type=int, default=48,
                   help="new tokens per text request (default 48: prompt + answer stay in gpt-demo's 64 context)")
    p.add_argument("--max-queue", type=int, default=None, help="the server's --max-queue (default: --clients)")
    p.add_argument("--name", default="serve_load", help="results/NAME.json and .md (default serve_load)")
    p.add_argument("--runs-dir", default=str(RUNS),
                   help="where the served runs are (trained there when missing; default runs/bench-serve)")
    p.add_argument("--text-preset", action="append", choices=sorted(EXTRA_TEXT),
                   help="also serve and load this text model beside gpt-demo (trained briefly when missing: "
                        + "; ".join(f"{k}: genforge train {' '.join(v)}" for k, v in EXTRA_TEXT.items()) + ")")
    args = p.parse_args()
    if args.clients < 1 or args.seconds <= 0 or args.rounds < 1 or args.max_tokens < 1:
        p.error("--clients, --seconds, --rounds and --max-tokens must be positive")
    if "GENFORGE_DATA" not in os.environ:
        p.error("set GENFORGE_DATA to a folder holding tinyshakespeare/input.txt")
    names = ["text", "image", *(f"text-{x}" for x in args.text_preset or ())]
    runs = {name: ensure_run(name, Path(args.runs_dir)) for name in names}
    rounds = []
    for i in range(args.rounds):
        for batching in (True, False):
            rounds.append(measure(args, runs, batching, i))
    on = [r for r in rounds if r["batching"] == "on"]
    off = [r for r in rounds if r["batching"] == "off"]
    pairs = [a["text"]["tokens_per_s"] / b["text"]["tokens_per_s"] for a, b in zip(on, off, strict=True)
             if b["text"]["tokens_per_s"]]
    gain = statistics.median(pairs) if pairs else None
    json_on, json_off = median_of(on, "text_json", "tokens_per_s"), median_of(off, "text_json", "tokens_per_s")
    ttft_p99 = median_of(on, "text", "ttft_p99_s")
    extra = []
    for key in runs:
        if key.startswith("text-"):
            ratios = {w: (median_of(on, f"{w}@{key[5:]}", "tokens_per_s") or 0)
                      / (median_of(off, f"{w}@{key[5:]}", "tokens_per_s") or math.inf) for w in ("text", "text_json")}
            cfg = json.loads((runs[key] / "config.json").read_text())["model"]
            extra.append((key[5:], f"{cfg['n_layer']}x{cfg['n_embd']}, context {cfg['block_size']}",
                          {**ratios, "ttft_p99_on_s": median_of(on, f"text@{key[5:]}", "ttft_p99_s")}))
    off_images = median_of(off, "image", "images_per_s")
    result = {
        "command": "GENFORGE_DATA=... python benchmarks/bench_serve.py " + " ".join(sys.argv[1:]),
        "machine": {"cores": os.cpu_count(), "cpu": cpu_name(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "train": {name: "genforge train " + " ".join(TRAIN[name]) for name in runs},
        "phases": [(key, workload, runs[run_key].name) for key, workload, run_key in phases(runs)],
        "clients": args.clients, "seconds": args.seconds, "max_tokens": args.max_tokens,
        "max_queue": args.max_queue or args.clients, "goal": GOAL,
        "gain": {"text_tokens_per_s": gain, "text_pairs": pairs, "ttft_p99_on_s": ttft_p99,
                 "text_json_tokens_per_s": json_on / json_off if json_off else None,
                 "image_per_s": (median_of(on, "image", "images_per_s") / off_images) if off_images else None,
                 "extra_text": extra,
                 "goal_met": bool(gain is not None and gain >= 5 and ttft_p99 is not None and ttft_p99 < 1.0
                                  and args.clients == 32
                                  and all(r[w]["errors"] == 0 for r in rounds for w in WORKLOADS))},
        "rounds": rounds,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    table = render(result)
    atomic_write_text(RESULTS / f"{args.name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(RESULTS / f"{args.name}.md", table + "\n")
    print(table)


if __name__ == "__main__":
    main()
