"""Step-folder checkpoints: `<run_dir>/checkpoints/step_N/` with a COMPLETE marker written last.

A folder is first written as `step_N.tmp`, the marker goes in, then it is renamed, so a
crash at any point leaves either a complete checkpoint or nothing that will be loaded.
Rank 0 writes the shared state; every rank writes its own RNG state and ACT carry, which a
resumed run needs to continue the same trajectory.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from dataset.atomic import publish_directory
from training.distributed import barrier

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete step folders, oldest first; folders without the marker are ignored."""
    root = checkpoint_root(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and child.is_dir() and is_complete(child):
            found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: str | Path, step: int, rank: int, shared: dict, per_rank: dict, keep_last: int) -> Path:
    """Collective: every rank calls it. `shared` (rank 0 writes it) maps file stem -> object:
    model, ema, optimizer, trainer_state (JSON-able), config_yaml (str). `per_rank` is this
    rank's own state (RNG, carry)."""
    root = checkpoint_root(run_dir)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    barrier()
    torch.save(per_rank, tmp / f"rank_{rank}.pt")
    if rank == 0:
        for name, obj in shared.items():
            if name == "trainer_state":
                (tmp / "trainer_state.json").write_text(json.dumps(obj, indent=1))
            elif name == "config_yaml":
                (tmp / "config.yaml").write_text(obj)
            else:
                torch.save(obj, tmp / f"{name}.pt")
    barrier()
    if rank == 0:
        (tmp / MARKER).write_text(str(step))
        publish_directory(tmp, final, overwrite=True)  # a step re-saved on resume replaces its folder whole
        for old in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def load_checkpoint(path: str | Path, rank: int, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} does not exist (expected a folder <run_dir>/checkpoints/step_N)")
    if not is_complete(path):
        raise FileNotFoundError(f"checkpoint {path} has no {MARKER} marker: it was not completely written")
    out = {"path": path, "trainer_state": json.loads((path / "trainer_state.json").read_text())}
    for name in ("model", "ema", "optimizer"):
        f = path / f"{name}.pt"
        out[name] = torch.load(f, map_location=map_location, weights_only=False) if f.exists() else None
    # always on the CPU: the RNG states must be CPU byte tensors (torch/cuda set_rng_state refuse
    # anything else); the trainer moves the carry to its device itself
    rank_file = path / f"rank_{rank}.pt"
    out["per_rank"] = torch.load(rank_file, map_location="cpu", weights_only=False) if rank_file.exists() else None
    return out
