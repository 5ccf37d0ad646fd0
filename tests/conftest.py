"""Shared pytest fixtures. Keep this small: fixtures for one area belong in its test files."""
from __future__ import annotations

import training.env_defaults  # noqa: F401  (first: OMP_WAIT_POLICY=PASSIVE before torch loads, here and in subprocesses)

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _write_arc_task(path, train, test, raw: str | None = None) -> Path:
    """Write an ARC task JSON file ({"train": [{"input", "output"}], "test": [...]}); `train` and
    `test` are lists of (input, output) nested lists. `raw` writes that text instead."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if raw is not None:
        path.write_text(raw)
    else:
        pair = lambda io: {"input": io[0], "output": io[1]}  # noqa: E731
        path.write_text(json.dumps({"train": [pair(p) for p in train], "test": [pair(p) for p in test]}))
    return path


@pytest.fixture
def write_arc_task():
    """write_arc_task(path, train_pairs, test_pairs) -> Path of a small ARC task file."""
    return _write_arc_task


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """ARC-AGI-1 puzzles whose grids fit 6x6, 2 augmentations: seconds to build."""
    out = tmp_path_factory.mktemp("data") / "arc1-6x6"
    subprocess.run([sys.executable, "-m", "dataset.build_arc_dataset", "--train-sources", "arc-agi-1:train",
                    "--eval-sources", "arc-agi-1:eval", "--output-dir", str(out), "--max-grid-size", "6",
                    "--num-aug", "2", "--seed", "0"], cwd=Path(__file__).resolve().parents[1], check=True, capture_output=True)
    return out
