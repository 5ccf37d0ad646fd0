"""ARC evaluator: vote over augmented variants, score pass@k, write the submission.

Each eval sample is one (variant, query) pair: ``variant_index`` is the global variant
index in the split, ``query_index`` the index of the query pair. For every prediction the
evaluator crops the canvas at its EOS boundary (the rule of ``dataset.grids.decode_grid``),
undoes the variant (``dataset.augment.invert_variant``) and votes: identical answers to the
same original test input (puzzle, test index) are grouped, ranked by vote count, ties broken
by the mean sigmoid(q_halt) of their voters (higher first).

Metrics (denominators are the puzzles that appear in the predictions, never the whole split):
  ARC/pass@k       per-test-input credit: a puzzle scores the fraction of its test inputs
                   whose right answer is within the top k; averaged over evaluated puzzles
  ARC/task_pass@k  a puzzle counts only when all its test inputs are right within top k
  ARC/num_puzzles, ARC/num_test_inputs, ARC/num_samples, ARC/samples_per_test_input,
  ARC/unparseable_frac, ARC/mean_steps
  pass@k for k above the number of samples per test input (and above submission_k) is not
  reported: it could only repeat pass@(samples).

The heavy work is vectorised: crops are computed per batch in ``update`` and stored as one
flat byte buffer; ``result`` undoes the variants per (height, width, dihedral) group with a
single gather and groups answers with ``np.unique`` over byte rows. Python loops run per
unique answer or per test input only.
"""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from typing import Any

import numpy as np
import torch

from dataset.augment import DIHEDRAL_INVERSE, dihedral
from dataset.atomic import atomic_write_text
from dataset.grids import COLOUR_OFFSET, crop_sizes

log = logging.getLogger(__name__)

_FIELDS = ("variant", "query", "h", "w", "q", "steps", "cells")


# --------------------------------------------------------------------------------------
# vectorised inverses of the variant helpers (tests check them against the originals)
# --------------------------------------------------------------------------------------
def inverse_colour_tables(variants: np.ndarray) -> np.ndarray:
    """[nv, 10] lookup tables undoing each variant's colour permutation (as invert_variant)."""
    return np.argsort(np.asarray(variants)[:, 1:], axis=1).astype(np.uint8)


def inverse_dihedral_index(h: int, w: int, dihedral_id: int) -> np.ndarray:
    """Gather map undoing dihedral ``dihedral_id`` on an h x w grid: for a transformed grid g
    (flattened), ``g.ravel()[idx]`` is the original grid. Derived from ``augment.dihedral`` so
    there is one definition of every transform."""
    return dihedral(np.arange(h * w).reshape(h, w), int(DIHEDRAL_INVERSE[int(dihedral_id)]))


def _to_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach()
        if x.is_floating_point() and x.dtype != torch.float64:
            x = x.float()  # bfloat16 / float16 have no numpy dtype
        return x.cpu().numpy()
    return np.asarray(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def _grid_list(grid: np.ndarray | None) -> list[list[int]]:
    if grid is None:
        return [[0]]
    return np.asarray(grid).astype(int).tolist()


def _write_json(path: str, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj))


def _concat_chunks(chunks: list[dict]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    dtypes = {"variant": np.int64, "query": np.int64, "h": np.int16, "w": np.int16,
              "q": np.float32, "steps": np.float64, "cells": np.uint8}
    for key in _FIELDS:
        parts = [c[key] for c in chunks if c is not None and c.get(key) is not None]
        out[key] = np.concatenate(parts).astype(dtypes[key], copy=False) if parts else np.zeros(0, dtypes[key])
    return out


# --------------------------------------------------------------------------------------
class ARC:
    """Voting evaluator over augmented ARC eval samples (see module docstring)."""

    def __init__(self, split, pass_ks=(1, 2, 5, 10, 100, 1000), submission_k: int = 2,
                 report_puzzles: int = 16, wandb_log: bool = False, **kw):
        self.split = split
        self.pass_ks = tuple(int(k) for k in pass_ks)
        self.submission_k = int(submission_k)
        self.report_puzzles = int(report_puzzles)
        self.wandb_log = bool(wandb_log)
        self.extra = kw  # unused Hydra keys are accepted and ignored
        if kw:
            log.debug("ARC evaluator ignores options %s", sorted(kw))

        self.side = int(split.side)
        self._query_puzzle = np.asarray(split.query_puzzle, dtype=np.int64)
        self._query_test = np.asarray(split.query_test_index, dtype=np.int64)
        self._variant_puzzle = np.asarray(split.variant_puzzle, dtype=np.int64)
        self._variants = np.asarray(split.variants, dtype=np.uint8)
        self._inv_colour = inverse_colour_tables(self._variants)
        self._test_pairs_cache: dict[int, list] = {}
        self._num_tests = None  # per puzzle, computed lazily (needs test_pairs of every puzzle)
        self.begin()

    # ---------------------------------------------------------------- collection
    def begin(self) -> None:
        self._chunks: list[dict] = []

    def update(self, batch: dict, outputs: dict) -> None:
        preds = _to_numpy(outputs["preds"])
        n = preds.shape[0]
        keep = np.ones(n, dtype=bool)
        if batch.get("valid") is not None:
            keep &= _to_numpy(batch["valid"]).astype(bool).reshape(n)
        variant = _to_numpy(batch["variant_index"]).astype(np.int64).reshape(n)
        query = _to_numpy(batch["query_index"]).astype(np.int64).reshape(n)
        # only test queries are scored (padding rows may hold any index: mask them first)
        rows = np.flatnonzero(keep)
        rows = rows[self._query_test[query[rows]] >= 0]
        if rows.size == 0:
            return
        canv = preds[rows].reshape(rows.size, -1)
        if canv.shape[1] != self.side * self.side:
            raise ValueError(f"preds have {canv.shape[1]} tokens, expected side**2 = {self.side ** 2}")
        h, w = crop_sizes(canv, self.side)
        grid = canv.reshape(rows.size, self.side, self.side)
        ar = np.arange(self.side)
        mask = (ar[None, :, None] < h[:, None, None]) & (ar[None, None, :] < w[:, None, None])
        cells = (grid[mask] - COLOUR_OFFSET).astype(np.uint8)  # row-major crops, sample after sample
        q = _to_numpy(outputs["q_halt_logits"]).astype(np.float32).reshape(n)[rows]
        steps = None
        if outputs.get("steps") is not None:
            steps = _to_numpy(outputs["steps"]).astype(np.float64).reshape(n)[rows]
        self._chunks.append({
            "variant": variant[rows].astype(np.int32), "query": query[rows].astype(np.int32),
            "h": h.astype(np.int16), "w": w.astype(np.int16), "q": q, "steps": steps, "cells": cells,
        })

    def local_data(self) -> dict[str, np.ndarray]:
        """This process's collected samples as one dict of arrays."""
        data = _concat_chunks(self._chunks)
        self._chunks = [data]  # keep the concatenation, drop the pieces
        return data

    # ---------------------------------------------------------------- result
    def result(self, out_dir: str | os.PathLike | None, step: int, parts: list[dict] | None = None) -> dict:
        """The metrics of `parts` (every process's `local_data()`, gathered by the runner; default:
        this process's own samples) and, when `out_dir` is given, submission.json, solutions.json,
        metrics.json and report.html written into that (existing) folder."""
        data = _concat_chunks(parts) if parts is not None else self.local_data()

        scored = self.score(data)
        metrics = scored["metrics"]
        if out_dir is not None:
            _write_json(os.path.join(out_dir, "submission.json"), scored["submission"])
            _write_json(os.path.join(out_dir, "solutions.json"), scored["solutions"])
            _write_json(os.path.join(out_dir, "metrics.json"), {"step": step, **metrics})
            if self.report_puzzles > 0:
                from evaluators import report

                entries = self._report_entries(scored)
                html = report.render_html(entries, title=f"ARC eval, step {step}", metrics=metrics,
                                          num_puzzles=len(scored["eval_puzzles"]))
                atomic_write_text(os.path.join(out_dir, "report.html"), html)
                if self.wandb_log:
                    report.log_wandb(entries, step)
        return metrics

    # ---------------------------------------------------------------- scoring
    def _test_pairs(self, p: int) -> list:
        if p not in self._test_pairs_cache:
            self._test_pairs_cache[p] = list(self.split.test_pairs(p))
        return self._test_pairs_cache[p]

    def score(self, data: dict[str, np.ndarray]) -> dict:
        """Vote and score a dict of collected arrays (single process). Returns metrics,
        submission, solutions and the ranked answers per test input."""
        n = int(data["variant"].shape[0])
        h_all = data["h"].astype(np.int64)
        w_all = data["w"].astype(np.int64)
        start_all = np.cumsum(h_all * w_all) - h_all * w_all  # offsets into data["cells"]
        # canonical order, so the result does not depend on how samples were split over ranks
        order = np.lexsort((data["variant"], data["query"]))
        variant = data["variant"][order].astype(np.int64)
        query = data["query"][order].astype(np.int64)
        h, w, start = h_all[order], w_all[order], start_all[order]
        q_logit = data["q"][order].astype(np.float64)
        conf = _sigmoid(q_logit)
        cells = data["cells"]

        puzzle = self._query_puzzle[query]
        bad = self._variant_puzzle[variant] != puzzle
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"sample variant {variant[i]} belongs to puzzle {self._variant_puzzle[variant[i]]}"
                             f" but its query {query[i]} to puzzle {puzzle[i]}")
        test_idx = self._query_test[query]

        # dense ids for the test inputs of the evaluated puzzles
        eval_puzzles = np.unique(puzzle)
        tests: list[tuple[int, int]] = []  # dense id -> (puzzle, test index)
        first_test = np.zeros(len(self.split.puzzle_ids), dtype=np.int64)
        tests_of = np.zeros(len(self.split.puzzle_ids), dtype=np.int64)
        for p in eval_puzzles.tolist():
            first_test[p] = len(tests)
            tests_of[p] = len(self._test_pairs(p))
            tests.extend((p, i) for i in range(tests_of[p]))
        num_tests = len(tests)
        if np.any(test_idx >= tests_of[puzzle]):
            raise ValueError("a query's test index is beyond its puzzle's test pairs")
        tid = first_test[puzzle] + test_idx

        truths: list[np.ndarray | None] = []
        for p, i in tests:
            out = self._test_pairs(p)[i][1]
            truths.append(None if out is None else np.asarray(out, dtype=np.uint8))

        # ---- undo the variants, one gather per (h, w, dihedral) group
        parse = w > 0
        buckets: dict[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        idx = np.flatnonzero(parse)
        if idx.size:
            dih = self._variants[variant[idx], 0].astype(np.int64)
            key = (h[idx] * 4096 + w[idx]) * 8 + dih
            ukeys, inv = np.unique(key, return_inverse=True)
            sorter = np.argsort(inv, kind="stable")
            bounds = np.searchsorted(inv[sorter], np.arange(len(ukeys) + 1))
            for g, k in enumerate(ukeys.tolist()):
                sel = idx[sorter[bounds[g]:bounds[g + 1]]]
                d, hw = k % 8, k // 8
                gh, gw = hw // 4096, hw % 4096
                flat = cells[start[sel][:, None] + np.arange(gh * gw)[None, :]]
                flat = np.take_along_axis(self._inv_colour[variant[sel]], flat.astype(np.int64), axis=1)
                gather = inverse_dihedral_index(gh, gw, d)
                buckets[gather.shape].append((sel, flat[:, gather.ravel()]))

        # ---- vote: identical (test input, answer) rows, per answer shape
        cand_t, cand_count, cand_conf, cand_q, cand_grid, cand_correct = [], [], [], [], [], []
        for (gh, gw), parts in sorted(buckets.items()):
            sel = np.concatenate([s for s, _ in parts])
            grids = np.concatenate([g for _, g in parts]).astype(np.uint8)
            t = tid[sel]
            rows = np.ascontiguousarray(np.concatenate([t.astype(">i4").view(np.uint8).reshape(-1, 4), grids], axis=1))
            keys = rows.view(np.dtype((np.void, rows.shape[1]))).ravel()
            _, first, inv = np.unique(keys, return_index=True, return_inverse=True)
            counts = np.bincount(inv)
            conf_sum = np.bincount(inv, weights=conf[sel])
            q_sum = np.bincount(inv, weights=q_logit[sel])
            ut = t[first]
            ugrids = grids[first]
            correct = np.zeros(len(first), dtype=bool)
            for j, tt in enumerate(ut.tolist()):
                truth = truths[tt]
                if truth is not None and truth.shape == (gh, gw):
                    correct[j] = np.array_equal(ugrids[j], truth.ravel())
            cand_t.append(ut)
            cand_count.append(counts)
            cand_conf.append(conf_sum / counts)
            cand_q.append(q_sum / counts)
            cand_grid.extend(g.reshape(gh, gw) for g in ugrids)
            cand_correct.append(correct)
        if cand_t:
            c_t = np.concatenate(cand_t)
            c_count = np.concatenate(cand_count)
            c_conf = np.concatenate(cand_conf)
            c_q = np.concatenate(cand_q)
            c_correct = np.concatenate(cand_correct)
        else:
            c_t = np.zeros(0, np.int64)
            c_count = np.zeros(0, np.int64)
            c_conf = np.zeros(0)
            c_q = np.zeros(0)
            c_correct = np.zeros(0, bool)
        # rank within each test input: more votes first, then higher mean confidence; the
        # remaining ties keep the (deterministic) order of the candidate list
        ranked = np.lexsort((np.arange(len(c_t)), -c_conf, -c_count, c_t))
        sorted_t = c_t[ranked]
        group_start = np.searchsorted(sorted_t, sorted_t, side="left")
        rank_sorted = np.arange(len(ranked)) - group_start
        rank = np.empty(len(ranked), dtype=np.int64)
        rank[ranked] = rank_sorted
        big = np.iinfo(np.int64).max
        correct_rank = np.full(num_tests, big, dtype=np.int64)
        hit = np.flatnonzero(c_correct)
        np.minimum.at(correct_rank, c_t[hit], rank[hit])
        # ranked answers per test input
        answers: list[list[dict]] = [[] for _ in range(num_tests)]
        for c in ranked.tolist():
            answers[int(c_t[c])].append({"grid": cand_grid[c], "votes": int(c_count[c]), "confidence": float(c_conf[c]),
                                         "q_halt": float(c_q[c]), "correct": bool(c_correct[c])})

        # ---- metrics over evaluated (and labelled) puzzles
        puzzle_tests: dict[int, list[int]] = defaultdict(list)
        for t_id, (p, _) in enumerate(tests):
            puzzle_tests[p].append(t_id)
        scored_puzzles = [p for p in eval_puzzles.tolist() if all(truths[t] is not None for t in puzzle_tests[p])]
        metrics: dict[str, float] = {}
        # pass@k needs up to k distinct answers per test input: with fewer samples (variants) per input
        # than k it equals pass@(samples) and would read as a measurement it is not, so it is left out.
        # k up to the submission's attempts (pass@2, the ARC Prize score) is always reported.
        samples_per_test = np.bincount(tid, minlength=num_tests) if num_tests else np.zeros(0, np.int64)
        max_samples = int(samples_per_test.max()) if samples_per_test.size else 0
        for k in (k for k in self.pass_ks if k <= max(max_samples, self.submission_k)):
            per_test, per_task = [], []
            for p in scored_puzzles:
                ok = correct_rank[puzzle_tests[p]] < k
                per_test.append(ok.mean() if ok.size else 0.0)
                per_task.append(bool(ok.all()) if ok.size else False)
            metrics[f"ARC/pass@{k}"] = float(np.mean(per_test)) if per_test else 0.0
            metrics[f"ARC/task_pass@{k}"] = float(np.mean(per_task)) if per_task else 0.0
        metrics["ARC/num_puzzles"] = len(scored_puzzles)
        metrics["ARC/num_test_inputs"] = int(sum(len(puzzle_tests[p]) for p in scored_puzzles))
        metrics["ARC/num_samples"] = n
        metrics["ARC/samples_per_test_input"] = float(samples_per_test.mean()) if samples_per_test.size else 0.0
        metrics["ARC/unparseable_frac"] = float(1.0 - parse.mean()) if n else 0.0
        if data["steps"].size:
            metrics["ARC/mean_steps"] = float(data["steps"].mean())
        if len(scored_puzzles) < len(eval_puzzles):
            metrics["ARC/num_unlabelled_puzzles"] = len(eval_puzzles) - len(scored_puzzles)

        # ---- submission (ARC Prize format) and solutions (Kaggle format)
        ids = self.split.puzzle_ids
        submission: dict[str, list[dict]] = {}
        solutions: dict[str, list] = {}
        for p in eval_puzzles.tolist():
            entry = []
            for t_id in puzzle_tests[p]:
                top = answers[t_id][: self.submission_k]
                entry.append({f"attempt_{a + 1}": _grid_list(top[a]["grid"] if a < len(top) else None)
                              for a in range(self.submission_k)})
            submission[ids[p]] = entry
            if p in scored_puzzles:
                solutions[ids[p]] = [_grid_list(truths[t]) for t in puzzle_tests[p]]
        return {"metrics": metrics, "submission": submission, "solutions": solutions,
                "tests": tests, "truths": truths, "answers": answers, "correct_rank": correct_rank,
                "puzzle_tests": dict(puzzle_tests), "eval_puzzles": eval_puzzles.tolist()}

    # ---------------------------------------------------------------- report
    def _report_entries(self, scored: dict) -> list[dict]:
        puzzles = scored["eval_puzzles"]
        if not puzzles:
            return []
        rng = np.random.default_rng(0)
        chosen = sorted(rng.choice(puzzles, size=min(self.report_puzzles, len(puzzles)), replace=False).tolist())
        k = max(self.submission_k, 1)
        entries = []
        for p in chosen:
            test_entries = []
            for t_id in scored["puzzle_tests"][p]:
                _, i = scored["tests"][t_id]
                test_entries.append({
                    "index": i,
                    "input": np.asarray(self._test_pairs(p)[i][0], dtype=np.uint8),
                    "truth": scored["truths"][t_id],
                    "answers": scored["answers"][t_id][:max(2, k)],
                    "samples": sum(a["votes"] for a in scored["answers"][t_id]),
                    "correct": bool(scored["correct_rank"][t_id] < k),
                })
            entries.append({
                "puzzle_id": self.split.puzzle_ids[p],
                "demos": [(np.asarray(a, np.uint8), np.asarray(b, np.uint8)) for a, b in self.split.demos(p)],
                "tests": test_entries,
                "k": k,
            })
        return entries
