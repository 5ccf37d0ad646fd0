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


def find_twins(train, held_out) -> list[tuple]:
    """Every (train puzzle, its pair, held-out puzzle, its test pair) where the train pair (a demo,
    "train[i]", or a test pair, "test[i]") equals the held-out puzzle's test pair up to a variant.
    Puzzles are objects with `demos` and `tests` lists of (input, output) grids. Held-out test
    pairs are what gets scored, so those are the ones training must never have seen."""
    index: dict[bytes, list[tuple[object, str]]] = {}
    for e in held_out:
        for i, (a, b) in enumerate(e.tests):
            index.setdefault(pair_key(a, b), []).append((e, f"test[{i}]"))
    twins = []
    for t in train:
        named = [(f"train[{i}]", p) for i, p in enumerate(t.demos)] + [(f"test[{i}]", p) for i, p in enumerate(t.tests)]
        for where, (a, b) in named:
            twins += [(t, where, e, e_where) for e, e_where in index.get(pair_key(a, b), ())]
    return twins
