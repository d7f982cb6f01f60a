"""Sequence VAE: a variational autoencoder over token sequences (SMILES), after the MOSES baseline.

Gómez-Bombarelli et al. 2018 ("Automatic chemical design using a data-driven continuous
representation of molecules") encode a SMILES string into a continuous latent z and decode
it back; MOSES (Polykovskiy et al. 2020) ships the recurrent version used here:

- encoder q(z|s): a bidirectional GRU over the molecule's tokens; its last forward and
  backward states give N(mu, diag sigma^2) over a 128-dim latent;
- decoder p(s|z): a GRU whose initial state is a linear map of z and which also receives z
  next to the previous token's embedding at every step, so the latent cannot be forgotten
  along a long string;
- the KL weight is annealed linearly from 0 to its final value (Bowman et al. 2016), and
  optional free bits (Kingma et al. 2016) keep each latent dimension's first nats unpenalized.

The one difference from MOSES's loss: the reconstruction term is *summed* over a molecule's
tokens (MOSES averages over tokens), so ``kl_weight = 1`` is the ELBO. MOSES's setting
(token mean + 0.05 KL) is about kl_weight 1.7 here, at ~35 tokens per molecule.

Sequences arrive framed ``<bos> s <eos>`` and right-padded (``genforge.data.smiles``); the
mask, not the PAD id, says which positions are real (PAD may share EOS's id).
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from pydantic import model_validator
from torch import nn

from genforge import GenforgeError
from genforge.config import Strict
from genforge.families.base import Batch, LatentVariableModel, SampleOption, SamplingPlan, Selection
from genforge.sampling.images import lerp, slerp


class SeqVAEConfig(Strict):
    embedding_size: int = 64
    """Token embedding width, shared by encoder and decoder (MOSES: the vocabulary size)."""
    encoder_hidden: int = 256
    """Hidden size of each direction of the bidirectional GRU encoder."""
    decoder_hidden: int = 512
    decoder_layers: int = 3
    latent_size: int = 128
    dropout: float = 0.0
    """On token embeddings and between decoder GRU layers (MOSES: 0)."""
    max_length: int = 100
    """Longest framed molecule (<bos> and <eos> included) trained on, and the sampling limit."""
    kl_weight: float = 1.0
    """Final KL weight; 1 is the ELBO (reconstruction is summed per molecule)."""
    kl_warmup_steps: int = 0
    """Ramp the KL weight linearly from 0 to kl_weight over this many optimizer steps."""
    free_bits: float = 0.0
    """Nats per latent dimension below which the KL is not penalized (0 turns it off)."""

    @model_validator(mode="after")
    def _check(self) -> SeqVAEConfig:
        sizes = ("embedding_size", "encoder_hidden", "decoder_hidden", "decoder_layers", "latent_size")
        small = [f"{k}={getattr(self, k)}" for k in sizes if getattr(self, k) < 1]
        if small:
            raise ValueError(f"{', '.join(small)}: sizes and layer counts must be at least 1")
        if self.max_length < 3:
            raise ValueError(f"max_length={self.max_length} must be at least 3 (<bos>, one token, <eos>)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout} must be in [0, 1)")
        if self.kl_weight < 0 or self.free_bits < 0 or self.kl_warmup_steps < 0:
            raise ValueError("kl_weight, free_bits and kl_warmup_steps must be >= 0")
        return self


def kl_weight_at(step: int, final: float, warmup_steps: int) -> float:
    """Linear KL annealing: 0 at step 0, ``final`` from step ``warmup_steps`` on."""
    if warmup_steps <= 0:
        return final
    return final * min(1.0, step / warmup_steps)


def gru_scan(x: torch.Tensor, h: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
             b_ih: torch.Tensor, b_hh: torch.Tensor) -> torch.Tensor:
    """One GRU layer, step by step, with nn.GRU's equations (Cho et al. 2014; PyTorch's gate
    order r, z, n): x (B, T, I), h (B, H) -> outputs (B, T, H).

    Why not nn.GRU on the CPU: its backward slices the precomputed input projection once per
    step, and each slice's gradient is a zero-filled copy of the whole (T, B, 3H) tensor, so
    training costs O(T^2) memory traffic; here unbind's gradient is one stack (~2x faster)."""
    gx = F.linear(x, w_ih, b_ih)  # (B, T, 3H): every step's input projection at once
    out = []
    for g in gx.unbind(1):  # (B, 3H) per step
        xr, xz, xn = g.chunk(3, 1)
        hr, hz, hn = F.linear(h, w_hh, b_hh).chunk(3, 1)
        r, u = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)  # reset and update gates
        n = torch.tanh(xn + r * hn)
        h = n + u * (h - n)  # (1 - u) * n + u * h
        out.append(h)
    return torch.stack(out, 1)


def run_gru(gru: nn.GRU, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``gru(x, h0)`` for a batch-first, unidirectional nn.GRU: (B, T, H) outputs and
    (layers, B, H) final states. cuDNN on a GPU; :func:`gru_scan` on its weights elsewhere."""
    if x.is_cuda:
        return gru(x, h0)
    B, H = x.shape[0], gru.hidden_size
    h0 = x.new_zeros(gru.num_layers, B, H) if h0 is None else h0
    finals = []
    for layer in range(gru.num_layers):
        if layer > 0 and gru.dropout > 0:  # nn.GRU's dropout: between layers, not after the last
            x = F.dropout(x, gru.dropout, gru.training)
        w = [getattr(gru, f"{k}_l{layer}") for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        x = gru_scan(x, h0[layer], *w)
        finals.append(x[:, -1])
    return x, torch.stack(finals)


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0 is greedy), got {temperature}")


class SequenceVAE(LatentVariableModel):
    Config = SeqVAEConfig
    selection = Selection("loss", "min")
    # --interpolate A B, --interp-points, --interp-method (shared with the image VAE), and
    # sampling around a molecule. No --attribute: molecule datasets carry no class labels.
    sample_options = (
        *LatentVariableModel.sample_options[:3],
        SampleOption("around", "seqvae runs: sample near one example, its latent mean plus noise: "
                               "molecule runs take a SMILES string, music runs a MIDI file (its first "
                               "phrase)", str, metavar="SMILES|FILE.mid"),
        # No default here: --radius without --around is refused, so "not given" must be visible.
        SampleOption("radius", "with --around: standard deviation of the latent noise (default 0.5)",
                     float, metavar="R"),
    )

    def __init__(self, config: SeqVAEConfig, spec):
        super().__init__(config, spec)
        missing = [k for k in ("pad", "bos", "eos") if k not in spec.special_ids]
        if spec.vocab_size is None or missing:
            why = "no token vocabulary" if spec.vocab_size is None else f"no {'/'.join(missing)} token"
            raise ValueError(f"seqvae models token sequences (molecules); dataset '{spec.name}' has {why}. "
                             "Use a SMILES dataset (moses, or a .smi/.csv file)")
        c = config
        self.bos_id, self.eos_id = spec.special_ids["bos"], spec.special_ids["eos"]
        V, E, L = spec.vocab_size, c.embedding_size, c.latent_size
        self.embedding = nn.Embedding(V, E)  # shared by encoder and decoder, as in MOSES
        self.drop = nn.Dropout(c.dropout)
        # The bidirectional encoder as two GRUs: the backward one reads each row reversed
        # within its length (see _posterior), so no packing and no PAD at its start.
        self.encoder_fwd = nn.GRU(E, c.encoder_hidden, batch_first=True)
        self.encoder_bwd = nn.GRU(E, c.encoder_hidden, batch_first=True)
        self.to_posterior = nn.Linear(2 * c.encoder_hidden, 2 * L)  # mean and log-variance
        self.z_to_hidden = nn.Linear(L, c.decoder_layers * c.decoder_hidden)
        self.decoder = nn.GRU(E + L, c.decoder_hidden, c.decoder_layers, batch_first=True,
                              dropout=c.dropout if c.decoder_layers > 1 else 0.0)
        self.head = nn.Linear(c.decoder_hidden, V)

    @classmethod
    def data_needs(cls, config: SeqVAEConfig) -> dict:
        return {"max_length": config.max_length}

    # -- network ---------------------------------------------------------------------
    def _posterior(self, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The molecule ``s <eos>`` (B, T) with its mask (B, T) -> mu, logvar (B, L).

        The encoder reads the tokens and EOS but not BOS (it carries no information). The
        backward direction reads each row reversed within its own length, so it starts at the
        molecule's EOS; both directions' states are taken at the last real position, so PAD
        never reaches the posterior (the masking equivalent of pack_padded_sequence)."""
        B, T = tokens.shape
        last = (mask.sum(1) - 1).clamp_min(0)  # (B,) index of each row's EOS
        t = torch.arange(T, device=tokens.device)[None]  # (1, T)
        rev = last[:, None] - t  # (B, T): position read at step t by the backward direction
        rev = torch.where(rev >= 0, rev, t)  # past the end: anything; those states are ignored
        emb = self.drop(self.embedding(tokens))  # (B, T, E)
        fwd, _ = run_gru(self.encoder_fwd, emb)  # (B, T, He)
        bwd, _ = run_gru(self.encoder_bwd, emb.gather(1, rev[..., None].expand_as(emb)))
        at_last = last[:, None, None].expand(-1, 1, fwd.shape[2])
        h = torch.cat([fwd.gather(1, at_last), bwd.gather(1, at_last)], dim=2).squeeze(1)  # (B, 2He)
        # fp32 from here: under bf16 autocast the KL and the reparameterization lose too much.
        mu, logvar = self.to_posterior(h).float().chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def _initial_state(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, L) -> the decoder's initial hidden state (layers, B, Hd)."""
        c = self.config
        return self.z_to_hidden(z).view(-1, c.decoder_layers, c.decoder_hidden).transpose(0, 1).contiguous()

    def _decoder_logits(self, inputs: torch.Tensor, z: torch.Tensor,
                        h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced or one-step decoding: inputs (B, T) token ids, z (B, L) ->
        logits (B, T, V) and the final hidden state (layers, B, Hd)."""
        emb = self.drop(self.embedding(inputs))  # (B, T, E)
        zs = z.to(emb.dtype)[:, None].expand(-1, inputs.shape[1], -1)  # z at every step: (B, T, L)
        out, h = run_gru(self.decoder, torch.cat([emb, zs], dim=2), self._initial_state(z) if h is None else h)
        return self.head(out), h

    # -- objective -------------------------------------------------------------------
    def _terms(self, batch: Batch, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-molecule reconstruction and KL, each (B,), plus the penalized batch KL (free bits)."""
        x, y, mask = batch["x"], batch["y"], batch["mask"]  # (B, T-1) each: <bos> s | s <eos> | real
        mu, logvar = self._posterior(y, mask)  # (B, L)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps  # reparameterization trick
        logits, _ = self._decoder_logits(x, z)  # (B, T-1, V); a causal GRU, so PAD inputs only
        # affect outputs at PAD positions, which the mask drops
        ce = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")  # (B, T-1)
        # Summed over each molecule's tokens, then averaged over molecules: the ELBO is a
        # bound on log p(s) per example, so a long molecule's reconstruction counts in full
        # against the same one KL term (a per-token mean would make the KL weigh by length).
        recon = (ce * mask).sum(1)  # (B,)
        kl_dims = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)  # KL(q || N(0, I)) per dim, (B, L)
        if self.config.free_bits > 0:
            # Free bits (Kingma et al. 2016, eq. 15): each dimension's batch-mean KL below
            # lambda costs nothing, so the encoder is not pushed to collapse it.
            kl_penalty = kl_dims.mean(0).clamp_min(self.config.free_bits).sum()
        else:
            kl_penalty = kl_dims.sum(1).mean()
        return {"recon": recon, "kl": kl_dims.sum(1), "kl_penalty": kl_penalty}

    def forward(self, batch: Batch, **kwargs) -> dict[str, torch.Tensor]:
        """The objective at the *final* KL weight (nats per molecule). ``train_step`` recombines
        ``recon`` and ``kl_penalty`` with the annealed weight; both keep their gradients."""
        t = self._terms(batch)
        recon = t["recon"].mean()
        return {"loss": recon + self.config.kl_weight * t["kl_penalty"], "recon": recon,
                "kl": t["kl"].mean().detach(), "kl_penalty": t["kl_penalty"]}

    def train_step(self, micro_batches: list[Batch], ctx) -> dict[str, torch.Tensor | float]:
        """The default step with the KL weight annealed on the trainer's step (``ctx.global_step``:
        steps done before this one, restored on resume). The weight multiplies outside
        ``forward``, so a compiled forward never sees a changing Python float."""
        c = self.config
        w = kl_weight_at(ctx.global_step, c.kl_weight, c.kl_warmup_steps)
        sums: dict[str, torch.Tensor] = {}
        for batch in ctx.accumulate(micro_batches):
            out = ctx.forward(batch)
            loss = out["recon"] + w * out["kl_penalty"]
            ctx.backward(loss)
            for k, v in (("loss", loss), ("recon", out["recon"]), ("kl", out["kl"])):
                sums[k] = sums.get(k, 0.0) + v.detach().float()
        grad_norm = ctx.step("main")
        n = len(micro_batches)
        return {**{k: v / n for k, v in sums.items()}, "kl_weight": w, "grad_norm": grad_norm}

    @torch.no_grad()
    def evaluate(self, batches) -> dict[str, float]:
        """Per molecule, over all ``batches``: ``loss`` = recon + kl_weight * KL (the final
        weight without free bits, so scores compare across the annealing), ``recon``, ``kl``,
        ``nll_bound`` = recon + KL (the negative ELBO, an upper bound on -log p(s) in nats) and
        the same bound per token. One fixed noise draw, so equal weights score equally."""
        g = None
        recon = kl = 0.0
        molecules = tokens = 0
        for batch in batches:
            if g is None:
                g = torch.Generator(device=batch["y"].device).manual_seed(0)
            t = self._terms(batch, g)
            recon += float(t["recon"].sum())
            kl += float(t["kl"].sum())
            molecules += batch["y"].shape[0]
            tokens += int(batch["mask"].sum())
        m = max(molecules, 1)
        return {"loss": (recon + self.config.kl_weight * kl) / m, "recon": recon / m, "kl": kl / m,
                "nll_bound": (recon + kl) / m, "nll_bound_per_token": (recon + kl) / max(tokens, 1)}

    # -- latent tools and sampling ---------------------------------------------------
    @contextlib.contextmanager
    def _inference(self):
        """Eval mode for the block: dropout off, so the latent tools are deterministic given
        their generator and never draw dropout masks from the global RNG (the trainer's
        previews run in training mode)."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @torch.no_grad()
    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Framed molecules ``<bos> s <eos>`` (B, T) with mask (B, T) -> mu, logvar (B, L)."""
        if ids.dim() == 1:
            ids, mask = ids[None], mask[None]
        with self._inference():
            return self._posterior(ids[:, 1:], mask[:, 1:])

    @torch.no_grad()
    def decode(self, z: torch.Tensor, generator: torch.Generator | None = None, temperature: float = 1.0,
               max_new_tokens: int | None = None) -> list[list[int]]:
        """Latents (B, L) -> token ids per row, drawn autoregressively from ``<bos>``.

        Each row ends at its ``<eos>`` (kept); decoding stops when every row has ended, or
        after ``max_new_tokens`` (default: ``max_length - 1``, the framed length after BOS).
        ``temperature`` 0 is greedy and needs no generator; otherwise tokens are drawn with
        ``generator`` only, never the global RNG."""
        _check_temperature(temperature)
        if temperature > 0 and generator is None:
            raise ValueError("sampling at temperature > 0 needs a torch.Generator (or temperature=0)")
        if z.dim() != 2 or z.shape[1] != self.config.latent_size:
            raise ValueError(f"latents must be (B, {self.config.latent_size}), got {tuple(z.shape)}")
        steps = self.config.max_length - 1 if max_new_tokens is None else max_new_tokens
        B = z.shape[0]
        tok = torch.full((B, 1), self.bos_id, dtype=torch.long, device=z.device)
        done = torch.zeros(B, dtype=torch.bool, device=z.device)
        out, h = [], None
        with self._inference():
            for _ in range(steps):
                logits, h = self._decoder_logits(tok, z, h)  # (B, 1, V); h carries the prefix
                logits = logits[:, -1].float()
                if temperature == 0:
                    nxt = logits.argmax(-1)
                else:
                    probs = torch.softmax(logits / temperature, -1)
                    nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                out.append(nxt)
                done |= nxt == self.eos_id
                if bool(done.all()):  # one sync per token; the loop is short (<= max_length)
                    break
                tok = nxt[:, None]
        rows = torch.stack(out, 1).tolist() if out else [[] for _ in range(B)]
        return [r[: r.index(self.eos_id) + 1] if self.eos_id in r else r for r in rows]

    @torch.no_grad()
    def plan_sampling(self, options, num_samples, refs) -> SamplingPlan:
        """`genforge sample --around X [--radius R]`: the example (a SMILES string, or a MIDI file on
        a music run), framed by the modality's ``refs.encode`` as the training data was, becomes
        ``sample``'s ``around``; ``refs.what`` names what the modality takes, for the messages."""
        options = dict(options)
        around, radius = options.pop("around", None), options.pop("radius", None)
        what = getattr(refs, "what", "SMILES string")
        if around is not None and not around.strip():
            raise GenforgeError(f"--around needs a {what}, got an empty one")
        if radius is not None and around is None:
            raise GenforgeError(f"--radius applies only with --around (the noise around a {what})")
        if radius is not None and not (math.isfinite(radius) and radius >= 0):
            raise GenforgeError(f"--radius must be >= 0, got {radius}")
        if around is not None:
            options["around"] = refs.encode(around)
            options["radius"] = 0.5 if radius is None else radius
        return SamplingPlan(options)

    def sample(self, n: int, generator: torch.Generator, temperature: float = 1.0,
               around: tuple[torch.Tensor, torch.Tensor] | None = None, radius: float = 0.5) -> list[list[int]]:
        """``n`` molecules as token ids (each ending at its ``<eos>``): z ~ N(0, I) from
        ``generator``, decoded at ``temperature`` (1 samples the model's own distribution).
        ``around`` (framed ids, mask): z = mu + radius * eps around that molecule instead."""
        if around is not None:
            return self.around(*around, n, generator, radius, temperature)
        device = self.head.weight.device
        z = torch.randn(n, self.config.latent_size, generator=generator, device=device)
        return self.decode(z, generator, temperature)

    @torch.no_grad()
    def around(self, ids: torch.Tensor, mask: torch.Tensor, n: int, generator: torch.Generator,
               radius: float = 0.5, temperature: float = 0.0) -> list[list[int]]:
        """``n`` molecules decoded from z = mu + radius * eps, eps ~ N(0, I), around one framed
        molecule ((1, T) or (T,) ids and mask): the neighbourhood sampling of Gómez-Bombarelli
        et al. 2018 (sec. 2). Radius 0 at temperature 0 is the greedy reconstruction."""
        if not (math.isfinite(radius) and radius >= 0):
            raise ValueError(f"radius must be a finite number >= 0, got {radius}")
        mu, _ = self.encode(ids, mask)  # (1, L)
        eps = torch.randn(n, mu.shape[1], generator=generator, device=mu.device)
        return self.decode(mu + radius * eps, generator, temperature)

    @torch.no_grad()
    def interpolate(self, ids_a: torch.Tensor, mask_a: torch.Tensor, ids_b: torch.Tensor,
                    mask_b: torch.Tensor, points: int = 8, method: str = "slerp") -> list[list[int]]:
        """Greedy decodings of ``points`` latents on the path between the posterior means of
        molecules a and b (framed ids and masks, (1, T) or (T,)); the endpoints are the two
        reconstructions. slerp by default: see :func:`genforge.sampling.images.slerp`."""
        if points < 2:
            raise ValueError(f"interpolation needs at least 2 points, got {points}")
        if method not in ("slerp", "lerp"):
            raise ValueError(f"unknown interpolation '{method}'; use slerp or lerp")
        za, zb = self.encode(ids_a, mask_a)[0][0], self.encode(ids_b, mask_b)[0][0]  # (L,) each
        t = torch.linspace(0, 1, points, device=za.device)
        return self.decode((slerp if method == "slerp" else lerp)(za, zb, t), temperature=0.0)

    @torch.no_grad()
    def preview(self, data, generator: torch.Generator) -> str:
        """Eight prior samples at temperature 1, one SMILES per line."""
        return "\n".join(data.decode(row) for row in self.sample(8, generator))
