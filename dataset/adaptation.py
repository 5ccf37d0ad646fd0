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

from .loader import ARCSplit


def adaptation_split(split: ARCSplit, puzzles: np.ndarray | None = None) -> ARCSplit:
    """The leave-one-out demo split of `split` (see the module docstring). `puzzles` (bool per
    puzzle) keeps the queries of those puzzles only; the others stay in, without queries."""
    cells, shapes, pair_input, pair_output = [], [], [], []
    pair_offsets, num_demos, q_puzzle, q_pair, query_offsets = [0], [], [], [], [0]
    for p in range(split.num_puzzles):
        demos = split.demos(p)  # the only grids read: demo inputs and outputs
        first = len(pair_input)
        for a, b in demos:
            for g in (a, b):
                cells.append(g.ravel())
                shapes.append(g.shape)
            pair_input.append(len(shapes) - 2)
            pair_output.append(len(shapes) - 1)
        pair_offsets.append(len(pair_input))
        num_demos.append(len(demos))
        if len(demos) > 1 and (puzzles is None or puzzles[p]):
            q_puzzle += [p] * len(demos)
            q_pair += range(first, first + len(demos))
        query_offsets.append(len(q_puzzle))
    sizes = np.array([c.size for c in cells], dtype=np.int64)
    arrays = {
        "grid_cells": np.concatenate(cells) if cells else np.zeros(0, np.uint8),
        "grid_offsets": np.concatenate([[0], np.cumsum(sizes)]),
        "grid_shapes": np.array(shapes, dtype=np.int64).reshape(-1, 2),
        "pair_input": np.array(pair_input, dtype=np.int64),
        "pair_output": np.array(pair_output, dtype=np.int64),
        "puzzle_pair_offsets": np.array(pair_offsets, dtype=np.int64),
        "puzzle_num_demos": np.array(num_demos, dtype=np.int64),
        "query_puzzle": np.array(q_puzzle, dtype=np.int64),
        "query_pair": np.array(q_pair, dtype=np.int64),
        "query_test_index": np.full(len(q_puzzle), -1, dtype=np.int64),  # no query is a test input
        "puzzle_query_offsets": np.array(query_offsets, dtype=np.int64),
        "variants": split.variants.copy(),
        "variant_puzzle": split.variant_puzzle.copy(),
        "puzzle_variant_offsets": split.puzzle_variant_offsets.copy(),
    }
    meta = {k: v for k, v in split.metadata.items() if k != "datasets"}
    meta["translate"] = False  # adapt on the canvas layout the evaluation predicts on
    return ARCSplit.from_arrays(arrays, split.puzzle_ids, meta, "adaptation", split.paths)
