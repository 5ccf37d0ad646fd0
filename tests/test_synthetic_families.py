"""The content families of dataset/synthetic_families.py, each checked on hand-made grids: the rule a
puzzle draws must do what its docstring says, since the learning benchmark scores the model against it."""
from __future__ import annotations

import numpy as np
import pytest

from dataset import synthetic
from dataset.augment import dihedral


def g(rows) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


HAND_MADE = [
    # cells fall down; the wall colour 3 stays and stops what falls onto it
    ("gravity", {"direction": [1, 0], "wall": 3},
     [[1, 2], [0, 0], [3, 0], [0, 0]], [[0, 0], [1, 0], [3, 0], [0, 2]]),
    ("gravity", {"direction": [0, -1], "wall": 0},
     [[0, 0, 5], [0, 4, 6]], [[5, 0, 0], [4, 6, 0]]),
    # rays to the right, stopped by the first non-background cell of the input
    ("rays", {"direction": [0, 1]},
     [[0, 4, 0, 0], [0, 0, 0, 0], [5, 0, 6, 0]], [[0, 4, 4, 4], [0, 0, 0, 0], [5, 5, 6, 6]]),
    ("rays", {"direction": [1, 1]},
     [[7, 0, 0], [0, 0, 0], [0, 0, 0]], [[7, 0, 0], [0, 7, 0], [0, 0, 7]]),
    # the one object of colour 2 (4-connected) cut out at its bounding box
    ("select", {"select": "colour", "colour": 2},
     [[1, 1, 0, 0], [0, 0, 0, 2], [0, 0, 2, 2]], [[0, 2], [2, 2]]),
    ("select", {"select": "size", "size": 2},
     [[1, 1, 0, 0], [0, 0, 0, 2], [0, 0, 2, 2]], [[1, 1]]),
    # objects of exactly one cell become 5
    ("size_recolour", {"size": 1, "colour": 5},
     [[1, 0, 2], [0, 0, 2], [3, 0, 0]], [[5, 0, 2], [0, 0, 2], [5, 0, 0]]),
    # background walled off from the border becomes 4 ...
    ("enclose", {"colour": 4},
     [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 0, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]],
     [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 4, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]),
    # ... and a diagonal gap does not wall it off (4-connected background)
    ("enclose", {"colour": 4},
     [[0, 1, 0], [1, 0, 1], [0, 1, 0]], [[0, 1, 0], [1, 4, 1], [0, 1, 0]]),
    ("outline", {"colour": 7, "nbhd": 4},
     [[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[0, 7, 0], [7, 1, 7], [0, 7, 0]]),
    ("outline", {"colour": 7, "nbhd": 8},
     [[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[7, 7, 7], [7, 1, 7], [7, 7, 7]]),
    # three objects (the two 3s touch) -> a bar of 3; diagonal neighbours are two objects
    ("count_bar", {"colour": 6, "orient": "row"}, [[1, 0, 2], [0, 0, 0], [3, 3, 0]], [[6, 6, 6]]),
    ("count_bar", {"colour": 6, "orient": "col"}, [[1, 0], [0, 1]], [[6], [6]]),
    # two colours -> factor 2
    ("scale_count", {"axes": "both", "mode": "scale"}, [[1, 2], [0, 1]],
     [[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 1, 1], [0, 0, 1, 1]]),
    ("scale_count", {"axes": "cols", "mode": "tile"}, [[1, 2], [0, 1]], [[1, 2, 1, 2], [0, 1, 0, 1]]),
    ("scale_count", {"axes": "rows", "mode": "scale"}, [[0, 3, 0]], [[0, 3, 0]] * 1),
    # cells with >= 2 object neighbours become 9
    ("crowd", {"k": 2, "nbhd": 4, "colour": 9},
     [[1, 1, 1], [0, 1, 0], [0, 0, 0]], [[1, 9, 1], [0, 1, 0], [0, 0, 0]]),
    ("crowd", {"k": 2, "nbhd": 8, "colour": 9},
     [[1, 1, 1], [0, 1, 0], [0, 0, 0]], [[9, 9, 9], [0, 9, 0], [0, 0, 0]]),
    # equal colours on a row joined (in 5, or in their own colour); different colours not
    ("connect", {"axes": "rows", "colour": 5}, [[2, 0, 0, 2], [3, 0, 0, 4]], [[2, 5, 5, 2], [3, 0, 0, 4]]),
    ("connect", {"axes": "cols", "colour": 0}, [[2, 0], [0, 0], [2, 0]], [[2, 0], [2, 0], [2, 0]]),
    ("connect", {"axes": "rows", "colour": 0}, [[2, 0], [0, 0], [2, 0]], [[2, 0], [0, 0], [2, 0]]),
    # fall up, then 9 -> 4
    ("gravity_recolour", {"direction": [-1, 0], "map": [9, 4]},
     [[0, 0], [9, 0], [0, 1]], [[4, 1], [0, 0], [0, 0]]),
]


@pytest.mark.parametrize("family,rule,grid,expected", HAND_MADE,
                         ids=[f"{f}-{i}" for i, (f, *_rest) in enumerate(HAND_MADE)])
def test_rule_on_hand_made_grid(family, rule, grid, expected):
    out = synthetic.apply_rule(family, rule, g(grid))
    np.testing.assert_array_equal(out, g(expected))


def test_every_content_family_has_a_hand_made_case():
    assert set(synthetic.CONTENT_FAMILIES) <= {f for f, *_ in HAND_MADE} | {"crop_dihedral"}  # below


@pytest.mark.parametrize("k", range(8))
def test_crop_dihedral_crops_to_the_content_then_maps(k):
    grid = g([[0, 0, 0], [0, 1, 2], [0, 0, 3]])
    out = synthetic.apply_rule("crop_dihedral", {"dihedral": k}, grid)
    np.testing.assert_array_equal(out, dihedral(g([[1, 2], [0, 3]]), k))


@pytest.mark.parametrize("family,rule,grid,why", [
    ("select", {"select": "colour", "colour": 1}, [[1, 0, 1]], "two objects of colour 1"),
    ("connect", {"axes": "both", "colour": 5}, [[0, 2, 0], [2, 0, 2], [0, 2, 0]], "lines cross"),
    ("scale_count", {"axes": "both", "mode": "scale"}, [[1, 2, 3, 0, 0]], "exceeds"),
])
def test_a_rule_that_cannot_apply_is_an_error(family, rule, grid, why):
    with pytest.raises(ValueError):
        synthetic.apply_rule(family, rule, g(grid))


def test_identifiable_tells_a_readable_puzzle_from_an_ambiguous_one():
    # the demo joins a row: "rows" and "both" both reproduce it, and they disagree on a column pair
    rule = {"axes": "rows", "colour": 5}
    demos = [(g([[2, 0, 2]]), g([[2, 5, 2]]))]
    assert not synthetic.identifiable("connect", rule, demos, [g([[3, 0], [0, 0], [3, 0]])])
    assert synthetic.identifiable("connect", rule, demos, [g([[4, 0, 0, 4]])])
    # one fallen column shows the direction: every other direction leaves the demo unchanged
    rule = {"direction": [1, 0], "wall": 0}
    demos = [(g([[1], [0]]), g([[0], [1]]))]
    assert synthetic.identifiable("gravity", rule, demos, [g([[1, 0], [0, 0]])])


def test_blind_bound_counts_rules_that_share_an_answer():
    # a query with one object of each size 1..2 and colours 1, 2: "colour 1" and "size 1" cut out the
    # same object, so a blind guess of that object is right for more than one rule in the family
    q = g([[1, 0, 2, 2]])
    one = synthetic.blind_bound("select", {"select": "colour", "colour": 1}, q, 1)
    two = synthetic.blind_bound("select", {"select": "colour", "colour": 1}, q, 2)
    assert 0.0 < one <= two <= 1.0
    assert two == pytest.approx(1.0)  # only two distinct answers exist for this query
