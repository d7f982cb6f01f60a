"""Early stopping on the family's selection metric.

Counts evaluations in a row without a new best, as Lightning's ``EarlyStopping(patience=...)``
and the HF Trainer's ``EarlyStoppingCallback(early_stopping_patience=...)`` do, and asks the
trainer to stop when the count reaches ``train.early_stop_patience``. "Better" is the family's
``Selection.better`` (strict), the same test that picks ``checkpoints/best``, so the run stops
exactly ``patience`` evaluations after the checkpoint sampling and eval will use.
"""

from __future__ import annotations

from genforge import GenforgeError


class EarlyStop:
    def __init__(self, patience: int):
        self.patience = patience  # 0: never stop
        self.stale = 0  # evaluations since the last new best
        self.best_step: int | None = None

    def update(self, improved: bool, step: int) -> None:
        """Record one evaluation at ``step``."""
        if improved:
            self.stale, self.best_step = 0, step
        else:
            self.stale += 1

    @property
    def triggered(self) -> bool:
        return bool(self.patience) and self.stale >= self.patience

    def reason(self, metric: str, best: float | None) -> str:
        shown = "none" if best is None else f"{best:.4f}"
        return (f"val {metric} did not improve for {self.stale} evaluations "
                f"(train.early_stop_patience={self.patience}); best {shown} at step {self.best_step}")

    def state_dict(self) -> dict:
        return {"stale": self.stale, "best_step": self.best_step}

    def load_state_dict(self, state: dict | None, run_dir, step: int) -> None:
        """Restore the counter (checkpoints from before early stopping hold none: start at 0).
        A run that already stopped for patience would stop again at its next evaluation, so
        resuming it with the same patience is refused."""
        state = state or {}
        self.stale, self.best_step = int(state.get("stale", 0)), state.get("best_step")
        if self.patience and self.stale >= self.patience:
            raise GenforgeError(f"run '{run_dir}' stopped early at step {step} ({self.stale} evaluations "
                                f"without improvement); resume with a larger train.early_stop_patience "
                                "(or 0) to continue it")
