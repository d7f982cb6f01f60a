"""Render ``results/rl.json`` (written by ``bench_rl.py``) into ``results/rl.md`` and two plots."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _f(v, digits=3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _first_last(run: dict, key: str) -> tuple:
    evals = [e for e in run["evals"] if key in e]
    return (evals[0][key], evals[-1][key]) if evals else (None, None)


def _change(run: dict, key: str, digits: int = 3, bold: bool = False) -> str:
    """'before -> after' of an evaluation metric, step 0 to the last evaluation."""
    a, b = _first_last(run, key)
    after = f"**{_f(b, digits)}**" if bold else _f(b, digits)
    return f"{_f(a, digits)} -> {after}"


def _curves(data: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    if "text" in data:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, run in data["text"]["runs"].items():
            ax.plot([e["kl"] for e in run["evals"]], [e["reward"] for e in run["evals"]], "o-", ms=3,
                    label=name.removeprefix("text-"))
        ax.set_xlabel("KL(policy || start) per sample, nats (64 eval samples)")
        ax.set_ylabel("mean VADER compound (eval)")
        ax.set_title("Shakespeare char GPT -> positive sentiment")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / "rl_text_reward_kl.png", dpi=110)
        made.append("rl_text_reward_kl.png")
    if "guard" in data:
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
        # The three runs share seed and trajectory until the stop / the filter: draw the stopped run
        # wide underneath, and mark where the guard rail fired.
        for name, width in (("stop", 5), ("unguarded", 1.5), ("filter", 1.5)):
            train = data["guard"][name]["train"]
            a.plot([r["step"] for r in train], [r["distinct_1"] for r in train], label=name, lw=width,
                   alpha=0.5 if name == "stop" else 1)
            b.plot([r["step"] for r in train], [r["reward"] for r in train], label=name, lw=width,
                   alpha=0.5 if name == "stop" else 1)
        stop_step = data["guard"]["stop"]["steps"]
        for ax in (a, b):
            ax.axvline(stop_step, color="red", ls=":", lw=1)
        a.text(stop_step + 2, 0.6, f"guard rail stops\nat step {stop_step}", color="red", fontsize=8)
        a.axhline(0.35, color="grey", ls="--", lw=1)
        a.set_title("rollout distinct-1 (stop threshold 0.35)")
        b.set_title("rollout reward (VADER)")
        for ax in (a, b):
            ax.set_xlabel("step")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(RESULTS / "rl_guard_diversity.png", dpi=110)
        made.append("rl_guard_diversity.png")
    return made


def render(data: dict) -> None:
    m = data.get("machine", {})
    lines = ["# RL fine-tuning (issue #10)", "",
             f"Machine: {m.get('cpu')}, {m.get('threads')} threads, torch {m.get('torch')}, GPU: {m.get('gpu')}. "
             "Produced by `benchmarks/bench_rl.py`; every number below comes from `genforge rl` runs' "
             "`metrics.jsonl`. Evaluations draw a fixed-seed set of samples (64 unless said) at every "
             "evaluation, step 0 (the starting model) included; KL is KL(policy || starting model) per "
             "sample in nats, estimated from those samples (sum over tokens of log pi - log pi_ref, "
             "so a single evaluation is noisy and can dip below 0).", ""]
    if "text" in data:
        t = data["text"]
        lines += ["## Text: Tiny Shakespeare char GPT -> positive sentiment (VADER)", "",
                  f"Base: `{t['base']}` (4x128 char GPT, 2000 steps, val loss 1.73). 150 steps, 64 samples of 64 "
                  "characters per step from the newline prompt, lr 1e-4, GRPO/RLOO groups of 8.", "",
                  "| run | reward before -> after | KL after | held-out loss before -> after | distinct-1 | distinct-2 | wall s |",
                  "|---|---|---|---|---|---|---|"]
        for name, run in t["runs"].items():
            lines.append(f"| {name.removeprefix('text-')} | {_change(run, 'reward', bold=True)} | "
                         f"{_f(run['evals'][-1]['kl'], 2)} | {_change(run, 'heldout_loss')} | "
                         f"{_change(run, 'distinct_1', 2)} | {_change(run, 'distinct_2', 2)} | {run['wall_s']:.0f} |")
        lines += ["", "![reward-KL](rl_text_reward_kl.png)", "",
                  "Anchor, for orientation only: TRL's PPO example raises a DistilBERT IMDB sentiment logit "
                  "from 0.24 to 2.48 with GPT-2 (a different reward on a different scale; VADER's compound "
                  "score lies in [-1, 1]).", "",
                  "Five samples before (base run, temperature 0.8, seed 0):", "", "```", t["samples_before"].strip(),
                  "```", "", "Five samples after (grpo, KL weight 0.1, best checkpoint, same seed):", "", "```",
                  t["samples_after"].strip(), "```", ""]
        if "samples_after_kl0.3" in t:
            lines += ["Five samples after (grpo, KL weight 0.3: reward 0.48 at KL 3.6, same seed):", "", "```",
                      t["samples_after_kl0.3"].strip(), "```", ""]
    if "guard" in data:
        g = data["guard"]
        lines += ["## Guard rail: a collapsing run is stopped", "",
                  "Sentiment with no KL penalty and lr 3e-4 drifts into repeating a few positive words. "
                  "`--min-diversity 0.35 --guard-patience 3` stops it once three rollouts in a row fall "
                  "below distinct-1 0.35; the unguarded run continues to 150 steps; the third run keeps "
                  "going with the REINVENT-style diversity filter (`--diversity-filter 20`, word 3-grams).", "",
                  "| run | steps run | stopped | final rollout reward | final rollout distinct-1 |", "|---|---|---|---|---|"]
        for name in ("unguarded", "stop", "filter"):
            run = g[name]
            last = run["train"][-1]
            lines.append(f"| {name} | {run['steps']} | {run['stopped'] or 'no'} | {_f(last['reward'])} | "
                         f"{_f(last['distinct_1'], 2)} |")
        lines += ["", "![diversity](rl_guard_diversity.png)", "", "Unguarded, after 150 steps:", "", "```",
                  g["unguarded_samples"].strip(), "```", "", "With the diversity filter:", "", "```",
                  g["filter_samples"].strip(), "```", "",
                  "The filter holds the measured distinct-1 near 0.4 where the unguarded run reaches 0.00, "
                  "but the hack only changes shape: the policy interleaves 'love' with filler fragments. "
                  "(A first version bucketed raw tokens and was dodged by punctuation, 'Love! Love? Love.'; "
                  "the buckets now use lower-cased words without punctuation.) Against this reward, the KL "
                  "penalty is what keeps the text Shakespearean (the KL sweep above).", ""]
    runs = [(k, label) for k, label in (("molecules", "lr 1e-4, KL 0.01"),
                                         ("molecules_guarded", "lr 5e-5, KL 0.05, stop at IntDiv < 0.8"),
                                         ("molecules_tight_filter", "lr 7e-5, KL 0.05, bucket 10, stop at IntDiv < 0.8"),
                                         ("molecules_entropy", "lr 7e-5, KL 0.05, entropy 0.01, stop at IntDiv < 0.8"),
                                         ("molecules_strong_base", "25-minute base; lr 5e-5, KL 0.05, stop at IntDiv < 0.8"))
            if k in data]
    if runs:
        lines += ["## Molecules: QED with at most 10,000 oracle calls", "",
                  "Bases: the CPU SMILES GPT 4x256 of `moses.md` after 9 minutes (MOSES validity 0.75) and "
                  "after 25 minutes (validity 0.90, FCD/Test 0.29). GRPO, 64 molecules per step, diversity "
                  "filter on Murcko scaffolds (bucket 25), stop at 10,000 oracle calls. Top-k and AUC as PMO "
                  "defines them (Gao et al. 2022), from `oracle.csv`. Rows marked * count oracle calls as PMO "
                  "does (issue #16): distinct valid canonical SMILES of training rollouts only (pre-flight "
                  "and evaluation free), so top-k ranks distinct molecules; their baseline is the whole "
                  "batch (one prompt). Unmarked rows predate that fix: they counted distinct raw strings "
                  "(evaluation samples and invalid ones included) and normalized advantages in groups of 8.", "",
                  "| run | top-1 | top-10 | top-100 | AUC top-10 | oracle calls | steps | stopped |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, label in runs:
            mo, p = data[key], data[key]["pmo"]
            label = label + (" *" if "distinct_in_oracle_csv" in p else "")
            lines.append(f"| {label} | {_f(p['top1'])} | **{_f(p['top10'])}** | {_f(p['top100'])} | "
                         f"{_f(p.get('auc_top10'))} | {p['oracle_calls']:.0f} | {mo['steps']} | {mo['stopped'] or 'no'} |")
        lines += ["", "The generated set (1,000 fresh samples at temperature 1 from the last checkpoint):", "",
                  "| set | validity | unique | IntDiv | scaffolds / molecule | mean QED |", "|---|---|---|---|---|---|"]
        bases = {data[k].get("base", "9-minute base"): data[k]["set_before"] for k, _ in runs}
        for base_name, s in bases.items():
            label = "25-minute base" if "25_min" in base_name else "9-minute base"
            lines.append(f"| {label} | {_f(s['valid'])} | {_f(s['unique'])} | {_f(s['intdiv'])} | "
                         f"{_f(s['scaffolds'])} | {_f(s['mean_qed'])} |")
        for key, label in runs:
            s = data[key]["set_after"]
            lines.append(f"| {label} | {_f(s['valid'])} | {_f(s['unique'])} | {_f(s['intdiv'])} | "
                         f"{_f(s['scaffolds'])} | {_f(s['mean_qed'])} |")
        lines += ["", "Anchor: in PMO, REINVENT's QED top-1 is 0.948 and its top-10 AUC 0.941. Goal of the issue: "
                  "top-10 >= 0.94 within 10,000 calls while the generated set keeps IntDiv >= 0.8 and "
                  "validity >= 0.95.", ""]
    if "ddpo" in data:
        d = data["ddpo"]
        lines += ["## Images: DDPO on the Fashion-MNIST diffusion model", "",
                  "Base: genforge's Fashion-MNIST diffusion model (2.7M-parameter UNet, FD 3.85 with 1000 "
                  "samples). 40 steps of 32 images, 10-step ancestral chains (actions down to sigma 0.05), "
                  "half of the steps trained per update, lr 3e-5, no KL penalty (as DDPO). Evaluation: 256 "
                  "fixed-seed images; FD against 1000 validation images in the fixed classifier's features "
                  "(a small-sample FD: compare before with after, not with other tables).", "",
                  "| reward | reward before -> after | FD before -> after | precision | recall | class entropy | KL after |",
                  "|---|---|---|---|---|---|---|"]
        for name, label in (("trouser", "P(Trouser) (classifier)"), ("jpeg", "JPEG size, kB (incompressibility)")):
            run = d[name]
            cells = [_change(run, "reward", bold=True)] + [_change(run, k, 2) for k in
                                                            ("fd", "precision", "recall", "class_entropy")]
            lines.append(f"| {label} | {' | '.join(cells)} | {_f(run['evals'][-1]['kl'], 1)} |")
        lines += ["", "Base, toward Trouser, toward incompressibility (64 samples each, ddpm 10 steps, seed 0):", "",
                  "![base](rl_ddpo-base.png) ![trouser](rl_ddpo-trouser.png) ![jpeg](rl_ddpo-jpeg.png)", ""]
    if "throughput" in data:
        lines += ["## Throughput (2 CPU threads, medians of 12-step runs on a quiet machine)", "",
                  "| case | rollouts/s | updates/s | seconds per step |", "|---|---|---|---|"]
        for label, t in data["throughput"].items():
            lines.append(f"| {label} | {t['rollouts_per_s']:.1f} | {t['updates_per_s']:.2f} | {t['step_s']:.2f} |")
        lines.append("")
    made = _curves(data)
    (RESULTS / "rl.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("wrote rl.md and", ", ".join(made))
