"""Puzzle variants: one of the 8 dihedral transforms plus a permutation of colours 1-9
(0 stays 0), applied to every grid of a puzzle alike. A variant is stored as 11 uint8:
[dihedral_id, perm[0..9]] with perm[0] == 0; `invert_variant` undoes `apply_variant`.
This is the single definition the builder, loader and evaluator share.
"""
from __future__ import annotations

import numpy as np

NUM_DIHEDRAL = 8
# dihedral id -> id of its inverse: rotations by 90 and 270 undo each other, the rest are involutions
DIHEDRAL_INVERSE = np.array([0, 3, 2, 1, 4, 5, 6, 7], dtype=np.int64)
VARIANT_WIDTH = 11


def dihedral(grid: np.ndarray, tid: int) -> np.ndarray:
    """0 id, 1 rot90, 2 rot180, 3 rot270 (counter-clockwise), 4 transpose, 5 flip left-right,
    6 flip up-down, 7 anti-transpose."""
    if tid == 0:
        return grid
    if tid in (1, 2, 3):
        return np.rot90(grid, k=tid)
    if tid == 4:
        return grid.T
    if tid == 5:
        return np.fliplr(grid)
    if tid == 6:
        return np.flipud(grid)
    if tid == 7:
        return np.rot90(grid, k=2).T
    raise ValueError(f"dihedral id must be in 0..7, got {tid}")


def identity_variant() -> np.ndarray:
    return np.concatenate([[0], np.arange(10)]).astype(np.uint8)


def random_variant(rng: np.random.Generator) -> np.ndarray:
    perm = np.concatenate([[0], rng.permutation(9) + 1])
    return np.concatenate([[rng.integers(NUM_DIHEDRAL)], perm]).astype(np.uint8)


def apply_variant(grid: np.ndarray, variant: np.ndarray) -> np.ndarray:
    perm = variant[1:].astype(np.uint8)
    return np.ascontiguousarray(dihedral(perm[grid], int(variant[0])))


def invert_variant(grid: np.ndarray, variant: np.ndarray) -> np.ndarray:
    inverse_perm = np.argsort(variant[1:]).astype(np.uint8)
    return np.ascontiguousarray(inverse_perm[dihedral(grid, int(DIHEDRAL_INVERSE[int(variant[0])]))])
