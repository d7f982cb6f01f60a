"""Typed run configuration: pydantic models, TOML presets and dotted overrides.

A run is configured by a preset (a TOML file in ``configs/`` or any path) plus
``key.sub=value`` overrides. Unknown keys and wrong types are errors that name
the key and list the valid ones; nothing passes silently (nanoGPT's exec-based
configurator is the counter-example).
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from genforge import GenforgeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "configs"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(),
                              allow_inf_nan=False)


class DataConfig(Strict):
    """Where examples come from and how they are encoded."""

    name: str = "pydoc"
    """Registered dataset name (see `genforge list`) or a path to a file or folder."""
    tokenizer: Literal["char", "bpe"] = "char"
    """Text only: character vocabulary, or byte-level BPE trained on the corpus."""
    bpe_vocab_size: int = Field(2048, ge=1)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    """Text: the last fraction of the corpus is held out for validation. Images: the fraction
    of training images held out for validation (and, for datasets without a shipped test
    split, first the fraction held out as the test split)."""
    pixel_range: tuple[float, float] = (0.0, 1.0)
    """Images: pixels are scaled linearly into this range."""
    hflip: bool = False
    """Images: random horizontal flips during training."""
    smiles_column: str | None = None
    """Molecules: the SMILES column of a CSV file (default: a column named SMILES or smiles)."""
    canonicalize: bool = True
    """Molecules: canonicalize with RDKit, counting and reporting rows it cannot parse
    (the MOSES preset turns this off: its files are already canonical)."""
    max_molecules: int | None = Field(None, ge=2)
    """Molecules: train on a fixed-seed subset of this many training molecules."""
    music_tokens: Literal["grid", "events", "chorale"] = "grid"
    """Music: four-voice grid tokens (S, A, T, B per 16th; chorales), REMI-like events (any MIDI),
    or chorale tokens (the grid with a key token and fermata-flagged soprano; data.name=bach)."""
    key_to_c: bool = False
    """Music (data.name=bach): move every chorale to C major or A minor, as BachBot does."""
    transpose: int = Field(0, ge=0, le=12)
    """Music: also train on each piece moved up to this many semitones, every voice kept in its range."""


Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class OptimConfig(Strict):
    """Per-optimizer overrides ([train.optim.<name>]); unset fields take the train.* value."""

    lr: float | None = Field(None, gt=0.0)
    betas: tuple[Fraction, Fraction] | None = None
    weight_decay: float | None = Field(None, ge=0.0)


class TrainConfig(Strict):
    """Everything the generic trainer owns."""

    max_steps: int = Field(2000, ge=1)
    batch_size: int = Field(12, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    min_lr: float = Field(1e-4, ge=0.0)
    warmup_steps: int = Field(100, ge=0)
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = Field(0.1, ge=0.0)
    betas: tuple[Fraction, Fraction] = (0.9, 0.99)
    optim: dict[str, OptimConfig] = {}
    """Per-optimizer lr, betas, weight_decay by the family's optimizer names (a GAN: g and d),
    e.g. train.optim.d.lr=4e-4 (the two time-scale update rule)."""
    grad_clip: float = Field(1.0, ge=0.0)
    """Clip the global gradient norm to this value; 0 turns clipping off."""
    ema_decay: Fraction = 0.0
    """Keep an exponential moving average of the weights with this decay (warmed up as
    min(decay, (1 + step) / (10 + step))); 0 turns EMA off."""
    eval_every: int = Field(250, ge=0)
    """Evaluate on the validation split every N steps (and at the end); 0 turns it off."""
    eval_batches: int = Field(20, ge=1)
    sample_every: int = Field(0, ge=0)
    """Write samples every N steps; 0 means at every evaluation."""
    checkpoint_every: int = Field(500, ge=1)
    keep_best: bool = True
    """Also keep the checkpoint that scores best on the family's selection metric (the
    validation loss for likelihood families) with the weights sampling uses; sample and eval
    use it by default, as nanoGPT keeps only its best-validation checkpoint."""
    early_stop_patience: int = Field(0, ge=0)
    """Stop training after this many evaluations in a row without a new best on the family's
    selection metric (Lightning's EarlyStopping patience, the HF Trainer's
    early_stopping_patience); the best checkpoint stays. 0 turns it off."""
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on CUDA, fp32 on CPU (bf16 is ~100x slower on CPUs without AVX512-BF16)."""
    seed: int = Field(1337, ge=-(2**63), lt=2**63)
    """Any integer torch seeds with (training adds the rank and the epoch to it)."""
    plot: bool = True
    """Write loss and metric curves (PNG) into RUN/plots at the end of training."""

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if self.early_stop_patience and not self.eval_every:
            raise ValueError(f"early_stop_patience ({self.early_stop_patience}) counts evaluations; "
                             "set eval_every > 0 or early_stop_patience=0")
        return self


class RLConfig(Strict):
    """RL fine-tuning of a trained run (`genforge rl`); recorded in the RL run's config."""

    base_run: str
    """The run that was fine-tuned (its checkpoint below is also the frozen KL reference)."""
    base_checkpoint: str = ""
    """The base run's checkpoint folder the policy started from."""
    reward: list[str] = []
    """Reward specs NAME or NAME=WEIGHT: built-ins or MODULE:FUNCTION."""
    reward_args: dict[str, dict[str, Any]] = {}
    """Arguments per reward name, e.g. {"keyword": {"word": "love"}}."""
    algo: Literal["reinforce", "rloo", "grpo", "ddpo"] | None = None
    """None: grpo for token runs, ddpo for diffusion runs (resolved and recorded at the start)."""
    group_size: int = Field(8, ge=1)
    """Samples per prompt; RLOO and GRPO baselines are computed within each group."""
    updates_per_rollout: int = Field(1, ge=1)
    """Optimizer steps on each rollout batch (>1 makes the importance ratio and its clip matter)."""
    clip: float = Field(0.2, gt=0.0)
    """Ratio clipping epsilon (PPO / GRPO / DDPO)."""
    kl_coef: float = Field(0.05, ge=0.0)
    """Weight of the KL penalty to the frozen starting model."""
    kl_target: float | None = Field(None, gt=0.0)
    """Adapt kl_coef toward this KL per sample (nats), Ziegler et al. 2019."""
    kl_budget: float | None = Field(None, gt=0.0)
    """Stop when the rollouts' KL per sample stays above this for guard_patience steps."""
    entropy_coef: float = Field(0.0, ge=0.0)
    max_new_tokens: int | None = Field(None, ge=1)
    """Token policies: tokens generated per rollout (default: 64 for text, the context for molecules)."""
    prompts: list[str] = []
    """Token policies: prompts to continue (default: the model's start token)."""
    prompt_file: str | None = None
    """A .jsonl/.csv of prompts ('prompt' field); other fields reach rewards as columns."""
    sampling_steps: int = Field(20, ge=2)
    """DDPO: denoising steps of each rollout (ancestral DDPM chain)."""
    timestep_fraction: float = Field(1.0, gt=0.0, le=1.0)
    """DDPO: fraction of each chain's steps trained on per update (Black et al. 2023)."""
    min_diversity: float | None = Field(None, ge=0.0)
    """Stop when the rollouts' diversity (text distinct-2, molecules IntDiv, images feature
    spread) stays below this for guard_patience steps."""
    guard_patience: int = Field(3, ge=1)
    diversity_filter: int | None = Field(None, ge=1)
    """REINVENT-style memory: once this many samples shared a scaffold (molecules) or word
    3-gram (text), further ones lose that share of their reward."""
    max_oracle_calls: int | None = Field(None, ge=1)
    """Stop after this many reward calls (distinct molecules, PMO-style; samples otherwise)."""
    select_kl_weight: float = Field(0.0, ge=0.0)
    """checkpoints/best maximizes eval reward - this x eval KL (nats)."""
    eval_samples: int = Field(64, ge=2)
    """Samples drawn from a fixed seed at every evaluation."""


class RunConfig(Strict):
    family: str
    description: str = ""
    model: dict[str, Any] = {}
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    out_dir: str = "runs"
    """Run directories are created under this folder."""
    rl: RLConfig | None = None
    """Set on runs made by `genforge rl`: the reward, algorithm and base run."""


# --------------------------------------------------------------------------- loading


def list_presets() -> dict[str, str]:
    """Preset name -> its one-line description."""
    out = {}
    for path in sorted(PRESET_DIR.glob("*.toml")):
        with open(path, "rb") as f:
            out[path.stem] = tomllib.load(f).get("description", "")
    return out


def read_preset(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if not (path.suffix == ".toml" and path.is_file()):
        path = PRESET_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        names = ", ".join(list_presets())
        raise GenforgeError(f"unknown preset '{name_or_path}'; choose one of: {names} (or a .toml path)")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise GenforgeError(f"{path} is not valid TOML: {e}") from None


def parse_value(text: str) -> Any:
    """TOML literal if it parses (6, 1e-3, true, [1, 2], "s"), else the raw string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise GenforgeError(f"override '{item}' must look like key.sub=value (e.g. train.max_steps=500)")
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise GenforgeError(f"'{key}': '{part}' is a value, not a section")
            node = child
        node[parts[-1]] = parse_value(value.strip())
    return raw


def _format_error(err: ValidationError, prefix: str, model: type[BaseModel]) -> str:
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    key = ".".join([prefix, *loc] if prefix else loc)
    if first["type"] == "extra_forbidden":
        section: Any = model
        for part in loc[:-1]:
            ann = section.model_fields[part].annotation
            section = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
            if section is None:
                break
        valid = ", ".join(section.model_fields) if section is not None else "?"
        return f"unknown config key '{key}'; valid keys here: {valid}"
    return f"config key '{key}': {first['msg']} (got {first.get('input')!r})"


def validate(model: type[BaseModel], raw: dict[str, Any], prefix: str = "") -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        raise GenforgeError(_format_error(e, prefix, model)) from None


def load_config(preset: str, overrides: list[str] = ()) -> tuple[RunConfig, BaseModel]:
    """Resolve preset + overrides into the run config and the family's model config."""
    from genforge.families import family_class

    raw = apply_overrides(read_preset(preset), list(overrides))
    cfg = validate(RunConfig, raw)
    model_cfg = validate(family_class(cfg.family).Config, cfg.model, prefix="model")
    cfg.model = model_cfg.model_dump()
    return cfg, model_cfg


def config_from_dict(raw: dict[str, Any]) -> tuple[RunConfig, BaseModel]:
    """Rebuild configs saved in a run directory."""
    from genforge.families import family_class

    cfg = validate(RunConfig, raw)
    return cfg, validate(family_class(cfg.family).Config, cfg.model, prefix="model")
