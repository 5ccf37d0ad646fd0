"""RE-ARC (re-arc:DIR, example pools) and BARC (barc:FILE.jsonl) train sources, on small files
written here in each format: counts of tasks and examples, the per-epoch demo draws of pool
queries (from the same pool, reproducible from the loader state, also across a kill -9 resume),
eval twins checked on every pool example, and bad input refused naming its file and row."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dataset.augment import apply_variant, dihedral
from dataset.build_arc_dataset import build_dataset, main
from dataset.grids import encode_grid
from dataset.loader import TrainLoader, load_split
from dataset.sources import ReArcOptions

REPO = Path(__file__).resolve().parents[1]


def grid(rng, h, w):
    return rng.integers(0, 10, (h, w)).tolist()


def write_re_arc(root: Path, tasks: dict[str, list[tuple]], difficulties: dict[str, list[float]] | None = None) -> Path:
    """RE-ARC layout: tasks/<id>.json (flat list of {"input", "output"}) + metadata.json."""
    (root / "tasks").mkdir(parents=True, exist_ok=True)
    meta = {}
    for tid, pairs in tasks.items():
        (root / "tasks" / f"{tid}.json").write_text(json.dumps([{"input": a, "output": b} for a, b in pairs]))
        d = (difficulties or {}).get(tid, [0.5] * len(pairs))
        meta[tid] = {"n_generations": len(pairs), "n_verified": len(pairs), "n_nondegenerate": len(pairs),
                     "rng_difficulties": d, "pso_difficulties": d, "runtime": 0.0}
    (root / "metadata.json").write_text(json.dumps(meta))
    return root


def write_barc(path: Path, rows: list[list[tuple]], raw_lines: dict[int, str] | None = None) -> Path:
    """BARC raw set: one {"examples": [[input, output], ...], "source": code} per line."""
    lines = [json.dumps({"examples": [[a, b] for a, b in ex], "source": "def main(grid): ..."}) for ex in rows]
    for i, text in (raw_lines or {}).items():
        lines[i] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def random_pool(rng, n, max_side=5):
    pairs = []
    for _ in range(n):
        h, w = (int(x) for x in rng.integers(1, max_side + 1, 2))
        a = np.array(grid(rng, h, w))
        pairs.append((a.tolist(), np.rot90(a).tolist()))
    return pairs


@pytest.fixture
def sources(tmp_path, write_arc_task):
    rng = np.random.default_rng(0)
    pool_a = random_pool(rng, 9)
    pool_a[4] = ([[1] * 8], [[1]] * 8)  # an 8-wide grid: over --max-grid-size 6, skipped and counted
    re_arc = write_re_arc(tmp_path / "re_arc", {"0a1b2c3d": pool_a, "11223344": random_pool(rng, 5)})
    barc = write_barc(tmp_path / "barc.jsonl", [[(grid(rng, 3, 3), grid(rng, 2, 2)) for _ in range(n)] for n in (3, 4, 2)])
    arc = tmp_path / "arc"
    write_arc_task(arc / "plain.json", [([[1, 2]], [[2, 1]]), ([[3, 4]], [[4, 3]])], [([[5, 6]], [[6, 5]])])
    ev = tmp_path / "ev"
    write_arc_task(ev / "evtask.json", [([[7]], [[7, 7]])], [([[8]], [[8, 8]])])
    return re_arc, barc, arc, ev


def test_counts_of_tasks_and_examples(tmp_path, sources):
    re_arc, barc, arc, ev = sources
    s = build_dataset([f"re-arc:{re_arc}", f"barc:{barc}", str(arc)], [str(ev)], tmp_path / "out", num_aug=2,
                      max_grid_size=6, progress=False, log=None)
    c = s["counts"]["train"]
    assert c["puzzles"] == 2 + 3 + 1
    assert c["pools"] == 2 and c["pool_examples"] == 8 + 5
    assert c["dropped_pool_examples"] == {"grid too large": 1}
    assert c["queries"] == 13 + 3 + 1  # every pool example, one test per BARC row, the ARC test
    assert [r for r in s["skipped"] if r.get("examples")][0]["task_id"] == "re-arc:0a1b2c3d"
    train = load_split(str(tmp_path / "out"), "train")
    assert train.puzzle_ids == ["re-arc:0a1b2c3d", "re-arc:11223344", "barc:barc:1", "barc:barc:2", "barc:barc:3",
                                "plain"]
    assert list(train.puzzle_num_demos) == [0, 0, 2, 3, 1, 2] and train.num_pool_queries == 13
    # BARC: the last pair is the test, the others demos, in order
    row = json.loads(barc.read_text().splitlines()[1])["examples"]
    assert [a.tolist() for a, _ in train.demos(3)] == [p[0] for p in row[:-1]]
    assert train.test_pairs(3)[0][1].tolist() == row[-1][1]


def test_pool_queries_draw_their_demos_from_their_own_pool(tmp_path, sources):
    re_arc, barc, arc, ev = sources
    build_dataset([f"re-arc:{re_arc}", f"barc:{barc}"], [], tmp_path / "out", num_aug=3, max_grid_size=6,
                  max_demos=3, progress=False, log=None)
    train = load_split(str(tmp_path / "out"), "train")
    loader = TrainLoader(train, 4, seed=3)
    seen_epochs = []
    for epoch in range(3):
        q, _, _, demos = loader._plan(epoch)
        assert sorted(q) == list(range(train.num_queries))  # every example a query once per epoch
        drawn = {}
        for query, row in zip(q, demos):
            p = int(train.query_puzzle[query])
            if not train.puzzle_pool[p]:
                assert (row == -1).all()
                continue
            lo, hi = int(train.puzzle_pair_offsets[p]), int(train.puzzle_pair_offsets[p + 1])
            real = [int(x) for x in row if x >= 0]
            assert len(real) == min(3, hi - lo - 1), (query, row)
            assert len(set(real)) == len(real) and all(lo <= x < hi for x in real)
            assert int(train.query_pair_index[query]) not in real  # never its own answer
            drawn[int(query)] = tuple(real)
        seen_epochs.append(drawn)
    assert seen_epochs[0] != seen_epochs[1]  # fresh draws each epoch
    # the batch carries the drawn demos (grids of the pool, under the sample's variant)
    b = next(TrainLoader(train, train.num_queries, seed=3))
    q0, _, _, demos0 = TrainLoader(train, 4, seed=3)._plan(0)
    i = int(np.flatnonzero(train.query_is_pool[q0])[0])
    assert b["demo_mask"][i].sum().item() == (demos0[i] >= 0).sum()
    assert b["puzzle_index"][i].item() == train.query_puzzle[q0[i]]


def test_pool_grids_are_encoded_as_the_cache_would(tmp_path, sources):
    re_arc = sources[0]
    build_dataset([f"re-arc:{re_arc}"], [], tmp_path / "out", num_aug=1, max_grid_size=6, progress=False, log=None)
    train = load_split(str(tmp_path / "out"), "train")
    ids = np.arange(train.num_grids)
    for d in range(8):
        out = np.zeros((len(ids), train.seq_len), np.uint8)
        train.encode_grids(ids, np.full(len(ids), d), out)
        ref = np.stack([encode_grid(dihedral(train.grid(i), d), train.side) for i in ids])
        assert (out == ref).all(), d


def test_pool_draws_resume_from_the_loader_state(tmp_path, sources):
    re_arc, barc, arc, ev = sources
    build_dataset([f"re-arc:{re_arc}", str(arc)], [], tmp_path / "out", num_aug=3, max_grid_size=6, translate=True,
                  progress=False, log=None)
    train = load_split(str(tmp_path / "out"), "train")
    clean = TrainLoader(train, 4, seed=7)
    batches = [next(clean) for _ in range(12)]  # > 3 epochs of 15 samples
    first = TrainLoader(train, 4, seed=7)
    for _ in range(5):
        next(first)
    resumed = TrainLoader(load_split(str(tmp_path / "out"), "train"), 4, seed=0)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for want in batches[5:]:
        got = next(resumed)
        for key in want:
            assert (got[key] == want[key]).all(), key


def test_difficulty_filter_and_cap(tmp_path):
    rng = np.random.default_rng(1)
    root = write_re_arc(tmp_path / "re", {"aaaa0000": random_pool(rng, 6)},
                        {"aaaa0000": [0.1, 0.9, 0.2, 0.8, 0.3, 0.05]})
    s = build_dataset([f"re-arc:{root}"], [], tmp_path / "a", num_aug=1, progress=False, log=None,
                      re_arc=ReArcOptions(max_difficulty=0.25))
    assert s["counts"]["train"]["pool_examples"] == 3
    assert s["counts"]["train"]["dropped_pool_examples"] == {"difficulty": 3}
    s = build_dataset([f"re-arc:{root}"], [], tmp_path / "b", num_aug=1, progress=False, log=None,
                      re_arc=ReArcOptions(max_difficulty=0.25, max_examples=2))
    assert s["counts"]["train"]["pool_examples"] == 2
    train = load_split(str(tmp_path / "b"), "train")
    assert train.pair(0)[0].tolist() == random_pool(np.random.default_rng(1), 6)[0][0]  # the first kept, in order
    meta = json.loads((root / "metadata.json").read_text())
    meta["aaaa0000"]["pso_difficulties"] = [0.1]
    (root / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"metadata\.json.*aaaa0000\.pso_difficulties.*one difficulty per example"):
        build_dataset([f"re-arc:{root}"], [], tmp_path / "c", num_aug=1, progress=False, log=None,
                      re_arc=ReArcOptions(max_difficulty=0.25))
    assert not (tmp_path / "c").exists()


def test_eval_twins_are_checked_on_every_pool_example(tmp_path, write_arc_task):
    rng = np.random.default_rng(2)
    a = np.array([[1, 2, 0], [3, 1, 1]])
    b = np.array([[2, 2], [0, 3]])
    ev = tmp_path / "ev"
    write_arc_task(ev / "evtask.json", [(grid(rng, 2, 2), grid(rng, 2, 2))], [(a.tolist(), b.tolist())])
    v = np.array([1, 0, 4, 7, 5, 9, 1, 2, 3, 6, 8], dtype=np.uint8)  # rot90 + a colour permutation
    twin = (apply_variant(a, v).tolist(), apply_variant(b, v).tolist())
    pool = random_pool(rng, 6)
    pool[5] = twin  # the last example of the pool: every example must be checked
    re_arc = write_re_arc(tmp_path / "re", {"bbbb0000": pool, "cccc0000": random_pool(rng, 3)})
    barc = write_barc(tmp_path / "b.jsonl", [[(grid(rng, 2, 2), grid(rng, 2, 2)), twin]])
    with pytest.warns(UserWarning, match="eval test pair"):
        s = build_dataset([f"re-arc:{re_arc}", f"barc:{barc}"], [str(ev)], tmp_path / "out", num_aug=1,
                          progress=False, log=None)
    c = s["counts"]["train"]
    assert c["pool_examples"] == 5 + 3 and c["dropped_pool_examples"] == {"eval twin": 1}
    assert c["puzzles"] == 2  # the BARC row holding the twin is dropped whole, as an ARC puzzle would be
    reasons = {r["task_id"]: r["reason"] for r in s["skipped"]}
    assert "example[5]" in reasons["re-arc:bbbb0000"] and "evtask" in reasons["re-arc:bbbb0000"]
    assert reasons["barc:b:1"].startswith("eval twin")
    train = load_split(str(tmp_path / "out"), "train")
    from dataset.twins import pair_key
    held = pair_key(a, b)
    assert all(pair_key(*train.pair(i)) != held for i in range(len(train.pair_input)))
    with pytest.raises(ValueError, match=r"re-arc:bbbb0000.*example\[5\].*evtask"):
        build_dataset([f"re-arc:{re_arc}"], [str(ev)], tmp_path / "err", num_aug=1, eval_twins="error",
                      progress=False, log=None)
    assert not (tmp_path / "err").exists()


def test_a_pool_of_an_eval_task_is_refused_by_its_arc_id(tmp_path, write_arc_task):
    rng = np.random.default_rng(3)
    ev = tmp_path / "ev"
    write_arc_task(ev / "dddd0000.json", [(grid(rng, 2, 2), grid(rng, 2, 2))], [(grid(rng, 2, 2), grid(rng, 2, 2))])
    re_arc = write_re_arc(tmp_path / "re", {"dddd0000": random_pool(rng, 3)})
    with pytest.raises(ValueError, match=r"re-arc:dddd0000.*held out"):
        build_dataset([f"re-arc:{re_arc}"], [str(ev)], tmp_path / "out", num_aug=1, progress=False, log=None)
    with pytest.raises(ValueError, match="RE-ARC pools have no test pairs"):
        build_dataset([], [f"re-arc:{re_arc}"], tmp_path / "out", num_aug=1, progress=False, log=None)
    assert not (tmp_path / "out").exists()


POOL = [{"input": [[1, 2], [3, 4]], "output": [[4, 3], [2, 1]]}, {"input": [[5]], "output": [[6]]}]
GOOD_ROW = {"examples": [[[[1, 2]], [[2, 1]]], [[[3]], [[4]]]], "source": "x"}


def _bad(kind: str, case: str):
    """(file content, what the message must name) of a bad RE-ARC task file or BARC line."""
    if kind == "re-arc":
        ex = json.loads(json.dumps(POOL))
        where = "example[1]"
        if case == "ragged":
            ex[1]["input"] = [[1, 2], [3]]
        elif case == "colour":
            ex[1]["output"] = [[10]]
        elif case == "colour-name":
            ex[1]["input"] = [["Black", "Blue"]]
        elif case == "empty":
            ex, where = [], "empty pool"
        return json.dumps(ex), where
    row = json.loads(json.dumps(GOOD_ROW))
    if case == "ragged":
        row["examples"][1][0] = [[1, 2], [3]]
    elif case == "colour":
        row["examples"][1][1] = [[-1]]
    elif case == "colour-name":
        row["examples"][1][0] = [["Black"]]
    elif case == "empty":
        row["examples"] = []
    return json.dumps(row), "line 2"


PROBLEM = {"ragged": "ragged rows", "colour": "outside 0-9", "colour-name": "colour name", "empty": ""}


@pytest.mark.parametrize("kind", ["re-arc", "barc"])
@pytest.mark.parametrize("case", ["ragged", "colour", "colour-name", "empty"])
def test_bad_input_is_refused_naming_file_and_row_with_nothing_written(tmp_path, capsys, kind, case):
    text, where = _bad(kind, case)
    if kind == "re-arc":
        root = write_re_arc(tmp_path / "re", {"eeee0000": [(p["input"], p["output"]) for p in POOL]})
        bad_file = root / "tasks" / "ffff0000.json"
        bad_file.write_text(text)
        src = f"re-arc:{root}"
    else:
        bad_file = tmp_path / "rows.jsonl"
        bad_file.write_text(json.dumps(GOOD_ROW) + "\n" + text + "\n")
        src = f"barc:{bad_file}"
    out = tmp_path / "out"
    rc = main(["--train-sources", src, "--output-dir", str(out), "--num-aug", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(bad_file) in err and where in err and PROBLEM[case] in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.slow
def test_kill9_resume_reproduces_the_pool_draws(tmp_path, write_arc_task):
    """A training run on a RE-ARC pool, killed with SIGKILL after its step-5 checkpoint and run
    again, ends where the run that never stopped ends: same losses (so the same drawn demos)."""
    from tests.helpers import kill9_then_rerun_matches_uninterrupted

    rng = np.random.default_rng(4)
    re_arc = write_re_arc(tmp_path / "re", {f"{i:08x}": random_pool(rng, 12) for i in range(3)})
    ev = tmp_path / "ev"
    for i in range(2):
        write_arc_task(ev / f"ev{i}.json", [(grid(rng, 3, 3), grid(rng, 3, 3))] * 2, [(grid(rng, 3, 3), grid(rng, 3, 3))])
    data = tmp_path / "data"
    build_dataset([f"re-arc:{re_arc}"], [str(ev)], data, num_aug=4, max_grid_size=6, progress=False, log=None)
    steps = 24  # 36 samples per epoch, batch 8: the run crosses epochs (fresh draws) after the kill
    kill9_then_rerun_matches_uninterrupted(data, tmp_path, steps=steps)


def test_the_rearc_recipe_composes_and_its_build_command_parses():
    """config: +experiment=arc1_concept_rearc selects the data group and a schedule in its epoch
    units; the recipe's builder command is one the builder accepts, with the three train sources."""
    import shlex

    from dataset.build_arc_dataset import parse_args
    from tests.helpers import compose_cfg

    cfg = compose_cfg("cfg_pretrain_etrm_arc_agi_1", ["+experiment=arc1_concept_rearc"])
    assert list(cfg.data_paths) == ["data/arc1concept-rearc-aug-1000"] and cfg.epochs == 250
    argv = shlex.split(cfg.data_recipe.format(path=cfg.data_paths[0]))
    assert argv[:3] == ["python", "-m", "dataset.build_arc_dataset"]
    args = parse_args(argv[3:])
    assert args.train_sources == ["arc-agi-1:train", "../shared/data/ConceptARC/corpus", "re-arc:data/re_arc"]
    assert args.eval_sources == ["arc-agi-1:eval"] and args.output_dir == cfg.data_paths[0]


def test_symmetries_of_large_pools_match_a_full_check():
    """variants.puzzle_symmetries checks the first 8 grids' symmetries only on all grids (pools of
    thousands): the result must equal checking every dihedral on every grid."""
    from dataset.variants import puzzle_symmetries

    rng = np.random.default_rng(5)

    def full(grids):
        out = []
        for e in range(8):
            images = [dihedral(g, e) for g in grids]
            if any(t.shape != g.shape for t, g in zip(images, grids)):
                continue
            q = {}
            if all(q.setdefault(int(a), int(b)) == int(b) for t, g in zip(images, grids) for a, b in zip(t.ravel(), g.ravel())) \
                    and len(set(q.values())) == len(q) and q.get(0, 0) == 0:
                out.append(e)
        return out

    sym = [np.array([[1, 2, 1], [3, 4, 3]]) for _ in range(12)]  # flip left-right is a symmetry of all
    broken = sym[:9] + [np.array([[1, 2, 3], [3, 4, 3]])] + sym[10:]  # ... but not of grid 9
    square = [(lambda a: np.maximum(a, a.T))(rng.integers(0, 3, (3, 3))) for _ in range(10)]  # transpose
    for grids in (sym, broken, square, [rng.integers(0, 10, (2, 2)) for _ in range(20)]):
        assert [e for e, _ in puzzle_symmetries(grids)[1]] == full(grids)
