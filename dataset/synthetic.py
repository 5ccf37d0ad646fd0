"""Synthetic ARC-format puzzles whose rule is drawn per puzzle, so the demos are the only way to
know it. Used to check, on a CPU budget, that ETRM learns to read its demos (bench/learning.py).

    python -m dataset.synthetic --output-dir data/synthetic --num-train 300 --num-eval 100 --seed 0 \\
        [--families F ...] [--exclude-families F ...]

Writes ``DIR/train/<family>/<id>.json`` and ``DIR/eval/<family>/<id>.json`` (``{"train": [{"input",
"output"}, ...], "test": [...]}``) plus ``DIR/manifest.json`` (every puzzle's split, family and
rule). Everything is written to a temporary directory beside DIR and renamed into place. Feed it
to the normal builder: ``python -m dataset.build_arc_dataset --train-sources DIR/train
--eval-sources DIR/eval --output-dir ... --max-grid-size 8``.

Map families (background colour 0, grids 3x3 to 8x8, 2-4 demos and 1-2 test inputs per puzzle;
one fixed cell or colour map per puzzle):
  colour_map  2-3 colours each mapped to another colour (an injective map into 1-9, no colour
              kept); every input shows every mapped colour. Rule-blind: ~0.
  dihedral    one of the 7 non-identity flips/rotations. Rule-blind pass@2: 2/7.
  shift       every foreground cell moves one cell in one of 8 directions (inputs keep a
              1-cell empty frame, so nothing falls off). Rule-blind pass@2: 2/8.
  fill        the background (0) becomes one colour absent from the inputs. Rule-blind pass@2:
              2 / (9 - colours in the query input) >= 2/7.
  swap        two of the input's 4-5 colours exchange places, the others stay. Rule-blind
              pass@2: 2/6 (4 colours) or 2/10 (5 colours).
  tile        the 3x3-4x4 input is repeated k x l times, (k, l) one of (1, 2), (2, 1), (2, 2), each
              copy either as is or mirrored like a kaleidoscope (copy (i, j) flipped up-down when i
              is odd, left-right when j is odd): the output's size and where each cell goes are
              read from the demos. Rule-blind pass@2: 2/6 (fewer when the query is symmetric).

Content families (dataset/synthetic_families.py): no fixed cell map expresses them, the answer
depends on what is in the grid. "Object" = a 4-connected set of cells of one colour. Grids up to
8x8; outputs may be as small as 1x1 (cut-outs, counts), scale_count inputs as small as 2x2.
Rule-blind pass@2 (`blind_bound`): the share of the rules the family could have drawn for the
query whose answer is one of the two commonest answers; mean over held-out test inputs at the
benchmark's defaults in brackets.
  gravity          every cell falls in one of 4 directions until the edge, a cell of the wall
                   colour (one of the input's 2-3 colours, never moves) or a cell already
                   stopped. Parameter: direction x wall colour. Rule-blind [0.26].
  rays             from each of 1-3 single cells a line of its colour in one of 8 directions,
                   over background, to the edge or the first non-background cell. Parameter:
                   direction. [0.30]
  select           cut out (bounding box, other cells background) the one object of a drawn
                   colour, or the one object of a drawn size 1-4, among 4-6 objects of distinct
                   colours. Parameter: colour or size. [0.57: a blind guess picks an object]
  size_recolour    every object (one colour per puzzle, 3-6 objects of 1-4 cells) of exactly k
                   cells becomes colour c. Parameter: k in 1-4, c. [0.09]
  enclose          background cells with no 4-connected background path to the border (inside
                   closed outlines; outlines with a gap leak) become colour c, absent from the
                   inputs. Parameter: c. [0.26]
  outline          background cells 4- or 8-adjacent to any object become colour c (absent from
                   the inputs). Parameter: neighbourhood x c. [0.13]
  count_bar        output is a 1 x n (or n x 1) bar of colour c, n = number of objects (1-6).
                   Parameter: c x orientation; demos show at least two counts. [0.14]
  scale_count      f = number of colours in the input (2 or 3); every cell repeated f times
                   ("scale") or the whole grid repeated f times ("tile") along the rows, the
                   columns or both. Inputs 2x2-4x4 so that every rule fits (the size tells
                   nothing); demos show both factors. Parameter: axes x mode. [0.33]
  crop_dihedral    cut out the bounding box of the non-background, then one of the 8
                   flips/rotations (identity included). Parameter: the flip/rotation. [0.27]
  crowd            object cells with >= k (2 or 3) foreground neighbours (4- or 8-neighbourhood)
                   become colour c. Parameter: k x neighbourhood x c. [0.08]
  connect          two same-coloured cells on a row / a column / either (drawn) with only
                   background between are joined by a line of colour c, or of their own colour.
                   Parameter: axes x colour. [0.28]
  gravity_recolour every cell falls in one of 4 directions (no wall), then one input colour
                   becomes one absent from the input. Parameter: direction x (src, dst). [0.04]

Every puzzle is checked to be identifiable: the rules of its family consistent with all demos
give the same answer on every test input (so the demos are enough); no pair is left unchanged by
its rule. Train and eval puzzles are drawn from the same families with independent random
streams; ids differ (``t``/``e`` prefix). ``--exclude-families`` leaves families out of the
train split only, so their held-out puzzles measure a concept training never showed
(leave-one-family-out); ``generate(..., exclude=...)`` is the same from Python.
Held out means no eval test pair equals any train pair (demo or test) under any variant the
builder trains on (flip/rotation x permutation of colours 1-9, dataset/twins.py): an eval puzzle
with such a twin is redrawn. Only test pairs are checked: they are what is scored, while a demo
is shown to the model at evaluation anyway. (Redrawing on demo twins too would redraw 20-30% of
the held-out `shift` puzzles at the benchmark's defaults instead of 5-10%, all with a small
grid, skewing the held-out set away from the train set.)
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
from pathlib import Path

import numpy as np

from .atomic import atomic_directory
from .augment import dihedral
from .synthetic_families import FAMILY_SPECS
from .twins import pair_key

MAP_FAMILIES = ("colour_map", "dihedral", "shift", "fill", "swap", "tile")  # one fixed cell/colour map per puzzle
CONTENT_FAMILIES = tuple(FAMILY_SPECS)  # the rule depends on the content (dataset/synthetic_families.py)
FAMILIES = MAP_FAMILIES + CONTENT_FAMILIES
SPLIT_CODES = {"train": 0, "eval": 1}
SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))  # (drow, dcol)
TILES = ((1, 2), (2, 1), (2, 2))  # (copies down, copies across)
TILE_SIDES = (3, 4)               # tile inputs: every rule fits the 8x8 limit, so the size tells nothing
MIN_SIDE, MAX_SIDE = 3, 8
MAX_TRIES = 200


# ------------------------------------------------------------------------------ rules

def apply_rule(family: str, rule: dict, grid: np.ndarray) -> np.ndarray:
    """The output of `family`'s rule `rule` (as stored in the manifest) on an input grid."""
    g = np.asarray(grid, dtype=np.uint8)
    if family in FAMILY_SPECS:
        return FAMILY_SPECS[family].apply(rule, g)
    if family == "colour_map":
        lut = np.arange(10, dtype=np.uint8)
        for src, dst in rule["map"]:
            lut[int(src)] = int(dst)
        return lut[g]
    if family == "dihedral":
        return np.ascontiguousarray(dihedral(g, int(rule["dihedral"])))
    if family == "shift":
        dr, dc = rule["shift"]
        out = np.zeros_like(g)
        h, w = g.shape
        rs, cs = np.nonzero(g)
        r2, c2 = rs + dr, cs + dc
        if (r2 < 0).any() or (r2 >= h).any() or (c2 < 0).any() or (c2 >= w).any():
            raise ValueError("shift moves a cell off the grid")
        out[r2, c2] = g[rs, cs]
        return out
    if family == "fill":
        out = g.copy()
        out[g == 0] = int(rule["colour"])
        return out
    if family == "swap":
        a, b = (int(x) for x in rule["pair"])
        out = g.copy()
        out[g == a], out[g == b] = b, a
        return out
    if family == "tile":
        k, l = (int(x) for x in rule["tile"])
        h, w = g.shape
        if k * h > MAX_SIDE or l * w > MAX_SIDE:
            raise ValueError(f"tiling {k}x{l} of a {h}x{w} grid exceeds {MAX_SIDE}x{MAX_SIDE}")
        mirror = bool(rule["mirror"])
        copies = [[g[::-1 if mirror and i % 2 else 1, ::-1 if mirror and j % 2 else 1] for j in range(l)] for i in range(k)]
        return np.ascontiguousarray(np.block(copies))
    raise ValueError(f"unknown family {family!r}; valid: {list(FAMILIES)}")


def num_blind_rules(family: str, rule: dict, query_input: np.ndarray) -> int:
    """How many rules of the family a rule-blind solver must choose between for this query
    (pass@k of the best blind guess is at most k / this; for the content families, the distinct
    answers of the rules the family could have drawn for this query: see `blind_bound`)."""
    if family in FAMILY_SPECS:
        return len(_blind_answers(family, query_input))
    colours = set(np.unique(query_input).tolist()) - {0}
    if family == "colour_map":
        k = len(rule["map"])
        return int(np.prod([8 - i for i in range(k)]))  # about: injective maps into 1-9 moving every colour
    if family == "dihedral":
        return 7
    if family == "shift":
        return len(SHIFTS)
    if family == "fill":
        return 9 - len(colours)
    if family == "swap":
        n = len(colours)
        return n * (n - 1) // 2
    if family == "tile":  # the distinct answers of the rules that fit the query
        outs = {(o.shape, o.tobytes()) for c in _candidates(family, rule, [query_input])
                if (o := _safe_apply(family, c, query_input)) is not None}
        return len(outs)
    raise ValueError(family)


def _blind_answers(family: str, query_input: np.ndarray) -> list[int]:
    """How many of the rules the family could have drawn for this query give each distinct answer
    (largest first). Rules undefined on the query, or that leave it unchanged, are left out: the
    generator draws neither, so a blind solver that knows the family knows that too."""
    counts: dict[tuple, int] = {}
    q = np.asarray(query_input, dtype=np.uint8)
    for c in FAMILY_SPECS[family].blind(q):
        o = _safe_apply(family, c, q)
        if o is not None and not (o.shape == q.shape and np.array_equal(o, q)):
            key = (o.shape, o.tobytes())
            counts[key] = counts.get(key, 0) + 1
    return sorted(counts.values(), reverse=True) or [1]


def blind_bound(family: str, rule: dict, query_input: np.ndarray, k: int) -> float:
    """pass@k of the best rule-blind guess on this query: the share of the rules the family could
    have drawn (uniformly) whose answer is one of the k commonest answers. For the map families,
    where every rule gives its own answer, k / num_blind_rules."""
    if family not in FAMILY_SPECS:
        return min(1.0, k / num_blind_rules(family, rule, query_input))
    groups = _blind_answers(family, query_input)
    return min(1.0, sum(groups[:k]) / sum(groups))


def _candidates(family: str, rule: dict, grids: list[np.ndarray]) -> list[dict]:
    """Rules of the family worth checking for identifiability (all of them where finite)."""
    if family in FAMILY_SPECS:
        return FAMILY_SPECS[family].candidates(grids)
    if family == "dihedral":
        return [{"dihedral": d} for d in range(1, 8)]
    if family == "shift":
        return [{"shift": list(s)} for s in SHIFTS]
    if family == "fill":
        return [{"colour": c} for c in range(1, 10)]
    if family == "swap":
        colours = sorted(set(np.unique(np.concatenate([g.ravel() for g in grids])).tolist()) - {0})
        return [{"pair": [a, b]} for a, b in itertools.combinations(colours, 2)]
    if family == "tile":
        return [{"tile": list(t), "mirror": m} for t in TILES for m in (False, True)]
    return []  # colour_map: identifiable when every test colour appears in a demo input (checked directly)


def _safe_apply(family: str, rule: dict, g: np.ndarray):
    try:
        return apply_rule(family, rule, g)
    except ValueError:
        return None


def identifiable(family: str, rule: dict, demos: list[tuple[np.ndarray, np.ndarray]], tests: list[np.ndarray]) -> bool:
    """True when every rule of the family that reproduces all demos gives the true answers."""
    if family == "colour_map":
        seen = set(np.unique(np.concatenate([a.ravel() for a, _ in demos])).tolist())
        return all(set(np.unique(t).tolist()) <= seen for t in tests)
    truth = [apply_rule(family, rule, t) for t in tests]
    for cand in _candidates(family, rule, [g for pair in demos for g in pair] + list(tests)):
        outs = [_safe_apply(family, cand, a) for a, _ in demos]
        if any(o is None or o.shape != b.shape or not np.array_equal(o, b) for o, (_, b) in zip(outs, demos)):
            continue
        for t, y in zip(tests, truth):
            o = _safe_apply(family, cand, t)
            if o is None or o.shape != y.shape or not np.array_equal(o, y):
                return False
    return True


# ------------------------------------------------------------------------------ drawing

def _random_grid(rng: np.random.Generator, h: int, w: int, colours: list[int], density: float,
                 require_all: bool = True) -> np.ndarray:
    """Background 0 with foreground cells of `colours`; with require_all every colour appears."""
    for _ in range(MAX_TRIES):
        g = np.where(rng.random((h, w)) < density, rng.choice(colours, size=(h, w)), 0).astype(np.uint8)
        present = set(np.unique(g).tolist())
        if (not require_all or set(colours) <= present) and (present - {0}):
            return g
    # small grids: place each colour once by hand
    g = np.zeros((h, w), dtype=np.uint8)
    cells = rng.permutation(h * w)[: len(colours)]
    g.flat[cells] = colours
    return g


def _draw_rule(family: str, rng: np.random.Generator) -> tuple[dict, dict]:
    """(rule, input spec) for one puzzle."""
    if family in FAMILY_SPECS:
        return FAMILY_SPECS[family].draw_rule(rng)
    if family == "colour_map":
        k = int(rng.integers(2, 4))
        src = sorted(rng.choice(np.arange(1, 10), size=k, replace=False).tolist())
        while True:
            dst = rng.choice(np.arange(1, 10), size=k, replace=False).tolist()
            if all(s != d for s, d in zip(src, dst)):
                break
        return {"map": [[int(s), int(d)] for s, d in zip(src, dst)]}, {"colours": src}
    if family == "dihedral":
        n = int(rng.integers(2, 4))
        return {"dihedral": int(rng.integers(1, 8))}, {"colours": sorted(rng.choice(np.arange(1, 10), n, replace=False).tolist())}
    if family == "shift":
        n = int(rng.integers(1, 4))
        return ({"shift": list(SHIFTS[int(rng.integers(len(SHIFTS)))])},
                {"colours": sorted(rng.choice(np.arange(1, 10), n, replace=False).tolist()), "frame": True})
    if family == "fill":
        c = int(rng.integers(1, 10))
        others = [x for x in range(1, 10) if x != c]
        n = int(rng.integers(1, 4))
        return {"colour": c}, {"colours": sorted(rng.choice(others, n, replace=False).tolist()), "optional": True}
    if family == "swap":
        n = int(rng.integers(4, 6))
        colours = sorted(rng.choice(np.arange(1, 10), n, replace=False).tolist())
        pair = sorted(rng.choice(colours, 2, replace=False).tolist())
        return {"pair": [int(x) for x in pair]}, {"colours": colours}
    if family == "tile":
        n = int(rng.integers(2, 5))
        return ({"tile": list(TILES[int(rng.integers(len(TILES)))]), "mirror": bool(rng.integers(2))},
                {"colours": sorted(rng.choice(np.arange(1, 10), n, replace=False).tolist()), "sides": TILE_SIDES})
    raise ValueError(f"unknown family {family!r}; valid: {list(FAMILIES)}")


def _draw_input(family: str, spec: dict, rng: np.random.Generator) -> np.ndarray:
    lo = 4 if spec.get("frame") else MIN_SIDE
    h, w = (int(x) for x in rng.integers(lo, MAX_SIDE + 1, size=2))
    if spec.get("sides"):
        h, w = (int(x) for x in rng.choice(spec["sides"], size=2))
    colours = list(spec["colours"])
    if spec.get("frame"):
        g = np.zeros((h, w), dtype=np.uint8)
        g[1:-1, 1:-1] = _random_grid(rng, h - 2, w - 2, colours, float(rng.uniform(0.2, 0.5)), require_all=False)
        return g
    density = float(rng.uniform(0.3, 0.7))
    if spec.get("optional"):  # fill: some foreground, not necessarily every colour, some background
        for _ in range(MAX_TRIES):
            g = _random_grid(rng, h, w, colours, density, require_all=False)
            if (g == 0).any():
                return g
        return g
    if family == "swap":
        density = float(rng.uniform(0.6, 0.95))
    return _random_grid(rng, h, w, colours, density, require_all=True)


def make_puzzle(family: str, rng: np.random.Generator, num_demos: int | None = None,
                num_tests: int | None = None) -> tuple[dict, list, list]:
    """(rule, demos, tests): demos and tests are lists of (input, output) uint8 arrays. Redraws
    the inputs until the puzzle is identifiable from its demos."""
    rule, spec = _draw_rule(family, rng)
    nd = int(rng.integers(2, 5)) if num_demos is None else num_demos
    nt = int(rng.integers(1, 3)) if num_tests is None else num_tests
    for _ in range(MAX_TRIES):
        if family in FAMILY_SPECS:
            pairs = _content_pairs(family, rule, spec, rng, nd + nt)
            if pairs is None:
                continue
        else:
            pairs = [(g, apply_rule(family, rule, g)) for g in (_draw_input(family, spec, rng) for _ in range(nd + nt))]
        keys = {a.tobytes() + bytes(a.shape) for a, _ in pairs}
        if len(keys) < len(pairs):
            continue  # every pair distinct
        demos, tests = pairs[:nd], pairs[nd:]
        if family == "fill" and any(not (a == 0).any() for a, _ in pairs):
            continue
        if family in FAMILY_SPECS and not FAMILY_SPECS[family].demos_ok(demos):
            continue
        if any(a.shape == b.shape and np.array_equal(a, b) for a, b in pairs):
            continue  # a pair the rule leaves unchanged (e.g. a symmetric grid flipped) shows nothing
        if identifiable(family, rule, demos, [a for a, _ in tests]):
            return rule, demos, tests
    raise RuntimeError(f"could not draw an identifiable {family} puzzle in {MAX_TRIES} tries")


def _content_pairs(family: str, rule: dict, spec: dict, rng: np.random.Generator, n: int) -> list | None:
    """n (input, output) pairs of a content family; an input the rule is undefined on (or that the
    drawer could not lay out) is drawn again, a few times, before giving up (None)."""
    fam, pairs = FAMILY_SPECS[family], []
    for _ in range(10 * n):
        g = fam.draw_input(rule, spec, rng)
        if g is None:
            continue
        out = _safe_apply(family, rule, g)
        if out is None or (out.shape == g.shape and np.array_equal(out, g)):
            continue
        pairs.append((g, out))
        if len(pairs) == n:
            return pairs
    return None


def _grid_key(family: str, rule: dict, g: np.ndarray) -> str:
    return hashlib.sha1(json.dumps([family, rule, list(g.shape)]).encode() + g.tobytes()).hexdigest()


def _to_json(pairs) -> list[dict]:
    return [{"input": a.tolist(), "output": b.tolist()} for a, b in pairs]


def split_families(families=FAMILIES, exclude=()) -> dict[str, list[str]]:
    """{"train": families less `exclude`, "eval": families}: leave-one-family-out holds a family out
    of training while its held-out puzzles are still scored. Unknown names are an error."""
    families, exclude = list(families), list(exclude)
    bad = [f for f in families + exclude if f not in FAMILIES]
    if bad or not families:
        raise ValueError(f"unknown or no families {bad or families}; valid: {list(FAMILIES)}")
    if stray := [f for f in exclude if f not in families]:
        raise ValueError(f"--exclude-families {stray} are not among the generated families {families}")
    train = [f for f in families if f not in exclude]
    if not train:
        raise ValueError(f"--exclude-families {exclude} leaves no family to train on")
    return {"train": train, "eval": families}


def generate(num_train: int, num_eval: int, seed: int = 0, families: list[str] | tuple[str, ...] = FAMILIES,
             exclude: list[str] | tuple[str, ...] = ()) -> dict:
    """All puzzles, in memory: {"train"|"eval": [{"id", "family", "rule", "demos", "tests"}]}.
    Families are assigned round-robin (the train split without `exclude`, see split_families);
    puzzle i of a split depends only on (seed, split, i) and that split's family list."""
    per_split = split_families(families, exclude)
    out: dict[str, list[dict]] = {"train": [], "eval": []}
    train_pairs: set[bytes] = set()  # pair_key of every train pair: equal for all its variants
    for split, n in (("train", num_train), ("eval", num_eval)):
        seen: set[str] = set()
        fams = per_split[split]
        for i in range(n):
            family = fams[i % len(fams)]
            for attempt in itertools.count():
                rng = np.random.default_rng([seed, SPLIT_CODES[split], i, attempt])
                rule, demos, tests = make_puzzle(family, rng)
                keys = [_grid_key(family, rule, a) for a, _ in (*demos, *tests)]
                whole = hashlib.sha1("".join(sorted(keys)).encode()).hexdigest()
                # no repeated puzzle in a split; no eval test pair that training sees in some variant
                if whole in seen or (split == "eval" and any(pair_key(a, b) in train_pairs for a, b in tests)):
                    if attempt > 50:
                        raise RuntimeError(f"cannot draw a fresh {family} puzzle (too many duplicates)")
                    continue
                break
            seen.add(whole)
            if split == "train":
                train_pairs.update(pair_key(a, b) for a, b in (*demos, *tests))
            out[split].append({"id": f"{split[0]}{i:05d}-{family}", "family": family, "rule": rule,
                               "demos": demos, "tests": tests})
    return out


def write_dataset(puzzles: dict, output_dir: str | os.PathLike, overwrite: bool = False, meta: dict | None = None) -> Path:
    """Write the puzzles as ARC task files + manifest.json; atomically (temp dir, then rename)."""
    out = Path(output_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output directory {out} already exists; pass --overwrite to replace it")
    manifest = dict(meta or {}, puzzles={})
    with atomic_directory(out, overwrite) as tmp:
        for split in ("train", "eval"):
            (tmp / split).mkdir(parents=True)
            for p in puzzles[split]:
                path = tmp / split / p["family"] / f"{p['id']}.json"
                path.parent.mkdir(exist_ok=True)
                path.write_text(json.dumps({"train": _to_json(p["demos"]), "test": _to_json(p["tests"])}))
                manifest["puzzles"][p["id"]] = {"split": split, "family": p["family"], "rule": p["rule"]}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=0))
    return out


def load_manifest(output_dir: str | os.PathLike) -> dict:
    return json.loads((Path(output_dir) / "manifest.json").read_text())


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m dataset.synthetic", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--num-train", type=int, default=300)
    ap.add_argument("--num-eval", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--exclude-families", nargs="+", default=[], choices=FAMILIES,
                    help="families left out of the train split only (leave-one-family-out); eval keeps them")
    ap.add_argument("--overwrite", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        per_split = split_families(args.families, args.exclude_families)
        puzzles = generate(args.num_train, args.num_eval, args.seed, args.families, args.exclude_families)
        meta = {"seed": args.seed, "families": list(args.families), "train_families": per_split["train"],
                "exclude_families": list(args.exclude_families), "num_train": args.num_train, "num_eval": args.num_eval}
        out = write_dataset(puzzles, args.output_dir, overwrite=args.overwrite, meta=meta)
    except (ValueError, FileExistsError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = {s: {f: n for f in args.families if (n := sum(p["family"] == f for p in puzzles[s]))} for s in ("train", "eval")}
    print(f"synthetic puzzles written to {out}: " + "; ".join(f"{s} {sum(c.values())} {c}" for s, c in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
