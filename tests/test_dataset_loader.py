"""Loader: split API, batch contents, sharding, state restore, translation."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dataset import EvalLoader, TrainLoader, load_split
from dataset.augment import apply_variant
from dataset.build_arc_dataset import build_dataset
from dataset.grids import IGNORE_LABEL_ID, PAD_ID, decode_grid, encode_grid

SIDE = 8


def _random_tasks(root, rng, n, prefix):
    for i in range(n):
        def grid():
            h, w = (int(x) for x in rng.integers(1, SIDE + 1, size=2))
            return rng.integers(0, int(rng.integers(2, 10)), size=(h, w)).tolist()
        demos = [(grid(), grid()) for _ in range(int(rng.integers(1, 5)))]
        tests = [(grid(), grid()) for _ in range(int(rng.integers(1, 3)))]
        pair = lambda p: {"input": p[0], "output": p[1]}  # noqa: E731
        path = root / f"g{i % 3}" / f"{prefix}{i:03d}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"train": [pair(p) for p in demos], "test": [pair(p) for p in tests]}))


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader")
    rng = np.random.default_rng(0)
    _random_tasks(root / "tr", rng, 12, "t")
    _random_tasks(root / "ev", rng, 5, "e")
    build_dataset([str(root / "tr")], [str(root / "ev")], root / "ds", num_aug=6, seed=1, max_grid_size=SIDE,
                  max_demos=3, translate=True, train_queries="all", progress=False, log=None)
    build_dataset([str(root / "tr")], [str(root / "ev")], root / "plain", num_aug=3, seed=1, max_grid_size=SIDE,
                  max_demos=3, progress=False, log=None)
    return root


def _rows(batch):
    return list(zip(batch["query_index"].tolist(), batch["variant_index"].tolist()))


def _check_sample(split, batch, i, D, translated):
    """Every canvas of row i decodes to the variant applied to the original grids."""
    q, v = int(batch["query_index"][i]), int(batch["variant_index"][i])
    assert split.variant_puzzle[v] == split.query_puzzle[q]
    var = split.variants[v]
    inp, out = split.query_pair(q)
    demos = split.query_demos(q, D)
    canvases = [batch["inputs"][i], batch["labels"][i]]
    canvases += [batch["demo_inputs"][i, k] for k in range(len(demos))] + [batch["demo_labels"][i, k] for k in range(len(demos))]
    grids = [inp, out] + [a for a, _ in demos] + [b for _, b in demos]
    assert batch["demo_mask"][i].tolist() == [k < len(demos) for k in range(D)]
    assert (batch["demo_inputs"][i, len(demos):] == PAD_ID).all() and (batch["demo_labels"][i, len(demos):] == PAD_ID).all()
    assert (batch["demo_labels"][i] >= 0).all()
    offsets = set()
    for canvas, g in zip(canvases, grids):
        c = canvas.numpy().copy()
        c[c == IGNORE_LABEL_ID] = PAD_ID
        c2 = c.reshape(SIDE, SIDE)
        rows, cols = np.nonzero(c2)
        r0, c0 = int(rows.min()), int(cols.min())
        offsets.add((r0, c0))
        want = apply_variant(g, var)
        assert np.array_equal(decode_grid(np.roll(c2, (-r0, -c0), axis=(0, 1)).ravel()), want)
        assert np.array_equal(c, encode_grid(want, SIDE, offset=(r0, c0)))  # inside the canvas, EOS where it fits
    assert len(offsets) == 1  # one translation for the whole sample
    if not translated:
        assert offsets == {(0, 0)}
    return offsets.pop()


def test_split_api(ds):
    s = load_split(str(ds / "ds"), "train")
    assert (s.side, s.seq_len, s.vocab_size, s.max_demos) == (SIDE, SIDE * SIDE, 12, 3)
    assert s.num_puzzles == 12 and len(s.puzzle_ids) == 12
    assert s.num_variants == len(s.variants) == len(s.variant_puzzle) and s.variants.dtype == np.uint8
    for p in range(s.num_puzzles):
        v0, v1 = s.puzzle_variant_range(p)
        q0, q1 = s.puzzle_query_range(p)
        assert (s.variant_puzzle[v0:v1] == p).all() and (s.query_puzzle[q0:q1] == p).all()
        assert s.variants[v0].tolist() == [0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        tests = s.test_pairs(p)
        for q in range(q0, q1):
            t = int(s.query_test_index[q])
            pair = s.query_pair(q)
            if t >= 0:
                assert all(np.array_equal(a, b) for a, b in zip(pair, tests[t]))
            else:
                assert any(all(np.array_equal(a, b) for a, b in zip(pair, d)) for d in s.demos(p))
    assert s.metadata["translate"] is True
    assert set(s.query_test_index.tolist()) >= {-1, 0}


def test_missing_dir_and_concatenation(ds, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere.*python -m dataset\.build_arc_dataset"):
        load_split(str(tmp_path / "nowhere"), "train")
    with pytest.raises(ValueError, match="both"):
        load_split([str(ds / "ds"), str(ds / "plain")], "train")  # same puzzle ids twice
    a = load_split(str(ds / "ds"), "eval")
    meta = json.loads((ds / "plain" / "metadata.json").read_text())
    other = tmp_path / "other"
    import shutil
    shutil.copytree(ds / "plain", other)
    ids = json.loads((other / "eval" / "puzzles.json").read_text())
    (other / "eval" / "puzzles.json").write_text(json.dumps([i + "_b" for i in ids]))
    both = load_split([str(ds / "ds"), str(other)], "eval")
    b = load_split(str(other), "eval")
    assert both.num_puzzles == a.num_puzzles + b.num_puzzles
    assert both.num_variants == a.num_variants + b.num_variants and both.num_queries == a.num_queries + b.num_queries
    p = a.num_puzzles + 1
    v0, v1 = both.puzzle_variant_range(p)
    assert np.array_equal(both.variants[v0:v1], b.variants[slice(*b.puzzle_variant_range(1))])
    assert all(np.array_equal(x, y) for x, y in zip(both.test_pairs(p)[0], b.test_pairs(1)[0]))
    q0, _ = both.puzzle_query_range(p)
    assert all(np.array_equal(x, y) for x, y in zip(both.query_pair(q0), b.query_pair(b.puzzle_query_range(1)[0])))
    assert meta["max_demos"] == both.max_demos
    E = EvalLoader(both, 16)
    for batch in E:
        for i in range(16):
            if batch["valid"][i]:
                _check_sample(both, batch, i, both.max_demos, translated=False)


def test_train_batches_decode_and_translate(ds):
    s = load_split(str(ds / "ds"), "train")
    L = TrainLoader(s, 16, seed=3)
    shifted = loo = 0
    for _ in range(4):
        batch = next(L)
        assert batch["inputs"].shape == (16, SIDE * SIDE) and batch["inputs"].dtype == torch.int64
        assert batch["demo_inputs"].shape == (16, 3, SIDE * SIDE) and batch["demo_mask"].dtype == torch.bool
        assert batch["valid"].all()
        for i in range(16):
            shifted += _check_sample(s, batch, i, 3, translated=True) != (0, 0)
            q = int(batch["query_index"][i])
            n_demos = int(s.puzzle_num_demos[s.query_puzzle[q]])
            if s.query_test_index[q] == -1:  # leave-one-out: its own pair is not in its context
                loo += 1
                assert int(batch["demo_mask"][i].sum()) == min(3, n_demos - 1)
                assert not any(torch.equal(batch["demo_inputs"][i, k], batch["inputs"][i]) for k in range(3))
        lab = batch["labels"]
        assert ((lab == IGNORE_LABEL_ID) | (lab >= 1)).all() and (lab == 1).any()  # PAD ignored, EOS a target
    assert shifted > 0 and loo > 0
    plain = load_split(str(ds / "plain"), "train")
    batch = next(TrainLoader(plain, 8, seed=0, max_demos=2))
    assert batch["demo_inputs"].shape[1] == 2
    for i in range(8):
        _check_sample(plain, batch, i, 2, translated=False)


def test_train_epochs_and_sharding(ds):
    s = load_split(str(ds / "ds"), "train")
    n = s.num_queries
    full = TrainLoader(s, 10, seed=5)
    ranks = [TrainLoader(s, 10, rank=r, world_size=2, seed=5) for r in range(2)]
    assert ranks[0].local_batch_size == 5 and full.samples_per_epoch == n
    stream = []
    for _ in range(2 * n // 10 + 3):
        batch = next(full)
        parts = [next(r) for r in ranks]
        assert _rows(batch) == _rows(parts[0]) + _rows(parts[1])  # no overlap, no loss
        assert torch.equal(batch["inputs"], torch.cat([p["inputs"] for p in parts]))
        stream += _rows(batch)
    # each epoch: every query exactly once, all queries of a puzzle under one variant
    for e in range(2):
        epoch = stream[e * n:(e + 1) * n]
        assert sorted(q for q, _ in epoch) == list(range(n))
        chosen = {}
        for q, v in epoch:
            assert chosen.setdefault(int(s.query_puzzle[q]), v) == v
    assert stream[:n] != stream[n:2 * n]  # reshuffled
    assert full.epoch == pytest.approx(len(stream) / n)
    with pytest.raises(ValueError, match=r"10.*3"):
        TrainLoader(s, 10, world_size=3)


def test_train_state_restore(ds):
    s = load_split(str(ds / "ds"), "train")
    a = TrainLoader(s, 7, seed=11)
    for _ in range(9):
        next(a)
    state = a.state_dict()
    assert set(state) >= {"epoch", "position", "seed"} and len(json.dumps(state)) < 200
    expected = [next(a) for _ in range(6)]
    b = TrainLoader(s, 7, seed=0)
    b.load_state_dict(state)
    for want in expected:
        got = next(b)
        for k in want:
            assert torch.equal(want[k], got[k]), k


def test_eval_loader_sharding_and_padding(ds):
    s = load_split(str(ds / "ds"), "eval")
    whole = EvalLoader(s, 6)
    expected = [(q, v) for p in range(s.num_puzzles) for v in range(*s.puzzle_variant_range(p))
                for q in range(*s.puzzle_query_range(p))]
    assert whole.num_samples == len(expected)
    ranks = [EvalLoader(s, 6, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(whole) == -(-len(expected) // 6)
    got, pads = [], 0
    for b0, b1 in zip(*ranks):
        for part in (b0, b1):
            assert part["inputs"].shape[0] == 3
            valid = part["valid"].tolist()
            got += [r for r, ok in zip(_rows(part), valid) if ok]
            pads += valid.count(False)
            for i in range(3):
                _check_sample(s, part, i, s.max_demos, translated=False)
    assert got == expected  # fixed order (puzzle, variant, query), nothing lost or repeated
    assert pads == len(whole) * 6 - len(expected)
    small = EvalLoader(s, 4, max_eval_groups=2, max_variants=2)
    want = sum(min(2, np.diff(s.puzzle_variant_range(p))[0]) * np.diff(s.puzzle_query_range(p))[0] for p in range(2))
    assert small.num_samples == want
    assert {int(s.query_puzzle[q]) for b in small for q, ok in zip(b["query_index"].tolist(), b["valid"]) if ok} == {0, 1}


def _weighted(split, groups, seed=3, batch=10, block=20):
    loader = TrainLoader(split, batch, seed=seed)
    loader.enable_weighted_sampling(groups, 2, block)
    return loader


def test_weighted_sampling_gives_each_group_its_weights_share_of_samples(ds):
    s = load_split(str(ds / "ds"), "train")
    groups = np.where(np.arange(s.num_puzzles) % 3 == 0, 0, 1)  # 4 puzzles against 8
    loader = _weighted(s, groups)
    group_of = groups[s.query_puzzle]
    rows = [q for _ in range(300) for q, _ in _rows(next(loader))]
    # equal weights: equal shares of the samples, though group 1 has twice the puzzles
    assert np.mean(group_of[rows] == 0) == pytest.approx(0.5, abs=0.05)
    block = loader.block_after(loader.state_dict(), 0)
    loader.schedule_weights(block, [0.0, 1.0])
    rows = [q for _ in range(30) for q, _ in _rows(next(loader))]
    start = block * 20 - 300 * 10  # first sample of the scheduled block in this stretch
    assert start >= 0 and set(group_of[rows[start:]]) == {1}
    # a planned block's weights can no longer change (the draw would depend on the prefetch thread)
    with pytest.raises(RuntimeError, match="planned"):
        loader.schedule_weights(block, [1.0, 0.0])
    with pytest.raises(ValueError, match="not all 0"):
        loader.schedule_weights(block + 10, [0.0, 0.0])


def test_weighted_sampling_is_the_same_with_prefetching_and_after_a_restore(ds):
    """Weights pushed mid-stream at the same consumed states give the same batches whether a thread
    prefetches them or not, and a loader restored from a state with the same schedule continues alike."""
    from dataset.prefetch import Prefetcher
    s = load_split(str(ds / "ds"), "train")
    groups = np.arange(s.num_puzzles) % 2
    rng = np.random.default_rng(0)
    pushes = {i: rng.random(2) + 0.01 for i in (2, 5, 9, 14)}  # after batch i: new weights
    depth = 2

    def stream(source, loader, n=20, start=0):
        out, states = [], {}
        for i in range(start, n):
            out.append(_rows(next(source)))
            states[i] = source.state_dict()
            if i in pushes:
                loader.schedule_weights(loader.block_after(source.state_dict(), depth + 2), pushes[i])
        return out, states

    direct_loader = _weighted(s, groups, block=10)
    direct, states = stream(direct_loader, direct_loader)
    threaded_loader = _weighted(s, groups, block=10)
    prefetched = Prefetcher(threaded_loader, depth=depth)
    assert stream(prefetched, threaded_loader)[0] == direct
    prefetched.close()
    restored = _weighted(s, groups, block=10)
    restored.load_state_dict(states[7])
    for i in (2, 5):  # the schedule so far (training/curriculum.py keeps it in the checkpoint)
        restored.schedule_weights(direct_loader.block_after(states[i], depth + 2), pushes[i])
    assert stream(restored, restored, start=8)[0] == direct[8:]
