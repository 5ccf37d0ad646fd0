"""What a new user meets at the command line: CPU-friendly process defaults, one clear line for a
config or input error (the traceback on request), a mistyped data path that is refused instead of
built, plain progress lines in a log file, and an end-of-run summary of what was learned."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], env_extra: dict | None = None, drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="disabled", **(env_extra or {}))
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("module", ["pretrain_etrm", "evaluate_etrm", "verify", "bench"])
def test_entry_points_default_omp_wait_policy_to_passive_before_torch_loads(module):
    probe = (f"import sys, os; import {module}; "
             "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    unset = run([sys.executable, "-c", probe], drop=("OMP_WAIT_POLICY",))
    assert unset.returncode == 0, unset.stderr
    policy, torch_loaded = unset.stdout.split()
    assert policy == "PASSIVE"
    if module != "verify":  # verify imports torch itself, after the default is in place
        assert torch_loaded == "False"
    kept = run([sys.executable, "-c", probe], env_extra={"OMP_WAIT_POLICY": "ACTIVE"})
    assert kept.stdout.split()[0] == "ACTIVE"  # a value the user exported wins


def test_a_mistyped_data_path_is_an_error_naming_it_not_a_build(tmp_path):
    typo = tmp_path / "nonexistent"
    proc = run([sys.executable, "pretrain_etrm.py", "--config-name", "cfg_pretrain_etrm_tiny",
                f"data_paths=[{typo}]", f"run_dir={tmp_path / 'run'}"])
    assert proc.returncode == 2
    assert not typo.exists() and not (tmp_path / "run").exists()  # nothing built, nothing started
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: data_paths: dataset directory") and str(typo) in lines[0]
    assert "python -m dataset.build_arc_dataset" in lines[0] and "Traceback" not in proc.stderr
    assert "HYDRA_FULL_ERROR=1" in lines[1]
    full = run([sys.executable, "pretrain_etrm.py", "--config-name", "cfg_pretrain_etrm_tiny",
                f"data_paths=[{typo}]", f"run_dir={tmp_path / 'run'}"], env_extra={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode != 0 and "Traceback" in full.stderr and "dataset_checks" in full.stderr


def test_library_errors_keep_their_traceback():
    from training.user_errors import raised_by_project, report_user_errors

    import numpy as np

    with pytest.raises(ValueError) as info:
        np.zeros(3).reshape(2, 2)  # raised inside numpy: a bug, not user input
    assert not raised_by_project(info.value)
    with pytest.raises(ValueError):
        with report_user_errors():
            np.zeros(3).reshape(2, 2)
    from models.config import config_from_dict
    from models.recursive_reasoning.etrm import ETRMConfig

    with pytest.raises(SystemExit) as stop:
        with report_user_errors():
            config_from_dict(ETRMConfig, {"nope": 1})
    assert stop.value.code == 2


def test_a_logged_run_has_plain_progress_lines_and_says_what_was_learned(tmp_path):
    """Redirected to a file, the progress bar used to be one 19,000-character line of escape codes;
    and the quick start ended without saying whether anything was learned."""
    data = tmp_path / "data"
    subprocess.run([sys.executable, "-m", "dataset.build_arc_dataset", "--train-sources", "arc-agi-1:train",
                    "--eval-sources", "arc-agi-1:eval", "--output-dir", str(data), "--max-grid-size", "6",
                    "--num-aug", "1"], cwd=REPO, check=True, capture_output=True)
    proc = run([sys.executable, "pretrain_etrm.py", "--config-name", "cfg_pretrain_etrm_tiny", f"data_paths=[{data}]",
                f"run_dir={tmp_path / 'run'}", "arch.hidden_size=32", "arch.num_heads=2", "arch.puzzle_emb_len=4",
                "global_batch_size=8", "max_steps=6", "eval_interval=null", "max_eval_groups=3", "max_eval_variants=1"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "\r" not in log and max(len(line) for line in log.splitlines()) < 1000
    assert "step 6/6 (100%)" in log  # the final progress line
    summary = log[log.index("what was learned, after 6 steps:"):]
    assert "train (last" in summary and "exact accuracy" in summary
    assert "held-out eval (3 puzzles" in summary and "pass@2" in summary
    assert "python -m bench.learning" in summary  # the tiny config's note: where learning shows at CPU scale
