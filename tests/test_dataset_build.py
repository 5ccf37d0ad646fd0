"""Builder: every source kind, held-out rule, bad input, atomic writes, queries."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from dataset.augment import apply_variant
from dataset.build_arc_dataset import build_dataset, main
from dataset.loader import load_split
from dataset.sources import InvalidTaskError
from dataset.twins import pair_key

A = ([[1, 2], [3, 0]], [[2, 1], [0, 3]])
B = ([[4, 4, 0]], [[0, 4, 4]])
C = ([[5]], [[6]])
D = ([[7, 7]], [[8]])  # the eval test pair: no variant of it is a train pair


def _build(tmp_path, train, evaluation, name="ds", **kw):
    kw.setdefault("num_aug", 4)
    kw.setdefault("progress", False)
    kw.setdefault("log", None)
    return build_dataset(train, evaluation, tmp_path / name, **kw)


@pytest.fixture
def small_dirs(tmp_path, write_arc_task):
    tr, ev = tmp_path / "train_src", tmp_path / "eval_src"
    write_arc_task(tr / "t1.json", [A, B], [C])
    write_arc_task(tr / "nested" / "deeper" / "t2.json", [B, C, A], [A, B])
    write_arc_task(ev / "e1.json", [C, A], [D])
    return tr, ev


def test_directory_source_nested_and_task_ids(tmp_path, small_dirs):
    tr, ev = small_dirs
    summary = _build(tmp_path, [str(tr)], [str(ev)])
    assert summary["counts"]["train"]["puzzles"] == 2 and summary["counts"]["train"]["queries"] == 3
    train, evaluation = load_split(tmp_path / "ds", "train"), load_split(tmp_path / "ds", "eval")
    assert sorted(train.puzzle_ids) == ["t1", "t2"] and evaluation.puzzle_ids == ["e1"]
    p = train.puzzle_ids.index("t2")
    assert [(a.tolist(), b.tolist()) for a, b in train.demos(p)] == [B, C, A]
    assert [(a.tolist(), b.tolist()) for a, b in train.test_pairs(p)] == [A, B]
    meta = json.loads((tmp_path / "ds" / "metadata.json").read_text())
    for key in ("format_version", "side", "seq_len", "vocab_size", "pad_id", "eos_id", "ignore_label_id", "max_demos",
                "num_aug", "seed", "train_queries", "translate", "sources", "counts"):
        assert key in meta
    assert meta["side"] == 30 and meta["seq_len"] == 900 and meta["vocab_size"] == 12
    assert json.loads((tmp_path / "ds" / "train" / "puzzles.json").read_text()) == train.puzzle_ids


def test_kaggle_challenges_and_solutions(tmp_path):
    src = tmp_path / "kaggle"
    src.mkdir()
    pair = lambda p: {"input": p[0], "output": p[1]}  # noqa: E731
    challenges = {"k1": {"train": [pair(A), pair(B)], "test": [{"input": C[0]}, {"input": A[0]}]}}
    (src / "arc_challenges.json").write_text(json.dumps(challenges))
    (src / "arc_solutions.json").write_text(json.dumps({"k1": [C[1], A[1]]}))
    _build(tmp_path, [str(src / "arc_challenges.json")], [], name="a")
    split = load_split(tmp_path / "a", "train")
    assert split.puzzle_ids == ["k1"]
    assert [b.tolist() for _, b in split.test_pairs(0)] == [C[1], A[1]]
    _build(tmp_path, [str(src)], [], name="b")  # found inside a directory too, solutions not read as a task
    assert load_split(tmp_path / "b", "train").puzzle_ids == ["k1"]
    (src / "arc_solutions.json").write_text(json.dumps({"k1": [C[1]]}))
    with pytest.raises(InvalidTaskError, match=r"k1.*test\[1\]\.output"):
        _build(tmp_path, [str(src / "arc_challenges.json")], [], name="c")
    os.remove(src / "arc_solutions.json")
    with pytest.raises(FileNotFoundError, match="arc_solutions.json"):
        _build(tmp_path, [str(src / "arc_challenges.json")], [], name="d")


def test_bundled_arc_agi_1_both_sides_held_out(tmp_path):
    with pytest.warns(UserWarning, match="dropping 2 train puzzle"):
        summary = _build(tmp_path, ["arc-agi-1:train"], ["arc-agi-1:eval"], num_aug=1)
    c = summary["counts"]
    # two ARC-AGI-1 train puzzles hold an eval test pair: 40853293 is eval 070dd51e verbatim,
    # caa06a1f's third demo is eval 50a16a69's test pair with its colours renamed
    assert {s["task_id"]: s["reason"].split(" = ")[1][:len("eval puzzle '070dd51e' test[0]")]
            for s in summary["skipped"]} == {"40853293": "eval puzzle '070dd51e' test[0]",
                                             "caa06a1f": "eval puzzle '50a16a69' test[0]"}
    assert (c["train"]["puzzles"], c["eval"]["puzzles"]) == (398, 400)
    assert (c["train"]["queries"], c["eval"]["queries"]) == (414, 419)
    train, evaluation = load_split(tmp_path / "ds", "train"), load_split(tmp_path / "ds", "eval")
    assert not set(train.puzzle_ids) & set(evaluation.puzzle_ids)
    # no eval test pair is stored in the train split, in any variant
    train_pairs = {pair_key(train.grid(a), train.grid(b)) for a, b in zip(train.pair_input, train.pair_output)}
    assert not any(pair_key(*evaluation.query_pair(q)) in train_pairs for q in range(evaluation.num_queries))


def test_bundled_arc_agi_2_and_cross_version_leak_is_an_error(tmp_path, small_dirs):
    tr, _ = small_dirs
    summary = _build(tmp_path, [str(tr)], ["arc-agi-2:eval"], num_aug=0)
    assert summary["counts"]["eval"]["puzzles"] == 120
    assert summary["counts"]["eval"]["variants"] == 120  # identity only
    with pytest.raises(ValueError, match=r"both the train and the eval side.*arc-agi-2:train.*arc-agi-1:eval"):
        _build(tmp_path, ["arc-agi-2:train"], ["arc-agi-1:eval"], name="leak")
    assert not (tmp_path / "leak").exists()


def test_id_on_both_sides_is_an_error(tmp_path, small_dirs, write_arc_task):
    tr, ev = small_dirs
    write_arc_task(ev / "t1.json", [A], [B])
    with pytest.raises(ValueError, match=r"'t1'.*held out"):
        _build(tmp_path, [str(tr)], [str(ev)])
    assert not (tmp_path / "ds").exists()


def test_duplicate_ids_on_one_side_name_both_sources(tmp_path, small_dirs, write_arc_task):
    tr, ev = small_dirs
    other = tmp_path / "other"
    write_arc_task(other / "t1.json", [A], [B])
    with pytest.raises(ValueError, match=r"duplicate task id 't1'.*train_src.*other"):
        _build(tmp_path, [str(tr), str(other)], [str(ev)])


def test_eval_twin_in_train_is_dropped_or_refused(tmp_path, small_dirs, write_arc_task, capsys):
    """A train puzzle holding the eval test pair D under a variant (rotated, colours 7->2, 8->3)
    would train on that answer: dropped with a warning by default, an error with --eval-twins
    error. Holding an eval *demo* (t1, t2 hold C and A) is fine: demos are shown at test time."""
    tr, ev = small_dirs
    v = np.array([1, 0, 1, 7, 4, 5, 6, 9, 2, 3, 8], dtype=np.uint8)
    twin = tuple(apply_variant(np.array(g, dtype=np.uint8), v).tolist() for g in D)
    assert twin == ([[2], [2]], [[3]])
    write_arc_task(tr / "t3.json", [A, twin], [C])
    with pytest.raises(ValueError, match=r"'t3' train\[1\] \(source .*train_src.*t3\.json\) = eval puzzle 'e1' "
                                         r"test\[0\] \(source .*eval_src.*e1\.json\).*--eval-twins drop"):
        _build(tmp_path, [str(tr)], [str(ev)], eval_twins="error")
    assert not (tmp_path / "ds").exists()
    with pytest.warns(UserWarning, match=r"dropping 1 train puzzle.*'t3' train\[1\]"):
        summary = _build(tmp_path, [str(tr)], [str(ev)])
    assert sorted(load_split(tmp_path / "ds", "train").puzzle_ids) == ["t1", "t2"]
    assert [(s["task_id"], s["reason"].startswith("eval twin: train puzzle 't3' train[1]")) for s in summary["skipped"]] \
        == [("t3", True)]
    rc = main(["--train-sources", str(tr), "--eval-sources", str(ev), "--output-dir", str(tmp_path / "cli"),
               "--num-aug", "1", "--no-progress", "--eval-twins", "error"])
    assert rc == 2 and "'t3' train[1]" in capsys.readouterr().err and not (tmp_path / "cli").exists()
    with pytest.warns(UserWarning):
        assert main(["--train-sources", str(tr), "--eval-sources", str(ev), "--output-dir", str(tmp_path / "cli"),
                     "--num-aug", "1", "--no-progress"]) == 0
    assert "eval twin: 1" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "metadata.json").read_text())["eval_twins"] == "drop"


def test_unknown_bundled_name_and_missing_path(tmp_path):
    with pytest.raises(ValueError, match=r"arc-agi-3:train.*arc-agi-1:train, arc-agi-1:eval, arc-agi-2:train"):
        _build(tmp_path, ["arc-agi-3:train"], [])
    with pytest.raises(FileNotFoundError, match="no/such/dir"):
        _build(tmp_path, [str(tmp_path / "no/such/dir")], [])


BAD = {
    "missing_key": ('{"train": [{"input": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]}',
                    "train[0].output", "missing key 'output'"),
    "missing_test": ('{"train": [{"input": [[1]], "output": [[1]]}]}', "test", "missing key 'test'"),
    "ragged": ('{"train": [{"input": [[1]], "output": [[1]]}, {"input": [[1]], "output": [[1]]},'
               ' {"input": [[1]], "output": [[1, 2], [3]]}], "test": [{"input": [[1]], "output": [[1]]}]}',
               "train[2].output", "ragged rows"),
    "colour": ('{"train": [{"input": [[1, 10]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]}',
               "train[0].input", "colour 10"),
    "negative": ('{"train": [{"input": [[1]], "output": [[1]]}], "test": [{"input": [[-1]], "output": [[1]]}]}',
                 "test[0].input", "outside 0-9"),
    "empty": ('{"train": [{"input": [], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]}',
              "train[0].input", "empty grid"),
    "empty_rows": ('{"train": [{"input": [[]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]}',
                   "train[0].input", "empty grid"),
    "no_demos": ('{"train": [], "test": [{"input": [[1]], "output": [[1]]}]}', "train", "no demo pairs"),
    "no_tests": ('{"train": [{"input": [[1]], "output": [[1]]}], "test": []}', "test", "no test pairs"),
    "not_json": ('{"train": [', "", "not valid JSON"),
    "float": ('{"train": [{"input": [[1.5]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]}',
              "train[0].input", "not an integer"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_names_file_task_pair_problem(tmp_path, small_dirs, write_arc_task, case):
    tr, ev = small_dirs
    text, where, problem = BAD[case]
    bad = write_arc_task(tr / "sub" / f"bad_{case}.json", None, None, raw=text)
    with pytest.raises(InvalidTaskError) as info:
        _build(tmp_path, [str(tr)], [str(ev)])
    msg = str(info.value)
    assert str(bad) in msg and f"bad_{case}" in msg and where in msg and problem in msg
    assert not (tmp_path / "ds").exists()
    summary = _build(tmp_path, [str(tr)], [str(ev)], on_invalid="skip")
    assert summary["counts"]["train"]["puzzles"] == 2
    assert [s["task_id"] for s in summary["skipped"]] == [f"bad_{case}"]


def test_skip_mode_counts_several_and_cli_summary(tmp_path, small_dirs, write_arc_task, capsys):
    tr, ev = small_dirs
    write_arc_task(tr / "x1.json", None, None, raw="nope")
    write_arc_task(ev / "x2.json", None, None, raw='{"train": [], "test": []}')
    write_arc_task(tr / "big.json", [([[1] * 12], [[1]])], [C])
    rc = main(["--train-sources", str(tr), "--eval-sources", str(ev), "--output-dir", str(tmp_path / "cli"),
               "--num-aug", "2", "--on-invalid", "skip", "--max-grid-size", "10", "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "skipped: 3 puzzle(s)" in out and "invalid task: 2" in out and "grid too large: 1" in out
    assert "size on disk" in out and "time" in out
    meta = json.loads((tmp_path / "cli" / "metadata.json").read_text())
    assert meta["side"] == 10 and len(meta["skipped"]) == 3
    rc = main(["--train-sources", str(tr), "--output-dir", str(tmp_path / "cli2"), "--no-progress"])
    assert rc == 2 and "x1" in capsys.readouterr().err


def test_atomic_write_and_overwrite(tmp_path, small_dirs, write_arc_task):
    tr, ev = small_dirs
    _build(tmp_path, [str(tr)], [str(ev)], num_aug=1)
    target = tmp_path / "ds"
    before = {p: p.read_bytes() for p in target.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="--overwrite"):
        _build(tmp_path, [str(tr)], [str(ev)], num_aug=3)
    write_arc_task(tr / "broken.json", None, None, raw="{")
    with pytest.raises(InvalidTaskError):
        _build(tmp_path, [str(tr)], [str(ev)], num_aug=3, overwrite=True)
    assert {p: p.read_bytes() for p in target.rglob("*") if p.is_file()} == before
    os.remove(tr / "broken.json")
    _build(tmp_path, [str(tr)], [str(ev)], num_aug=3, overwrite=True)
    assert json.loads((target / "metadata.json").read_text())["num_aug"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "eval_src", "train_src"]  # no temp dirs left


def test_max_demos_and_leave_one_out_queries(tmp_path, small_dirs):
    tr, ev = small_dirs
    summary = _build(tmp_path, [str(tr)], [str(ev)], max_demos=2, train_queries="all")
    # t1: 2 demos + 1 test; t2: 3 demos truncated to 2 + 2 tests; eval keeps only its test pair
    assert summary["counts"]["train"]["queries"] == (2 + 1) + (2 + 2)
    assert summary["counts"]["train"]["dropped_demos"] == 1
    assert summary["counts"]["eval"]["queries"] == 1
    train = load_split(tmp_path / "ds", "train")
    loo = np.flatnonzero(train.query_test_index == -1)
    assert len(loo) == 4
    for q in loo:
        own = train.query_pair(q)
        demos = train.query_demos(q)
        assert len(demos) == 1
        assert not any(np.array_equal(own[0], a) and np.array_equal(own[1], b) for a, b in demos)
    assert sorted(train.query_test_index[train.query_test_index >= 0].tolist()) == [0, 0, 1]


def test_variants_deterministic_and_identity_first(tmp_path, small_dirs):
    tr, ev = small_dirs
    _build(tmp_path, [str(tr)], [str(ev)], name="x", num_aug=20, seed=7)
    _build(tmp_path, [str(tr)], [str(ev)], name="y", num_aug=20, seed=7)
    a, b = load_split(tmp_path / "x", "train"), load_split(tmp_path / "y", "train")
    assert np.array_equal(a.variants, b.variants)
    for p in range(a.num_puzzles):
        start, stop = a.puzzle_variant_range(p)
        assert stop - start == 21
        assert a.variants[start].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        assert (a.variant_puzzle[start:stop] == p).all()


def test_the_build_summary_counts_skipped_puzzles_instead_of_listing_them():
    from dataset.build_arc_dataset import SKIPPED_EXAMPLES, format_summary

    skipped = [{"side": "train", "source": "s", "file": f"f{i}", "task_id": f"t{i:03d}",
                "reason": "grid larger than --max-grid-size 10"} for i in range(40)]
    skipped += [{"side": "eval", "source": "s", "file": "g", "task_id": "bad", "reason": "invalid task: no test"}]
    counts = {s: {"puzzles": 1, "queries": 1, "variants": 1, "dropped_demos": 0} for s in ("train", "eval")}
    text = format_summary({"output_dir": "out", "counts": counts, "skipped": skipped, "bytes": 10, "seconds": 0.1})
    lines = text.splitlines()
    assert len(lines) <= 9
    too_large = next(line for line in lines if "grid too large" in line)
    assert "grid too large: 40, e.g. t000 (train)" in too_large and f"+{40 - SKIPPED_EXAMPLES} more" in too_large
    assert too_large.count("(train)") == SKIPPED_EXAMPLES and "invalid task: 1, e.g. bad (eval)" in text


def test_eval_variant_tables_never_read_the_test_outputs(tmp_path, write_arc_task):
    """The eval split's variant table (what the evaluation votes over) is deduplicated on the grids a
    solver may see: a test output that breaks the visible grids' symmetry must change nothing."""
    sym = ([[1, 2], [2, 1]], [[3, 1], [1, 3]])          # symmetric under the transpose
    test_in = [[2, 1], [1, 2]]
    outs = {"symmetric": [[1, 3], [3, 1]], "asymmetric": [[1, 3], [4, 1]]}
    variants = {}
    for name, out in outs.items():
        write_arc_task(tmp_path / name / "ev" / "e1.json", [sym], [(test_in, out)])
        write_arc_task(tmp_path / name / "tr" / "t1.json", [C], [B])
        _build(tmp_path / name, [str(tmp_path / name / "tr")], [str(tmp_path / name / "ev")], num_aug=50)
        variants[name] = load_split(tmp_path / name / "ds", "eval").variants.copy()
    assert variants["symmetric"].shape == variants["asymmetric"].shape
    assert np.array_equal(variants["symmetric"], variants["asymmetric"])
