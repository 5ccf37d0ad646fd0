"""Pieces of the CUDA path that can be checked without a GPU: copies back to the CPU are
blocking, a checkpoint's RNG states load on the CPU whatever the map_location, torchrun with one
process still sets up a process group, and under bf16 autocast the ACT carry stays float32 while
the packed and padded encoder layouts agree within the GPU check's tolerances."""
from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist

from tests.cuda_checks import TOL, packed_vs_padded
from training import checkpoint
from training.distributed import init_distributed, shutdown
from training.evaluation import to_device


def test_to_device_copies_back_to_cpu_blocking(monkeypatch):
    """A non-blocking device-to-host copy returns before the data has arrived (torch.save of the
    checkpointed carry would write it half-copied); host-to-device copies may be asynchronous."""
    calls = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        calls.append((args[0] if args else kwargs.get("device"), kwargs.get("non_blocking", False)))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    carry = {"z_H": torch.ones(2, 3), "data": {"inputs": torch.zeros(2, dtype=torch.long)}}
    moved = to_device(carry, torch.device("cpu"))
    assert torch.equal(moved["z_H"], carry["z_H"])
    assert len(calls) == 2 and not any(non_blocking for _, non_blocking in calls)


def test_checkpoint_rng_state_loads_on_cpu_whatever_the_map_location(tmp_path):
    """Training on CUDA loads with map_location=cuda; RNG states moved there would make
    torch.set_rng_state fail on resume. ('meta' stands in for a device that is not the CPU.)"""
    per_rank = {"rng": checkpoint.rng_state(), "loader": {}, "carry": None}
    shared = {"model": {"w": torch.ones(2)}, "trainer_state": {"step": 3}, "config_yaml": ""}
    path = checkpoint.save_checkpoint(tmp_path, 3, 0, shared, per_rank, keep_last=1)
    state = checkpoint.load_checkpoint(path, 0, map_location="meta")
    assert state["model"]["w"].device.type == "meta"  # shared state follows map_location
    assert state["per_rank"]["rng"]["torch"].device.type == "cpu"
    checkpoint.set_rng_state(state["per_rank"]["rng"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_with_one_process_sets_up_a_process_group(monkeypatch):
    """`torchrun --nproc-per-node 1` must run the collective path (NCCL on one GPU), not skip it."""
    env = {"TORCHELASTIC_RUN_ID": "test", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "TORCHELASTIC_RESTART_COUNT": "0"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    try:
        info = init_distributed("cpu")
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        assert (info.rank, info.world_size) == (0, 1)
    finally:
        shutdown()
    assert not dist.is_initialized()


@pytest.mark.parametrize("encoder", ["standard", "hybrid_standard"])
def test_bf16_autocast_keeps_carry_float32_and_layouts_agree(encoder):
    """The same comparison the GPU check runs on CUDA, here under CPU bf16 autocast."""
    from bench.common import PRESETS

    preset = dict(PRESETS["tiny"], encoder_type=encoder)
    r = packed_vs_padded("cpu", preset, 3, "bfloat16")
    assert r["carry_dtype_packed"] == r["carry_dtype_padded"] == "float32"
    assert r["same_grad_keys"]
    for key, limit in TOL["packed_vs_padded_bf16"].items():
        assert r[key] <= limit, (key, r[key], limit)
    assert r["attention_packed"]["sdpa_calls"] > 0
