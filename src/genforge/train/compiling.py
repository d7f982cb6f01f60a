"""``train.compile``: torch.compile the training forward, or refuse in one line where it cannot run.

torch.compile (TorchDynamo + Inductor; Ansel et al., 2024, "PyTorch 2") fails only at the first
forward when something is missing, deep inside a traceback. The two causes users meet are
checked here before training starts:

- Dynamo does not support this Python (``torch._dynamo.is_dynamo_supported``);
- on the CPU, Inductor writes C++ and needs a C++ compiler (``g++``/``clang++``, found as
  Inductor finds it: ``torch._inductor.config.cpp.cxx``, overridable with ``$CXX``).

Only the model's forward is compiled (the trainer's ``wrapped``); the fused AdamW step, clipping
and evaluation stay eager. Compiling costs tens of seconds on a small CPU before the first step,
so it is opt-in: at nanoGPT's 4x128 recipe it pays only over long runs.
"""

from __future__ import annotations

import torch

from genforge import GenforgeError


def why_not_compilable(device: torch.device) -> str | None:
    """None when torch.compile can run on ``device`` here, else the reason in a few words."""
    try:
        import torch._dynamo as dynamo
    except ImportError as e:
        return f"torch.compile is unavailable in this PyTorch ({e})"
    if not dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version"
    if device.type == "cpu":
        try:
            from torch._inductor import exc
            from torch._inductor.cpp_builder import get_cpp_compiler
        except ImportError:  # an older or newer layout: let torch report at the first step
            return None
        try:
            get_cpp_compiler()
        except exc.InvalidCxxCompiler:
            return "on the CPU it needs a C++ compiler (g++ or clang++; set $CXX) and none was found"
    return None


def compile_forward(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``torch.compile(module)``, or a GenforgeError saying why it cannot run on ``device``."""
    reason = why_not_compilable(device)
    if reason is not None:
        raise GenforgeError(f"train.compile=true: {reason}; set train.compile=false")
    return torch.compile(module)
