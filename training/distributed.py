"""Process-group set-up from torchrun's environment, and the few collectives the trainer uses.

A plain `python pretrain_etrm.py` is a world of one: nothing is initialised and every
collective here is a no-op, so one code path serves both. Under torchrun a process group is
set up even for one process (`--nproc-per-node 1`), so that a single GPU runs the same NCCL,
DDP and checkpoint path as many.
"""
from __future__ import annotations

import datetime
import inspect
import json
import os
import secrets
import time
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


DEFAULT_TIMEOUT_MINUTES = 30.0
_control_group = None  # a gloo group for the loop's small CPU decisions (None: the default group)


def init_distributed(requested_device: str = "auto", timeout_minutes: float | None = None) -> DistInfo:
    """Initialise from RANK/WORLD_SIZE/LOCAL_RANK when torchrun set them (nccl on CUDA, gloo on CPU).
    `timeout_minutes` bounds every collective and store wait (config `dist_timeout_minutes`), so a
    hung peer surfaces as an error after that long instead of after torch's default."""
    global _control_group
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if (world_size > 1 or launched_by_torchrun()) and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        minutes = DEFAULT_TIMEOUT_MINUTES if timeout_minutes is None else float(timeout_minutes)
        if not minutes > 0:
            raise ValueError(f"dist_timeout_minutes must be > 0, got {timeout_minutes!r}")
        timeout = datetime.timedelta(minutes=minutes)
        dist.init_process_group(backend=backend, timeout=timeout, store=_generation_store(rank, world_size, timeout),
                                rank=rank, world_size=world_size, device_id=device if device.type == "cuda" else None)
        # stop/checkpoint decisions are a few CPU numbers per step: a gloo group of their own keeps
        # them off the GPU stream (no host sync) and out of DDP's asynchronous gradient reductions
        # (sharing a gloo default group with those, a worker aborted at exit now and then)
        _control_group = dist.new_group(backend="gloo", timeout=timeout)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


GENERATION_KEY = "etrm/generation"


def _generation_store(rank: int, world_size: int, timeout: datetime.timedelta) -> dist.Store:
    """torchrun's store, with keys scoped to this group of workers.

    torchrun's c10d rendezvous hands every round of workers the same TCPStore (its agent's,
    `TORCHELASTIC_USE_AGENT_STORE`): a group restarted by `--max-restarts` would read the dead
    group's gloo/nccl addresses left in it. TORCHELASTIC_RESTART_COUNT cannot scope the keys: each
    node counts its own restarts (a healthy node restarts its workers without counting), so after a
    restart nodes disagree on it and wait for each other under different prefixes. The prefix is a
    value the new group agrees on through the store itself (`agree_on_generation`)."""
    use_agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not use_agent_store and rank == 0, timeout=timeout, multi_tenant=not use_agent_store)
    return dist.PrefixStore(f"etrm/{agree_on_generation(store, rank, world_size, timeout)}", store)


def agree_on_generation(store: dist.Store, rank: int, world_size: int, timeout: datetime.timedelta,
                        poll_s: float = 0.2) -> str:
    """A token every rank of this group of processes returns, fresh for each group, agreed through
    `store` even when the store still holds the keys of earlier groups.

    Rank 0 publishes a fresh token; every other rank announces itself under the token it reads,
    with its own fresh token; rank 0 answers once all have announced themselves under its token,
    echoing each rank's own token. A rank that read a dead group's token never gets its own token
    echoed back (a stale answer cannot hold a token drawn by this process), so it reads again."""
    mine = secrets.token_hex(8)
    deadline = time.monotonic() + timeout.total_seconds()
    if rank == 0:
        store.set(GENERATION_KEY, mine)
        joined = {}
        for r in range(1, world_size):
            key = f"etrm/{mine}/joined/{r}"
            while not store.check([key]):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rank {r} did not join process group {mine} within {timeout}; "
                                       f"joined so far: {sorted(joined)} (dist_timeout_minutes)")
                time.sleep(poll_s / 4)
            joined[str(r)] = store.get(key).decode()
        store.set(f"etrm/{mine}/ready", json.dumps(joined))
        return mine
    while True:
        seen = store.get(GENERATION_KEY).decode()  # blocks until some rank 0 has published one
        store.set(f"etrm/{seen}/joined/{rank}", mine)
        ready = f"etrm/{seen}/ready"
        if store.check([ready]) and json.loads(store.get(ready)).get(str(rank)) == mine:
            return seen
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {rank}: rank 0 of this process group never answered within {timeout} "
                               f"(last token read: {seen}; dist_timeout_minutes)")
        time.sleep(poll_s)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


_DDP_ARGS = inspect.signature(DistributedDataParallel.__init__).parameters


def wrap_ddp(module: torch.nn.Module, device: torch.device, context_ablation: bool = False) -> torch.nn.Module:
    """`module` under DDP whenever a process group exists (one process under torchrun included),
    else as it is. The zeroed-context ablation leaves the encoder without gradient, which DDP must
    be told (find_unused_parameters).

    No buffer broadcast before every forward: the model's buffers are constants (rotary tables,
    segment ids, the grid-feature offsets, H_init/L_init, TTA's variant tables), never written by a
    forward (tests/test_compile_ddp.py checks it); DDP's constructor still copies rank 0's
    parameters and buffers to every rank once. torch 2.13 names this `forward_sync_buffers=False`
    (its `broadcast_buffers=False` would also skip that copy at construction)."""
    if not is_distributed():
        return module
    no_forward_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in _DDP_ARGS
                       else {"broadcast_buffers": False})
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=context_ablation, **no_forward_sync)


def training_module(module: torch.nn.Module, device: torch.device, compile: bool,
                    context_ablation: bool = False) -> torch.nn.Module:
    """The module a training step calls: DDP (`wrap_ddp`) first, then `torch.compile` of the DDP
    module. Dynamo's DDPOptimizer (`torch._dynamo.config.optimize_ddp`, on by default) acts only
    when it compiles a DDP-wrapped module (its Note [DDPOptimizer] in torch/_dynamo/backends/
    distributed.py; the torch.compile FAQ, "Do you support Distributed code?"): it splits the graph
    at DDP's gradient-bucket boundaries so each bucket's all-reduce starts while the backward goes
    on. DDP around a compiled module gets one fused backward whose gradients are all ready at its
    end: no overlap. (torch's "Where to apply torch.compile?" page suggests compiling the inner
    module for wrappers in general; that order is the one without overlap.) Parameters are named
    `_orig_mod.module.*` here: checkpoints save the bare model's state_dict, never this module's."""
    wrapped = wrap_ddp(module, device, context_ablation)
    return torch.compile(wrapped) if compile else wrapped


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_control_group)
    return box[0]


def control_max(values: list[float]) -> list[float]:
    """Element-wise max over ranks of a few CPU numbers (stop flags, rank 0's clock), on the gloo
    control group: no CUDA synchronisation."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control_group)
    return t.tolist()


def all_gather_object(obj) -> list:
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj, group=_control_group)
    return out


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
    global _control_group
    if is_distributed():
        dist.destroy_process_group()
    _control_group = None
