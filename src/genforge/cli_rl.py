"""`genforge rl`: its options and the call into ``genforge.rl.finetune``. Kept apart from
``cli.py`` (which registers it) because RL has more flags than every other command together."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from genforge import GenforgeError

# `genforge rl` flags that set RLConfig fields (dest = field name); None means not given.
RL_FLAGS = ("algo", "kl_coef", "kl_target", "kl_budget", "entropy_coef", "group_size", "updates_per_rollout",
            "clip", "max_new_tokens", "prompt_file", "sampling_steps", "timestep_fraction", "min_diversity",
            "guard_patience", "diversity_filter", "max_oracle_calls", "select_kl_weight", "eval_samples")


def _reward_args(items: list[str], rewards: list[str]) -> dict[str, dict]:
    """``NAME.KEY=VALUE`` (or ``KEY=VALUE`` when one reward is named) -> {name: {key: value}}."""
    from genforge.config import parse_value
    from genforge.rl.rewards import parse_spec

    names = [parse_spec(r)[0] for r in rewards]
    out: dict[str, dict] = {}
    for item in items:
        left, sep, value = item.partition("=")
        if not sep or not left:
            raise GenforgeError(f"--reward-arg {item!r} must look like NAME.KEY=VALUE (e.g. keyword.word=love)")
        name, dot, key = left.rpartition(".")
        if not dot:
            if len(names) != 1:
                raise GenforgeError(f"--reward-arg {item!r}: say which reward it is for, e.g. "
                                    f"{names[0] if names else 'keyword'}.{left}={value}")
            name, key = names[0], left
        if key in out.get(name, {}):  # the last one silently won
            raise GenforgeError(f"--reward-arg {name}.{key} is given twice; give each argument once")
        out.setdefault(name, {})[key] = parse_value(value)
    return out


def _rl(args) -> None:
    from genforge.config import RLConfig, parse_value, validate
    from genforge.rl.finetune import finetune

    if args.stop_after is not None and args.stop_after < 1:
        raise GenforgeError("--stop-after must be at least 1")
    if args.resume and args.base_run and "=" in args.base_run:  # `rl --resume RUN train.k=v`: argparse
        args.overrides.insert(0, args.base_run)                 # took the first override for BASE_RUN
        args.base_run = None
    given = {k: getattr(args, k) for k in RL_FLAGS if getattr(args, k) is not None}
    flags = {"max_steps": "steps", "batch_size": "batch_size", "lr": "lr", "seed": "seed"}  # train.KEY: flag
    train = {k: getattr(args, a) for k, a in flags.items() if getattr(args, a) is not None}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("train."):
            raise GenforgeError(f"'{item}': `genforge rl` takes train.KEY=VALUE overrides only "
                                "(model and data come from the base run)")
        name = key[len("train."):]
        if name in flags and getattr(args, flags[name]) is not None:
            raise GenforgeError(f"--{flags[name].replace('_', '-')} and {key} set the same thing (the override "
                                "silently won); give one of them")
        train[name] = parse_value(value)
    if args.resume:
        # --seed chooses how a new run's rollouts start; a resumed run restores its generators
        extra = [f"--{k.replace('_', '-')}" for k in given] + (["--seed"] if args.seed is not None else []) + \
                (["--reward"] if args.reward else []) + \
                (["--prompt"] if args.prompt else []) + (["--run-dir"] if args.run_dir else [])
        if args.base_run or extra:
            raise GenforgeError(f"--resume continues RUN with its recorded settings; {' '.join(extra) or 'BASE_RUN'} "
                                "does not apply (only --steps, --batch-size, --lr, --stop-after, --no-progress and "
                                "train.* overrides)")
        run_dir = Path(args.resume)
        settings = None
    else:
        if not args.base_run:
            raise GenforgeError("name the run to fine-tune: genforge rl BASE_RUN --reward NAME")
        if not args.reward:
            raise GenforgeError("name a reward: --reward NAME (see `genforge rl --help` for the built-ins)")
        try:
            settings = validate(RLConfig, {"base_run": args.base_run, "reward": args.reward,
                                           "reward_args": _reward_args(args.reward_arg or [], args.reward),
                                           "prompts": args.prompt or [], **given}, prefix="rl")
        except GenforgeError as e:  # name the flag the user typed, not the config key behind it
            import re

            raise GenforgeError(re.sub(r"config key 'rl\.(\w+)'", lambda m: "--" + m.group(1).replace("_", "-"),
                                       str(e))) from None
        run_dir = Path(args.run_dir) if args.run_dir else _rl_run_dir(Path(args.base_run))
    result = finetune(args.base_run, settings, run_dir, train_overrides=train, resume=bool(args.resume),
                      overwrite=args.overwrite, checkpoint=args.checkpoint, stop_after=args.stop_after,
                      progress=not args.no_progress)
    print(json.dumps(result))
    if result.get("stopped"):
        print(f"stopped early: {result['stopped']}")
    print(f"run directory: {run_dir}")
    print(f"sample from it: genforge sample {run_dir}")


def _rl_run_dir(base: Path) -> Path:
    path = base.parent / f"{base.name}-rl-{datetime.now():%Y%m%d-%H%M%S}"
    i = 2
    while path.exists():
        path, i = path.with_name(f"{path.name.rsplit('~', 1)[0]}~{i}"), i + 1
    return path


def add_rl_parser(sub) -> None:
    """Register `genforge rl` on the subcommand parsers ``sub``."""
    r = sub.add_parser("rl", help="fine-tune a trained run toward rewards (GRPO, RLOO, REINFORCE, DDPO)",
                       description=(
        "Fine-tune BASE_RUN against reward functions into a new run directory that sample and eval "
        "read like any run. Token runs (gpt on text, SMILES or music) use reinforce, rloo or grpo; diffusion "
        "runs use ddpo. A KL penalty keeps the policy near the starting model; guard rails stop the run "
        "when diversity collapses or KL leaves its budget. Built-in rewards: text: sentiment, keyword, "
        "regex, length, repetition, similarity; molecules: qed, plogp, tanimoto, validity; images: "
        "classifier, brightness, jpeg_compressibility, jpeg_incompressibility; music: no_parallels, in_key, "
        "voice_ranges, cadence. Your own: "
        "--reward mypkg.rewards:score (a function (samples, **columns) -> list[float | None])."))
    r.add_argument("base_run", nargs="?", help="the trained run to fine-tune")
    r.add_argument("overrides", nargs="*", help="train.KEY=VALUE overrides (e.g. train.lr=3e-5)")
    r.add_argument("--reward", action="append", metavar="NAME[=WEIGHT]",
                   help="a reward and its weight (default 1); repeat to add several")
    r.add_argument("--reward-arg", action="append", metavar="[NAME.]KEY=VALUE",
                   help="an argument of a reward, e.g. keyword.word=love, tanimoto.target=CCO, "
                        "classifier.target=Sneaker (NAME may be left out when one reward is named)")
    r.add_argument("--algo", choices=["reinforce", "rloo", "grpo", "ddpo"],
                   help="policy-gradient estimator (default: grpo for token runs, ddpo for diffusion runs)")
    r.add_argument("--steps", type=int, metavar="N", help="optimizer steps (train.max_steps)")
    r.add_argument("--batch-size", type=int, metavar="N", help="samples per rollout (default 64)")
    r.add_argument("--lr", type=float, help="learning rate (default 1e-4, constant)")
    r.add_argument("--seed", type=int, help="seed of rollouts and prompt order (default: the base run's)")
    r.add_argument("--group-size", type=int, metavar="G", help="rloo/grpo with several prompts: samples per prompt (default 8); "
                        "with one prompt or none the baseline is the whole batch")
    r.add_argument("--updates-per-rollout", type=int, metavar="K",
                   help="optimizer steps on each rollout batch (default 1; with train.grad_accum=A a step "
                        "takes A rollouts)")
    r.add_argument("--clip", type=float, metavar="EPS", help="importance-ratio clip (default 0.2)")
    r.add_argument("--kl-coef", type=float, metavar="BETA", help="KL penalty weight (default 0.05)")
    r.add_argument("--kl-target", type=float, metavar="NATS", help="adapt --kl-coef toward this KL per sample")
    r.add_argument("--kl-budget", type=float, metavar="NATS",
                   help="stop when KL per sample stays above this for --guard-patience rollouts")
    r.add_argument("--entropy-coef", type=float, metavar="C", help="entropy bonus weight (default 0)")
    r.add_argument("--min-diversity", type=float, metavar="D",
                   help="stop when rollout diversity (text distinct-1, molecules IntDiv, images feature "
                        "spread, music distinct chord pairs) stays below D for --guard-patience rollouts")
    r.add_argument("--guard-patience", type=int, metavar="N", help="rollouts in a row before a guard rail stops (default 3)")
    r.add_argument("--diversity-filter", type=int, metavar="BUCKET",
                   help="REINVENT diversity filter: after BUCKET samples share a scaffold (molecules), a "
                        "word 3-gram (text) or a run of 3 chords (music), further ones lose that share of "
                        "their reward")
    r.add_argument("--max-oracle-calls", type=int, metavar="N",
                   help="stop after N oracle calls: scorings of training-rollout samples; for SMILES, "
                        "distinct valid canonical molecules, as PMO counts (pre-flight and evaluation are free)")
    r.add_argument("--select-kl-weight", type=float, metavar="W",
                   help="checkpoints/best maximizes eval reward - W x eval KL (default 0: reward)")
    r.add_argument("--eval-samples", type=int, metavar="N", help="samples per evaluation (default 64)")
    r.add_argument("--prompt", action="append", metavar="TEXT",
                   help="token runs: a prompt to continue (repeat; default the model's start token); music "
                        "runs: an opening as a .mid file or grid tokens in whole 16th steps")
    r.add_argument("--prompt-file", metavar="FILE",
                   help="token runs: .jsonl/.csv of prompts ('prompt' field); other fields reach rewards")
    r.add_argument("--max-new-tokens", type=int, metavar="N",
                   help="token runs: tokens per rollout (default 64 for text, the context for molecules)")
    r.add_argument("--sampling-steps", type=int, metavar="N", help="ddpo: denoising steps per rollout (default 20)")
    r.add_argument("--timestep-fraction", type=float, metavar="F",
                   help="ddpo: fraction of each chain's steps trained on (default 1)")
    r.add_argument("--checkpoint", default="auto", help="base run checkpoint to start from (default auto)")
    r.add_argument("--run-dir", help="where to write the RL run (default: BASE_RUN-rl-TIMESTAMP beside it)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the genforge run in --run-dir (any other folder is refused)")
    r.add_argument("--resume", metavar="RUN", help="continue an RL run from its latest checkpoint")
    r.add_argument("--stop-after", type=int, metavar="N", help="checkpoint and stop after N steps of this session")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_rl)
