"""Contract tests run over every family: whatever the family, the trainer, run directories,
EMA, the best checkpoint, seeded sampling, eval dispatch and resume behave the same.

A new family joins FAMILY_CASES; ``toy`` (tests/toy_family.py) is the worked example: two
optimizers, a frozen part and a sub-module EMA target, with nothing in train/ changed for it.
"""

import json
from pathlib import Path

import pytest
import torch
from helpers import device_under_test, gen, make_trainer, on, train_losses
from safetensors.torch import load_file

from genforge.checkpoint import best_checkpoint, foreign_entries, latest_checkpoint
from genforge.config import load_config
from genforge.evaluate import evaluate_run
from genforge.families import FAMILIES
from genforge.families.base import GenerativeModel
from genforge.runs import load_run

COMMON = ["train.batch_size=8", "train.warmup_steps=2", "train.log_every=1", "train.eval_every=3",
          "train.eval_batches=2", "train.checkpoint_every=1000", "train.ema_decay=0.5", "train.plot=false"]
TOY = str(Path(__file__).with_name("toy-digits.toml"))


def gpt_case(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("all the world's a stage, and all the men and women merely players.\n" * 60)
    return "gpt-demo", [f"data.name={corpus}", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
                        "model.block_size=16"], {"max_batches": 1}


SMILES = ["CC(=O)Oc1ccccc1C(=O)O", "CC(C)Cc1ccc(C(C)C(=O)O)cc1", "CC(=O)Nc1ccc(O)cc1", "O=C(O)c1ccccc1O",
          "CCOC(=O)c1ccc(N)cc1", "Nc1ccc(S(N)(=O)=O)cc1", "COc1cc(C=O)ccc1O", "CC(N)Cc1ccccc1",
          "OC(c1ccccc1)c1ccccc1", "O=C1CCCN1", "CC(C)(C)c1ccc(O)cc1", "CC(=O)c1ccc(O)cc1"] * 4


def smiles_file(tmp_path):
    path = tmp_path / "mols.smi"
    path.write_text("\n".join(SMILES) + "\n")
    return path


def gpt_smiles_case(tmp_path):
    pytest.importorskip("rdkit")
    return "gpt-demo", [f"data.name={smiles_file(tmp_path)}", "data.val_fraction=0.1", "model.n_layer=1", "model.n_head=2",
                        "model.n_embd=16", "model.block_size=40"], {"num_samples": 20, "workers": 1}


def gpt_music_case(tmp_path):  # a JSB-shaped file of synthetic four-voice chorales
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    grids = [np.repeat(rng.integers([60, 53, 48, 36], [79, 72, 67, 60], (12, 4)), 2, axis=0).tolist()
             for _ in range(8)]
    path = tmp_path / "chorales.json"
    path.write_text(json.dumps({"train": grids[:6], "valid": grids[6:7], "test": grids[7:]}))
    return "gpt-jsb", [f"data.name={path}", "model.n_layer=1", "model.n_head=2", "model.n_embd=16",
                       "model.block_size=32", "model.dropout=0.1"], {"num_samples": 2, "max_batches": 2}


def seqvae_case(tmp_path):
    pytest.importorskip("rdkit")
    return "vae-moses", [f"data.name={smiles_file(tmp_path)}", "data.canonicalize=true", "data.val_fraction=0.1",
                         "model.embedding_size=8", "model.encoder_hidden=8", "model.decoder_hidden=16",
                         "model.latent_size=4", "model.max_length=40", "model.kl_warmup_steps=4"], \
        {"num_samples": 20, "workers": 1}


def seqvae_music_case(tmp_path):  # 8-step phrases of synthetic chorales (data/music_phrases.py)
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    grids = [np.repeat(rng.integers([60, 53, 48, 36], [79, 72, 67, 60], (24, 4)), 2, axis=0).tolist()
             for _ in range(8)]
    path = tmp_path / "phrases.json"  # 48 steps: 3 held-out phrases per piece, 6 in test
    path.write_text(json.dumps({"train": grids[:4], "valid": grids[4:6], "test": grids[6:]}))
    return "seqvae-jsb", [f"data.name={path}", "model.embedding_size=8", "model.encoder_hidden=8", "model.decoder_hidden=16",
                          "model.latent_size=4", "model.max_length=34", "model.kl_warmup_steps=4",
                          "data.transpose=0"], {"num_samples": 2, "max_batches": 2}


def vae_case(tmp_path):
    return "vae-digits", ["model.latent_dim=4", "model.channels=[8, 8]", "model.hidden=32",
                          "model.kl_warmup_steps=4"], {"num_samples": 60, "iwae_k": 2}


def diffusion_case(tmp_path):  # class-conditional: held-out bits/dim draw captions/labels too
    return "diffusion-digits", ["model.channels=[8, 16]", "model.heads=2", "model.sampling_steps=3",
                                "model.conditioning=class", "model.dropout=0.2"], \
        {"num_samples": 60, "sampling_steps": 2, "bpd_steps": 2, "bpd_images": 8}


def gan_case(tmp_path):
    return "gan-digits", ["model.g_width=8", "model.d_width=8", "model.z_dim=8", "model.eval_samples=32"], \
        {"num_samples": 60}


def toy_case(tmp_path):
    return TOY, [], {"num_samples": 60}


FAMILY_CASES = {"gpt": gpt_case, "gpt-smiles": gpt_smiles_case, "gpt-music": gpt_music_case, "seqvae": seqvae_case,
                "seqvae-music": seqvae_music_case,
                "vae": vae_case, "diffusion": diffusion_case, "gan": gan_case,
                "toy": toy_case}


def test_every_registered_family_has_a_contract_case():
    assert set(FAMILIES) <= set(FAMILY_CASES)


def train(tmp_path, family, name, *extra, **kwargs):
    preset, overrides, _ = FAMILY_CASES[family](tmp_path)
    cfg, mcfg = load_config(preset, [*overrides, *COMMON, *extra])
    trainer = make_trainer(cfg, mcfg, tmp_path / name, progress=False, **kwargs)
    return trainer, trainer.fit()


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_family_contract(family, tmp_path):
    trainer, result = train(tmp_path, family, "run", "train.max_steps=6")
    run_dir = tmp_path / "run"
    model = trainer.model
    assert isinstance(model, GenerativeModel)
    assert len(train_losses(run_dir)) == 6 and any((run_dir / "samples").iterdir())
    # everything a run writes is a known run entry, so `--overwrite` can replace this run (and
    # only runs): a new file a family or modality writes must join checkpoint.RUN_FILES
    assert foreign_entries(run_dir) == []

    # the run directory alone rebuilds the trained (raw) weights, frozen parts included
    raw = load_run(run_dir, use_ema=False, checkpoint="latest", device=device_under_test().type)
    for (k, a), b in zip(model.state_dict().items(), raw.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k

    # forward: a scalar training objective; evaluation reports the selection metric. (After the
    # comparison above: a training-mode forward may update batch-norm statistics.)
    batch = on(trainer.data.train.get(torch.arange(4)), model)
    assert model(batch)["loss"].dim() == 0
    assert model.selection.metric in model.evaluate([batch])
    assert raw.step == 6 and latest_checkpoint(run_dir).name == "step_0000006"
    saved = set(load_file(str(latest_checkpoint(run_dir) / "model.safetensors")))
    assert not any(k.startswith(tuple(f"{p}." for p in model.frozen_parts())) for k in saved)

    # EMA round trip, into the family's EMA target, strictly
    ema = load_run(run_dir, use_ema=True, checkpoint="latest", device=device_under_test().type)
    assert ema.used_ema
    shadow = trainer.ema.state_dict()
    target = ema.model.ema_target().state_dict()
    assert set(shadow) <= set(target)
    for k, v in shadow.items():
        assert torch.equal(target[k].float(), v), k
    assert any(not torch.equal(target[k].float(), model.ema_target().state_dict()[k].float()) for k in shadow)

    # the best checkpoint is the best evaluation, scored with the EMA weights sampling uses
    evals = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines() if '"split"' in r]
    assert evals and all(r["weights"] == "ema" for r in evals)
    metric, sign = model.selection.metric, (1 if model.selection.mode == "min" else -1)
    best_row = min(evals, key=lambda r: sign * r[metric])
    assert load_run(run_dir).step == best_row["step"] == int(best_checkpoint(run_dir).name.split("_")[-1])
    assert result["best_score"] == best_row[metric]

    # sampling: same seed, same samples; another seed, other samples
    def draw(seed):
        out = ema.model.sample(3, gen(seed, ema.model))
        return out if isinstance(out, list) else out.tolist()

    assert draw(7) == draw(7) and draw(7) != draw(8)
    before = torch.get_rng_state()
    draw(1)
    assert torch.equal(before, torch.get_rng_state())  # the global RNG is never touched

    # sampling, previews and held-out numbers: eval mode, the caller's mode back, no global RNG
    _, _, eval_options = FAMILY_CASES[family](tmp_path)
    check_sampling_is_pure(model, trainer.data, eval_options)

    # eval dispatches on the modality and returns numbers
    report = evaluate_run(ema, progress=False, **eval_options)
    assert report and all(isinstance(v, (int, float, list, dict, str)) for v in report.values())


def global_rng_state():
    import random

    import numpy as np

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return torch.get_rng_state(), cuda, random.getstate(), np.random.get_state()


def same_rng_state(a, b) -> bool:
    (ta, ca, ra, (_, na, *pa)), (tb, cb, rb, (_, nb, *pb)) = a, b
    return (torch.equal(ta, tb) and len(ca) == len(cb) and all(map(torch.equal, ca, cb)) and ra == rb
            and (na == nb).all() and pa == pb)


def check_sampling_is_pure(model, data, eval_options):
    """Issue #16: previews ran in train mode (dropout on) and held-out metrics drew from the
    global RNG. Every module sees training=False inside sample, preview and heldout_metrics,
    the model's modes are as they were afterwards, and torch's, Python's and NumPy's global
    RNG states are unchanged."""
    model.train()
    modes = {name: m.training for name, m in model.named_modules()}
    seen: list[tuple[str, bool]] = []
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.append((name, m.training)))
             for name, m in model.named_modules()]
    sampling = {o.name for o in type(model).sample_options}
    heldout_kw = {k: v for k, v in eval_options.items()
                  if k in {o.name for o in type(model).eval_options} - sampling}
    batch = on((data.test or data.val).get(torch.arange(4)), model)  # text corpora ship no test split
    calls = {"sample": lambda: model.sample(3, gen(0, model)),
             "preview": lambda: model.preview(data, gen(0, model)),
             "heldout_metrics": lambda: model.heldout_metrics([batch], gen(0, model), **heldout_kw)}
    try:
        for name, call in calls.items():
            seen.clear()
            before = global_rng_state()
            call()
            assert same_rng_state(before, global_rng_state()), f"{name} touched the global RNG"
            assert not [m for m, training in seen if training], f"{name} ran modules in train mode"
            assert {n: m.training for n, m in model.named_modules()} == modes, f"{name} left modes changed"
            if name != "heldout_metrics":
                assert seen, f"{name} called no module"  # the spy works
    finally:
        for h in hooks:
            h.remove()
    first = model.sample(3, gen(5, model))  # dropout > 0 in a case would make these differ in train mode
    second = model.sample(3, gen(5, model))
    assert (first == second) if isinstance(first, list) else torch.equal(first, second)


@pytest.mark.parametrize("family", sorted(FAMILY_CASES))
def test_family_resume_is_exact(family, tmp_path):
    train(tmp_path, family, "straight", "train.max_steps=7")
    train(tmp_path, family, "paused", "train.max_steps=7", stop_after=4)
    train(tmp_path, family, "paused", "train.max_steps=7", resume=True)
    assert train_losses(tmp_path / "straight") == train_losses(tmp_path / "paused")
    assert len(train_losses(tmp_path / "paused")) == 7


# Family options a modality still resolves itself (to move into the family's plan_sampling).
RESOLVED_BY_MODALITY: dict[str, set[str]] = {}  # none left: every family resolves its own


@pytest.mark.parametrize("kind", ["text", "image", "molecule"])
def test_modalities_name_no_family_option(kind):
    """A family resolves its own sample options (``plan_sampling``: a GAN's --interpolate-seeds,
    diffusion's --init/--mask/--trajectory); a modality never names one, so a new family's
    options need no modality edit. Options shared on purpose (common, a modality's own,
    --prompt, the latent-variable tools) are not a family's."""
    import re

    from genforge.families import family_class
    from genforge.families.base import PROMPT, LatentVariableModel
    from genforge.modalities import COMMON_EVAL_OPTIONS, COMMON_SAMPLE_OPTIONS, MODALITIES, modality

    shared = {o.name for o in (*COMMON_SAMPLE_OPTIONS, *COMMON_EVAL_OPTIONS, *LatentVariableModel.sample_options, PROMPT)}
    for m in MODALITIES:
        shared |= {o.name for o in (*modality(m).sample_options, *modality(m).eval_options)}
    source = Path(__import__(f"genforge.modalities.{kind}", fromlist=["_"]).__file__).read_text()
    named = set()
    for family in FAMILIES:
        cls = family_class(family)
        for name in {o.name for o in (*cls.sample_options, *cls.eval_options)} - shared:
            if re.search(rf"[\"']{name}[\"']|\b{name}=", source):  # a key, or a keyword parameter
                named.add(name)
    assert named == RESOLVED_BY_MODALITY.get(kind, set()), named


def test_screened_modalities_have_a_privacy_filter_and_an_audit():
    """A modality that offers --filter/--privacy-filter on `genforge sample` screens its samples
    before writing (its sample_command takes both) and has a near-copy test and an audit; the
    options take nargs, which keeps a server from taking them from a request."""
    import inspect

    from genforge.audit.privacy import PRIVACY
    from genforge.audit.runs import AUDITS
    from genforge.modalities import FILTER, MODALITIES, PRIVACY_FILTER, modality

    screened = [m for m in MODALITIES if PRIVACY_FILTER in modality(m).sample_options]
    assert {"image", "text", "molecule"} <= set(screened)
    for name in screened:
        kind = modality(name)
        params = inspect.signature(kind.sample_command).parameters
        assert FILTER in kind.sample_options and {"filter", "privacy_filter"} <= set(params), name
        assert name in PRIVACY and name in AUDITS, name
    assert FILTER.nargs is not None and PRIVACY_FILTER.nargs is not None
