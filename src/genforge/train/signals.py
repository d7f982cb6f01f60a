"""Stopping training cleanly on SIGINT (Ctrl-C) and SIGTERM (timeout, schedulers, docker stop)."""

from __future__ import annotations

import signal
import threading
from typing import Any

from tqdm.auto import tqdm


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop stops at the next step boundary, so the saved
    sampler, RNG and weights are those of a finished step and resume is exact. A second
    Ctrl-C aborts at once without saving."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        tqdm.write(f"genforge: {signal.Signals(signum).name} received; stopping after this step "
                   "(Ctrl-C again aborts without saving)")

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
