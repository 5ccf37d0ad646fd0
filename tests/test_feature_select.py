"""`arch.cell_lookup_select` (models/feature_select.py): per puzzle, cell_lookup compares cells by the
grid features the demos' changes follow, judged leave-one-demo-out.
- feature_scores: a feature that decides the change scores 1, one that only memorises (a value
  unique to each cell) scores 0, the colour alone is scored too (a contradicted prediction costs), cells that are no keys do not count,
  and a puzzle with one demo cannot tell (all 0);
- feature_weights: the best features 1, the rest `others`, no preference when the colour alone
  predicts as well, no selection when the demos cannot tell;
- table_vote: an ordered feature's unseen value reads the nearest seen one, a relative column
  "became the colour it sees" reaches colours the demos never used;
- on hand-made grids (downward rays) the lookup's vote at init answers with the selection and not
  without it, and its table vote alone answers a count and a colour the demos never showed; the model refuses the option without cell_lookup and equals the model without it at
  step 0 (tests/test_cell_lookup.py runs the gradient test with it)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dataset.tokens import COLOUR_OFFSET
from models.cell_lookup import CellLookup
from models.feature_select import CONTRADICTION_COST, feature_scores, feature_weights, table_vote
from models.recursive_reasoning.etrm import TRMWithEncoder
from tests.helpers import grid_tokens, make_batch, tiny_config

torch.set_num_threads(2)
SIDE, H = 6, 64


def _t(*grids: np.ndarray) -> torch.Tensor:
    return grid_tokens(grids, SIDE)


def _puzzle(decisive: list[list[int]], changes: list[list[int]]):
    """Demos of one colour whose change is a function of feature 0 (`decisive`); feature 1 is a
    different value for every cell of every demo (it fits all demos at once, predicts nothing)."""
    D, S = len(decisive), len(decisive[0])
    f0 = torch.tensor(decisive)
    f1 = (torch.arange(D * S) % 16 + 1).view(D, S)
    feats = torch.stack([f0, f1], -1)[None]                                    # [1, D, S, 2]
    colour = torch.full((1, D, S), 3)
    return colour, feats, torch.tensor(changes)[None], torch.ones(1, D, S, dtype=torch.bool)


def test_the_deciding_feature_scores_one_and_a_memorising_one_zero():
    # value 1 -> unchanged, value 2 -> became colour 5 (change 6), in every demo
    colour, feats, change, keys = _puzzle([[1, 2, 2, 1], [2, 1, 1, 1], [1, 1, 2, 2]],
                                          [[0, 6, 6, 0], [6, 0, 0, 0], [0, 0, 6, 6]])
    scores = feature_scores(colour, feats, change, keys)[0][0]
    assert scores[0] == 1.0                              # the deciding feature
    assert scores[1] == 0.0                              # unique values: unseen in every left-out demo
    # the colour alone: the other demos' majority gets half of each demo right, and costs the rest
    assert scores[2] == pytest.approx((6 - CONTRADICTION_COST * 6) / 12)
    # cells that are no keys (an unaligned pair, a masked demo) do not count: a contradicting demo
    # that is no key leaves the score at 1
    colour2, feats2, change2, keys2 = _puzzle([[1, 2, 2, 1], [2, 1, 1, 1], [1, 1, 2, 2], [1, 1, 1, 1]],
                                              [[0, 6, 6, 0], [6, 0, 0, 0], [0, 0, 6, 6], [6, 6, 6, 6]])
    keys2[0, 3] = False
    assert feature_scores(colour2, feats2, change2, keys2)[0][0, 0] == 1.0
    # one demo with keys: nothing to leave out, the demos cannot tell
    keys2[0, 1:] = False
    assert (feature_scores(colour2, feats2, change2, keys2)[0] == 0).all()


def test_feature_weights():
    scores = torch.tensor([[0.9, 1.0, 1.0, 0.2, 0.5],    # features 1, 2 best; colour alone worse
                           [0.9, 1.0, 0.3, 0.2, 1.0],    # the colour alone as good as the best
                           [0.0, 0.0, 0.0, 0.0, 0.0]])   # the demos cannot tell
    w = feature_weights(scores, others=0.25)
    torch.testing.assert_close(w, torch.tensor([[0.25, 1.0, 1.0, 0.25],
                                                [0.25, 0.25, 0.25, 0.25],
                                                [1.0, 1.0, 1.0, 1.0]]))


def _rays_down(g: np.ndarray) -> np.ndarray:
    """Every coloured cell casts a ray down over the background."""
    out = g.copy()
    for c in range(g.shape[1]):
        seen = 0
        for r in range(g.shape[0]):
            seen = g[r, c] or seen
            out[r, c] = g[r, c] or seen
    return out


def test_the_vote_follows_the_selected_feature():
    demos = [np.zeros((4, 4), int), np.zeros((5, 5), int), np.zeros((6, 3), int)]
    demos[0][0, 1] = demos[1][1, 0] = demos[1][2, 3] = demos[2][0, 2] = 3
    query = np.zeros((6, 6), int)
    query[1, 2] = query[4, 4] = 3
    d_in, d_out = _t(*demos)[None], _t(*[_rays_down(g) for g in demos])[None]
    wrong, weights = {}, []
    for select in (False, True):
        torch.manual_seed(0)
        lookup = CellLookup(H, 12, SIDE, select_features=select)
        describe = lookup.describe
        lookup.describe = lambda tokens, feats, w=None: weights.append(w) or describe(tokens, feats, w)
        with torch.no_grad():
            lookup.vote_gain.fill_(1.0)
            logits = lookup(_t(query), d_in, d_out, torch.ones(1, 3, dtype=torch.bool))[1]
        answer = logits[0, :, COLOUR_OFFSET:].argmax(-1).view(SIDE, SIDE)[:6, :6].numpy()
        wrong[select] = int((answer != _rays_down(query)).sum())
    # without the selection the cells' other features (object, region, the other rays) pull the
    # vote to the wrong demo cells; with it a cell is compared by what it sees upwards
    assert wrong == {False: wrong[False], True: 0} and wrong[False] > 0
    # the demo cells (keys) and the query are both described with the puzzle's weights
    assert weights[:2] == [None, None] and all(w is not None for w in weights[2:]) and len(weights) == 4
    torch.testing.assert_close(weights[2][0], weights[3][0])


def test_model_option():
    with pytest.raises(ValueError, match="cell_lookup_select"):
        TRMWithEncoder(tiny_config(cell_lookup_select=True))
    with pytest.raises(ValueError, match="cell_lookup_table"):
        TRMWithEncoder(tiny_config(cell_lookup=True, cell_lookup_table=True))
    batch = make_batch()
    torch.manual_seed(0)
    with_s = TRMWithEncoder(tiny_config(cell_lookup=True, cell_lookup_select=True))
    torch.manual_seed(0)
    without = TRMWithEncoder(tiny_config())
    without.load_state_dict(with_s.state_dict(), strict=False)
    torch.testing.assert_close(with_s(with_s.initial_carry(batch), batch)[1]["logits"],
                               without(without.initial_carry(batch), batch)[1]["logits"], rtol=0, atol=0)
    assert with_s.cell_lookup.select_features


def test_table_vote_applies_the_best_features_table_to_the_query():
    colour, feats, change, keys = _puzzle([[1, 2, 2, 1], [2, 1, 1, 1], [1, 1, 2, 2]],
                                          [[0, 6, 6, 0], [6, 0, 0, 0], [0, 0, 6, 6]])
    scores, table = feature_scores(colour, feats, change, keys)
    # query cells: feature 0 = 2, 1, 3 (never seen); feature 1 = values the demos had (it memorises)
    q_feats = torch.tensor([[[2, 1], [1, 2], [3, 3]]])
    p, seen = table_vote(table, scores, torch.full((1, 3), 3), q_feats)
    torch.testing.assert_close(p[0, :2], torch.eye(11)[[6, 0]])   # became colour 5; unchanged
    assert seen.tolist() == [[True, True, False]] and p[0, 2].abs().sum() == 0
    # another colour than the demos' cells: its key is unseen too
    assert not table_vote(table, scores, torch.full((1, 3), 4), q_feats)[1].any()
    # features tied for best are averaged: feature 1 made as good as feature 0 (a copy of it)
    feats2 = torch.cat([feats[..., :1], feats[..., :1]], -1)
    scores2, table2 = feature_scores(colour, feats2, change, keys)
    q2 = torch.tensor([[[2, 1]]])          # the copies disagree: half "became 5", half "unchanged"
    p2, seen2 = table_vote(table2, scores2, torch.full((1, 1), 3), q2)
    torch.testing.assert_close(p2[0, 0], 0.5 * (torch.eye(11)[6] + torch.eye(11)[0]))
    # the demos cannot tell (one demo): no vote
    keys1 = keys.clone()
    keys1[0, 1:] = False
    scores1, table1 = feature_scores(colour, feats, change, keys1)
    assert not table_vote(table1, scores1, torch.full((1, 3), 3), q_feats)[1].any()


def test_an_ordered_features_unseen_value_reads_the_nearest_seen_one():
    """"At least 3" in the demos (values 1-4: 1, 2 unchanged, 3, 4 became 5): a query value the demos
    never showed (6, above them all) reads the nearest seen one (4) when the feature is ordered; a
    category's unseen value, or the same table without `ordinal`, gives no vote. Value 0 (not a grid
    cell) borrows nothing."""
    colour, feats, change, keys = _puzzle([[1, 2, 3, 4], [4, 3, 2, 1], [1, 3, 4, 2]],
                                          [[0, 0, 6, 6], [6, 6, 0, 0], [0, 6, 6, 0]])
    scores, table = feature_scores(colour, feats, change, keys)
    q_feats = torch.tensor([[[6, 1], [2, 1], [0, 1]]])
    ordinal = torch.tensor([True, False, False])
    p, seen = table_vote(table, scores, torch.full((1, 3), 3), q_feats, ordinal)
    assert seen.tolist() == [[True, True, False]]
    torch.testing.assert_close(p[0, :2], torch.eye(11)[[6, 0]])   # 6 reads 4 (became 5); 2 as seen
    for categories in (torch.tensor([False, False, False]), None):
        assert table_vote(table, scores, torch.full((1, 3), 3), q_feats, categories)[1].tolist() == [[False, True, False]]
    # between two seen values: the nearer one (1, 4 and 7 seen: 5 -> 4, 6 -> 7, 2 -> 1)
    colour, feats, change, keys = _puzzle([[1, 4, 7, 1], [4, 7, 1, 4], [7, 1, 4, 7]],
                                          [[0, 6, 2, 0], [6, 2, 0, 6], [2, 0, 6, 2]])
    scores, table = feature_scores(colour, feats, change, keys)
    p, _ = table_vote(table, scores, torch.full((1, 3), 3), torch.tensor([[[5, 1], [6, 1], [2, 1]]]), ordinal)
    torch.testing.assert_close(p[0], torch.eye(11)[[6, 2, 0]])


def _table_answer(query: np.ndarray, demos: list[np.ndarray], rule) -> np.ndarray:
    """The answer of a fresh lookup's table vote alone (its own vote's gain stays 0) to `query`, the
    demos being `rule` applied to `demos`."""
    torch.manual_seed(0)
    lookup = CellLookup(H, 12, SIDE, select_features=True, table_vote=True)
    with torch.no_grad():
        lookup.table_gain.fill_(1.0)
        logits = lookup(_t(query), _t(*demos)[None], _t(*[rule(g) for g in demos])[None],
                        torch.ones(1, len(demos), dtype=torch.bool))[1]
    return logits[0, :, COLOUR_OFFSET:].argmax(-1).view(SIDE, SIDE)[:query.shape[0], :query.shape[1]].numpy()


def _crowd(g: np.ndarray) -> np.ndarray:
    """Coloured cells with at least 2 coloured 4-neighbours become 5."""
    p = np.pad(g != 0, 1)
    n = p[:-2, 1:-1].astype(int) + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:]
    return np.where((g != 0) & (n >= 2), 5, g)


def test_the_lookups_table_vote_reads_a_count_the_demos_never_showed():
    """Demos with 0-2 coloured neighbours per cell, a query cell with 4 (a plus's centre): the table
    vote alone (the lookup's own vote off) answers the whole query, the centre by the nearest count
    the demos showed."""
    demos = [np.array([[3, 3, 3, 0], [0, 0, 0, 0], [3, 0, 3, 3]]),
             np.array([[0, 3, 0], [0, 3, 0], [0, 3, 0], [0, 0, 3]]),
             np.array([[3, 3, 0, 3], [0, 0, 0, 3], [3, 0, 0, 3]])]
    query = np.array([[0, 3, 0, 0], [3, 3, 3, 0], [0, 3, 0, 3]])
    np.testing.assert_array_equal(_table_answer(query, demos, _crowd), _crowd(query))


def test_a_relative_column_reads_became_the_colour_it_sees_whatever_the_colour():
    """Feature 0 is the colour a background cell sees (2 + c; 1: the edge). In the demos cells that see
    colour 3 become 3, and cells that see colour 6 become 6 (the rule: "become what you see"); the
    relative column states it once, so a query cell seeing colour 4, never in the demos, becomes 4.
    Without the relative column that key is unseen. A best relative column weighs its feature 1."""
    seen = [[5, 5, 1, 1], [8, 1, 8, 1], [5, 8, 1, 5]]                   # 2 + 3, 2 + 6, the edge
    feats = torch.stack([torch.tensor(seen), (torch.arange(12) % 16 + 1).view(3, 4)], -1)[None]
    change = torch.tensor([[4 if v == 5 else 7 if v == 8 else 0 for v in row] for row in seen])[None]
    colour, keys = torch.zeros(1, 3, 4, dtype=torch.long), torch.ones(1, 3, 4, dtype=torch.bool)
    relative = torch.tensor([0])
    scores, table = feature_scores(colour, feats, change, keys, relative)
    assert scores.shape == (1, 4) and scores[0, 2] == 1.0                 # [feature 0, 1, relative 0, colour]
    q_feats, q_colour = torch.tensor([[[6, 1], [1, 1], [5, 1]]]), torch.zeros(1, 3, dtype=torch.long)
    p, hit = table_vote(table, scores, q_colour, q_feats, relative=relative)
    assert hit.tolist() == [[True, True, True]]
    torch.testing.assert_close(p[0], torch.eye(11)[[5, 0, 4]])          # became 4; unchanged; became 3
    scores0, table0 = feature_scores(colour, feats, change, keys)
    assert not table_vote(table0, scores0, q_colour, q_feats)[1][0, 0]
    # the relative column alone the best: its feature is the one weighed
    assert feature_weights(torch.tensor([[0.5, 0.0, 1.0, 0.2]]), 0.0, relative).tolist() == [[1.0, 0.0]]


def test_the_lookups_table_vote_copies_a_colour_the_demos_never_used():
    """Rays down in colours 3 and 6 in the demos (so "become 3" is not the rule), colour 4 in the
    query: the table vote alone answers the query's background cells (the 4s themselves are a colour
    no demo cell had: no key)."""
    demos = [np.zeros((4, 4), int), np.zeros((5, 5), int), np.zeros((6, 3), int)]
    demos[0][0, 1] = demos[1][1, 0] = 3
    demos[1][2, 3] = demos[2][0, 2] = demos[0][1, 3] = 6
    query = np.zeros((6, 6), int)
    query[1, 2] = query[4, 4] = 4
    answer = _table_answer(query, demos, _rays_down)
    background = query == 0
    np.testing.assert_array_equal(answer[background], _rays_down(query)[background])
