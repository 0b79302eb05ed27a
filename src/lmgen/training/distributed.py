"""The processes of a training run: one, or several under `torchrun` (env WORLD_SIZE > 1),
joined in a torch.distributed group (gloo on CPU, nccl on GPU). Rank 0 is the main process:
it alone writes files and reports."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, device: str) -> Distributed:
        """The run's processes as `torchrun` describes them; joins the group once."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        return cls(rank, world, local)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def mean(self, value: float, device: torch.device) -> float:
        """`value` averaged over the processes."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def gather(self, obj: object) -> object | list:
        """Every process's `obj`, in rank order (`obj` itself in a single process)."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        gathered = [None] * self.world
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()
