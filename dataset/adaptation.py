"""The adaptation set of test-time adaptation: an eval split's demos, and nothing else.

`adaptation_split(split)` returns a new ARCSplit that physically holds only the demo pairs of
`split`: test pairs (their inputs, their outputs and the outputs' shapes) are not copied, so no
code that receives it can read a test output, by construction. Each demo of a puzzle with at
least two demos becomes a query whose context is the puzzle's other demos (leave-one-out: the
loader's `query_demo_pairs` already leaves the query's own pair out). Puzzles with a single demo
get no queries (no adaptation: a demo used as its own context teaches a copy shortcut, and a
query with no context is not what the model sees at test time); their per-puzzle parameters keep
their start values.

Puzzle indices, puzzle ids and the variant table (so global variant indices) are those of the
eval split, so a per-puzzle (or per-variant) parameter learned here is looked up by the same
index at prediction time. Variants are applied by the usual loader (`TrainLoader`, optionally
restricted to each puzzle's first `max_variants`, e.g. the ones the evaluation votes over), to
context and query alike.
"""
from __future__ import annotations

import numpy as np

from .build_arc_dataset import split_arrays
from .loader import ARCSplit


def adaptation_split(split: ARCSplit, puzzles: np.ndarray | None = None) -> ARCSplit:
    """The leave-one-out demo split of `split` (see the module docstring). `puzzles` (bool per
    puzzle) keeps the queries of those puzzles only; the others stay in, without queries."""
    entries, tables = [], []
    for p in range(split.num_puzzles):
        demos = split.demos(p)  # the only grids read: demo inputs and outputs
        adapt = len(demos) > 1 and (puzzles is None or bool(puzzles[p]))
        entries.append((demos, len(demos), [(i, -1) for i in range(len(demos))] if adapt else []))
        v0, v1 = split.puzzle_variant_range(p)
        tables.append(split.variants[v0:v1])
    meta = {k: v for k, v in split.metadata.items() if k != "datasets"}
    meta["translate"] = False  # adapt on the canvas layout the evaluation predicts on
    return ARCSplit.from_arrays(split_arrays(entries, tables), split.puzzle_ids, meta, "adaptation", split.paths)
