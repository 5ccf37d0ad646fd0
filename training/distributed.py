"""Process-group set-up from torchrun's environment, and the few collectives the trainer uses.

A plain `python pretrain_etrm.py` is a world of one: nothing is initialised and every
collective here is a no-op, so one code path serves both. Under torchrun a process group is
set up even for one process (`--nproc-per-node 1`), so that a single GPU runs the same NCCL,
DDP and checkpoint path as many.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(requested: str, local_rank: int) -> torch.device:
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {requested!r}")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for, but torch.cuda.is_available() is False")
    if requested == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ and "MASTER_ADDR" in os.environ


def init_distributed(requested_device: str = "auto") -> DistInfo:
    """Initialise from RANK/WORLD_SIZE/LOCAL_RANK when torchrun set them (nccl on CUDA, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if (world_size > 1 or launched_by_torchrun()) and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=30)
        dist.init_process_group(backend=backend, timeout=timeout, store=_restart_scoped_store(rank, world_size, timeout),
                                rank=rank, world_size=world_size, device_id=device if device.type == "cuda" else None)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def _restart_scoped_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store, with keys scoped to this torchrun restart.

    When workers use the torchrun agent's shared store, a restarted group (`--max-restarts`) would
    otherwise read the dead group's gloo/nccl addresses left in it and fail to connect."""
    use_agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not use_agent_store and rank == 0, timeout=timeout, multi_tenant=not use_agent_store)
    return dist.PrefixStore(f"etrm/restart_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def wrap_ddp(module: torch.nn.Module, device: torch.device, context_ablation: bool = False) -> torch.nn.Module:
    """`module` under DDP whenever a process group exists (one process under torchrun included),
    else as it is. The zeroed-context ablation leaves the encoder without gradient, which DDP must
    be told (find_unused_parameters)."""
    if not is_distributed():
        return module
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=context_ablation)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_to_main(obj) -> list | None:
    """Collective: every rank's `obj` (picklable) as a list on rank 0, None on the other ranks;
    [obj] without a process group."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()
