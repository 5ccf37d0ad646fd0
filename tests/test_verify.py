"""`python -m verify JOBFILE` turns the semi-final verification checklist into a command."""
from __future__ import annotations

from pathlib import Path

import pytest

import verify

REPO = Path(__file__).resolve().parents[1]
ENTRY = "torchrun --nproc-per-node 4 pretrain_etrm.py --config-name cfg_pretrain_etrm_arc_agi_1 +project_name=p"


def test_parse_job_line_keeps_config_name_and_overrides():
    name, overrides = verify.parse_job_line(f'{ENTRY} +run_name="x y" arch.encoder_type=standard lr=1e-3')
    assert name == "cfg_pretrain_etrm_arc_agi_1"
    assert overrides == ["+project_name=p", "+run_name=x y", "arch.encoder_type=standard", "lr=1e-3"]
    with pytest.raises(ValueError, match="no pretrain_etrm.py"):
        verify.parse_job_line("torchrun train.py lr=1")


def test_good_and_bad_job_lines_give_the_right_exit_code(tmp_path, capsys):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("# comment\n"
                    f"{ENTRY} +run_name=ok arch.encoder_type=hybrid_variational arch.halt_max_steps=3 "
                    "arch.halt_exploration_prob=0.5\n")
    assert verify.main([str(jobs), "--steps", "6", "--hidden", "16"]) == 0
    out = capsys.readouterr().out
    assert out.count("[x]") == 6 and "KL term present iff variational" in out and "expected present" in out

    jobs.write_text(f"{ENTRY} +run_name=bad arch.encoder_type=nope\n{ENTRY} +run_name=typo arch.no_such_key=1\n")
    assert verify.main([str(jobs), "--steps", "2", "--hidden", "16"]) == 1
    out = capsys.readouterr().out
    assert "[ ]" in out and "valid" in out and "no_such_key" in out


@pytest.mark.slow
def test_the_semi_final_job_file_verifies():
    assert verify.main([str(REPO / "jobs-etrm-semi-final.txt")]) == 0
