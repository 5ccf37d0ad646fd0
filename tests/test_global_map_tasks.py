"""scripts/global_map_tasks.py: one global map per task, checked on hand-made tasks."""
import importlib.util
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location(
    "global_map_tasks", Path(__file__).resolve().parents[1] / "scripts" / "global_map_tasks.py")
gm = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gm)

A = np.array([[1, 2, 0], [3, 4, 5]])
B = np.array([[7, 0], [8, 9]])


def test_flip_with_relabel_is_found_and_inconsistent_relabel_is_not():
    pairs = [(g, np.fliplr(g)) for g in (A, B)]
    assert gm.global_map(pairs) == "dihedral4"
    swap = {1: 2, 2: 1}
    rel = lambda g: np.vectorize(lambda c: swap.get(c, c))(g)
    assert gm.global_map([(g, rel(np.fliplr(g))) for g in (A, B)]) == "dihedral4+relabel"
    # 1 -> 2 in one pair, 1 -> 3 in the other: no single relabelling explains both
    bad = [(A, np.where(np.fliplr(A) == 1, 2, np.fliplr(A))), (B.copy(), np.fliplr(B))]
    bad[1] = (np.array([[1, 0], [8, 9]]), np.array([[0, 3], [9, 8]]))
    assert gm.global_map(bad) is None


def test_mirrored_tiling_scaling_and_shift():
    mirrored = lambda g: np.block([[g, np.fliplr(g)], [np.flipud(g), np.flipud(np.fliplr(g))]])
    assert gm.global_map([(g, mirrored(g)) for g in (A, B)]) == "tile2x2_m11"
    assert gm.global_map([(g, np.kron(g, np.ones((3, 2), int))) for g in (A, B)]) == "scale3x2"
    down = lambda g: np.vstack([np.zeros((1, g.shape[1]), int), g[:-1]])
    # repeated colours, so no relabelling of the unshifted grid can fake the shift
    C = np.array([[1, 2, 1], [2, 1, 2], [1, 1, 2]])
    assert gm.global_map([(g, down(g)) for g in (C, C.T)]) == "shift+1+0"


def test_a_map_that_fails_one_pair_is_rejected():
    # the test pair breaks the flip the demos show: the task is not one global map
    assert gm.global_map([(A, np.fliplr(A)), (B, B.T)]) is None
