"""dataset/synthetic.py: deterministic per seed, every pair follows its puzzle's rule, grid and
pair counts in bounds, train/eval disjoint, identifiable from the demos, and the normal builder
accepts the output."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dataset import synthetic
from dataset.augment import apply_variant
from dataset.loader import load_split
from dataset.twins import pair_key

REPO = Path(__file__).resolve().parents[1]
NUM_TRAIN, NUM_EVAL = 10 * len(synthetic.FAMILIES), 3 * len(synthetic.FAMILIES)  # enough to see each family's rules vary


def _tree_digest(root: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(root.rglob("*.json")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _tasks(root: Path, split: str) -> dict[str, tuple[str, dict]]:
    return {p.stem: (p.parent.name, json.loads(p.read_text())) for p in (root / split).rglob("*.json")}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "data"
    assert synthetic.main(["--output-dir", str(out), "--num-train", str(NUM_TRAIN), "--num-eval", str(NUM_EVAL), "--seed", "3"]) == 0
    return out


def test_deterministic_per_seed(generated, tmp_path):
    again = tmp_path / "again"
    other = tmp_path / "other"
    sizes = ["--num-train", str(NUM_TRAIN), "--num-eval", str(NUM_EVAL)]
    assert synthetic.main(["--output-dir", str(again), *sizes, "--seed", "3"]) == 0
    assert synthetic.main(["--output-dir", str(other), *sizes, "--seed", "4"]) == 0
    assert _tree_digest(again) == _tree_digest(generated)
    assert _tree_digest(other) != _tree_digest(generated)


def test_layout_counts_and_families(generated):
    manifest = synthetic.load_manifest(generated)
    for split, n in (("train", NUM_TRAIN), ("eval", NUM_EVAL)):
        tasks = _tasks(generated, split)
        assert len(tasks) == n
        fams = [fam for fam, _ in tasks.values()]
        assert set(fams) == set(synthetic.FAMILIES)
        assert max(fams.count(f) for f in synthetic.FAMILIES) - min(fams.count(f) for f in synthetic.FAMILIES) <= 1
        for tid, (fam, _) in tasks.items():
            assert manifest["puzzles"][tid]["split"] == split and manifest["puzzles"][tid]["family"] == fam


def test_rule_holds_on_every_pair_and_bounds(generated):
    manifest = synthetic.load_manifest(generated)
    for split in ("train", "eval"):
        for tid, (fam, task) in _tasks(generated, split).items():
            rule = manifest["puzzles"][tid]["rule"]
            assert 2 <= len(task["train"]) <= 4 and 1 <= len(task["test"]) <= 2
            for pair in task["train"] + task["test"]:
                a, b = np.array(pair["input"]), np.array(pair["output"])
                # content families may cut out or count (outputs down to 1x1, scale_count inputs 2x2)
                lo = synthetic.MIN_SIDE if fam in synthetic.MAP_FAMILIES else 1
                for g in (a, b):
                    assert lo <= min(g.shape) and max(g.shape) <= synthetic.MAX_SIDE
                    assert g.min() >= 0 and g.max() <= 9
                assert min(a.shape) >= (synthetic.MIN_SIDE if fam in synthetic.MAP_FAMILIES else 2)
                np.testing.assert_array_equal(synthetic.apply_rule(fam, rule, a), b)
                assert not np.array_equal(a, b) or a.shape != b.shape, f"{tid}: a pair that changes nothing"
            demos = [(np.array(p["input"]), np.array(p["output"])) for p in task["train"]]
            tests = [np.array(p["input"]) for p in task["test"]]
            assert synthetic.identifiable(fam, rule, demos, tests), tid


def test_rules_vary_per_puzzle(generated):
    """The rule is drawn per puzzle: within a family, several different rules occur."""
    manifest = synthetic.load_manifest(generated)["puzzles"]
    for fam in synthetic.FAMILIES:
        rules = {json.dumps(m["rule"]) for m in manifest.values() if m["family"] == fam}
        assert len(rules) >= 4, (fam, rules)


def test_train_and_eval_disjoint(generated):
    """Ids differ, and no held-out test pair equals a train pair under any variant the builder
    trains on (dataset/twins.py; the builder would drop the train puzzle otherwise)."""
    train, evaluation = _tasks(generated, "train"), _tasks(generated, "eval")
    assert not set(train) & set(evaluation)
    seen = {pair_key(np.array(p["input"]), np.array(p["output"]))
            for _, task in train.values() for p in task["train"] + task["test"]}
    for tid, (_, task) in evaluation.items():
        assert not any(pair_key(np.array(p["input"]), np.array(p["output"])) in seen for p in task["test"]), tid


@pytest.mark.parametrize("case", ["test pair verbatim", "test pair flipped and recoloured", "demo only"])
def test_held_out_twin_of_a_train_pair_is_redrawn(monkeypatch, case):
    """Force the eval puzzle's first draw to hold a train puzzle's demo pair (verbatim, or under a
    builder variant): the generator must throw that draw away. A twin among the eval *demos* is
    kept: demos are shown at test time, only test pairs are scored."""
    real = synthetic.make_puzzle
    train_rule, train_demos, train_tests = real("shift", np.random.default_rng(11))
    v = np.array([5, 0, 3, 1, 2, 4, 5, 6, 7, 8, 9], dtype=np.uint8)  # flip left-right, colours 1->3->2->1
    twin = train_demos[0] if case == "test pair verbatim" else tuple(apply_variant(g, v) for g in train_demos[0])
    rule, demos, tests = real("shift", np.random.default_rng(12))
    first_eval_draw = (rule, [*demos[:-1], twin], tests) if case == "demo only" else (rule, demos, [twin])
    draws = []

    def forced(family, rng, *args, **kwargs):
        draws.append(family)
        if len(draws) == 1:
            return train_rule, train_demos, train_tests   # the train puzzle
        if len(draws) == 2:
            return first_eval_draw
        return real(family, rng, *args, **kwargs)

    monkeypatch.setattr(synthetic, "make_puzzle", forced)
    out = synthetic.generate(1, 1, seed=0, families=["shift"])
    held_out = out["eval"][0]
    if case == "demo only":
        assert len(draws) == 2 and held_out["demos"][-1] is twin
    else:
        assert len(draws) == 3, "the twin was kept"
        assert not any(np.array_equal(a, twin[0]) for a, _ in held_out["tests"])


def test_identifiable_rejects_ambiguous_demos():
    g = np.array([[1, 0, 1], [0, 2, 0], [1, 0, 1]], dtype=np.uint8)  # fully symmetric: every dihedral fits
    demos = [(g, synthetic.apply_rule("dihedral", {"dihedral": 1}, g))]
    test = np.array([[1, 2, 0], [0, 0, 0], [0, 0, 0]], dtype=np.uint8)
    assert not synthetic.identifiable("dihedral", {"dihedral": 1}, demos, [test])


def test_existing_output_dir_is_an_error(generated, capsys):
    assert synthetic.main(["--output-dir", str(generated), "--num-train", "5", "--num-eval", "5"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert not list(generated.parent.glob(".*tmp*"))


def test_builder_accepts_the_output(generated, tmp_path):
    out = tmp_path / "built"
    proc = subprocess.run([sys.executable, "-m", "dataset.build_arc_dataset", "--train-sources", str(generated / "train"),
                           "--eval-sources", str(generated / "eval"), "--output-dir", str(out), "--max-grid-size", "8",
                           "--max-demos", "4", "--num-aug", "4", "--seed", "0", "--no-progress"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["counts"]["train"]["puzzles"] == NUM_TRAIN and meta["counts"]["eval"]["puzzles"] == NUM_EVAL
    assert meta["skipped"] == []
    split = load_split(str(out), "eval")
    assert split.side == 8 and set(split.puzzle_ids) == set(_tasks(generated, "eval"))


def test_tile_family_sizes_copies_and_blind_count():
    """`tile`: the output is k x l copies of the input (kaleidoscope mirrors with mirror=true), its
    size changes with the rule, and the rule-blind count is the number of distinct answers."""
    g = np.array([[1, 2, 0], [0, 3, 0], [4, 0, 0]], dtype=np.uint8)
    out = synthetic.apply_rule("tile", {"tile": [2, 2], "mirror": True}, g)
    np.testing.assert_array_equal(out, np.block([[g, g[:, ::-1]], [g[::-1], g[::-1, ::-1]]]))
    out = synthetic.apply_rule("tile", {"tile": [1, 2], "mirror": False}, g)
    np.testing.assert_array_equal(out, np.hstack([g, g]))
    assert synthetic.apply_rule("tile", {"tile": [2, 1], "mirror": False}, g).shape == (6, 3)
    with pytest.raises(ValueError, match="exceeds"):
        synthetic.apply_rule("tile", {"tile": [2, 1], "mirror": False}, np.ones((5, 3), np.uint8))
    assert synthetic.num_blind_rules("tile", {}, g) == 6
    symmetric = np.array([[1, 2, 1], [0, 3, 0], [1, 2, 1]], dtype=np.uint8)  # mirrors change nothing
    assert synthetic.num_blind_rules("tile", {}, symmetric) == 3
    # demos that only show a left-right repeat of a left-right-symmetric grid cannot tell mirror from copy
    demos = [(symmetric, synthetic.apply_rule("tile", {"tile": [1, 2], "mirror": False}, symmetric))]
    assert not synthetic.identifiable("tile", {"tile": [1, 2], "mirror": False}, demos, [g])
