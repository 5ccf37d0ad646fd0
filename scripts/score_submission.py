#!/usr/bin/env python
"""Score an ARC Prize submission against Kaggle-format solutions, independently of the
evaluator.

    python scripts/score_submission.py SUBMISSION.json SOLUTIONS.json

submission: {task_id: [{"attempt_1": grid, "attempt_2": grid, ...}, ...]} (one entry per
test input, in order); solutions: {task_id: [grid, ...]} (one grid per test input).
Prints pass@2 under both conventions over the tasks in SOLUTIONS:
  per-test-input credit (ARC Prize / TRM): a task scores the fraction of its test inputs
  solved by any attempt, averaged over tasks;
  whole-task (HRM notebook): a task counts only when all its test inputs are solved.
Tasks missing from the submission score 0.
"""
from __future__ import annotations

import argparse
import json
import sys


def _same(a, b) -> bool:
    try:
        return [list(map(int, r)) for r in a] == [list(map(int, r)) for r in b]
    except (TypeError, ValueError):
        return False


def score(submission: dict, solutions: dict, max_attempts: int = 2) -> dict:
    """Return {"pass@2": ..., "task_pass@2": ..., "num_tasks": ..., "num_test_inputs": ...}
    (the keys use ``max_attempts`` in place of 2)."""
    per_test_credit, task_credit, n_tests = [], [], 0
    for task_id, truths in solutions.items():
        entries = submission.get(task_id, [])
        solved = []
        for i, truth in enumerate(truths):
            entry = entries[i] if i < len(entries) and isinstance(entries[i], dict) else {}
            attempts = [entry.get(f"attempt_{a + 1}") for a in range(max_attempts)]
            solved.append(any(att is not None and _same(att, truth) for att in attempts))
        n_tests += len(truths)
        per_test_credit.append(sum(solved) / len(solved) if solved else 0.0)
        task_credit.append(float(bool(solved) and all(solved)))
    n = len(per_test_credit)
    return {
        f"pass@{max_attempts}": sum(per_test_credit) / n if n else 0.0,
        f"task_pass@{max_attempts}": sum(task_credit) / n if n else 0.0,
        "num_tasks": n,
        "num_test_inputs": n_tests,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("submission")
    ap.add_argument("solutions")
    ap.add_argument("--attempts", type=int, default=2)
    args = ap.parse_args(argv)
    with open(args.submission) as f:
        submission = json.load(f)
    with open(args.solutions) as f:
        solutions = json.load(f)
    res = score(submission, solutions, args.attempts)
    k = args.attempts
    print(f"tasks: {res['num_tasks']}  test inputs: {res['num_test_inputs']}")
    print(f"pass@{k} (per test input credit): {res[f'pass@{k}']:.4f}")
    print(f"pass@{k} (whole task):            {res[f'task_pass@{k}']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
