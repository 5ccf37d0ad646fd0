"""Variants: invertibility of every transform and content deduplication."""
from __future__ import annotations

import numpy as np
import pytest

from dataset.augment import apply_variant, identity_variant, invert_variant, random_variant
from dataset.variants import (COMPOSE, draw_variants, num_distinct_variants, puzzle_symmetries, variant_keys)


def _content(grids, v) -> tuple:
    return tuple((t.shape, t.tobytes()) for t in (apply_variant(g, v) for g in grids))


@pytest.mark.parametrize("d", range(8))
def test_apply_then_invert_is_identity(d):
    rng = np.random.default_rng(d)
    grid = rng.integers(0, 10, size=(3, 5)).astype(np.uint8)
    for _ in range(5):
        v = random_variant(rng)
        v[0] = d
        out = apply_variant(grid, v)
        assert out.shape == ((5, 3) if d in (1, 3, 4, 7) else (3, 5))
        assert np.array_equal(invert_variant(out, v), grid)
        assert np.count_nonzero(out == 0) == np.count_nonzero(grid == 0)  # colour 0 stays 0


def test_compose_table_matches_dihedrals():
    from dataset.augment import dihedral

    g = np.arange(12).reshape(3, 4)
    for a in range(8):
        for b in range(8):
            assert np.array_equal(dihedral(dihedral(g, b), a), dihedral(g, int(COMPOSE[a, b])))


def _brute_force_classes(grids, draws=4000, seed=0) -> int:
    rng = np.random.default_rng(seed)
    return len({_content(grids, random_variant(rng)) for _ in range(draws)} | {_content(grids, identity_variant())})


@pytest.mark.parametrize("grids,expected", [
    ([np.array([[1, 2, 0], [0, 0, 0]])], 8 * 9 * 8),                  # colours {0,1,2}, no symmetry
    ([np.array([[1, 0], [0, 1]])], 8 * 9 // 4),                        # one colour, diagonal symmetric
    ([np.array([[1, 1, 1], [1, 2, 1], [1, 1, 1]])], 9 * 8),            # fully symmetric: all dihedrals coincide
    ([np.array([[3, 0, 4]])], 8 * 9 * 8 // 4),                        # flips that swap 3 and 4 are symmetries
    ([np.array([[5]]), np.array([[5, 5]])], 8 * 9 // 4),                # 1x2: 4 dihedrals keep it
])
def test_distinct_variant_count_matches_brute_force(grids, expected):
    grids = [g.astype(np.uint8) for g in grids]
    used, syms = puzzle_symmetries(grids)
    assert num_distinct_variants(used, len(syms)) == expected
    if expected <= 150:
        assert _brute_force_classes(grids) == expected
    table, info = draw_variants(grids, 1000, np.random.default_rng(1))
    assert len(table) == expected  # every class, since num_aug exceeds it
    assert np.array_equal(table[0], identity_variant())
    assert len({_content(grids, v) for v in table}) == len(table)


def test_dedup_caps_at_num_aug_and_is_by_content():
    rng = np.random.default_rng(3)
    grids = [rng.integers(0, 5, size=(4, 4)).astype(np.uint8) for _ in range(4)]
    table, info = draw_variants(grids, 50, np.random.default_rng(0))
    assert len(table) == 51 and info["available"] > 51
    assert len({_content(grids, v) for v in table}) == 51
    # symmetric grids: dihedrals coincide, so fewer variants than 8 * 9!/(9-k)!
    sym = [np.array([[1, 2, 1], [2, 3, 2], [1, 2, 1]], np.uint8)]
    table, info = draw_variants(sym, 10_000, np.random.default_rng(0))
    assert len(table) == 9 * 8 * 7 == info["available"]
    assert len({_content(sym, v) for v in table}) == len(table)


def test_keys_equal_iff_content_equal():
    rng = np.random.default_rng(5)
    for trial in range(6):
        n = int(rng.integers(1, 4))
        size = int(rng.integers(1, 4))
        grids = [rng.integers(0, 3, size=(size, size)).astype(np.uint8) for _ in range(n)]
        used, syms = puzzle_symmetries(grids)
        vs = np.stack([random_variant(rng) for _ in range(300)])
        keys = variant_keys(vs[:, 0], vs[:, 1:], used, syms)
        contents = [_content(grids, v) for v in vs]
        for i in range(0, 300, 7):
            for j in range(300):
                assert (keys[i] == keys[j]) == (contents[i] == contents[j])
