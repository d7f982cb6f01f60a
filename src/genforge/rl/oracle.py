"""The reward a policy is trained on: a weighted sum of reward terms, the reward contract
checked on every call, and the oracle calls counted (and cached) as PMO counts them.

What counts as an oracle call (``oracle_calls``, ``--max-oracle-calls``): each scoring of a
training rollout's sample. With an oracle key (molecules: the canonical SMILES, ``rl.specs``)
only the first scoring of each distinct key counts (repeats and other spellings are answered
from the cache) and a sample without a key (an invalid SMILES) never counts. The pre-flight
check and the evaluation rollouts (``counted=False``) never count and never fill the cache.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from genforge import GenforgeError


class RewardError(GenforgeError):
    """A reward function failed or broke the reward contract."""


@dataclass
class RewardTerm:
    name: str
    weight: float
    fn: Callable  # samples, **columns -> list[float | None], extra arguments bound
    takes: frozenset[str] | None = None  # the columns fn names; None: all (it has **columns)

    def columns_for(self, columns: dict) -> dict:
        """The columns this function takes (a built-in such as sentiment(samples) takes none)."""
        return columns if self.takes is None else {k: v for k, v in columns.items() if k in self.takes}


def _hashable(value: Any) -> Any:
    """A column value as part of a cache key (prompt-file fields may be lists or dicts)."""
    try:
        hash(value)
        return value
    except TypeError:
        return json.dumps(value, sort_keys=True, default=str)


@dataclass
class Reward:
    """A weighted sum of reward terms with the contract checked, and oracle calls counted.

    With ``key`` (molecules: canonical SMILES) each distinct key is scored once and answered
    from the cache afterwards, so ``calls`` counts distinct molecules as the PMO benchmark
    counts oracle calls (Gao et al. 2022); a sample whose key is None (invalid SMILES) is
    scored but neither counted nor cached. The key also holds the values of the prompt
    columns a term reads, since such a term may score one molecule differently per prompt.
    Without ``key`` every scored sample is a call. ``counted=False`` (pre-flight, evaluation)
    scores without counting or caching.
    """

    terms: list[RewardTerm]
    key: Callable[[Any], Any] | None = None
    calls: int = 0
    scored: dict[Any, tuple] = field(default_factory=dict)  # key -> per-term values, in call order
    applied: list[int] = field(default_factory=list)  # per term: counted samples it applied to

    def __post_init__(self):
        self.applied = self.applied or [0] * len(self.terms)

    @property
    def cache(self) -> bool:
        return self.key is not None

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.terms]

    def _call_term(self, term: RewardTerm, samples, columns: dict) -> list[float | None]:
        n = len(samples)
        try:
            values = term.fn(samples, **term.columns_for(columns))
        except RewardError:
            raise
        except Exception as e:  # any failure inside a reward stops the run, loudly
            raise RewardError(f"reward '{term.name}' raised {type(e).__name__}: {e}") from e
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        try:
            values = list(values)
        except TypeError:
            raise RewardError(f"reward '{term.name}' returned {type(values).__name__}; a reward returns "
                              "a list with one float (or None) per sample") from None
        if len(values) != n:
            raise RewardError(f"reward '{term.name}' returned {len(values)} values for {n} samples; a "
                              "reward returns one float (or None) per sample")
        out = []
        for i, v in enumerate(values):
            if v is None:
                out.append(None)
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise RewardError(f"reward '{term.name}' returned {v!r} for sample {i}; rewards must be "
                                  "numbers or None")
            if not math.isfinite(float(v)):
                raise RewardError(f"reward '{term.name}' returned {v} for sample {i}; rewards must be finite "
                                  "(return None where a reward does not apply)")
            out.append(float(v))
        return out

    def _keys(self, samples, columns: dict) -> list:
        """The cache key of each sample: its oracle key, plus the columns any term reads."""
        read = sorted(columns) if any(t.takes is None for t in self.terms) else \
            sorted({c for t in self.terms for c in t.takes} & set(columns))
        keys = []
        for i, s in enumerate(samples):
            k = self.key(s)
            if k is not None and read:
                k = (k, *(_hashable(columns[c][i]) for c in read))
            keys.append(k)
        return keys

    def score_terms(self, samples, columns: dict | None = None, counted: bool = True) -> list[list[float | None]]:
        """Per-term values: a list over terms of lists over samples."""
        columns = columns or {}
        n = len(samples)
        for name, values in columns.items():
            if len(values) != n:
                raise RewardError(f"column '{name}' has {len(values)} values for {n} samples")
        if self.key is None:
            if counted:
                self.calls += n
            return [self._call_term(t, samples, columns) for t in self.terms]
        keys = self._keys(samples, columns)
        todo, first = [], set()  # invalid samples, and the first sample of each new key
        for i, k in enumerate(keys):
            if k is None or (k not in self.scored and k not in first):
                todo.append(i)
                if k is not None:
                    first.add(k)
        found: dict[Any, tuple] = {}
        invalid: dict[int, tuple] = {}
        if todo:
            sub = [samples[i] for i in todo]
            per_term = [self._call_term(t, sub, {c: [v[i] for i in todo] for c, v in columns.items()})
                        for t in self.terms]
            for j, i in enumerate(todo):
                values = tuple(p[j] for p in per_term)
                if keys[i] is None:
                    invalid[i] = values
                else:
                    found[keys[i]] = values
        if counted:
            self.scored.update(found)
            self.calls += len(found)
        rows = [invalid[i] if k is None else found[k] if k in found else self.scored[k] for i, k in enumerate(keys)]
        return [[row[t] for row in rows] for t in range(len(self.terms))]

    def __call__(self, samples, columns: dict | None = None, counted: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """-> (total (N,), applies (N,) bool, {term name: mean over samples it applies to}).

        ``total`` is sum_k w_k r_k over the terms that apply to a sample; a sample no term
        applies to has ``applies`` False (and total 0): it gets no advantage."""
        per_term = self.score_terms(samples, columns, counted)
        n = len(samples)
        total = torch.zeros(n, dtype=torch.float64)
        applies = torch.zeros(n, dtype=torch.bool)
        means = {}
        for k, (term, values) in enumerate(zip(self.terms, per_term, strict=True)):
            got = [v for v in values if v is not None]
            means[term.name] = sum(got) / len(got) if got else float("nan")
            if counted:
                self.applied[k] += len(got)
            for i, v in enumerate(values):
                if v is not None:
                    total[i] += term.weight * v
                    applies[i] = True
        return total.float(), applies, means

    def never_applied(self) -> list[str]:
        """Names of the terms that returned None for every training sample so far."""
        return [t.name for t, n in zip(self.terms, self.applied, strict=True) if n == 0]

    def total(self, values: Sequence[float | None]) -> float:
        """sum_k w_k r_k over the terms that apply, for one sample's per-term values."""
        return sum(t.weight * v for t, v in zip(self.terms, values, strict=True) if v is not None)

    def state_dict(self) -> dict:
        return {"calls": self.calls, "scored": list(self.scored.items()), "applied": list(self.applied)}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])
        self.scored = dict(state["scored"])
        self.applied = list(state.get("applied", [1] * len(self.terms)))  # older runs: not tracked
