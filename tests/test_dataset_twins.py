"""dataset/twins.py: pair_key is equal exactly for pairs that are variants of each other (checked
against a brute-force search over every flip/rotation and colour permutation), and find_twins
reports train pairs that equal a held-out test pair up to a variant."""
from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np

from dataset.augment import NUM_DIHEDRAL, apply_variant, random_variant
from dataset.twins import find_twins, pair_key


def _brute_force_class(a: np.ndarray, b: np.ndarray) -> bytes:
    """Smallest encoding over every variant the builder can draw (8 dihedrals x every injection of
    the pair's colours 1-9 into 1-9): one representative per class, computed the slow way."""
    used = sorted(set(np.unique(np.concatenate([a.ravel(), b.ravel()])).tolist()) - {0})
    best = None
    for d in range(NUM_DIHEDRAL):
        for image in itertools.permutations(range(1, 10), len(used)):
            perm = np.arange(10)
            perm[used] = image
            v = np.concatenate([[d], perm]).astype(np.uint8)
            x, y = apply_variant(a, v), apply_variant(b, v)
            enc = bytes([*x.shape, *y.shape]) + x.tobytes() + y.tobytes()
            best = enc if best is None or enc < best else best
    return best


def _random_pair(rng, max_side=3, colours=3):
    shape = lambda: tuple(int(s) for s in rng.integers(1, max_side + 1, 2))  # noqa: E731
    return (rng.integers(0, colours, shape()).astype(np.uint8), rng.integers(0, colours, shape()).astype(np.uint8))


def test_every_variant_has_the_key():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = _random_pair(rng, max_side=6, colours=10)
        key = pair_key(a, b)
        for d in range(NUM_DIHEDRAL):
            v = random_variant(rng)
            v[0] = d
            assert pair_key(apply_variant(a, v), apply_variant(b, v)) == key, v


def test_key_equality_is_variant_equivalence():
    """Small grids with 3 colours collide often, so both directions are exercised."""
    rng = np.random.default_rng(1)
    pairs = [_random_pair(rng, max_side=2) for _ in range(150)]
    keys = [pair_key(a, b) for a, b in pairs]
    classes = [_brute_force_class(a, b) for a, b in pairs]
    same = {(i, j) for i in range(len(pairs)) for j in range(i) if classes[i] == classes[j]}
    assert {(i, j) for i in range(len(pairs)) for j in range(i) if keys[i] == keys[j]} == same
    assert len(same) > 50 and len(set(classes)) > 50  # real collisions and real distinctions


def test_not_twins():
    a = np.array([[1, 2, 0], [0, 0, 3]], dtype=np.uint8)
    b = np.array([[3, 3], [1, 0]], dtype=np.uint8)
    key = pair_key(a, b)
    assert pair_key(a, np.rot90(b).copy()) != key  # input and output under different dihedrals
    assert pair_key(a, np.where(b == 3, 2, np.where(b == 2, 3, b))) != key  # colours swapped in the output only
    assert pair_key(np.where(a == 0, 4, a), b) != key  # colour 0 is never permuted
    assert pair_key(a, b[:1]) != key and pair_key(b, a) != key


def _puzzle(name, demos, tests):
    return SimpleNamespace(task_id=name, demos=demos, tests=tests)


def test_find_twins_matches_held_out_test_pairs_only():
    rng = np.random.default_rng(2)
    p, q, r, s = (_random_pair(rng, max_side=5, colours=10) for _ in range(4))
    v = random_variant(rng)
    varied = lambda pair: (apply_variant(pair[0], v), apply_variant(pair[1], v))  # noqa: E731
    held_out = [_puzzle("e", demos=[q], tests=[p])]
    train = [_puzzle("holds_test", demos=[r, varied(p)], tests=[s]),   # the held-out answer: a twin
             _puzzle("holds_demo", demos=[r], tests=[varied(q)]),       # a held-out demo: shown at test time anyway
             _puzzle("clean", demos=[r], tests=[s])]
    twins = find_twins(train, held_out)
    assert [(t.task_id, where, e.task_id, e_where) for t, where, e, e_where in twins] == \
        [("holds_test", "train[1]", "e", "test[0]")]
