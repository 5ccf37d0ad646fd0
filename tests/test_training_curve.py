"""Training curves unchanged by the sync-free step (device-side metrics, clipping, skip and guards;
the foreach AdamATan2): a 12-step tiny run logs the losses and gradient norms recorded by the code
before those changes (tests/fixtures/tiny_run_losses.json, written by that code from these same
overrides: the variational encoder and exploration draw random numbers, and a small clip norm
clips every step)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import compose_cfg
from training import trainer

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_run_losses.json"


def test_tiny_run_logs_the_recorded_losses(tiny_data, tmp_path):
    recorded = json.loads(FIXTURE.read_text())
    run_dir = tmp_path / "run"
    overrides = [f"data_paths=[{tiny_data}]", "build_if_missing=null", f"run_dir={run_dir}", *recorded["overrides"]]
    results = trainer.train(compose_cfg("cfg_pretrain_etrm_tiny", overrides))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if "train/total_loss" in r]
    assert [r["step"] for r in logged] == [r["step"] for r in recorded["train"]]
    for got, want in zip(logged, recorded["train"]):
        for key in ("train/total_loss", "train/lm_loss", "train/count", "grad/total_norm"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), (got["step"], key)
    assert results["eval/exact_accuracy"] == pytest.approx(recorded["eval/exact_accuracy"])
