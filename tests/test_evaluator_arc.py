"""Tests of the ARC evaluator (evaluators/arc.py) with hand-built predictions on a fake split."""
from __future__ import annotations

import json
import re
import os
import socket
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset.augment import apply_variant, identity_variant, invert_variant
from dataset.grids import EOS_ID, decode_grid, encode_grid
from training.distributed import gather_to_main
from evaluators import load_evaluator_class
from dataset.grids import crop_sizes
from evaluators.arc import ARC, inverse_colour_tables, inverse_dihedral_index
from tests.helpers import load_scorer

ROOT = Path(__file__).resolve().parents[1]
SIDE = 8


# ------------------------------------------------------------------------------------------
# a small stand-in for dataset.loader.ARCSplit with exactly the attributes the evaluator uses
# ------------------------------------------------------------------------------------------
class FakeSplit:
    """puzzles: list of (id, demos [(in, out)], tests [(in, out)]). Each puzzle gets
    `num_variants` variants: identity first, then every dihedral in turn with random colour
    permutations. Queries: every demo (test index -1) then every test pair."""

    def __init__(self, puzzles, num_variants=8, side=SIDE, seed=0):
        rng = np.random.default_rng(seed)
        self.side = side
        self.puzzle_ids = [pid for pid, _, _ in puzzles]
        self.num_puzzles = len(puzzles)
        self._demos = [list(d) for _, d, _ in puzzles]
        self._tests = [list(t) for _, _, t in puzzles]
        variants, vp, qp, qt = [], [], [], []
        for p in range(self.num_puzzles):
            for j in range(num_variants):
                if j == 0:
                    v = identity_variant()
                else:
                    perm = np.concatenate([[0], rng.permutation(9) + 1])
                    v = np.concatenate([[j % 8], perm]).astype(np.uint8)
                variants.append(v)
                vp.append(p)
            for _ in self._demos[p]:
                qp.append(p)
                qt.append(-1)
            for i in range(len(self._tests[p])):
                qp.append(p)
                qt.append(i)
        self.variants = np.stack(variants).astype(np.uint8)
        self.variant_puzzle = np.array(vp, dtype=np.int64)
        self.query_puzzle = np.array(qp, dtype=np.int64)
        self.query_test_index = np.array(qt, dtype=np.int64)

    def demos(self, p):
        return self._demos[p]

    def test_pairs(self, p):
        return self._tests[p]

    def variants_of(self, p):
        return np.flatnonzero(self.variant_puzzle == p)

    def test_query(self, p, i):
        return int(np.flatnonzero((self.query_puzzle == p) & (self.query_test_index == i))[0])


def rand_grid(rng, h, w):
    return rng.integers(0, 10, size=(h, w)).astype(np.uint8)


def make_puzzles(n, tests_per=(1,), seed=0, side=SIDE):
    rng = np.random.default_rng(seed)
    out = []
    for p in range(n):
        nt = tests_per[p % len(tests_per)]
        demos = [(rand_grid(rng, *rng.integers(1, side, 2)), rand_grid(rng, *rng.integers(1, side, 2))) for _ in range(2)]
        tests = [(rand_grid(rng, *rng.integers(1, side, 2)), rand_grid(rng, *rng.integers(1, side, 2))) for _ in range(nt)]
        out.append((f"task{p:03d}", demos, tests))
    return out


def sample(split, v, q, answer, q_halt=0.0, steps=None):
    """One prediction: `answer` is in the ORIGINAL frame (or a token array / None for garbage);
    it is transformed by variant v and encoded, as the model would emit it."""
    if answer is None:
        tokens = np.zeros(split.side ** 2, dtype=np.int64)  # all PAD: unparseable
    elif isinstance(answer, np.ndarray) and answer.ndim == 1:
        tokens = answer
    else:
        tokens = encode_grid(apply_variant(np.asarray(answer, np.uint8), split.variants[v]), split.side)
    return {"variant": v, "query": q, "tokens": tokens, "q": q_halt, "steps": steps}


def batches(split, samples, batch_size=5, pad_with=None, rng_seed=0):
    """Yield (batch, outputs) pairs; the last batch is padded with valid=False rows whose
    predictions are `pad_with` samples (default: garbage) to prove they are ignored."""
    rng = np.random.default_rng(rng_seed)
    for s0 in range(0, len(samples), batch_size):
        chunk = list(samples[s0:s0 + batch_size])
        valid = [True] * len(chunk)
        while len(chunk) < batch_size:
            if pad_with:
                chunk.append(pad_with[len(chunk) % len(pad_with)])
            else:
                chunk.append({"variant": 0, "query": 0, "tokens": rng.integers(0, 12, split.side ** 2), "q": 9.0,
                              "steps": 99})
            valid.append(False)
        batch = {
            "variant_index": torch.tensor([c["variant"] for c in chunk], dtype=torch.int64),
            "query_index": torch.tensor([c["query"] for c in chunk], dtype=torch.int64),
            "valid": torch.tensor(valid, dtype=torch.bool),
        }
        outputs = {
            "preds": torch.tensor(np.stack([c["tokens"] for c in chunk]), dtype=torch.int64),
            "q_halt_logits": torch.tensor([c["q"] for c in chunk], dtype=torch.float32),
        }
        if all(c["steps"] is not None for c in chunk):
            outputs["steps"] = torch.tensor([c["steps"] for c in chunk], dtype=torch.int32)
        yield batch, outputs


def eval_dir(run_dir, step) -> str | None:
    """The folder the trainer gives the evaluator for a run's evaluation at `step`."""
    if run_dir is None:
        return None
    out = os.path.join(run_dir, "eval", f"step_{step}")
    os.makedirs(out, exist_ok=True)
    return out


def run_eval(split, samples, run_dir=None, step=0, batch_size=5, pad_with=None, **kw):
    ev = ARC(split, **kw)
    ev.begin()
    for b, o in batches(split, samples, batch_size, pad_with):
        ev.update(b, o)
    return ev, ev.result(eval_dir(run_dir, step), step)


def all_correct_samples(split, puzzles_subset=None, q_halt=0.0):
    out = []
    for p in (range(split.num_puzzles) if puzzles_subset is None else puzzles_subset):
        for i, (_, truth) in enumerate(split.test_pairs(p)):
            q = split.test_query(p, i)
            for v in split.variants_of(p):
                out.append(sample(split, int(v), q, truth, q_halt))
    return out


# ------------------------------------------------------------------------------------------
def test_crop_sizes_match_decode_grid():
    rng = np.random.default_rng(1)
    canv = []
    for _ in range(200):
        g = rand_grid(rng, *rng.integers(1, SIDE + 1, 2))
        c = encode_grid(g, SIDE)
        if rng.random() < 0.5:  # corrupt some tokens
            idx = rng.integers(0, SIDE * SIDE, rng.integers(1, 6))
            c[idx] = rng.integers(0, 12, idx.size)
        canv.append(c)
    canv += [rng.integers(0, 12, SIDE * SIDE) for _ in range(100)]
    canv.append(np.zeros(SIDE * SIDE, np.int64))
    canv = np.stack(canv)
    h, w = crop_sizes(canv, SIDE)
    for i, c in enumerate(canv):
        # brute force: the largest top-left all-colour rectangle (smallest height on ties)
        colour = (c.reshape(SIDE, SIDE) >= 2)
        best = (0, 0, 0)
        for hh in range(1, SIDE + 1):
            ww = 0
            while ww < SIDE and colour[:hh, ww].all():
                ww += 1
            if hh * ww > best[0]:
                best = (hh * ww, hh, ww)
        assert (h[i], w[i]) == best[1:]
        ref = decode_grid(c, SIDE)
        if ref is None:
            assert w[i] == 0 and h[i] == 0
        else:
            assert ref.shape == (h[i], w[i])


def test_vectorised_inverse_matches_invert_variant():
    rng = np.random.default_rng(2)
    variants = np.stack([np.concatenate([[d], [0], rng.permutation(9) + 1]).astype(np.uint8)
                         for d in range(8) for _ in range(3)])
    tables = inverse_colour_tables(variants)
    for vi, v in enumerate(variants):
        g = rand_grid(rng, 3, 5)
        t = apply_variant(g, v)
        idx = inverse_dihedral_index(t.shape[0], t.shape[1], int(v[0]))
        ours = tables[vi][t.ravel()][idx.ravel()].reshape(idx.shape)
        np.testing.assert_array_equal(ours, invert_variant(t, v))
        np.testing.assert_array_equal(ours, g)


def test_inverse_augmentation_restores_every_variant(tmp_path):
    # 24 variants per puzzle: each dihedral x 3 colour permutations (+ identity), non-square grids
    split = FakeSplit(make_puzzles(3, tests_per=(1, 2)), num_variants=24)
    samples = all_correct_samples(split)
    _, m = run_eval(split, samples, run_dir=str(tmp_path), step=7)
    assert m["ARC/num_puzzles"] == 3 and m["ARC/num_test_inputs"] == 4
    for k in (1, 2, 5):
        assert m[f"ARC/pass@{k}"] == 1.0 and m[f"ARC/task_pass@{k}"] == 1.0
    assert m["ARC/unparseable_frac"] == 0.0
    sub = json.loads((tmp_path / "eval" / "step_7" / "submission.json").read_text())
    for p, pid in enumerate(split.puzzle_ids):
        assert len(sub[pid]) == len(split.test_pairs(p))
        for i, (_, truth) in enumerate(split.test_pairs(p)):
            assert sub[pid][i]["attempt_1"] == truth.tolist()
            assert sub[pid][i]["attempt_2"] == [[0]]  # a single answer won every vote


def test_voting_majority_and_confidence_tiebreak():
    rng = np.random.default_rng(3)
    split = FakeSplit(make_puzzles(2), num_variants=6)
    a, b = rand_grid(rng, 2, 3), rand_grid(rng, 3, 2)
    # puzzle 0: A has 4 votes with low confidence, B 2 votes with high confidence -> A
    # puzzle 1: A and B 3 votes each; B's voters are more confident -> B
    q0, q1 = split.test_query(0, 0), split.test_query(1, 0)
    v0, v1 = split.variants_of(0), split.variants_of(1)
    s = [sample(split, int(v), q0, a, -4.0) for v in v0[:4]] + [sample(split, int(v), q0, b, 4.0) for v in v0[4:]]
    s += [sample(split, int(v), q1, a, -1.0) for v in v1[:3]] + [sample(split, int(v), q1, b, 1.0) for v in v1[3:]]
    ev = ARC(split)
    for bt, o in batches(split, s):
        ev.update(bt, o)
    scored = ev.score(ev.local_data())
    ans0 = scored["answers"][0]
    ans1 = scored["answers"][1]
    np.testing.assert_array_equal(ans0[0]["grid"], a)
    assert [x["votes"] for x in ans0] == [4, 2]
    np.testing.assert_array_equal(ans0[1]["grid"], b)
    np.testing.assert_array_equal(ans1[0]["grid"], b)
    np.testing.assert_array_equal(ans1[1]["grid"], a)
    assert [x["votes"] for x in ans1] == [3, 3]
    assert ans1[0]["confidence"] > ans1[1]["confidence"]
    assert scored["submission"]["task000"][0] == {"attempt_1": a.tolist(), "attempt_2": b.tolist()}
    assert scored["submission"]["task001"][0] == {"attempt_1": b.tolist(), "attempt_2": a.tolist()}


def hand_case():
    """3 puzzles; puzzle 0 has 2 test inputs (first right at rank 0, second wrong), puzzle 1
    one test input right only at rank 1, puzzle 2 right at rank 0 but NOT evaluated unless
    asked. Returns split and a function building the samples for a puzzle subset."""
    rng = np.random.default_rng(4)
    split = FakeSplit(make_puzzles(3, tests_per=(2, 1, 1)), num_variants=5)
    wrong = rand_grid(rng, 4, 4)

    def build(puzzles):
        s = []
        for p in puzzles:
            vs = [int(v) for v in split.variants_of(p)]
            if p == 0:
                t0, t1 = split.test_pairs(0)[0][1], split.test_pairs(0)[1][1]
                s += [sample(split, v, split.test_query(0, 0), t0, 1.0) for v in vs]
                s += [sample(split, v, split.test_query(0, 1), wrong, 1.0) for v in vs]
            elif p == 1:
                t = split.test_pairs(1)[0][1]
                s += [sample(split, v, split.test_query(1, 0), wrong, 0.0) for v in vs[:3]]
                s += [sample(split, v, split.test_query(1, 0), t, 0.0) for v in vs[3:]]
            else:
                t = split.test_pairs(2)[0][1]
                s += [sample(split, v, split.test_query(2, 0), t, 0.0) for v in vs]
        return s

    return split, build


def test_pass_at_k_hand_computed_subset_of_puzzles(tmp_path):
    split, build = hand_case()
    # only puzzles 0 and 1 evaluated (like max_eval_groups): denominators are 2 puzzles
    _, m = run_eval(split, build([0, 1]), run_dir=str(tmp_path), pass_ks=(1, 2, 5, 10))
    assert m["ARC/num_puzzles"] == 2 and m["ARC/num_test_inputs"] == 3
    assert m["ARC/pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["ARC/pass@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["ARC/pass@5"] == pytest.approx(0.75)
    # 5 samples per test input: pass@10 could only repeat pass@5, so it is not reported
    assert m["ARC/samples_per_test_input"] == 5 and "ARC/pass@10" not in m and "ARC/task_pass@10" not in m
    assert m["ARC/task_pass@1"] == 0.0
    assert m["ARC/task_pass@2"] == pytest.approx(0.5)
    # all three puzzles: puzzle 2 is right at rank 0
    _, m3 = run_eval(split, build([0, 1, 2]), pass_ks=(1, 2))
    assert m3["ARC/num_puzzles"] == 3
    assert m3["ARC/pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert m3["ARC/pass@2"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m3["ARC/task_pass@1"] == pytest.approx(1 / 3)
    assert m3["ARC/task_pass@2"] == pytest.approx(2 / 3)


def test_submission_scores_same_as_reported(tmp_path, capsys):
    split, build = hand_case()
    _, m = run_eval(split, build([0, 1, 2]), run_dir=str(tmp_path), step=3, report_puzzles=2)
    d = tmp_path / "eval" / "step_3"
    assert sorted(p.name for p in d.iterdir()) == ["metrics.json", "report.html", "solutions.json", "submission.json"]
    scorer = load_scorer()
    sub = json.loads((d / "submission.json").read_text())
    sol = json.loads((d / "solutions.json").read_text())
    res = scorer.score(sub, sol)
    assert res["pass@2"] == pytest.approx(m["ARC/pass@2"])
    assert res["task_pass@2"] == pytest.approx(m["ARC/task_pass@2"])
    assert res["num_tasks"] == m["ARC/num_puzzles"]
    assert scorer.main([str(d / "submission.json"), str(d / "solutions.json")]) == 0
    assert f"{m['ARC/pass@2']:.4f}" in capsys.readouterr().out
    saved = json.loads((d / "metrics.json").read_text())
    assert saved["step"] == 3 and saved["ARC/pass@2"] == pytest.approx(m["ARC/pass@2"])
    html = (d / "report.html").read_text()
    assert html.count("<section>") == 2 and "data:image/png;base64," in html
    # the page says it is a sample, and captions carry information (not "conf 0.00" everywhere)
    assert "Showing 2 of 3 evaluated puzzles" in html
    captions = re.findall(r"answer \d: (\d+)/(\d+) \((\d+)%\) votes, q_halt ([+-]\d\.\d\d)", html)
    assert captions and all(t == "5" and round(100 * int(v) / 5) == int(pct) for v, t, pct, _ in captions)
    assert {q for *_, q in captions} <= {"+1.00", "+0.00"}


def test_padding_ignored_and_unparseable_wrong():
    rng = np.random.default_rng(5)
    split = FakeSplit(make_puzzles(2), num_variants=4)
    q0, q1 = split.test_query(0, 0), split.test_query(1, 0)
    t0 = split.test_pairs(0)[0][1]
    wrong = rand_grid(rng, 2, 2)
    v0, v1 = [int(v) for v in split.variants_of(0)], [int(v) for v in split.variants_of(1)]
    # puzzle 0: 1 right vote, 3 unparseable (all PAD, or EOS at the top-left) -> right at rank 0
    eos_first = np.full(SIDE * SIDE, EOS_ID, np.int64)
    s = [sample(split, v0[0], q0, t0, -3.0), sample(split, v0[1], q0, None, 5.0),
         sample(split, v0[2], q0, eos_first, 5.0), sample(split, v0[3], q0, None, 5.0)]
    # puzzle 1: only unparseable predictions -> wrong, submission [[0]]
    s += [sample(split, v, q1, None, 5.0) for v in v1]
    # padding rows: many confident wrong answers for puzzle 0 marked valid=False
    pads = [sample(split, v0[0], q0, wrong, 9.0)]
    _, m = run_eval(split, s, batch_size=3, pad_with=pads, pass_ks=(1, 2))
    assert m["ARC/num_samples"] == 8
    assert m["ARC/unparseable_frac"] == pytest.approx(7 / 8)
    assert m["ARC/pass@1"] == pytest.approx(0.5)
    assert m["ARC/num_puzzles"] == 2
    ev = ARC(split)
    for b, o in batches(split, s, 3, pads):
        o["q_halt_logits"] = o["q_halt_logits"].to(torch.bfloat16)  # as under bf16 autocast
        ev.update(b, o)
    sc = ev.score(ev.local_data())
    assert [a["votes"] for a in sc["answers"][0]] == [1]
    assert sc["submission"]["task001"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]


def test_non_test_queries_ignored_and_mean_steps():
    split = FakeSplit(make_puzzles(1), num_variants=3)
    demo_q = int(np.flatnonzero(split.query_test_index == -1)[0])
    t = split.test_pairs(0)[0][1]
    s = [dict(sample(split, v, split.test_query(0, 0), t, 0.0), steps=st) for v, st in zip(range(3), (2, 4, 6))]
    s += [dict(sample(split, 0, demo_q, None, 0.0), steps=16)]
    _, m = run_eval(split, s, batch_size=4)
    assert m["ARC/num_samples"] == 3 and m["ARC/unparseable_frac"] == 0.0
    assert m["ARC/mean_steps"] == pytest.approx(4.0)
    assert m["ARC/pass@1"] == 1.0


def test_mismatched_variant_and_query_rejected():
    split = FakeSplit(make_puzzles(2), num_variants=2)
    t = split.test_pairs(0)[0][1]
    s = [sample(split, int(split.variants_of(1)[0]), split.test_query(0, 0), t)]
    with pytest.raises(ValueError, match="belongs to puzzle"):
        run_eval(split, s)


def test_empty_eval_and_begin_resets(tmp_path):
    split = FakeSplit(make_puzzles(1), num_variants=2)
    ev, m = run_eval(split, all_correct_samples(split))
    assert m["ARC/pass@1"] == 1.0
    ev.begin()
    m2 = ev.result(eval_dir(str(tmp_path), 0), 0)
    assert m2["ARC/num_puzzles"] == 0 and m2["ARC/pass@1"] == 0.0
    assert json.loads((tmp_path / "eval" / "step_0" / "submission.json").read_text()) == {}


def test_load_evaluator_class():
    assert load_evaluator_class("arc@ARC") is ARC
    with pytest.raises(ValueError, match="arc@ARC"):
        load_evaluator_class("arc@Nope")


# ------------------------------------------------------------------------------------------
# report and wandb
# ------------------------------------------------------------------------------------------
def test_png_is_valid():
    from evaluators.report import PALETTE, png_bytes, render_grid

    g = np.array([[0, 1, 2], [3, 4, 9]], np.uint8)
    img = render_grid(g, cell=3)
    assert img.shape == (2 * 4 + 1, 3 * 4 + 1, 3)
    np.testing.assert_array_equal(img[1, 1], PALETTE[0])
    np.testing.assert_array_equal(img[5, 9], PALETTE[9])
    data = png_bytes(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    # walk the chunks, check CRCs, and decompress the pixels back
    pos, idat, tags = 8, b"", []
    while pos < len(data):
        (n,) = np.frombuffer(data[pos:pos + 4], ">u4")
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        crc = int(np.frombuffer(data[pos + 8 + n:pos + 12 + n], ">u4")[0])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        tags.append(tag)
        if tag == b"IDAT":
            idat += body
        pos += 12 + n
    assert tags == [b"IHDR", b"IDAT", b"IEND"]
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(img.shape[0], -1)
    assert (raw[:, 0] == 0).all()
    np.testing.assert_array_equal(raw[:, 1:].reshape(img.shape), img)


def test_wandb_table_logged_when_run_active(tmp_path, monkeypatch):
    import types

    logged = {}

    class FakeTable:
        def __init__(self, columns):
            self.columns, self.rows = columns, []

        def add_data(self, *row):
            assert len(row) == len(self.columns)
            self.rows.append(row)

    fake = types.SimpleNamespace(
        run=object(), Table=FakeTable,
        Image=lambda arr, caption=None: ("img", np.asarray(arr).shape, caption),
        log=lambda d, step=None: logged.update(d=d, step=step))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    split, build = hand_case()
    run_eval(split, build([0, 1]), run_dir=str(tmp_path), step=5, wandb_log=True, report_puzzles=4)
    table = logged["d"]["ARC/report"]
    assert logged["step"] == 5
    assert len(table.rows) == 3  # puzzle 0 has 2 test inputs, puzzle 1 one
    assert table.rows[0][2] is True and table.rows[1][2] is False
    # no active run: nothing logged
    logged.clear()
    fake.run = None
    run_eval(split, build([0, 1]), run_dir=str(tmp_path), step=6, wandb_log=True)
    assert not logged


# ------------------------------------------------------------------------------------------
# multi-rank gather
# ------------------------------------------------------------------------------------------
def _mixed_samples(split):
    """A mixture of right, wrong, tied and unparseable predictions over every puzzle."""
    rng = np.random.default_rng(6)
    s = []
    for p in range(split.num_puzzles):
        for i, (_, truth) in enumerate(split.test_pairs(p)):
            q = split.test_query(p, i)
            alt = rand_grid(rng, 2, 3)
            for j, v in enumerate(split.variants_of(p)):
                r = rng.random()
                ans = truth if r < 0.4 else (alt if r < 0.8 else (None if r < 0.9 else rand_grid(rng, 3, 3)))
                s.append(sample(split, int(v), q, ans, float(rng.normal()), int(rng.integers(1, 9))))
    return s


def _gather_worker(rank, world, port, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        split = FakeSplit(make_puzzles(4, tests_per=(1, 2)), num_variants=6)
        samples = _mixed_samples(split)
        ev = ARC(split, pass_ks=(1, 2, 5))
        ev.begin()
        for n, (b, o) in enumerate(batches(split, samples, batch_size=4)):
            if n % world == rank:  # interleaved shards, like a distributed sampler
                ev.update(b, o)
        parts = gather_to_main(ev.local_data())  # what the runner (training/evaluation.py) does
        m = ev.result(eval_dir(os.path.join(out_dir, "dist"), 1), 1, parts) if rank == 0 else None
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(m, f)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_rank_gather_matches_single_process(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    mp.spawn(_gather_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    dist_metrics = json.loads((tmp_path / "rank0.json").read_text())
    assert json.loads((tmp_path / "rank1.json").read_text()) is None

    split = FakeSplit(make_puzzles(4, tests_per=(1, 2)), num_variants=6)
    _, single = run_eval(split, _mixed_samples(split), run_dir=str(tmp_path / "single"), step=1,
                         batch_size=4, pass_ks=(1, 2, 5))
    assert dist_metrics == single
    for name in ("submission.json", "solutions.json"):
        a = json.loads((tmp_path / "dist" / "eval" / "step_1" / name).read_text())
        b = json.loads((tmp_path / "single" / "eval" / "step_1" / name).read_text())
        assert a == b
    assert 0 < single["ARC/pass@1"] < 1  # the mixture is a real test of the ranking


# ------------------------------------------------------------------------------------------
# through the real builder + loader on a tiny ARC source
# ------------------------------------------------------------------------------------------
def test_real_builder_and_loader(tmp_path):
    from dataset import loader
    from dataset.build_arc_dataset import build_dataset

    rng = np.random.default_rng(7)

    def task(n_demos, n_tests):
        pair = lambda: {"input": rand_grid(rng, *rng.integers(1, 6, 2)).tolist(),  # noqa: E731
                        "output": rand_grid(rng, *rng.integers(1, 6, 2)).tolist()}
        return {"train": [pair() for _ in range(n_demos)], "test": [pair() for _ in range(n_tests)]}

    src_train, src_eval = tmp_path / "src_train", tmp_path / "src_eval"
    src_train.mkdir()
    src_eval.mkdir()
    (src_train / "tr000001.json").write_text(json.dumps(task(2, 1)))
    tasks = {"ev00000a": task(2, 2), "ev00000b": task(3, 1), "ev00000c": task(2, 1)}
    for tid, t in tasks.items():
        (src_eval / f"{tid}.json").write_text(json.dumps(t))
    out = tmp_path / "data"
    build_dataset([str(src_train)], [str(src_eval)], out, num_aug=8, seed=1, max_grid_size=6,
                  progress=False, log=None)
    split = loader.load_split([str(out)], "eval")

    samples = []
    wrong = rand_grid(rng, 2, 2)
    for q in np.flatnonzero(np.asarray(split.query_test_index) >= 0):
        p, i = int(split.query_puzzle[q]), int(split.query_test_index[q])
        truth = np.asarray(split.test_pairs(p)[i][1], np.uint8)
        answer = wrong if split.puzzle_ids[p] == "ev00000c" else truth
        for v in np.flatnonzero(np.asarray(split.variant_puzzle) == p):
            samples.append(sample(split, int(v), int(q), answer, 0.0, 3))
    _, m = run_eval(split, samples, run_dir=str(tmp_path / "run"), step=2, batch_size=7)
    assert m["ARC/num_puzzles"] == 3 and m["ARC/num_test_inputs"] == 4
    assert m["ARC/pass@1"] == pytest.approx(2 / 3) and m["ARC/task_pass@1"] == pytest.approx(2 / 3)
    d = tmp_path / "run" / "eval" / "step_2"
    sol = json.loads((d / "solutions.json").read_text())
    assert sol == {tid: [p["output"] for p in t["test"]] for tid, t in tasks.items()}
    res = load_scorer().score(json.loads((d / "submission.json").read_text()), sol)
    assert res["pass@2"] == pytest.approx(m["ARC/pass@2"])

    # the real EvalLoader's batches (padded last batch, max_eval_groups=2): predictions are
    # the true answers, so the 2 evaluated puzzles score 100% and the denominator is 2
    ev = ARC(split, pass_ks=(1, 2), report_puzzles=0)
    ev.begin()
    for batch in loader.EvalLoader(split, global_batch_size=5, max_eval_groups=2):
        preds = []
        for v, q in zip(batch["variant_index"].tolist(), batch["query_index"].tolist()):
            p, i = int(split.query_puzzle[q]), int(split.query_test_index[q])
            preds.append(encode_grid(apply_variant(np.asarray(split.test_pairs(p)[i][1], np.uint8),
                                                   split.variants[v]), split.side))
        ev.update(batch, {"preds": torch.tensor(np.stack(preds)),
                          "q_halt_logits": torch.zeros(len(preds))})
    m2 = ev.result(None, 0)
    assert m2["ARC/num_puzzles"] == 2 and m2["ARC/pass@1"] == 1.0 and m2["ARC/task_pass@1"] == 1.0
