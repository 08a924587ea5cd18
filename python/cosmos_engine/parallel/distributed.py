"""One process, or one rank of a `torchrun` job: the process group and the rank's device.

gloo on the CPU (tests run 2 ranks on a laptop), NCCL on GPUs. Jobs call `setup_distributed()` once; the
CLI calls `shutdown_distributed()` when the command ends, however it ends.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return Distributed(rank, world_size, device)


def shutdown_distributed() -> None:
    """Destroy the process group a job set up (torch warns at exit about one left alive, and NCCL may hang)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
