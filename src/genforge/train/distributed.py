"""Process-group setup for torchrun: NCCL on GPUs, gloo on CPUs; a no-op for one process."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def pick_device(preference: str, local_rank: int = 0, option: str = "train.device") -> torch.device:
    """``option`` is how the user chose the device (``train.device`` in a config, ``--device`` on
    `sample`/`eval`), so the error names what they typed."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from genforge import GenforgeError

            given, auto = (f"{option} cuda", f"{option} auto") if option.startswith("--") else \
                (f"{option}=cuda", f"{option}=auto")
            raise GenforgeError(f"{given} but no CUDA GPU is visible; use {auto} or cpu")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device_preference: str) -> tuple[DistInfo, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), pick_device(device_preference)
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = pick_device(device_preference, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def is_main() -> bool:
    """Rank 0, or the only process."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    """Leave together: a rank that tears gloo down while another still works on
    (rank 0 writing its checkpoint) can abort at exit."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
