"""Pairs that are the same up to a puzzle variant ("twins"), found by a canonical content key.

The builder trains on variants of every puzzle: one of the 8 dihedral transforms and a
permutation of colours 1-9 (0 fixed), applied to all grids alike (dataset/augment.py). A
held-out pair is therefore leaked if it equals *any* variant of a training pair, not only the
pair itself. `pair_key` maps every pair to the same key as all its variants and to no other:
for each dihedral, transform input and output, renumber their colours by first appearance
(input then output, row-major; 0 stays 0), and keep the smallest encoding. Equal keys <=> one
pair is a variant of the other, so finding twins is a hash lookup, not a pairwise search.
"""
from __future__ import annotations

import numpy as np

from .augment import NUM_DIHEDRAL, dihedral


def _renumbered(inp: np.ndarray, out: np.ndarray) -> bytes:
    """Shapes + cells of the pair with colours renumbered by first appearance (0 fixed)."""
    cells = np.concatenate([inp.ravel(), out.ravel()]).astype(np.uint8)
    colours, first = np.unique(cells, return_index=True)
    lut = np.zeros(10, dtype=np.uint8)
    nonzero = colours != 0
    lut[colours[nonzero][np.argsort(first[nonzero])]] = np.arange(1, int(nonzero.sum()) + 1, dtype=np.uint8)
    header = np.array([*inp.shape, *out.shape], dtype=np.uint16).tobytes()
    return header + lut[cells].tobytes()


def pair_key(inp: np.ndarray, out: np.ndarray) -> bytes:
    """The same bytes for a pair and every variant of it (dihedral x colour permutation of 1-9),
    different bytes for any other pair."""
    inp, out = np.asarray(inp), np.asarray(out)
    return min(_renumbered(dihedral(inp, d), dihedral(out, d)) for d in range(NUM_DIHEDRAL))


def block_invariants(shapes: np.ndarray, cells: np.ndarray, offsets: np.ndarray) -> list[bytes]:
    """A cheap key per pair of a flat block of pairs (dataset.sources.PairBlock layout) that is
    equal for a pair and all its variants: the shapes up to a transpose, the counts of colour 0 in
    input and output, and the sorted (input count, output count) of colours 1-9. Equal pair_keys
    imply equal invariants, so only pairs whose invariant matches a held-out one need pair_key:
    checking an example pool stays linear and vectorised."""
    n = len(shapes) // 2
    if n == 0:
        return []
    sizes = np.diff(offsets)
    gid = np.repeat(np.arange(2 * n, dtype=np.int64), sizes)
    counts = np.bincount(gid * 10 + cells.astype(np.int64), minlength=20 * n).reshape(2 * n, 10)
    cin, cout = counts[0::2], counts[1::2]
    codes = np.sort(cin[:, 1:] * (1 << 20) + cout[:, 1:], axis=1)
    hi, wi, ho, wo = (shapes[0::2, 0], shapes[0::2, 1], shapes[1::2, 0], shapes[1::2, 1])
    a = ((hi * 1024 + wi) * 1024 + ho) * 1024 + wo
    b = ((wi * 1024 + hi) * 1024 + wo) * 1024 + ho
    rows = np.ascontiguousarray(np.column_stack([np.minimum(a, b), cin[:, 0], cout[:, 0], codes]).astype(np.int64))
    return [r.tobytes() for r in rows]


def _invariants(pairs) -> list[bytes]:
    grids = [np.asarray(g) for pair in pairs for g in pair]
    if not grids:
        return []
    shapes = np.array([g.shape for g in grids], dtype=np.int64)
    cells = np.concatenate([g.ravel() for g in grids]).astype(np.uint8)
    return block_invariants(shapes, cells, np.concatenate([[0], np.cumsum(shapes[:, 0] * shapes[:, 1])]))


def find_twins(train, held_out) -> list[tuple]:
    """Every (train puzzle, its pair, held-out puzzle, its test pair) where the train pair (a demo,
    "train[i]", a test pair, "test[i]", or an example of a pool, "example[i]") equals the held-out puzzle's test pair up to a variant.
    Puzzles are objects with `demos` and `tests` lists of (input, output) grids. Held-out test
    pairs are what gets scored, so those are the ones training must never have seen."""
    index: dict[bytes, list[tuple[object, str]]] = {}
    invariants: set[bytes] = set()
    for e in held_out:
        for i, (a, b) in enumerate(e.tests):
            index.setdefault(pair_key(a, b), []).append((e, f"test[{i}]"))
        invariants.update(_invariants(e.tests))
    twins = []
    for t in train:
        pool = getattr(t, "pool", None)
        if pool is not None:  # every example of the pool, "example[i]"; pair_key only where the invariant matches
            for i, inv in enumerate(block_invariants(pool.shapes, pool.cells, pool.offsets)):
                if inv in invariants:
                    twins += [(t, f"example[{i}]", e, e_where) for e, e_where in index.get(pair_key(*pool.pair(i)), ())]
            continue
        named = [(f"train[{i}]", p) for i, p in enumerate(t.demos)] + [(f"test[{i}]", p) for i, p in enumerate(t.tests)]
        for where, (a, b) in named:
            twins += [(t, where, e, e_where) for e, e_where in index.get(pair_key(a, b), ())]
    return twins
