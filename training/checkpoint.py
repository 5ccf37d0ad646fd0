"""Step-folder checkpoints: `<run_dir>/checkpoints/step_N/` with a COMPLETE marker written last.

A folder is first written as `step_N.tmp`, the marker goes in, then it is renamed, so a
crash at any point leaves either a complete checkpoint or nothing that will be loaded.
Rank 0 writes the shared state; every rank writes its own RNG state and ACT carry, which a
resumed run needs to continue the same trajectory. The marker lists every file with its size
and SHA-256, so a file truncated or damaged after the write is detected at load.

Every rank agrees on what happened: a write that fails on any rank (a full disk) fails on all
with the reason, the unfinished folder removed and every earlier checkpoint untouched; nothing is
deleted before its successor is complete. At resume every rank loads the same candidate; one
that any rank cannot read is set aside (renamed `step_N.unreadable`, never deleted) with a warning
naming the file, and the next older one is tried.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from training.distributed import all_gather_object, barrier, broadcast_object

log = logging.getLogger("etrm")

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d+)$")


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (on any rank); the previous ones are intact."""


def checkpoint_root(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def is_complete(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def incomplete_reason(path: str | Path) -> str | None:
    """Why `path` is not a complete checkpoint folder (a sentence after its name), or None."""
    path = Path(path)
    if not path.is_dir():
        return "does not exist (expected a checkpoint folder <run_dir>/checkpoints/step_N)"
    if not is_complete(path):
        return f"has no {MARKER} marker: it was not completely written"
    return None


def require_evaluable(path: str | Path, what: str = "") -> Path:
    """`path` as a Path if it is a complete checkpoint folder with its run's config.yaml (what
    evaluation and the probes load); FileNotFoundError naming it (`what`: e.g. "checkpoint=") otherwise."""
    path = Path(path)
    if not (path / "config.yaml").is_file() or not is_complete(path):
        raise FileNotFoundError(f"{what}{path} is not a complete checkpoint folder (expected config.yaml and the "
                                f"{MARKER} marker in <run_dir>/checkpoints/step_N)")
    return path


def read_trainer_state(path: str | Path) -> dict:
    """A checkpoint folder's trainer_state.json (step, model_kwargs, loader state, counters)."""
    return json.loads((Path(path) / "trainer_state.json").read_text())


def weights_file(path: str | Path, ema: bool = True) -> Path:
    """The weights an evaluation loads: the EMA copy when asked for and saved, else the trained ones."""
    path = Path(path)
    return path / ("ema.pt" if ema and (path / "ema.pt").exists() else "model.pt")


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


def _digest(path: Path) -> dict:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return {"size": path.stat().st_size, "sha256": h.hexdigest()}


def _write_files(tmp: Path, rank: int, shared: dict, per_rank: dict) -> dict:
    """This rank's files, flushed to disk; returns {file name: size and digest}."""
    written = {}

    def put(name: str, write) -> None:
        path = tmp / name
        write(path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        written[name] = _digest(path)

    put(f"rank_{rank}.pt", lambda p: torch.save(per_rank, p))
    if rank == 0:
        for name, obj in shared.items():
            if name == "trainer_state":
                put("trainer_state.json", lambda p: p.write_text(json.dumps(obj, indent=1)))
            elif name == "config_yaml":
                put("config.yaml", lambda p: p.write_text(obj))
            else:
                put(f"{name}.pt", lambda p: torch.save(obj, p))
    return written


def save_checkpoint(run_dir: str | Path, step: int, rank: int, shared: dict, per_rank: dict, keep_last: int) -> Path:
    """Collective: every rank calls it. `shared` (rank 0 writes it) maps file stem -> object:
    model, ema, optimizer, trainer_state (JSON-able), config_yaml (str). `per_rank` is this
    rank's own state (RNG, carry). Raises CheckpointWriteError on every rank when any rank's
    write failed."""
    root = checkpoint_root(run_dir)
    final = root / f"step_{step}"
    tmp = root / f"step_{step}.tmp"
    error = None
    if rank == 0:
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        except OSError as e:
            error = f"rank 0: cannot create {tmp}: {e}"
    barrier()
    written = {}
    if not all_gather_object(error)[0]:
        try:
            written = _write_files(tmp, rank, shared, per_rank)
        except OSError as e:  # a full disk, a quota, a vanished mount: every rank must hear of it
            error = f"rank {rank}: {type(e).__name__}: {e}"
    outcomes = all_gather_object((error, written))
    errors = [e for e, _ in outcomes if e]
    if errors:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(run_dir)
        raise CheckpointWriteError(f"checkpoint step_{step} could not be written ({'; '.join(errors)}); "
                                   f"nothing was replaced or deleted, the newest complete checkpoint is still "
                                   f"{previous if previous else '(none)'}")
    if rank == 0:
        manifest = {"step": step, "files": {k: v for _, w in outcomes for k, v in w.items()}}
        (tmp / MARKER).write_text(json.dumps(manifest, indent=1))
        # an existing folder of the same step is only set aside once its successor is complete
        old = root / f"step_{step}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
        for stale in list_checkpoints(run_dir)[:-keep_last] if keep_last > 0 else []:
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    return final


def verify_files(path: Path, names: list[str]) -> None:
    """Raise when a listed file is missing or differs from the marker's record (sizes and digests;
    markers of older checkpoints hold only the step, then only presence is checked)."""
    text = (path / MARKER).read_text()
    try:
        files = json.loads(text).get("files", {})
    except (ValueError, AttributeError):
        files = {}
    for name in names:
        f = path / name
        if not f.is_file():
            raise OSError(f"{f} is missing")
        if name in files and _digest(f) != files[name]:
            raise OSError(f"{f} does not match its record in {MARKER} (size or SHA-256 differs: truncated or damaged)")


def load_checkpoint(path: str | Path, rank: int, map_location="cpu") -> dict:
    path = Path(path)
    reason = incomplete_reason(path)
    if reason:
        raise FileNotFoundError(f"checkpoint {path} {reason}")
    present = [n for n in ("model.pt", "ema.pt", "optimizer.pt", f"rank_{rank}.pt") if (path / n).exists()]
    verify_files(path, ["trainer_state.json", *present])
    out = {"path": path, "trainer_state": read_trainer_state(path)}
    for name in ("model", "ema", "optimizer"):
        f = path / f"{name}.pt"
        out[name] = torch.load(f, map_location=map_location, weights_only=False) if f.exists() else None
    # always on the CPU: the RNG states must be CPU byte tensors (torch/cuda set_rng_state refuse
    # anything else); the trainer moves the carry to its device itself
    rank_file = path / f"rank_{rank}.pt"
    out["per_rank"] = torch.load(rank_file, map_location="cpu", weights_only=False) if rank_file.exists() else None
    return out


def load_for_resume(run_dir: str | Path, explicit: str | Path | None, rank: int, map_location="cpu") -> dict | None:
    """Collective. The newest checkpoint every rank can read, loaded on every rank, or None.

    Rank 0 lists the candidates (an explicit `load_checkpoint` is the only one) and broadcasts them,
    so every rank tries the same folders in the same order whatever its file-system cache says.
    A candidate any rank fails to read is renamed `step_N.unreadable` by rank 0 (kept for a look,
    out of the way of pruning and of the next resume) with a warning naming the file and error."""
    candidates = broadcast_object([str(explicit)] if explicit else
                                  [str(p) for p in reversed(list_checkpoints(run_dir))] if rank == 0 else None)
    for path in candidates:
        try:
            state, error = load_checkpoint(path, rank, map_location), None
        except Exception as e:  # noqa: BLE001 (a damaged file raises whatever its reader raises)
            state, error = None, f"rank {rank}: {type(e).__name__}: {e}"
        errors = [e for e in all_gather_object(error) if e]
        if not errors:
            return state
        if explicit:
            raise ValueError(f"load_checkpoint={explicit} cannot be read: {'; '.join(errors)}")
        if rank == 0:
            log.warning("checkpoint %s is unreadable (%s): set aside as %s.unreadable, trying the previous one",
                        path, "; ".join(errors), Path(path).name)
            os.replace(path, f"{path}.unreadable")
        barrier()
    return None


def require_shared_run_dir(run_dir: str | Path, rank: int) -> None:
    """Collective. Refuse a run directory that is not one shared folder for every rank (a node-local
    path, a mount missing on some node): rank 0 writes a fresh token into it, every rank must read
    it back. Otherwise ranks would resume from different checkpoints and write apart."""
    import secrets
    import socket

    from training.distributed import is_distributed
    if not is_distributed():
        return
    run_dir = Path(run_dir)
    token = secrets.token_hex(8) if rank == 0 else None
    probe = run_dir / f".shared-check-{broadcast_object(token)}"
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe.write_text(token)
    barrier()
    try:
        seen = probe.read_text() == probe.name.rsplit("-", 1)[1]
    except OSError:
        seen = False
    missing = [f"rank {r} on {host}" for r, (ok, host) in enumerate(all_gather_object((seen, socket.gethostname())))
               if not ok]
    barrier()
    if rank == 0:
        probe.unlink(missing_ok=True)
    if missing:
        raise RuntimeError(f"run_dir {run_dir} is not shared by every rank: {', '.join(missing)} cannot read what "
                           f"rank 0 wrote there. Put run_dir on a file system every node mounts at the same path "
                           f"(checkpoints and resume need one folder for all ranks).")
