"""ETRM learns to read its demos: a short run through the real pipeline (generator -> builder ->
pretrain_etrm.py -> ARC evaluator) on generated `fill` puzzles (the background takes a colour
drawn per puzzle, so only the demos tell which) scores well above the best demo-blind guess on
held-out puzzles, while the same run with the context zeroed does not. The two trainings run
side by side (one thread each); a few minutes on 2 CPU cores. Run the full benchmark with
`python -m bench.learning`."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from tests.helpers import compose_cfg

from bench import learning

STEPS = 400
MARGIN = 0.5  # held-out pass@2 above the rule-blind bound (measured: encoder 1.00, bound 0.30)


@pytest.mark.slow
def test_encoder_beats_the_rule_blind_bound_on_held_out_puzzles(tmp_path):
    args = learning.parse_args([
        "--minutes", "0", "--max-steps", str(STEPS), "--num-train", "150", "--num-eval", "30", "--families", "fill",
        "--num-aug", "100", "--eval-variants", "2", "--threads", "1", "--seed", "1", "--out", str(tmp_path)])
    puzzles, built = learning.prepare_data(tmp_path, args.num_train, args.num_eval, args.seed, args.families,
                                           args.num_aug, args.train_queries, log=lambda *_: None)
    truths = learning.eval_truths(puzzles)
    blind = learning.rule_blind_bound(puzzles)["all"]["pass@2"]
    rows = [{"name": "etrm", "encoder": "colour_slots", "ablation": False},
            {"name": "ablation", "encoder": "colour_slots", "ablation": True}]
    runs = tmp_path / "runs"
    with ThreadPoolExecutor(2) as pool:
        etrm, ablation = pool.map(lambda r: learning.run_row(r, built, runs, args, truths, log=lambda *_: None), rows)
    msg = (f"held-out pass@2: encoder {etrm['pass@2']:.3f} (train exact {etrm['train_exact']:.3f}), "
           f"zeroed context {ablation['pass@2']:.3f}, rule-blind bound {blind:.3f}")
    print(msg)
    assert etrm["steps"] == STEPS and ablation["steps"] == STEPS
    assert ablation["pass@2"] <= blind + 0.15, msg    # without demos: no better than a guess
    assert etrm["pass@2"] >= blind + MARGIN, msg       # with them: far better than any guess
    # contexts differ across puzzles: no collapse by the trainer's own measure and no drift towards
    # it during training (the ablation's variance only checks that its context really is zero)
    threshold = compose_synthetic().collapse_var_threshold
    assert ablation["enc_var"] == 0.0, msg
    assert not etrm["collapse_warning"], msg
    assert etrm["enc_var"] >= max(threshold, 0.5 * etrm["enc_var_first"]), \
        f"{msg}; encoder variance {etrm['enc_var']:.4f}, at step 1 {etrm['enc_var_first']:.4f}, collapse below {threshold}"


def compose_synthetic():
    return compose_cfg(learning.CONFIG_NAME)


def test_leave_one_family_out_data_holds_the_family_out_of_training(tmp_path):
    """--lofo's data: the left-out family has no train puzzle, its held-out puzzles are the whole
    built eval split, and the truths and the rule-blind bound are that family's only."""
    import json

    puzzles, built = learning.prepare_data(tmp_path, 24, 12, 0, ["fill", "swap", "gravity"], 4, "all",
                                           log=lambda *_: None, held_out="gravity")
    assert not (puzzles / "train" / "gravity").exists() and any((puzzles / "train" / "fill").iterdir())
    truths = learning.eval_truths(puzzles, held_out="gravity")
    assert truths and {fam for fam, _ in truths.values()} == {"gravity"}
    assert sorted(json.loads((built / "eval" / "puzzles.json").read_text())) == sorted(truths)
    blind = learning.rule_blind_bound(puzzles, held_out="gravity")
    assert set(blind) == {"gravity", "content", "all"}
    with pytest.raises(SystemExit, match="not among the generated families"):
        learning.chosen_families("gravity,nope", ["fill", "gravity"])
    assert learning.chosen_families("all", ["fill", "gravity"]) == ["fill", "gravity"]


def test_each_family_alone_trains_and_scores_that_family_only(tmp_path):
    """--alone's data: the train and eval splits hold the one family, and its table row shows the
    anatomy columns; --lofo's data for the same family holds it out of training instead."""
    args = learning.parse_args(["--alone", "gravity", "--families", "fill", "gravity", "--num-train", "12",
                                "--family-eval", "6", "--num-aug", "4", "--out", str(tmp_path)])
    puzzles, built, held_out = learning.per_family_data("alone", "gravity", args, tmp_path)
    assert held_out is None
    assert [d.name for d in (puzzles / "train").iterdir()] == ["gravity"]
    truths = learning.eval_truths(puzzles)
    assert len(truths) == 6 and {fam for fam, _ in truths.values()} == {"gravity"}
    lofo_puzzles, _, lofo_held = learning.per_family_data("lofo", "gravity", args, tmp_path)
    assert lofo_held == "gravity" and not (lofo_puzzles / "train" / "gravity").exists()
    row = {"family": "gravity", "puzzles": 6, "blind": 0.2, "none": 0.5, "full": 0.75, "train_exact": 0.1,
           "steps": 3, "wall_s": 60.0, "anatomy": {"shape": 1.0, "changed": 0.25, "copied": 0.5}}
    table = learning.format_per_family_table([row], ["full"], "header", "alone")
    assert "each family alone" in table
    assert table.splitlines()[-1].split()[:8] == ["gravity", "6", "0.20", "0.50", "0.75", "0.25", "0.50", "0.100"]
    with pytest.raises(SystemExit, match="pass one"):
        learning.main(["--alone", "gravity", "--lofo", "gravity", "--out", str(tmp_path)])


def test_a_pooled_rows_adapted_weights_alone_get_their_own_column():
    """tta=full votes the checkpoint's and the adapted weights' predictions; the evaluation also
    scores the adapted weights alone (`alone/ARC/pass@2`), which the tables show beside the vote:
    a `full:alone` column per family left out, a `<row>:alone` column per family."""
    row = {"family": "count_bar", "puzzles": 10, "blind": 0.16, "none": 0.2, "full": 0.95, "full:alone": 0.4,
           "train_exact": 0.6, "steps": 300, "wall_s": 60.0, "anatomy": {}}
    table = learning.format_per_family_table([row], ["full"], "header", "lofo")
    header, last = table.splitlines()[3], table.splitlines()[-1]
    assert header.split()[5:7] == ["full", "full:alone"], header
    assert last.split()[3:6] == ["0.20", "0.95", "0.40"], last
    plain = learning.format_per_family_table([{k: v for k, v in row.items() if k != "full:alone"}], ["full"],
                                             "header", "lofo")
    assert "full:alone" not in plain          # no column where nothing was pooled
    tta_rows = [{"name": "enc+tta-full", "families": {"all": {"pass@2": 0.77}},
                 "alone_families": {"all": {"pass@2": 0.74}}}, {"name": "enc+tta-context", "families": {}}]
    assert learning.alone_rows(tta_rows) == [{"name": "enc+tta-full:alone", "families": {"all": {"pass@2": 0.74}}}]


def test_answer_anatomy_tells_copying_from_a_wrong_size_and_a_near_miss(tmp_path):
    import json

    import numpy as np

    x = np.array([[1, 0], [0, 0]])
    truth = np.array([[1, 5], [5, 0]])           # the rule changes 2 cells, keeps 2
    truths = {"a": ("outline", [truth]), "b": ("outline", [truth]), "c": ("select", [np.array([[1]])])}
    inputs = {"a": [x], "b": [x], "c": [x]}
    sub = {"a": [{"attempt_1": x.tolist()}],                       # copied the input
           "b": [{"attempt_1": [[1, 5], [0, 0]]}],                 # one changed cell right, kept cells right
           "c": [{"attempt_1": [[1, 0]]}]}                         # wrong size
    path = tmp_path / "submission.json"
    path.write_text(json.dumps(sub))
    anat = learning.answer_anatomy(path, truths, inputs)
    assert anat["outline"] == {"shape": 1.0, "changed": 0.25, "kept": 1.0, "copied": 0.5}
    assert anat["select"] == {"shape": 0.0}   # an answer of another shape: no cell counts
    assert anat["all"]["shape"] == 2 / 3 and anat["content"]["copied"] == 0.5
    table = learning.format_anatomy_table([{"name": "row", "anatomy": anat}], ["outline", "select"])
    assert "1.00 / 0.25 / 0.50" in table and "0.00 / - / -" in table


def test_tta_plan_runs_no_row_for_none():
    enc, abl = {"name": "colour_slots", "ablation": False}, {"name": "ablation", "ablation": True}
    assert learning.tta_plan([enc, abl], ["none"]) == []
    assert learning.tta_plan([enc, abl], ["none", "full"]) == [(enc, "full"), (abl, "full")]


def test_rows_started_side_by_side_share_one_data_build(tmp_path):
    """Two benchmark lanes asking for the same (not yet built) data at once: one builds, the other
    waits and reuses it, instead of failing on the half-written directory."""
    def prepare(_):
        return learning.prepare_data(tmp_path, 12, 6, 0, ["fill", "swap"], 2, "all", log=lambda *_: None)

    with ThreadPoolExecutor(2) as pool:
        (puzzles_a, built_a), (puzzles_b, built_b) = pool.map(prepare, range(2))
    assert (puzzles_a, built_a) == (puzzles_b, built_b)
    assert (built_a / "train").is_dir() and len(learning.eval_truths(puzzles_a)) == 6
