"""genforge: train, sample, evaluate and serve generative models.

Families (how a model learns) live in ``genforge.families``; modalities (what the
data is) in ``genforge.data``. The two meet only through :class:`DataSpec`.
"""

__version__ = "0.1.0"


class GenforgeError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


class Interrupted(GenforgeError):
    """Ctrl-C or SIGTERM during training: the checkpoint is saved; the CLI exits with
    128 + the signal number (130 for Ctrl-C, 143 for SIGTERM), as shells expect."""

    def __init__(self, message: str, exit_code: int = 130):
        super().__init__(message)
        self.exit_code = exit_code


from genforge.data.spec import DataSpec  # noqa: E402

__all__ = ["DataSpec", "GenforgeError", "__version__"]
