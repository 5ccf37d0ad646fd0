"""`python -m verify JOBFILE` turns the semi-final verification checklist into a command, and
catches what would stop a job at launch (missing dataset, a batch that does not split over GPUs)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import verify

REPO = Path(__file__).resolve().parents[1]
ENTRY = "torchrun --nproc-per-node 4 pretrain_etrm.py --config-name cfg_pretrain_etrm_arc_agi_1 +project_name=p"


def fake_dataset(path: Path) -> Path:
    """The files verify looks for (it checks presence; the loader checks content at launch)."""
    for split in ("train", "eval"):
        (path / split).mkdir(parents=True)
        (path / split / "arrays.npz").write_bytes(b"")
    (path / "metadata.json").write_text("{}")
    return path


def test_parse_job_line_keeps_config_name_and_overrides():
    name, overrides = verify.parse_job_line(f'{ENTRY} +run_name="x y" arch.encoder_type=standard lr=1e-3')
    assert name == "cfg_pretrain_etrm_arc_agi_1"
    assert overrides == ["+project_name=p", "+run_name=x y", "arch.encoder_type=standard", "lr=1e-3"]
    with pytest.raises(ValueError, match="no pretrain_etrm.py"):
        verify.parse_job_line("torchrun train.py lr=1")


def test_world_sizes_come_from_the_launcher_flags():
    assert verify.job_world_sizes(f"{ENTRY} lr=1") == [4]
    assert verify.job_world_sizes("python pretrain_etrm.py lr=1") == [1]
    assert verify.job_world_sizes("torchrun --nnodes 2 --nproc_per_node=8 pretrain_etrm.py") == [16]
    assert verify.job_world_sizes("torchrun --nnodes=1:3 --nproc-per-node 2 pretrain_etrm.py") == [2, 4, 6]
    with pytest.raises(ValueError, match="GPU count as a number"):
        verify.job_world_sizes("torchrun --nproc-per-node gpu pretrain_etrm.py")


def test_good_and_bad_job_lines_give_the_right_exit_code(tmp_path, capsys):
    data = fake_dataset(tmp_path / "data")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# comment\n"
                    f"{ENTRY} +run_name=ok arch.encoder_type=hybrid_variational arch.halt_max_steps=3 "
                    f"arch.halt_exploration_prob=0.5 data_paths=[{data}]\n")
    assert verify.main([str(jobs), "--steps", "6", "--hidden", "16"]) == 0
    out = capsys.readouterr().out
    assert out.count("[x]") == 8 and "KL term present iff variational" in out and "expected present" in out

    jobs.write_text(f"{ENTRY} +run_name=bad arch.encoder_type=nope\n{ENTRY} +run_name=typo arch.no_such_key=1\n")
    assert verify.main([str(jobs), "--steps", "2", "--hidden", "16"]) == 1
    out = capsys.readouterr().out
    assert "[ ]" in out and "valid" in out and "no_such_key" in out


def test_jobs_that_would_die_at_launch_fail_verification(tmp_path, capsys):
    data = fake_dataset(tmp_path / "data")
    jobs = tmp_path / "jobs.txt"
    jobs.write_text(f"{ENTRY} +run_name=nodata data_paths=[{tmp_path / 'absent'}]\n"
                    f"torchrun --nproc-per-node 3 pretrain_etrm.py +run_name=odd data_paths=[{data}] global_batch_size=128\n")
    assert verify.main([str(jobs), "--steps", "2", "--hidden", "16"]) == 1
    out = capsys.readouterr().out
    missing = next(line for line in out.splitlines() if "absent" in line)
    assert missing.startswith("  [ ] dataset") and "python -m dataset.build_arc_dataset" in missing
    assert "--output-dir " + str(tmp_path / "absent") in missing
    odd = next(line for line in out.splitlines() if "global_batch_size divides over 3 GPU" in line)
    assert odd.startswith("  [ ]") and "does not divide evenly over world_size=3" in odd


@pytest.mark.slow
def test_the_semi_final_job_file_verifies(tmp_path, monkeypatch):
    # the job lines name data/arc1concept-encoder-aug-1000 relative to where they run: build a small
    # real dataset there (ConceptARC is not on every machine; the check is that it exists)
    subprocess.run([sys.executable, "-m", "dataset.build_arc_dataset", "--train-sources", "arc-agi-1:train",
                    "--eval-sources", "arc-agi-1:eval", "--output-dir",
                    str(tmp_path / "data" / "arc1concept-encoder-aug-1000"), "--max-grid-size", "6", "--num-aug", "1"],
                   cwd=REPO, check=True, capture_output=True)
    monkeypatch.chdir(tmp_path)
    assert verify.main([str(REPO / "jobs-etrm-semi-final.txt")]) == 0
