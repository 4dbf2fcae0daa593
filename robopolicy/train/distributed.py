"""Multi-process training through torchrun + torch DistributedDataParallel (no home-made engine).

    torchrun --nproc_per_node=2 -m robopolicy.cli train --config ...

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR; this module turns them into a
process group (NCCL on GPUs, gloo on CPUs) and a device per process. Single-process runs skip
all of it. Only rank 0 writes files and logs.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_kind: str) -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(rank=int(os.environ["RANK"]), world_size=world, local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                    local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    if device_kind == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def parameter_checksum(module: torch.nn.Module) -> str:
    """A hash of every parameter's bytes: equal across ranks iff the replicas are identical."""
    h = hashlib.sha256()
    for name, p in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def gather_strings(info: DistInfo, value: str) -> list[str]:
    if not info.enabled:
        return [value]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, value)
    return out


def gather_rng_states(info: DistInfo) -> list[torch.Tensor]:
    """The torch CPU generator state of every rank, in rank order (each rank's own when single)."""
    state = torch.get_rng_state()
    if not info.enabled:
        return [state]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, state.numpy().tobytes())
    return [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in out]
