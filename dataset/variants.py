"""Drawing distinct puzzle variants, deduplicated by content, without transforming grids.

A variant (d, p) maps every grid g of a puzzle to D_d(p[g]). Only p restricted to the colours
U the puzzle uses matters. Two variants give identical content exactly when they differ by a
*symmetry* of the puzzle: a pair (e, q), e a dihedral, q a permutation of U (0 fixed), with
q[D_e(g)] == g for every grid g. Proof sketch: p1[D_d1 g] == p2[D_d2 g] for all g
<=> q[D_e g] == g with D_e = D_d1^-1 D_d2, q = p1^-1 p2; and (d, p) ~ (d o e, p o q).
The symmetries form a group S of at most 8 elements (q is fixed by e, if it exists), found by
looking at the grids once per dihedral. Every content class is then an orbit of exactly |S|
pairs (d, p|U), and its canonical key is the smallest encoded (d o e, p o q restricted to U)
over S: an exact, vectorised content key for any number of draws. The number of distinct
variants is 8 * 9!/(9-k)! / |S| with k = number of used colours other than 0.
"""
from __future__ import annotations

import itertools
import math
import zlib

import numpy as np

from .augment import NUM_DIHEDRAL, VARIANT_WIDTH, dihedral, identity_variant


def _compose_table() -> np.ndarray:
    """COMPOSE[a, b] = c with dihedral(dihedral(g, b), a) == dihedral(g, c)."""
    g = np.arange(6).reshape(2, 3)
    images = [dihedral(g, i) for i in range(NUM_DIHEDRAL)]
    table = np.zeros((NUM_DIHEDRAL, NUM_DIHEDRAL), dtype=np.int64)
    for a in range(NUM_DIHEDRAL):
        for b in range(NUM_DIHEDRAL):
            r = dihedral(dihedral(g, b), a)
            table[a, b] = next(c for c, im in enumerate(images) if im.shape == r.shape and np.array_equal(im, r))
    return table


COMPOSE = _compose_table()
# dihedrals that swap height and width
TRANSPOSES = np.array([dihedral(np.zeros((1, 2)), i).shape == (2, 1) for i in range(NUM_DIHEDRAL)])


def puzzle_symmetries(grids: list[np.ndarray]) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """(U, S): the sorted colours used by `grids`, and the symmetries (e, q) with q a length-10
    array (only q[U] is meaningful) such that q[dihedral(g, e)] == g for every grid g."""
    used = np.unique(np.concatenate([g.ravel() for g in grids]))
    syms = [(0, np.arange(10))]  # the identity, always
    # a symmetry of all grids is one of the first few grids' symmetries: checking those first skips
    # the full pass for most dihedrals on large example pools (RE-ARC: 2000 grids per task)
    candidates = range(1, NUM_DIHEDRAL) if len(grids) <= 8 else [e for e, _ in puzzle_symmetries(grids[:8])[1] if e]
    flat = [g.ravel().astype(np.int16) for g in grids] if candidates else []
    for e in candidates:
        codes = []
        for g, gf in zip(grids, flat):
            t = dihedral(g, e)
            if t.shape != g.shape:
                break
            codes.append(t.ravel().astype(np.int16) * 10 + gf)
        else:
            pairs = np.unique(np.concatenate(codes))
            src, dst = pairs // 10, pairs % 10
            if len(np.unique(src)) != len(src) or len(np.unique(dst)) != len(dst):
                continue  # the colour map would not be a bijection
            q = np.arange(10)
            q[src] = dst
            if q[0] != 0:
                continue  # colour 0 is never permuted
            syms.append((e, q))
    return used, syms


def num_distinct_variants(used: np.ndarray, num_syms: int) -> int:
    k = int(np.count_nonzero(used))  # colours other than 0
    return NUM_DIHEDRAL * math.perm(9, k) // num_syms


def variant_keys(d: np.ndarray, perms: np.ndarray, used: np.ndarray, syms) -> np.ndarray:
    """Exact content keys of variants (d [n], perms [n, 10]) of a puzzle with colours `used` and
    symmetries `syms`: equal keys <=> identical transformed grids."""
    k = len(used)
    weights = 10 ** np.arange(k - 1, -1, -1, dtype=np.int64)
    d = np.asarray(d, dtype=np.int64)
    perms = np.asarray(perms, dtype=np.int64)
    best = None
    for e, q in syms:
        key = COMPOSE[d, e] * 10 ** k + perms[:, q[used]] @ weights
        best = key if best is None else np.minimum(best, key)
    return best


def _random_perms(rng: np.random.Generator, n: int) -> np.ndarray:
    perms = np.zeros((n, 10), dtype=np.int64)
    perms[:, 1:] = np.argsort(rng.random((n, 9)), axis=1) + 1
    return perms


def _all_perms(used: np.ndarray) -> np.ndarray:
    """One full permutation per injection of the used non-zero colours into 1..9 (free colours
    take the free targets in increasing order)."""
    nz = [int(c) for c in used if c != 0]
    free = np.array([c for c in range(1, 10) if c not in nz], dtype=np.int64)
    inj = np.array(list(itertools.permutations(range(1, 10), len(nz))), dtype=np.int64).reshape(-1, len(nz))
    perms = np.zeros((len(inj), 10), dtype=np.int64)
    perms[:, nz] = inj
    taken = np.zeros((len(inj), 10), dtype=bool)
    taken[:, 0] = True
    np.put_along_axis(taken, inj, True, axis=1)
    perms[:, free] = np.argsort(taken, axis=1, kind="stable")[:, : len(free)]
    return perms


def puzzle_rng(seed: int, puzzle_id: str) -> np.random.Generator:
    """Variants of a puzzle depend only on the seed and its id, not on what else is in the dataset."""
    return np.random.default_rng([int(seed), zlib.crc32(puzzle_id.encode())])


def draw_variants(grids: list[np.ndarray], num_aug: int, rng: np.random.Generator,
                  max_draw_factor: int = 40) -> tuple[np.ndarray, dict]:
    """Up to `num_aug` distinct non-identity variants plus the identity (row 0): uint8 [n, 11].
    Returns (variants, info) with info = {"available": distinct variants incl. identity,
    "symmetries": |S|, "draws": random draws made}. Gives up after max_draw_factor*(num_aug+1) draws."""
    used, syms = puzzle_symmetries(grids)
    available = num_distinct_variants(used, len(syms))
    target = min(num_aug + 1, available)
    ident = identity_variant().astype(np.int64)
    ident_key = variant_keys(np.zeros(1, np.int64), ident[None, 1:], used, syms)[0]
    chosen_d = [np.zeros(1, np.int64)]
    chosen_p = [ident[None, 1:]]
    draws = 0
    if target > 1 and available <= 3 * (num_aug + 1):
        # few classes: enumerate all of them, pick target-1 of the non-identity ones at random
        perms = _all_perms(used)
        d = np.repeat(np.arange(NUM_DIHEDRAL), len(perms))
        perms = np.tile(perms, (NUM_DIHEDRAL, 1))
        keys = variant_keys(d, perms, used, syms)
        _, first = np.unique(keys, return_index=True)
        first = first[keys[first] != ident_key]
        pick = rng.choice(first, size=target - 1, replace=False)
        chosen_d.append(d[pick])
        chosen_p.append(perms[pick])
    elif target > 1:
        seen = np.array([ident_key], dtype=np.int64)
        have = 1
        max_draws = max_draw_factor * (num_aug + 1)
        while have < target and draws < max_draws:
            n = min(max(64, int(1.25 * (target - have)) + 16), max_draws - draws)
            d = rng.integers(NUM_DIHEDRAL, size=n)
            perms = _random_perms(rng, n)
            draws += n
            keys = variant_keys(d, perms, used, syms)
            _, first = np.unique(keys, return_index=True)
            first = np.sort(first)  # keep draw order
            first = first[~np.isin(keys[first], seen)][: target - have]
            seen = np.concatenate([seen, keys[first]])
            chosen_d.append(d[first])
            chosen_p.append(perms[first])
            have += len(first)
    d = np.concatenate(chosen_d)
    perms = np.concatenate(chosen_p)
    out = np.empty((len(d), VARIANT_WIDTH), dtype=np.uint8)
    out[:, 0] = d
    out[:, 1:] = perms
    return out, {"available": available, "symmetries": len(syms), "draws": draws}
