"""The GPU check's scheduler (bench/scheduler.py): a command past its time limit is stopped with
every process it started (torchrun's workers live in sessions of their own), and a stage that no
longer fits in what is left of the budget is not started."""
from __future__ import annotations

import os
import sys
import time

from bench.scheduler import Budget, Stage, run_limited

# a child that starts a grandchild in a session of its own (as torchrun does), records its pid, sleeps
SPAWN = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], "
         "start_new_session=True); open(sys.argv[1], 'w').write(str(p.pid)); time.sleep(60)")


def test_a_command_past_its_limit_is_killed_with_its_descendants(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    with open(tmp_path / "log.txt", "w") as log:
        rc, timed_out, wall = run_limited([sys.executable, "-c", SPAWN, str(pid_file)], 3.0, tmp_path, dict(os.environ), log)
    assert timed_out and wall < 30
    grandchild = int(pid_file.read_text())
    time.sleep(0.2)
    state = open(f"/proc/{grandchild}/stat").read().split()[2] if os.path.exists(f"/proc/{grandchild}") else "gone"
    assert state in ("gone", "Z"), f"grandchild {grandchild} still running ({state})"


def test_a_stage_that_no_longer_fits_is_not_started():
    stage = Stage("x", print, gpu_s=100, cpu_s=100, min_s=30)
    assert Budget(1000).limit_for(stage, cpu=True) == 100
    assert 15 < Budget(50, reserve_s=10).limit_for(stage, cpu=True) <= 40
    assert Budget(35, reserve_s=10).limit_for(stage, cpu=True) is None
