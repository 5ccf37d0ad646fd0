"""Reading dataset directories and assembling batches.

`load_split(paths, split) -> ARCSplit` reads one or several dataset directories written by
`python -m dataset.build_arc_dataset`. `TrainLoader` and `EvalLoader` turn a split into batches
(dicts of CPU tensors, see docs/ARCHITECTURE.md).

Batches are assembled with numpy: every grid is encoded once per dihedral into a uint8 canvas
cache ([grids + 1, 8, seq_len], the extra row all PAD for empty demo slots), so a batch is one
gather from the cache, an optional per-sample shift (translation) and a per-sample 12-entry
colour lookup table (PAD and EOS fixed, colour c -> perm[c]).

Example pools (RE-ARC, `puzzle_pool`): every example of a pool is a query; `TrainLoader` draws its
demos from the other examples of the same pool each epoch, from an RNG seeded by (seed, epoch), so
the draws follow from the loader's resumable state. Pool grids are not in the canvas cache (it
would cost 8 canvases per grid for every example); they are encoded per batch, vectorised.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from .augment import NUM_DIHEDRAL, dihedral
from .grids import COLOUR_OFFSET, EOS_ID, IGNORE_LABEL_ID, PAD_ID, encode_grid
from .variants import TRANSPOSES

SUPPORTED_FORMATS = (1, 2)


def _dihedral_flags() -> np.ndarray:
    """[8, 3] (flip rows, flip columns, transpose after) with which each dihedral maps cell (r, c)
    of an h x w grid, found from dataset.augment.dihedral itself (one definition)."""
    g = np.arange(6).reshape(2, 3)
    flags = np.zeros((NUM_DIHEDRAL, 3), dtype=bool)
    for d in range(NUM_DIHEDRAL):
        target = dihedral(g, d)
        for fr, fc, tr in np.ndindex(2, 2, 2):
            x = g[::-1] if fr else g
            x = x[:, ::-1] if fc else x
            x = x.T if tr else x
            if x.shape == target.shape and np.array_equal(x, target):
                flags[d] = (fr, fc, tr)
                break
    return flags


DIHEDRAL_FLAGS = _dihedral_flags()

# arrays whose values index another table, with the count they are shifted by when concatenating
_INDEX_ARRAYS = {"pair_input": "grids", "pair_output": "grids", "query_puzzle": "puzzles", "query_pair": "pairs",
                 "variant_puzzle": "puzzles"}
_OFFSET_ARRAYS = {"grid_offsets": "cells", "puzzle_pair_offsets": "pairs", "puzzle_query_offsets": "queries",
                  "puzzle_variant_offsets": "variants"}


def _read_dir(path: Path, split: str) -> tuple[dict, dict, list[str]]:
    meta_file = path / "metadata.json"
    split_dir = path / split
    if not path.is_dir() or not meta_file.is_file():
        raise FileNotFoundError(f"dataset directory {path} not found (or has no metadata.json): datasets are written "
                                f"by python -m dataset.build_arc_dataset (each config's recipe: training/preflight.py)")
    if not (split_dir / "arrays.npz").is_file():
        raise FileNotFoundError(f"dataset {path} has no '{split}' split ({split_dir / 'arrays.npz'} is missing): "
                                f"rebuild it with python -m dataset.build_arc_dataset")
    with open(meta_file) as f:
        meta = json.load(f)
    if int(meta.get("format_version", 1)) not in SUPPORTED_FORMATS:
        raise ValueError(f"dataset {path} has format_version {meta.get('format_version')}; this loader reads "
                         f"{SUPPORTED_FORMATS}: rebuild it with this checkout's builder")
    with np.load(split_dir / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays.setdefault("puzzle_pool", np.zeros(len(arrays["puzzle_num_demos"]), dtype=bool))  # format 1
    with open(split_dir / "puzzles.json") as f:
        ids = json.load(f)
    return meta, arrays, ids


class ARCSplit:
    """One split (train or eval) of one or several dataset directories, concatenated."""

    def __init__(self, paths: str | list[str], split: str):
        if split not in ("train", "eval"):
            raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if not paths:
            raise ValueError("load_split needs at least one dataset directory")
        self.split = split
        self.paths = [str(p) for p in paths]
        parts = [_read_dir(Path(p), split) for p in paths]
        metas = [m for m, _, _ in parts]
        for key in ("side", "vocab_size"):
            values = {m[key] for m in metas}
            if len(values) > 1:
                raise ValueError(f"datasets {self.paths} disagree on {key}: "
                                 + ", ".join(f"{p}: {m[key]}" for p, m in zip(self.paths, metas)))
        meta = dict(metas[0])
        meta["max_demos"] = max(int(m["max_demos"]) for m in metas)
        meta["translate"] = any(bool(m.get("translate")) for m in metas)
        meta["paths"] = self.paths
        if len(metas) > 1:
            meta["datasets"] = metas
        self.metadata = meta

        ids: list[str] = []
        seen: dict[str, str] = {}
        for p, (_, _, part_ids) in zip(self.paths, parts):
            for i in part_ids:
                if i in seen:
                    raise ValueError(f"puzzle id {i!r} is in the {split} split of both {seen[i]} and {p}")
                seen[i] = p
            ids += part_ids
        self.puzzle_ids: list[str] = ids

        # concatenate, shifting indices and offsets
        counts = {"grids": 0, "cells": 0, "pairs": 0, "puzzles": 0, "queries": 0, "variants": 0}
        cols: dict[str, list] = {}
        for _, a, _ in parts:
            for k, v in a.items():
                if k in _INDEX_ARRAYS:
                    v = v.astype(np.int64) + counts[_INDEX_ARRAYS[k]]
                elif k in _OFFSET_ARRAYS:
                    v = v.astype(np.int64)[(1 if cols.get(k) else 0):] + counts[_OFFSET_ARRAYS[k]]
                cols.setdefault(k, []).append(v)
            counts["grids"] += len(a["grid_shapes"])
            counts["cells"] += len(a["grid_cells"])
            counts["pairs"] += len(a["pair_input"])
            counts["puzzles"] += len(a["puzzle_num_demos"])
            counts["queries"] += len(a["query_puzzle"])
            counts["variants"] += len(a["variants"])
        # one directory: its arrays as read (no copy: a RE-ARC split's cells are hundreds of MB)
        self._set_arrays({k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in cols.items()})

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], puzzle_ids: list[str], metadata: dict, split: str,
                    paths: list[str]) -> "ARCSplit":
        """A split made in memory from arrays in the on-disk layout (dataset/build_arc_dataset.py),
        e.g. a view of another split that holds only some of its grids (dataset/adaptation.py)."""
        self = cls.__new__(cls)
        self.split, self.paths, self.metadata = split, list(paths), dict(metadata)
        self.puzzle_ids = list(puzzle_ids)
        self._set_arrays(arrays)
        return self

    def _set_arrays(self, a: dict[str, np.ndarray]) -> None:
        self.grid_cells: np.ndarray = np.asarray(a["grid_cells"], dtype=np.uint8)
        self.grid_offsets: np.ndarray = a["grid_offsets"].astype(np.int64)
        self.grid_shapes: np.ndarray = a["grid_shapes"].astype(np.int64)
        self.pair_input: np.ndarray = a["pair_input"].astype(np.int64)
        self.pair_output: np.ndarray = a["pair_output"].astype(np.int64)
        self.puzzle_pair_offsets: np.ndarray = a["puzzle_pair_offsets"]
        self.puzzle_num_demos: np.ndarray = a["puzzle_num_demos"].astype(np.int64)
        self.query_puzzle: np.ndarray = a["query_puzzle"].astype(np.int64)
        self.query_pair_index: np.ndarray = a["query_pair"].astype(np.int64)
        self.query_test_index: np.ndarray = a["query_test_index"].astype(np.int64)
        self.puzzle_query_offsets: np.ndarray = a["puzzle_query_offsets"]
        self.variants: np.ndarray = a["variants"].astype(np.uint8)
        self.variant_puzzle: np.ndarray = a["variant_puzzle"].astype(np.int64)
        self.puzzle_variant_offsets: np.ndarray = a["puzzle_variant_offsets"]
        if len(self.puzzle_ids) != len(self.puzzle_num_demos):
            raise ValueError(f"{self.paths}: puzzles.json and arrays.npz disagree on the number of puzzles")
        self.puzzle_pool: np.ndarray = a.get("puzzle_pool", np.zeros(len(self.puzzle_num_demos), bool)).astype(bool)
        self.query_is_pool: np.ndarray = self.puzzle_pool[self.query_puzzle]
        pair_in_pool = np.repeat(self.puzzle_pool, np.diff(self.puzzle_pair_offsets))
        grid_in_pool = np.zeros(self.num_grids + 1, dtype=bool)  # + the empty-slot id
        grid_in_pool[self.pair_input[pair_in_pool]] = True
        grid_in_pool[self.pair_output[pair_in_pool]] = True
        self._grid_in_pool = grid_in_pool
        # row of each grid in the canvas cache (pool grids and the empty slot -> the all-PAD last row)
        cached = np.flatnonzero(~grid_in_pool[:-1])
        self._cache_row = np.full(self.num_grids + 1, len(cached), dtype=np.int64)
        self._cache_row[cached] = np.arange(len(cached))
        self._cached_grids = cached
        self._canvas_cache: np.ndarray | None = None
        self._query_tables: dict[int, tuple] = {}

    # ------------------------------------------------------------------ sizes
    @property
    def side(self) -> int:
        return int(self.metadata["side"])

    @property
    def seq_len(self) -> int:
        return self.side * self.side

    @property
    def vocab_size(self) -> int:
        return int(self.metadata["vocab_size"])

    @property
    def max_demos(self) -> int:
        return int(self.metadata["max_demos"])

    @property
    def translate(self) -> bool:
        return bool(self.metadata.get("translate"))

    @property
    def num_puzzles(self) -> int:
        return len(self.puzzle_ids)

    @property
    def num_queries(self) -> int:
        return len(self.query_puzzle)

    @property
    def num_variants(self) -> int:
        return len(self.variants)

    @property
    def num_grids(self) -> int:
        return len(self.grid_shapes)

    # ------------------------------------------------------------------ lookups (original grids)
    def grid(self, i: int) -> np.ndarray:
        h, w = self.grid_shapes[i]
        return self.grid_cells[self.grid_offsets[i]:self.grid_offsets[i + 1]].reshape(int(h), int(w))

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.grid(self.pair_input[i]), self.grid(self.pair_output[i])

    def puzzle_variant_range(self, p: int) -> tuple[int, int]:
        return int(self.puzzle_variant_offsets[p]), int(self.puzzle_variant_offsets[p + 1])

    def puzzle_query_range(self, p: int) -> tuple[int, int]:
        return int(self.puzzle_query_offsets[p]), int(self.puzzle_query_offsets[p + 1])

    def _demo_pair_range(self, p: int) -> range:
        start = int(self.puzzle_pair_offsets[p])
        return range(start, start + int(self.puzzle_num_demos[p]))

    def demos(self, p: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """All stored demo pairs of puzzle p (original, untransformed uint8 grids)."""
        return [self.pair(i) for i in self._demo_pair_range(p)]

    def test_pairs(self, p: int) -> list[tuple[np.ndarray, np.ndarray]]:
        start = int(self.puzzle_pair_offsets[p]) + int(self.puzzle_num_demos[p])
        return [self.pair(i) for i in range(start, int(self.puzzle_pair_offsets[p + 1]))]

    def query_pair(self, q: int) -> tuple[np.ndarray, np.ndarray]:
        return self.pair(int(self.query_pair_index[q]))

    def query_demo_pairs(self, q: int, max_demos: int | None = None) -> list[int]:
        """Pair indices that form query q's context: its puzzle's demos without the query's own
        pair (leave-one-out queries), the first `max_demos` of them."""
        own = int(self.query_pair_index[q])
        pairs = [i for i in self._demo_pair_range(int(self.query_puzzle[q])) if i != own]
        return pairs[: (self.max_demos if max_demos is None else max_demos)]

    def query_demos(self, q: int, max_demos: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.pair(i) for i in self.query_demo_pairs(q, max_demos)]

    def variant(self, v: int) -> np.ndarray:
        return self.variants[v]

    # ------------------------------------------------------------------ batch assembly
    @property
    def num_pool_queries(self) -> int:
        return int(self.query_is_pool.sum())

    def canvases(self) -> np.ndarray:
        """uint8 [cached grids + 1, 8, seq_len]: every grid outside example pools (row
        `_cache_row[grid]`; all grids when there are no pools) transformed by each dihedral, encoded
        at the top-left; the last row is all PAD (empty demo slot). Built once, shared by loaders."""
        if self._canvas_cache is None:
            side = self.side
            cache = np.zeros((len(self._cached_grids) + 1, NUM_DIHEDRAL, side * side), dtype=np.uint8)
            for row, i in enumerate(self._cached_grids):
                g = self.grid(int(i))
                for d in range(NUM_DIHEDRAL):
                    encode_grid(dihedral(g, d), side, out=cache[row, d])
            self._canvas_cache = cache
        return self._canvas_cache

    def encode_grids(self, ids: np.ndarray, d: np.ndarray, out: np.ndarray) -> None:
        """Write grids `ids` [m] under dihedrals `d` [m] into the all-PAD canvases `out` [m, seq_len]
        (uint8), as `encode_grid(dihedral(grid, d))` does, vectorised over every cell."""
        side = self.side
        ids, d = np.asarray(ids, np.int64), np.asarray(d, np.int64)
        h, w = self.grid_shapes[ids, 0], self.grid_shapes[ids, 1]
        sizes = h * w
        # per grid: canvas position of cell (r, c) = p0 + r * pr + c * pc (flips and transpose folded in)
        fr, fc, tr = DIHEDRAL_FLAGS[d].T
        a_r, s_r = np.where(fr, h - 1, 0), np.where(fr, -1, 1)
        a_c, s_c = np.where(fc, w - 1, 0), np.where(fc, -1, 1)
        p0 = np.where(tr, a_c * side + a_r, a_r * side + a_c)
        pr = np.where(tr, s_r, s_r * side)
        pc = np.where(tr, s_c * side, s_c)
        total = int(sizes.sum())
        inst = np.repeat(np.arange(len(ids), dtype=np.int32), sizes)
        k = np.arange(total, dtype=np.int32) - np.repeat((np.cumsum(sizes) - sizes).astype(np.int32), sizes)
        ww = np.repeat(w.astype(np.int32), sizes)
        r = k // ww
        c = k - r * ww
        pos = np.repeat(p0.astype(np.int32), sizes) + r * np.repeat(pr.astype(np.int32), sizes) \
            + c * np.repeat(pc.astype(np.int32), sizes)
        out[inst, pos] = self.grid_cells[np.repeat(self.grid_offsets[ids], sizes) + k] + COLOUR_OFFSET
        ht, wt = np.where(TRANSPOSES[d], w, h), np.where(TRANSPOSES[d], h, w)
        # EOS: the row below (columns 0..w) and the column right (rows 0..h) of the grid, where they fit
        for fits, along, at, row_major in ((ht < side, wt, ht, True), (wt < side, ht, wt, False)):
            sel = np.flatnonzero(fits)
            n = np.minimum(along[sel] + 1, side)
            i = np.repeat(sel, n)
            j = np.arange(int(n.sum()), dtype=np.int64) - np.repeat(np.cumsum(n) - n, n)
            out[i, at[i] * side + j if row_major else j * side + at[i]] = EOS_ID

    def _canvases_for(self, grids: np.ndarray, d: np.ndarray) -> np.ndarray:
        """uint8 [n, G, seq_len] canvases of grid ids `grids` [n, G] (num_grids = empty slot) under
        dihedral d [n] per row: cached grids gathered, pool grids encoded."""
        x = self.canvases()[self._cache_row[grids], d[:, None]]
        pool = self._grid_in_pool[grids]
        if pool.any():
            i, j = np.nonzero(pool)
            enc = np.zeros((len(i), self.seq_len), dtype=np.uint8)
            self.encode_grids(grids[i, j], d[i], enc)
            x[i, j] = enc
        return x

    def query_tables(self, max_demos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(grids [Q, 2 + 2*D] of query input, output, D demo inputs, D demo outputs, with
        num_grids for empty slots; demo_mask [Q, D]; max (h, w) over each query's grids [Q, 2])."""
        if max_demos not in self._query_tables:
            D = int(max_demos)
            pad = self.num_grids
            grids = np.full((self.num_queries, 2 + 2 * D), pad, dtype=np.int64)
            mask = np.zeros((self.num_queries, D), dtype=bool)
            hw = np.zeros((self.num_queries, 2), dtype=np.int64)
            pool_q = np.flatnonzero(self.query_is_pool)  # demos drawn per sample (assemble's demo_pairs)
            grids[pool_q, 0] = self.pair_input[self.query_pair_index[pool_q]]
            grids[pool_q, 1] = self.pair_output[self.query_pair_index[pool_q]]
            hw[pool_q] = np.maximum(self.grid_shapes[grids[pool_q, 0]], self.grid_shapes[grids[pool_q, 1]])
            for q in np.flatnonzero(~self.query_is_pool):
                pair = int(self.query_pair_index[q])
                demos = self.query_demo_pairs(q, D)
                grids[q, 0] = self.pair_input[pair]
                grids[q, 1] = self.pair_output[pair]
                n = len(demos)
                grids[q, 2:2 + n] = self.pair_input[demos]
                grids[q, 2 + D:2 + D + n] = self.pair_output[demos]
                mask[q, :n] = True
                used = grids[q][grids[q] != pad]
                hw[q] = self.grid_shapes[used].max(axis=0)
            self._query_tables[max_demos] = (grids, mask, hw)
        return self._query_tables[max_demos]

    def assemble(self, queries: np.ndarray, variants: np.ndarray, max_demos: int,
                 translate_u: np.ndarray | None = None, valid: np.ndarray | None = None,
                 demo_pairs: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """The batch for samples (query index, global variant index). `translate_u` [n, 2] in [0, 1)
        draws a translation per sample that keeps all its grids inside the canvas. `demo_pairs`
        [n, max_demos] (pair indices, -1 = empty slot) are the drawn demos of pool queries (rows of
        other queries are ignored); without it a pool query has no demos."""
        queries = np.asarray(queries, dtype=np.int64)
        variants = np.asarray(variants, dtype=np.int64)
        n, D, side = len(queries), int(max_demos), self.side
        grids, mask, hw = self.query_tables(D)
        grids, mask, hw = grids[queries], mask[queries], hw[queries]
        if demo_pairs is not None:
            rows = np.flatnonzero(self.query_is_pool[queries])
            dp = np.asarray(demo_pairs, dtype=np.int64)[rows]
            ok = dp >= 0
            pad = self.num_grids
            grids[rows, 2:2 + D] = np.where(ok, self.pair_input[dp.clip(0)], pad)
            grids[rows, 2 + D:] = np.where(ok, self.pair_output[dp.clip(0)], pad)
            mask[rows] = ok
            shapes = np.concatenate([self.grid_shapes, np.zeros((1, 2), np.int64)])
            hw[rows] = shapes[grids[rows]].max(axis=1)
        var = self.variants[variants]
        d = var[:, 0].astype(np.int64)
        x = self._canvases_for(grids, d)  # [n, 2 + 2D, S] uint8
        if translate_u is not None and n:
            h, w = hw[:, 0], hw[:, 1]
            h, w = np.where(TRANSPOSES[d], w, h), np.where(TRANSPOSES[d], h, w)
            r0 = np.floor(translate_u[:, 0] * (side - h + 1)).astype(np.int64)
            c0 = np.floor(translate_u[:, 1] * (side - w + 1)).astype(np.int64)
            x4 = x.reshape(n, -1, side, side)
            for i in np.flatnonzero((r0 > 0) | (c0 > 0)):
                r, c = int(r0[i]), int(c0[i])
                x4[i, :, r:, c:] = x4[i, :, :side - r, :side - c].copy()
                x4[i, :, :r, :] = PAD_ID
                x4[i, :, :, :c] = PAD_ID
        lut = np.empty((n, 12), dtype=np.int64)
        lut[:, PAD_ID] = PAD_ID
        lut[:, EOS_ID] = EOS_ID
        lut[:, COLOUR_OFFSET:] = var[:, 1:].astype(np.int64) + COLOUR_OFFSET
        idx = x.astype(np.int32)
        idx += (np.arange(n, dtype=np.int32) * 12)[:, None, None]
        flat = lut.reshape(-1)
        labels = flat[idx[:, 1]]
        labels[labels == PAD_ID] = IGNORE_LABEL_ID
        return {
            "inputs": torch.from_numpy(flat[idx[:, 0]]),
            "labels": torch.from_numpy(labels),
            "demo_inputs": torch.from_numpy(flat[idx[:, 2:2 + D]]),
            "demo_labels": torch.from_numpy(flat[idx[:, 2 + D:]]),
            "demo_mask": torch.from_numpy(mask),
            # real (non-PAD) tokens of each demo pair, 0 in empty slots: stays on the host, where the
            # encoders' packing plan reads it instead of the device (models/encoders/common.py)
            "demo_lengths": torch.from_numpy(((x[:, 2:2 + D] != PAD_ID).sum(-1) + (x[:, 2 + D:] != PAD_ID).sum(-1))
                                             .astype(np.int32) * mask),
            "variant_index": torch.from_numpy(variants.copy()),
            "query_index": torch.from_numpy(queries.copy()),
            "puzzle_index": torch.from_numpy(self.query_puzzle[queries]),
            "valid": torch.from_numpy(np.ones(n, dtype=bool) if valid is None else np.asarray(valid, dtype=bool)),
        }

    def __repr__(self) -> str:
        return (f"ARCSplit({self.split!r}, paths={self.paths}, puzzles={self.num_puzzles}, queries={self.num_queries}, "
                f"variants={self.num_variants}, side={self.side})")


def load_split(paths: str | list[str], split: str) -> ARCSplit:
    """Read the `split` ("train" or "eval") of one or several dataset directories."""
    return ARCSplit(paths, split)


def _check_sharding(global_batch_size: int, rank: int, world_size: int) -> int:
    if global_batch_size <= 0 or world_size <= 0:
        raise ValueError(f"global_batch_size ({global_batch_size}) and world_size ({world_size}) must be positive")
    if global_batch_size % world_size:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by world_size={world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} is outside 0..{world_size - 1} (world_size={world_size})")
    return global_batch_size // world_size


def _demo_slots(split: ARCSplit, max_demos) -> int:
    return split.max_demos if not max_demos else min(int(max_demos), split.max_demos)


class TrainLoader:
    """Infinite iterator of training batches (see the module docstring of dataset.loader).

    Epoch e: puzzle groups are shuffled with an RNG seeded from (seed, e), each group draws one
    of its variants (of its first `max_variants` when given), and the epoch's samples are all
    queries of each group under that variant. The sample stream runs across epoch boundaries, so
    every global batch is full; rank r takes rows [r*local, (r+1)*local) of each global batch.

    Example pools: each pool query is a group of its own (its own variant, its own place in the
    shuffle), and its demos are min(max_demos, pool size - 1) other examples of the pool drawn
    without replacement from an RNG seeded by (seed, epoch, 1): the same state gives the same draws.

    Weighted sampling (`enable_weighted_sampling`, training/curriculum.py): the stream is cut into
    blocks of `block_samples`; block b draws puzzle groups with replacement so that each sampling
    group (e.g. a generator family or a RE-ARC task) gets its weight's share of the samples, from an
    RNG seeded by (seed, b, 2). The weights of block b are the last ones scheduled for a block <= b
    (`schedule_weights`, equal weights before any), so a block's draw does not depend on when the
    prefetching thread reached it, and a resumed run re-plans the same blocks from the same schedule.
    """

    def __init__(self, split: ARCSplit, global_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 max_demos: int | None = None, max_variants: int | None = None):
        self.local_batch_size = _check_sharding(int(global_batch_size), int(rank), int(world_size))
        if split.num_queries == 0:
            raise ValueError(f"split {split.split!r} of {split.paths} has no queries")
        self.split = split
        self.global_batch_size = int(global_batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed = int(seed)
        self.max_demos = _demo_slots(split, max_demos)
        self.translate = split.translate
        self._epoch = 0
        self._position = 0  # index in the epoch's sample list of the next global batch's first row
        self._plans: dict[int, tuple] = {}
        q_off = split.puzzle_query_offsets
        v_off = split.puzzle_variant_offsets
        self._q_start, self._q_count = q_off[:-1], np.diff(q_off)
        self._v_start, self._v_count = v_off[:-1], np.diff(v_off)
        if max_variants is not None:  # draw only each puzzle's first max_variants (as EvalLoader's max_variants)
            self._v_count = np.minimum(self._v_count, int(max_variants))
        self._has_pools = bool(split.query_is_pool.any())
        if self._has_pools:  # groups: every non-pool puzzle, then every pool query on its own
            plain = np.flatnonzero(~split.puzzle_pool)
            pool_q = np.flatnonzero(split.query_is_pool)
            owner = split.query_puzzle[pool_q]
            self._q_start = np.concatenate([self._q_start[plain], pool_q])
            self._q_count = np.concatenate([self._q_count[plain], np.ones(len(pool_q), np.int64)])
            self._v_start = np.concatenate([self._v_start[plain], self._v_start[owner]])
            self._v_count = np.concatenate([self._v_count[plain], self._v_count[owner]])
            # per query: its pool's first pair and size, and its own index in the pool
            first = split.puzzle_pair_offsets[split.query_puzzle]
            self._pool_first = first
            self._pool_size = split.puzzle_pair_offsets[split.query_puzzle + 1] - first
            self._pool_own = split.query_pair_index - first
        # the puzzle of each group of the shuffle (a pool query's group: its pool's puzzle)
        self._group_puzzle = (np.concatenate([plain, owner]) if self._has_pools
                              else np.arange(split.num_puzzles, dtype=np.int64))
        self._weighted: tuple | None = None  # (sampling group of each shuffle group, number of groups, block size)
        self._schedule: list[tuple[int, np.ndarray]] = []
        self._blocks: dict[int, tuple] = {}
        self._max_planned_block = -1

    @property
    def samples_per_epoch(self) -> int:
        return self.split.num_queries

    @property
    def epoch(self) -> float:
        return self._epoch + self._position / self.samples_per_epoch

    def _plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(query, variant, translation uniforms or None, drawn demo pairs of pool queries or None)
        of every sample of `epoch`, in order."""
        if epoch not in self._plans:
            rng = np.random.default_rng([self.seed, epoch])
            queries, variants = self._samples_of(rng.permutation(len(self._q_start)), rng)
            u = rng.random((len(queries), 2)) if self.translate else None
            demos = self._draw_demos(np.random.default_rng([self.seed, epoch, 1]), queries) if self._has_pools else None
            for old in [e for e in self._plans if e < epoch - 1]:
                del self._plans[old]
            self._plans[epoch] = (queries, variants, u, demos)
        return self._plans[epoch]

    def _samples_of(self, order: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(query, variant) of every sample of the shuffle groups `order`, in order: each group's
        queries under one variant drawn from `rng`."""
        pick = np.floor(rng.random(len(order)) * self._v_count[order]).astype(np.int64)
        counts = self._q_count[order]
        group_start = np.cumsum(counts) - counts
        queries = np.repeat(self._q_start[order] - group_start, counts) + np.arange(int(counts.sum()))
        return queries, np.repeat(self._v_start[order] + pick, counts)

    def _draw_demos(self, rng: np.random.Generator, queries: np.ndarray) -> np.ndarray:
        """int32 [n, max_demos]: for each pool query, min(max_demos, pool size - 1) distinct other
        examples of its pool (global pair indices) in random order, -1 for empty slots and for
        queries outside pools. Floyd's sampling, vectorised: max_demos rounds, whatever the pool size."""
        D = self.max_demos
        out = np.full((len(queries), D), -1, dtype=np.int64)
        rows = np.flatnonzero(self.split.query_is_pool[queries])
        q = queries[rows]
        others = self._pool_size[q] - 1  # draw from range(others), then skip the query's own index
        m = np.minimum(D, others)
        picked = np.full((len(q), D), -1, dtype=np.int64)
        for i in range(D):
            j = others - m + i  # Floyd: t uniform in [0, j]; if taken, take j
            t = np.floor(rng.random(len(q)) * (j + 1)).astype(np.int64)
            taken = (picked[:, :i] == t[:, None]).any(axis=1)
            picked[:, i] = np.where(i < m, np.where(taken, j, t), -1)
        keys = rng.random(picked.shape)
        keys[picked < 0] = 2.0  # empty slots last
        picked = np.take_along_axis(picked, np.argsort(keys, axis=1), axis=1)
        own = self._pool_own[q][:, None]
        pairs = self._pool_first[q][:, None] + np.where(picked >= own, picked + 1, picked)
        out[rows] = np.where(picked >= 0, pairs, -1)
        return out.astype(np.int32)

    # ------------------------------------------------------------------ weighted sampling
    def enable_weighted_sampling(self, puzzle_group: np.ndarray, num_groups: int, block_samples: int) -> None:
        """Draw the stream by sampling-group weights from here on (see the class docstring).
        `puzzle_group` [num_puzzles]: each puzzle's sampling group in [0, num_groups)."""
        puzzle_group = np.asarray(puzzle_group, dtype=np.int64)
        if puzzle_group.shape != (self.split.num_puzzles,):
            raise ValueError(f"puzzle_group has shape {puzzle_group.shape}, expected ({self.split.num_puzzles},)")
        if int(block_samples) < 1:
            raise ValueError(f"block_samples must be >= 1, got {block_samples}")
        groups = puzzle_group[self._group_puzzle]
        self._weighted = (groups, int(num_groups), int(block_samples))
        # each shuffle group's draw probability per unit of weight: 1 / (samples of its sampling group),
        # so that a sampling group's share of the samples is its weight's, however many queries it has
        per_group = np.bincount(groups, weights=self._q_count, minlength=int(num_groups))
        if (per_group == 0).any():
            raise ValueError(f"sampling groups {np.flatnonzero(per_group == 0).tolist()} have no training queries")
        self._group_share = 1.0 / per_group[groups]
        self._blocks, self._max_planned_block = {}, -1

    def block_after(self, state: dict, batches_ahead: int) -> int:
        """The first block that starts after the sample `batches_ahead` global batches past the
        loader state `state`: one that a producer at most that far ahead has not planned yet."""
        t = int(state["epoch"]) * self.samples_per_epoch + int(state["position"]) + int(batches_ahead) * self.global_batch_size
        return t // self._weighted[2] + 1

    def schedule_weights(self, from_block: int, weights) -> None:
        """Sampling-group weights (>= 0, not all 0) for block `from_block` and later ones."""
        w = np.asarray(weights, dtype=np.float64)
        if self._weighted is None:
            raise RuntimeError("schedule_weights before enable_weighted_sampling")
        if w.shape != (self._weighted[1],) or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be {self._weighted[1]} finite values >= 0, not all 0; got {w}")
        if from_block <= self._max_planned_block:  # would make the draw depend on the prefetching thread's timing
            raise RuntimeError(f"weights for block {from_block}, but blocks up to {self._max_planned_block} are planned")
        entries = sorted([e for e in self._schedule if e[0] != from_block] + [(int(from_block), w)], key=lambda e: e[0])
        # entries superseded before the blocks that may still be planned (the stream only moves on)
        while len(entries) > 1 and entries[1][0] <= self._max_planned_block - 1:
            entries.pop(0)
        self._schedule = entries  # a new list, assigned at once: the prefetching thread reads one list or the other

    def _weights_of(self, block: int) -> np.ndarray:
        weights = np.ones(self._weighted[1])
        for start, w in self._schedule:
            if start <= block:
                weights = w
        return weights

    def _plan_block(self, block: int) -> tuple:
        """(query, variant, translation uniforms or None, pool demos or None) of block `block`'s samples."""
        if block not in self._blocks:
            groups, _, size = self._weighted
            rng = np.random.default_rng([self.seed, block, 2])
            p = self._weights_of(block)[groups] * self._group_share
            p /= p.sum()
            mean_count = float((p * self._q_count).sum())
            order = rng.choice(len(p), size=int(math.ceil(size / mean_count * 1.25)) + 1, p=p)
            while self._q_count[order].sum() < size:
                order = np.concatenate([order, rng.choice(len(p), size=len(order), p=p)])
            queries, variants = (x[:size] for x in self._samples_of(order, rng))
            u = rng.random((size, 2)) if self.translate else None
            demos = self._draw_demos(np.random.default_rng([self.seed, block, 3]), queries) if self._has_pools else None
            for old in [b for b in self._blocks if b < block - 1]:
                del self._blocks[old]
            self._blocks[block] = (queries, variants, u, demos)
            self._max_planned_block = max(self._max_planned_block, block)
        return self._blocks[block]

    def _take(self, epoch: int, position: int, count: int):
        """`count` samples of the stream starting at (epoch, position)."""
        qs, vs, us, ds = [], [], [], []
        while count > 0:
            while position >= self.samples_per_epoch:
                position -= self.samples_per_epoch
                epoch += 1
            if self._weighted is not None:  # the stream in blocks: sample t is row t % size of block t // size
                size = self._weighted[2]
                t = epoch * self.samples_per_epoch + position
                (q, v, u, dm), start = self._plan_block(t // size), t % size
            else:
                (q, v, u, dm), start = self._plan(epoch), position
            stop = min(start + count, len(q))
            qs.append(q[start:stop])
            vs.append(v[start:stop])
            if u is not None:
                us.append(u[start:stop])
            if dm is not None:
                ds.append(dm[start:stop])
            count -= stop - start
            position += stop - start
        return (np.concatenate(qs), np.concatenate(vs), (np.concatenate(us) if us else None),
                (np.concatenate(ds) if ds else None))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        q, v, u, dm = self._take(self._epoch, self._position + self.rank * self.local_batch_size, self.local_batch_size)
        self._position += self.global_batch_size
        while self._position >= self.samples_per_epoch:
            self._position -= self.samples_per_epoch
            self._epoch += 1
        return self.split.assemble(q, v, self.max_demos, translate_u=u, demo_pairs=dm)

    def state_dict(self) -> dict:
        return {"epoch": self._epoch, "position": self._position, "seed": self.seed,
                "global_batch_size": self.global_batch_size}

    def load_state_dict(self, state: dict) -> None:
        if int(state.get("global_batch_size", self.global_batch_size)) != self.global_batch_size:
            raise ValueError(f"loader state was saved with global_batch_size={state['global_batch_size']}, "
                             f"this loader has {self.global_batch_size}")
        self.seed = int(state["seed"])
        self._epoch, self._position = int(state["epoch"]), int(state["position"])
        self._plans, self._blocks, self._max_planned_block = {}, {}, -1


class EvalLoader:
    """Every variant of every eval puzzle x each of its queries, in the order (puzzle, variant,
    query); global batches are sharded over ranks, the last one padded with rows marked
    valid=False. Every rank yields len(self) batches."""

    def __init__(self, split: ARCSplit, global_batch_size: int, rank: int = 0, world_size: int = 1,
                 max_eval_groups: int | None = None, max_variants: int | None = None, max_demos: int | None = None):
        self.local_batch_size = _check_sharding(int(global_batch_size), int(rank), int(world_size))
        self.split = split
        self.global_batch_size = int(global_batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.max_demos = _demo_slots(split, max_demos)
        n_puzzles = split.num_puzzles if max_eval_groups is None else min(int(max_eval_groups), split.num_puzzles)
        qs, vs = [], []
        for p in range(n_puzzles):
            v0, v1 = split.puzzle_variant_range(p)
            if max_variants is not None:
                v1 = min(v1, v0 + int(max_variants))
            q0, q1 = split.puzzle_query_range(p)
            vs.append(np.repeat(np.arange(v0, v1), q1 - q0))
            qs.append(np.tile(np.arange(q0, q1), v1 - v0))
        self.sample_query = np.concatenate(qs) if qs else np.zeros(0, np.int64)
        self.sample_variant = np.concatenate(vs) if vs else np.zeros(0, np.int64)
        self.num_puzzles = n_puzzles

    @property
    def num_samples(self) -> int:
        return len(self.sample_query)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.global_batch_size)

    def batch(self, b: int) -> dict[str, torch.Tensor]:
        rows = b * self.global_batch_size + self.rank * self.local_batch_size + np.arange(self.local_batch_size)
        valid = rows < self.num_samples
        rows = np.where(valid, rows, 0)
        return self.split.assemble(self.sample_query[rows], self.sample_variant[rows], self.max_demos, valid=valid)

    def __iter__(self):
        for b in range(len(self)):
            yield self.batch(b)
