"""Output filters: functions that decide, before anything is written or returned, which samples
may leave genforge.

A filter has the signature of a reward (``genforge.rl.rewards``): ``check(samples) -> verdicts``,
where ``samples`` are strings for text and SMILES and an (N, C, H, W) float tensor in [0, 1] for
images, and the result holds one verdict per sample: ``True`` (keep), ``False`` (block) or
``(bool, reason)``. A user's filter is named ``package.module:function`` or
``path/to/file.py:function`` and resolved as RL resolves rewards (the current folder is on the
import path for the lookup). A filter that raises, or returns the wrong number or kind of
verdicts, is a one-line :class:`FilterError`, never a silent pass.

:func:`apply_filters` is the library entry point (the CLI's ``--filter`` / ``--privacy-filter``
and the server call it): filters run in order, each on the samples still kept, and every
blocked sample is returned with its index and the reason (``audit.privacy.sample_filters`` builds
the CLI's list, privacy filter first). :func:`screen` is the CLI's wrapper:
it also reports the count on stderr and refuses an output where every sample was blocked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from genforge import GenforgeError


class FilterError(GenforgeError):
    """A filter could not be loaded, failed, or broke the filter contract."""


@dataclass(frozen=True)
class Filter:
    """A named filter: ``fn(samples) -> one verdict per sample``."""

    name: str
    fn: Callable[[Any], Sequence[Any]]


Blocked = list[tuple[int, str]]


def load_filter(spec: str) -> Filter:
    """``package.module:function`` or ``path/to/file.py:function`` -> a :class:`Filter`."""
    from genforge.rl.rewards import load_user_function

    if not isinstance(spec, str) or ":" not in spec:
        raise FilterError(f"--filter {spec!r}: name a function as MODULE:FUNCTION (e.g. mypkg.filters:check) "
                          "or path/to/file.py:FUNCTION")
    return Filter(spec, load_user_function(spec, what="filter", error=FilterError))


def filter_specs(value) -> list[str]:
    """The CLI's repeated ``--filter`` (a list of one-element lists: argparse's append of
    nargs=1) or any list of strings -> a flat list of specs."""
    out: list[str] = []
    for v in value or ():
        out += list(v) if isinstance(v, (list, tuple)) else [v]
    return out


def _count(samples) -> int:
    return int(samples.shape[0]) if torch.is_tensor(samples) else len(samples)


def _take(samples, keep: list[int]):
    """The kept rows of ``samples``, in the same container type (tensor, array or list)."""
    if torch.is_tensor(samples):
        return samples[torch.as_tensor(keep, dtype=torch.long, device=samples.device)]
    if isinstance(samples, np.ndarray):
        return samples[np.asarray(keep, dtype=np.int64)]
    return [samples[i] for i in keep]


def verdicts(name: str, out: Any, n: int) -> list[tuple[bool, str | None]]:
    """Check a filter's return value: ``n`` verdicts of bool or (bool, reason)."""
    if torch.is_tensor(out) or isinstance(out, np.ndarray):
        if out.dtype not in (torch.bool, np.bool_) or out.ndim != 1:
            raise FilterError(f"filter '{name}' returned an array of {out.dtype} {tuple(out.shape)}; "
                              "return one bool (or (bool, reason)) per sample")
        out = out.tolist()
    if isinstance(out, (str, bytes)) or not isinstance(out, Sequence):
        raise FilterError(f"filter '{name}' returned {type(out).__name__}; return a list with one "
                          "verdict (bool or (bool, reason)) per sample")
    if len(out) != n:
        raise FilterError(f"filter '{name}' returned {len(out)} verdicts for {n} samples; "
                          "return exactly one per sample")
    result = []
    for i, v in enumerate(out):
        reason = None
        if isinstance(v, (tuple, list)) and len(v) == 2:
            v, reason = v
            if reason is not None and not isinstance(reason, str):
                raise FilterError(f"filter '{name}': the reason for sample {i} is {type(reason).__name__}; "
                                  "give a string or None")
        if not isinstance(v, (bool, np.bool_)):
            raise FilterError(f"filter '{name}' returned {v!r} ({type(v).__name__}) for sample {i}; "
                              "a verdict is True (keep), False (block) or (bool, reason)")
        result.append((bool(v), reason))
    return result


def apply_filters(samples, filters: Sequence[Filter | Callable]) -> tuple[Any, Blocked]:
    """Run ``filters`` in order over ``samples`` (a list of strings, or an (N, C, H, W) tensor);
    each sees only the samples still kept. Returns (kept samples, same container type; blocked:
    [(index into ``samples``, "filter name: reason")], sorted by index)."""
    alive = list(range(_count(samples)))
    blocked: Blocked = []
    for f in filters:
        f = f if isinstance(f, Filter) else Filter(getattr(f, "__name__", repr(f)), f)
        if not alive:
            break
        try:
            out = f.fn(_take(samples, alive))
        except GenforgeError:
            raise
        except Exception as e:  # the user's code: its failure is theirs to see, in one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise FilterError(f"filter '{f.name}' raised {type(e).__name__}: {first}; fix the filter "
                              "(samples were not written)") from None
        still = []
        for i, (keep, reason) in zip(alive, verdicts(f.name, out, len(alive)), strict=True):
            if keep:
                still.append(i)
            else:
                blocked.append((i, f"{f.name}: {reason}" if reason else f.name))
        alive = still
    return _take(samples, alive), sorted(blocked)


def screen(samples, filters: Sequence[Filter], what: str = "samples") -> tuple[list[int], Blocked]:
    """:func:`apply_filters` for the CLI: (indices of the kept samples, blocked). Prints one line
    to stderr with the count and each reason when anything was blocked (never silent), and
    refuses to write an output where every sample was blocked."""
    if not filters:
        return list(range(_count(samples))), []
    n = _count(samples)
    _, blocked = apply_filters(samples, filters)
    gone = {i for i, _ in blocked}
    keep = [i for i in range(n) if i not in gone]
    names = ", ".join(f.name for f in filters)
    if blocked:
        shown = "; ".join(f"#{i + 1} {reason}" for i, reason in blocked[:5])
        more = f"; ... {len(blocked) - 5} more" if len(blocked) > 5 else ""
        print(f"genforge: filters blocked {len(blocked)} of {n} {what} ({shown}{more})", file=sys.stderr)
    else:
        print(f"genforge: filters ({names}) passed all {n} {what}", file=sys.stderr)
    if not keep:
        raise FilterError(f"every one of the {n} {what} was blocked by the filters ({names}); "
                          "nothing was written")
    return keep, blocked


def summary(filters: Sequence[Filter], n: int, blocked: Blocked) -> dict:
    """What provenance records and the server returns: the filters, how many samples were
    drawn, and each blocked sample's index and reason."""
    return {"filters": [f.name for f in filters], "drawn": n, "blocked": len(blocked),
            "blocked_samples": [{"index": i, "reason": r} for i, r in blocked]}
