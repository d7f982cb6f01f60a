"""A static-shape decode step, replayed as one CUDA graph per token on a GPU (issue #20).

On a GPU the small GPT's cached step is ~100 kernel launches of a few microseconds of work
each, so decoding is bound by the host, not the GPU. gpt-fast's recipe removes that bound:
preallocate the KV cache to the context window, keep the step's changing inputs (the token,
the cache column each row writes, its position) in device tensors, write the new key/value with
a scatter and attend over the whole window under a mask, so that every kernel sees the same
shapes and addresses at every step; then capture the step once in a CUDA graph
(torch.cuda.CUDAGraph) and replay it, one launch per token.

The step also draws the next token when the caller has no per-step Python (no ``pick``, no
``logits_hook``): ``torch.multinomial(p, 1, g)`` is argmax(p / q) with q ~ Exp(1) drawn as
``empty_like(p).exponential_(generator=g)`` (ATen's Distributions.cpp, its n_sample == 1 path;
``sample_rows`` in text.py relies on the same identity), so the graph divides by a q that is
drawn eagerly just before each replay from the caller's own generator. That keeps the draws
of any generator (not only the default one the graph machinery tracks) and skips only
multinomial's host-side check for NaN probabilities.

Past the window, stream() re-reads the last block_size tokens for every new token (exactly
what the uncached path sees); :meth:`StaticDecoder.reread` is that forward with fixed shapes
(an always-explicit causal and padding mask), captured as a second graph on first use.

With ``compile``, the step also goes through torch.compile (Inductor, whole graph, static
shapes) before the capture: on a GPU, graph replay removes the launch cost but still runs ~100
kernels of a few microseconds each per token; Inductor fuses the pointwise ones (layer norms,
rotary, GELU, residual adds, the draw) into fewer, as gpt-fast does. Compiling takes tens of
seconds per new (model, batch size, settings) whose guards fail; past Dynamo's recompile limit
(torch._dynamo.config.recompile_limit) the step runs uncompiled, still captured.

Exactness: the masked full-window attention sums the same nonzero terms as the sliced one
(masked keys get weight exp(-inf) = 0, and stale columns hold finite values, so 0 * v = 0), but
a kernel may block and order the sum differently over max_len keys than over L, so logits can
differ in the last bits. The tests pin equal tokens and allclose log-probs against
``use_cache=False`` on tiny models (CPU, and the GPU when the suite runs there); the GPU check
(benchmarks/gpu_check.sh) checks the 6x384 bench model's greedy tokens against eager ones.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable

import torch

from genforge.nn.attention import KVCache

# (B, V) logits, (B, V) q ~ Exp(1) or None -> (B,) tokens; must be capturable (no host sync)
Draw = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class StaticDecoder:
    """One model, one batch size, one way of drawing: a zeroed (B, nh, block_size, hs) cache per
    layer, the step's inputs as device buffers, and on CUDA the captured step.

    Use: ``cache = fresh_cache()``, prefill it (``text._prefill``), ``begin(cache, pad)``,
    then ``step(model, token, generator)`` while ``length < max_len``. The decoder keeps no
    reference to the model (it is cached per model, see :func:`acquire`)."""

    def __init__(self, model, batch: int, draw: Draw | None, needs_q: bool, compile: bool = False):
        probe = model.new_cache(batch)
        for t in (*probe.k, *probe.v):
            t.zero_()  # never NaN: masked columns are multiplied by weight 0, and 0 * NaN is NaN
        self.k, self.v, self.max_len = probe.k, probe.v, probe.max_len
        device = self.k[0].device
        self.draw, self.length = draw, 0  # length: filled columns, counted on the host
        self.token = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) the token to feed
        self.slot = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) cache column it writes
        self.pos = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) its position (slot - pad)
        self.key_mask = torch.ones(batch, 1, 1, self.max_len, dtype=torch.bool, device=device)  # padding
        self.cols = torch.arange(self.max_len, device=device)
        vocab = model.spec.vocab_size
        self.q = torch.ones(batch, vocab, device=device) if needs_q else None  # (B, V) fp32, as probs
        self.step_cache = KVCache(self.k, self.v, slot=self.slot, step_mask=self.key_mask)  # mask: set per step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.out = None
        self._compiled = torch.compile(self._step, fullgraph=True, dynamic=False) if compile else self._step
        if device.type == "cuda":
            self.graph, self.out = self._capture(self._run, model)
        self.window: torch.Tensor | None = None  # (B, max_len) ids re-read past the window, made on first use
        self.window_pad = torch.zeros(batch, dtype=torch.long, device=device)  # (B,) padding inside it
        self.read_graph: torch.cuda.CUDAGraph | None = None
        self.read_out = None

    def fresh_cache(self) -> KVCache:
        """The decoder's buffers as an empty cache to prefill (length 0, plain slicing path)."""
        return KVCache(self.k, self.v)

    def begin(self, cache: KVCache, pad: torch.Tensor) -> None:
        """After prefilling ``cache`` (from :meth:`fresh_cache`) with rows left-padded by pad (B,)."""
        self.length = cache.length
        if cache.key_mask is None:
            self.key_mask.fill_(True)
        else:
            self.key_mask.copy_(cache.key_mask)
        self.slot.fill_(cache.length)  # every row writes the same column; positions differ by padding
        self.pos.copy_(cache.length - pad)

    def _step(self, model):
        """The captured work: feed ``token`` at ``slot``/``pos``, advance them, maybe draw."""
        # (B, 1, 1, max_len): keys written so far and this one, minus each row's left padding
        self.step_cache.step_mask = (self.cols <= self.slot[:, None])[:, None, None, :] & self.key_mask
        logits = model.logits(self.token[:, None], self.step_cache, self.pos[:, None])[:, -1]  # (B, V)
        self.slot.add_(1)
        self.pos.add_(1)
        return self._draw(logits)

    def _draw(self, logits: torch.Tensor):
        if self.draw is None:
            return logits
        token = self.draw(logits, self.q)
        return token, torch.log_softmax(logits.float(), -1).gather(-1, token[:, None]).squeeze(-1)

    def _read(self, model):
        """The re-read of ``window`` (B, max_len) from a fresh cache over the decoder's buffers,
        as ``text._prefill`` does, but with the mask always explicit (no host-side check for
        padding): causal, and False at each row's window_pad leading columns."""
        keys = (self.cols[None, :] >= self.window_pad[:, None])[:, None, None, :]  # (B, 1, 1, max_len)
        positions = (self.cols[None, :] - self.window_pad[:, None]).clamp(min=0)  # (B, max_len)
        logits = model.logits(self.window, KVCache(self.k, self.v, key_mask=keys), positions)[:, -1]
        return self._draw(logits)

    def _run(self, model):
        # Every call starts from the same Python state, so that Dynamo's guards (it specializes
        # on ints such as cache.length, which model.logits advances) pass and it compiles once.
        self.step_cache.length = 0
        return self._compiled(model)

    def _capture(self, fn, model):
        """(graph, outputs) of fn(model) captured. Warm up on a side stream first (cuBLAS
        workspaces, SDPA's kernel choice, allocator blocks), as torch.cuda.graph's documentation
        asks; the writes land in columns the next prefill overwrites or masks."""
        side = torch.cuda.Stream(self.token.device)
        side.wait_stream(torch.cuda.current_stream(self.token.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # with compile, the first call compiles
                fn(model)
        torch.cuda.current_stream(self.token.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn(model)  # tensors in the graph's pool, rewritten by every replay
        return graph, out

    def step(self, model, token: torch.Tensor, generator: torch.Generator | None = None):
        """Feed token (B,): the next (B, V) logits, or with a draw, the next (tokens, logprobs)
        (B,) each; fresh tensors either way (the graph's own outputs are rewritten by the
        next replay)."""
        if self.length >= self.max_len:
            raise RuntimeError("static decode step past the cache")  # stream() re-reads instead
        self.token.copy_(token)
        out = self._call(model, self._run, self.graph, self.out, generator)
        self.length += 1
        return out

    def _call(self, model, fn, graph, captured, generator):
        """Draw q, then replay ``graph`` (its outputs ``captured``) or, without one, run fn(model);
        fresh tensors either way (a graph's own outputs are rewritten by its next replay)."""
        if self.q is not None:
            self.q.exponential_(generator=generator)  # multinomial's own draw, same generator, same order
        if graph is None:
            out = fn(model)
        else:
            graph.replay()
            out = captured
        return out.clone() if isinstance(out, torch.Tensor) else tuple(t.clone() for t in out)

    def reread(self, model, window: torch.Tensor, pad: torch.Tensor, generator: torch.Generator | None = None):
        """Past the window: the outputs of :meth:`step` for the last max_len tokens ``window``
        (B, max_len), left-padded by pad (B,), read afresh. Overwrites the cache, so no
        :meth:`step` follows before the next :meth:`begin`."""
        if self.window is None:
            self.window = torch.zeros_like(window)
            if self.graph is not None:  # CUDA: capture on first use (most decodes never get here)
                self.read_graph, self.read_out = self._capture(self._read, model)
        self.window.copy_(window)
        self.window_pad.copy_(pad)
        self.length = self.max_len
        return self._call(model, self._read, self.read_graph, self.read_out, generator)


# model -> {key: idle decoder}; weak, and the decoders hold no reference to their model
_IDLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
KEEP = 4  # idle decoders kept per model (each holds a full KV cache and, on CUDA, a graph)


def acquire(model, batch: int, draw: Draw | None, draw_key: Hashable, needs_q: bool,
            compile: bool = False) -> tuple[Hashable, StaticDecoder]:
    """A decoder for (model, batch, draw), reused across calls so that a GPU captures once.
    The key holds every parameter's and buffer's address: a graph reads weights by address, so
    a model whose tensors moved (``.to``, a reassigned ``.data``) gets a new capture. In-place
    updates (optimizer steps, load_state_dict) are read by the next replay. The decoder is
    taken out of the pool while in use, so two live streams never share one."""
    p = next(model.parameters())
    ptrs = tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))
    key = (batch, draw_key, compile, p.device, p.dtype, ptrs)
    idle = _IDLE.setdefault(model, {})
    decoder = idle.pop(key, None)
    return key, decoder if decoder is not None else StaticDecoder(model, batch, draw, needs_q, compile)


def release(model, key: Hashable, decoder: StaticDecoder) -> None:
    idle = _IDLE.setdefault(model, {})
    idle[key] = decoder
    while len(idle) > KEEP:
        idle.pop(next(iter(idle)))  # the least recently released
