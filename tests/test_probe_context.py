"""bench.probe_context: the family probe scores families, not puzzles it has already seen, and the
context swap pairs every query with another family's demos and tells a model that reads its demos
from one that cannot."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.helpers import compose_cfg

from bench import learning
from bench.probe_context import families_of, grouped_folds, other_family_rows, probe, probe_accuracy, samples
from training import build


def test_grouped_folds_keep_every_puzzle_in_one_fold():
    groups = np.repeat(np.arange(10), 3)
    folds = grouped_folds(groups, 4)
    assert sorted(np.concatenate(folds).tolist()) == list(range(30))
    for fold in folds:
        inside = np.unique(groups[fold])
        assert np.isin(groups, inside).sum() == len(fold), "a puzzle's variants are split across folds"


def test_the_probe_reads_the_family_not_the_puzzle():
    """Features that only identify the puzzle (each puzzle's variants share a random vector) must
    not predict a held-out puzzle's family; features that carry the family must."""
    rng = np.random.default_rng(0)
    puzzles, variants, families = 30, 3, 3
    fam_of_puzzle = np.arange(puzzles) % families
    p = np.repeat(np.arange(puzzles), variants)
    y = fam_of_puzzle[p]
    identity = 3 * rng.standard_normal((puzzles, 16))[p] + 0.1 * rng.standard_normal((len(p), 16))
    only_puzzle = torch.tensor(identity, dtype=torch.float32)
    nc, lin = probe_accuracy(only_puzzle, y, p, k=5)
    assert (nc == y).mean() < 0.6 and (lin == y).mean() < 0.6, "the probe recognised puzzles it was trained on"
    with_family = torch.cat([only_puzzle, torch.tensor(4 * np.eye(families)[y], dtype=torch.float32)], 1)
    nc, lin = probe_accuracy(with_family, y, p, k=5)
    assert (nc == y).mean() > 0.9 and (lin == y).mean() > 0.9


def test_every_row_is_paired_with_another_family():
    fam = np.array([0, 0, 0, 1, 1, 2])
    perm = other_family_rows(fam)
    assert sorted(perm.tolist()) == list(range(len(fam)))
    assert (fam[perm] != fam).all()
    assert (other_family_rows(np.array([1, 1, 1])) == -1).all()


@pytest.fixture(scope="module")
def two_families(tmp_path_factory):
    """The held-out split of 6 generated puzzles of two families (fill, colour_map), and its config."""
    out = tmp_path_factory.mktemp("probe")
    puzzles, built = learning.prepare_data(out, 4, 6, 0, ["fill", "colour_map"], 2, "test", log=lambda *_: None)
    cfg = compose_cfg(learning.CONFIG_NAME, [f"data_paths=[{built}]", "build_if_missing=null"])
    split = build.load_eval_split(cfg)
    names = families_of(split.puzzle_ids, puzzles / "manifest.json")
    return cfg, split, names


def untrained(cfg, split, **arch):
    cfg = compose_cfg(learning.CONFIG_NAME, [f"data_paths=[{cfg.data_paths[0]}]"] + [f"arch.{k}={v}" for k, v in arch.items()])
    torch.manual_seed(0)
    model, head = build.build_model(cfg, build.model_kwargs(cfg, split, 8))
    return model.eval(), head.eval()


def test_the_swap_changes_answers_only_where_the_model_reads_its_demos(two_families):
    cfg, split, names = two_families
    assert sorted(set(names)) == ["colour_map", "fill"]
    q, v, p = samples(split, 2)
    fam = np.array([sorted(set(names)).index(names[i]) for i in p])
    max_demos = build.model_kwargs(cfg, split, 8)["max_demos"]
    reads = probe(*untrained(cfg, split), split, fam, q, v, p, max_demos, "float32", folds=2)
    blind = probe(*untrained(cfg, split, context_ablation=True), split, fam, q, v, p, max_demos, "float32", folds=2)
    assert reads["changed"] > 0.2, reads
    assert blind["changed"] == 0.0, blind  # a zeroed context: the demos cannot change the answer
    assert set(reads["per_family"]) == {0, 1}
    assert 0.0 <= reads["copied"] <= 1.0 and reads["exact_swapped"] <= 1.0
