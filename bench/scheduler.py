"""A small budgeted scheduler: run commands one after another, each in its own process (session)
under its own time limit cut to what is left of a total budget; a command that runs out of time is
killed with every process it started. Used by the GPU check (bench/gpu_check.py)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass
class Stage:
    name: str
    fn: Callable             # what the child process runs
    gpu_s: int             # budget on the device
    cpu_s: int             # budget with --cpu
    min_s: int = 30        # not started with less than this left

    def budget(self, cpu: bool) -> int:
        return self.cpu_s if cpu else self.gpu_s


class Budget:
    """What is left of `total_s` seconds (minus `reserve_s` kept for the end) since it was made."""

    def __init__(self, total_s: float, reserve_s: float = 0.0):
        self.total_s, self.reserve_s, self.start = total_s, reserve_s, time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.total_s - self.elapsed() - self.reserve_s

    def limit_for(self, stage: Stage, cpu: bool) -> float | None:
        """The stage's time limit now, or None when it no longer fits (less than its min_s left)."""
        limit = min(stage.budget(cpu), self.left())
        return None if limit < min(stage.min_s, stage.budget(cpu)) else limit


def run_limited(cmd: list[str], limit_s: float, cwd, env: dict, log_file) -> tuple[int | None, bool, float]:
    """Run `cmd` (its output into `log_file`) for at most `limit_s` seconds -> (returncode,
    timed_out, wall seconds); on time-out it and every process below it are killed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        rc, timed_out = proc.wait(timeout=limit_s), False
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        rc, timed_out = proc.returncode, True
    return rc, timed_out, time.perf_counter() - t0


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first found first."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """Stop a command that ran out of time: its process group and every process it started (torchrun
    puts its workers in sessions of their own, out of the group's reach)."""
    tree = descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
