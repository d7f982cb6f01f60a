"""The sequence VAE (seqvae) on SMILES: objective and masking, KL annealing, seeded sampling,
and the latent tools (reconstruction, sampling around a molecule, interpolation) of a model
overfit on four molecules through the real trainer."""

import json

import pytest
import torch
from helpers import gen, make_trainer, on
from pydantic import ValidationError

from genforge.config import DataConfig, load_config
from genforge.data.sequences import pad_sequences
from genforge.data.smiles import load_molecules
from genforge.data.spec import DataSpec
from genforge.families.seqvae import SequenceVAE, SeqVAEConfig, kl_weight_at, run_gru

RINGS = ["c1ccccc1", "C1CCCCC1", "c1ccncc1", "C1CCOC1"]
SUBSTITUENTS = ["C", "CC", "O", "N", "Cl", "F", "C(=O)O", "CN", "OC", "C#N", "Br", "S", "CCO",
                "C(F)(F)F", "NC(=O)C"]
SMILES = [s + r for r in RINGS for s in SUBSTITUENTS]  # 60 molecules, 6 to 14 tokens
TINY = dict(embedding_size=16, encoder_hidden=32, decoder_hidden=48, decoder_layers=2, latent_size=8,
            max_length=24)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are tiny: a second thread only adds OpenMP hand-offs, which cost ~10x
    when another process keeps the cores busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smi_file(path, smiles):
    path.write_text("\n".join(smiles) + "\n")
    return path


@pytest.fixture
def data(tmp_path):
    cfg = DataConfig(name=str(smi_file(tmp_path / "mols.smi", SMILES)), canonicalize=False, val_fraction=0.1)
    return load_molecules(cfg, TINY["max_length"])


def tiny_model(data, **overrides):
    torch.manual_seed(0)
    return SequenceVAE(SeqVAEConfig(**{**TINY, **overrides}), data.spec)


def framed(data, smiles):
    """One SMILES -> framed ids and mask (1, T), as the molecule modality builds them."""
    tok = data.tokenizer
    return pad_sequences([[tok.bos_id, *tok.encode(smiles), tok.eos_id]], tok.pad_id)


def test_shapes_and_terms(data):
    model = tiny_model(data)
    batch = data.train.get(torch.arange(6))
    out = model(batch)
    assert out["loss"].dim() == 0 and out["recon"] > 0 and out["kl"] >= 0
    assert torch.allclose(out["loss"], out["recon"] + out["kl_penalty"])  # kl_weight 1, no free bits
    ids = torch.cat([torch.full((6, 1), data.tokenizer.bos_id), batch["y"]], 1)  # framed (B, T)
    mask = torch.cat([torch.ones(6, 1, dtype=torch.bool), batch["mask"]], 1)
    mu, logvar = model.encode(ids, mask)
    assert mu.shape == logvar.shape == (6, 8)
    metrics = model.evaluate([batch, data.train.get(torch.arange(6, 12))])
    assert {"loss", "recon", "kl", "nll_bound", "nll_bound_per_token"} <= set(metrics)
    assert metrics["nll_bound"] == pytest.approx(metrics["recon"] + metrics["kl"])
    assert model.evaluate([batch]) == model.evaluate([batch])  # fixed noise: equal weights score equally
    model.config.free_bits = 0.5  # every dimension's batch-mean KL is charged at least 0.5 nats
    assert model(batch)["kl_penalty"] >= 0.5 * 8 - 1e-5


def test_the_cpu_gru_matches_torch(data):
    torch.manual_seed(0)
    gru = torch.nn.GRU(5, 7, 2, batch_first=True)
    x, h0 = torch.randn(3, 4, 5), torch.randn(2, 3, 7)
    (want, want_h), (got, got_h) = gru(x, h0), run_gru(gru, x, h0)
    assert torch.allclose(want, got, atol=1e-6) and torch.allclose(want_h, got_h, atol=1e-6)


def test_pad_positions_do_not_change_the_loss(data):
    model = tiny_model(data).eval()
    lengths = data.train.lengths()
    batch = data.train.get(torch.as_tensor([int(lengths.argmin()), int(lengths.argmax()), 0, 1]))
    pad = ~batch["mask"]
    assert pad.any()
    noisy = dict(batch)
    junk = torch.randint(3, data.spec.vocab_size, batch["y"].shape, generator=torch.Generator().manual_seed(1))
    noisy["x"] = torch.where(pad, junk, batch["x"])
    noisy["y"] = torch.where(pad, junk.flip(1), batch["y"])
    torch.manual_seed(5)
    clean = model(batch)
    torch.manual_seed(5)
    dirty = model(noisy)
    for k in ("loss", "recon", "kl"):
        assert torch.allclose(clean[k], dirty[k], atol=1e-5), k
    # and a molecule's posterior does not depend on how far its batch is padded
    ids, mask = framed(data, SMILES[0])
    wide_ids, wide_mask = pad_sequences([ids[0].tolist()], data.tokenizer.pad_id, ids.shape[1] + 5)
    assert torch.allclose(model.encode(ids, mask)[0], model.encode(wide_ids, wide_mask)[0], atol=1e-6)


def test_kl_annealing_is_linear_then_flat():
    assert [kl_weight_at(s, 0.5, 10) for s in (0, 5, 10, 20)] == [0.0, 0.25, 0.5, 0.5]
    assert kl_weight_at(0, 0.5, 0) == 0.5  # no warm-up: the final weight from the start


def test_config_and_data_are_checked(data):
    with pytest.raises(ValidationError, match="latent_size=0"):
        SeqVAEConfig(latent_size=0)
    with pytest.raises(ValidationError, match="dropout"):
        SeqVAEConfig(dropout=1.0)
    with pytest.raises(ValidationError, match=">= 0"):
        SeqVAEConfig(kl_weight=-1.0)
    text = DataSpec(modality="text", vocab_size=50, name="corpus")
    with pytest.raises(ValueError, match="seqvae models token sequences"):
        SequenceVAE(SeqVAEConfig(), text)
    with pytest.raises(ValueError, match="seqvae models token sequences"):
        SequenceVAE(SeqVAEConfig(), DataSpec(modality="image", shape=(1, 8, 8)))


def test_sampling_is_seeded_stops_at_eos_and_spares_the_global_rng(data):
    model = tiny_model(data, dropout=0.2)  # in training mode: sampling must still ignore dropout
    before = torch.get_rng_state()
    a = model.sample(6, torch.Generator().manual_seed(3))
    assert torch.equal(before, torch.get_rng_state())
    assert a == model.sample(6, torch.Generator().manual_seed(3))
    assert a != model.sample(6, torch.Generator().manual_seed(4))
    eos = data.tokenizer.eos_id
    for row in a:
        assert eos not in row[:-1]  # ends at its first EOS...
        assert row[-1] == eos or len(row) == TINY["max_length"] - 1  # ...or at the length limit
    assert all(len(r) <= 5 for r in model.decode(torch.zeros(2, 8), temperature=0.0, max_new_tokens=5))
    with pytest.raises(ValueError, match="temperature"):
        model.sample(2, torch.Generator(), temperature=-1.0)
    with pytest.raises(ValueError, match="Generator"):
        model.decode(torch.zeros(1, 8), None, temperature=1.0)
    assert len(model.preview(data, torch.Generator().manual_seed(0)).splitlines()) == 8


FOUR = ["Cc1ccccc1", "OC1CCOC1", "NC(=O)Cc1ccncc1", "ClC1CCCCC1"]


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """A tiny seqvae trained 200 steps on four molecules (plus one held out) with the real
    trainer; a few seconds on 2 cores."""
    root = tmp_path_factory.mktemp("seqvae")
    path = smi_file(root / "four.smi", [*FOUR, "CCO"])
    overrides = [f"data.name={path}", "data.canonicalize=false", "data.val_fraction=0.2",
                 *(f"model.{k}={v}" for k, v in TINY.items()), "model.kl_weight=0.05", "model.free_bits=0",
                 "model.kl_warmup_steps=50", "train.max_steps=200", "train.batch_size=4",
                 "train.lr=1e-2", "train.min_lr=1e-3", "train.warmup_steps=10", "train.eval_every=100",
                 "train.eval_batches=1", "train.log_every=25", "train.checkpoint_every=1000",
                 "train.plot=false"]
    cfg, mcfg = load_config("vae-moses", overrides)
    trainer = make_trainer(cfg, mcfg, root / "run", progress=False)
    trainer.fit()
    ordered = sorted(FOUR, key=lambda s: len(trainer.data.tokenizer.encode(s)))
    trained = [s for s in ordered if s in [trainer.data.decode(trainer.data.train.sequence(i))
                                           for i in range(len(trainer.data.train))]]
    return trainer, root / "run", trained


def test_training_anneals_the_kl_weight_on_the_trainers_step(overfit):
    _, run_dir, _ = overfit
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    weights = {r["step"]: r["kl_weight"] for r in rows if "kl_weight" in r}
    # logged after step s, the weight was the one of the s-1 steps done before it
    assert weights[25] == pytest.approx(0.05 * 24 / 50) and weights[200] == pytest.approx(0.05)
    assert [r for r in rows if r.get("split") == "val" and "nll_bound" in r]


def test_greedy_decoding_reconstructs_training_molecules(overfit):
    trainer, _, trained = overfit
    model, data = trainer.model.eval(), trainer.data
    assert len(trained) >= 3
    for smiles in trained:
        ids, mask = on(framed(data, smiles), model)
        mu, _ = model.encode(ids, mask)
        assert data.decode(model.decode(mu, temperature=0.0)[0]) == smiles


def test_around_at_radius_0_is_the_reconstruction(overfit):
    trainer, _, trained = overfit
    model, data = trainer.model.eval(), trainer.data
    ids, mask = on(framed(data, trained[0]), model)
    rows = model.around(ids, mask, 3, gen(0, model), 0.0, 0.0)
    assert [data.decode(r) for r in rows] == [trained[0]] * 3
    assert rows[0][-1] == data.tokenizer.eos_id
    far = model.around(ids, mask, 4, gen(1, model), 2.0, 1.0)
    assert far == model.around(ids, mask, 4, gen(1, model), 2.0, 1.0) and len(far) == 4


@pytest.mark.parametrize("method", ["slerp", "lerp"])
def test_interpolation_endpoints_are_the_two_molecules(overfit, method):
    trainer, _, trained = overfit
    model, data = trainer.model.eval(), trainer.data
    a, b = trained[0], trained[-1]
    rows = model.interpolate(*on(framed(data, a), model), *on(framed(data, b), model), 5, method)
    assert len(rows) == 5
    assert data.decode(rows[0]) == a and data.decode(rows[-1]) == b
    with pytest.raises(ValueError, match="at least 2"):
        model.interpolate(*on(framed(data, a), model), *on(framed(data, b), model), 1, method)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_path_agrees_with_the_cpu_path(data):
    """On a GPU the GRUs run through cuDNN, on the CPU through gru_scan: same function."""
    model = tiny_model(data).eval()
    gpu = tiny_model(data).eval().cuda()
    batch = data.train.get(torch.arange(8))
    torch.manual_seed(0)
    want = model(batch)
    torch.manual_seed(0)
    got = gpu({k: v.cuda() for k, v in batch.items()})
    for k in ("recon", "kl"):  # cuDNN may use TF32
        assert torch.allclose(want[k], got[k].cpu(), rtol=1e-2, atol=1e-2), k
    with torch.autocast("cuda", torch.bfloat16):
        out = gpu.train()({k: v.cuda() for k, v in batch.items()})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and all(torch.isfinite(p.grad).all() for p in gpu.parameters()
                                               if p.grad is not None)
    gpu.eval()
    g = torch.Generator(device="cuda")
    assert gpu.sample(4, g.manual_seed(1)) == gpu.sample(4, g.manual_seed(1))
