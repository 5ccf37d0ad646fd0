"""The content-dependent families of dataset/synthetic.py: rules that no fixed cell map expresses
(things that fall until they hit something, rays drawn from cells, objects chosen by a property,
enclosed regions, neighbourhoods, output sizes set by the content, and two-step compositions).
The module docstring of dataset/synthetic.py describes each family; this module holds, per
family, its rule (`apply`), the rules worth checking for identifiability (`candidates`), the rules
a rule-blind solver must choose between for a query (`blind`), and how a puzzle is drawn
(`draw_rule`, `draw_input`, `demos_ok`). `apply` raises ValueError where a rule is undefined on
a grid (two lines cross, no single object of the drawn size): such a rule cannot have made a
demo, and the generator never draws such an input for the true rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .augment import dihedral

MAX_SIDE = 8
MAX_TRIES = 200
DIRS4 = ((1, 0), (-1, 0), (0, 1), (0, -1))  # (drow, dcol): down, up, right, left
DIRS8 = DIRS4 + ((1, 1), (1, -1), (-1, 1), (-1, -1))
COLOURS = tuple(range(1, 10))
SCALE_AXES = ("rows", "cols", "both")
SCALE_MODES = ("scale", "tile")  # each cell repeated f times / the whole grid repeated f times
SELECTORS = ("colour", "size")  # not largest/smallest: a blind guess of the two extremes would score ~0.7


# ------------------------------------------------------------------------------ grid helpers

def components(g: np.ndarray) -> list[tuple[int, list[tuple[int, int]]]]:
    """Objects: 4-connected sets of equal non-background cells, as (colour, cells), in row-major
    order of their first cell."""
    h, w = g.shape
    seen = np.zeros((h, w), dtype=bool)
    objs = []
    for r0 in range(h):
        for c0 in range(w):
            col = int(g[r0, c0])
            if col == 0 or seen[r0, c0]:
                continue
            seen[r0, c0] = True
            stack, cells = [(r0, c0)], []
            while stack:
                r, c = stack.pop()
                cells.append((r, c))
                for dr, dc in DIRS4:
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < h and 0 <= cc < w and not seen[rr, cc] and g[rr, cc] == col:
                        seen[rr, cc] = True
                        stack.append((rr, cc))
            objs.append((col, sorted(cells)))
    return objs


def _orient(g: np.ndarray, direction) -> np.ndarray:
    """A view in which `direction` (one of DIRS4) points down; `_unorient` undoes it."""
    d = tuple(direction)
    return {(1, 0): g, (-1, 0): g[::-1], (0, 1): g.T, (0, -1): g[:, ::-1].T}[d]


def _unorient(g: np.ndarray, direction) -> np.ndarray:
    d = tuple(direction)
    return np.ascontiguousarray({(1, 0): g, (-1, 0): g[::-1], (0, 1): g.T, (0, -1): g.T[:, ::-1]}[d])


def fall(g: np.ndarray, direction, wall: int = 0) -> np.ndarray:
    """Every cell moves in `direction` until the grid's edge, a cell of colour `wall` (which never
    moves; 0 = no wall colour) or a cell that has already stopped."""
    if tuple(direction) not in DIRS4:
        raise ValueError(f"gravity direction {direction} is not one of {DIRS4}")
    v = _orient(np.asarray(g, dtype=np.uint8), direction)
    h, w = v.shape
    out = np.where(v == wall, v, 0).astype(np.uint8) if wall else np.zeros_like(v)
    rows = v.tolist()
    for c in range(w):
        floor = h - 1
        for r in range(h - 1, -1, -1):
            x = rows[r][c]
            if x == 0:
                continue
            if wall and x == wall:
                floor = r - 1
                continue
            out[floor, c] = x
            floor -= 1
    return _unorient(out, direction)


def _blob(rng: np.random.Generator, size: int, box: int = 3) -> np.ndarray:
    """A random 4-connected shape of `size` cells (a bool mask cropped to its bounding box)."""
    cells = {(0, 0)}
    while len(cells) < size:
        r, c = list(cells)[int(rng.integers(len(cells)))]
        dr, dc = DIRS4[int(rng.integers(4))]
        n = (r + dr, c + dc)
        rs, cs = [x for x, _ in cells | {n}], [y for _, y in cells | {n}]
        if max(rs) - min(rs) < box and max(cs) - min(cs) < box:
            cells.add(n)
    rs, cs = [r for r, _ in cells], [c for _, c in cells]
    m = np.zeros((max(rs) - min(rs) + 1, max(cs) - min(cs) + 1), dtype=bool)
    for r, c in cells:
        m[r - min(rs), c - min(cs)] = True
    return m


def place(rng: np.random.Generator, h: int, w: int, masks: list[np.ndarray], colours: list[int],
          gap: bool = True) -> np.ndarray | None:
    """Shapes `masks` coloured `colours` at random spots of an h x w background, no two
    overlapping (nor touching, even diagonally, with gap); None when they do not fit."""
    g = np.zeros((h, w), dtype=np.uint8)
    taken = np.zeros((h + 2, w + 2), dtype=bool)  # padded by one so the 8-neighbourhood is a slice
    for m, col in zip(masks, colours):
        mh, mw = m.shape
        if mh > h or mw > w:
            return None
        for _ in range(30):
            r, c = int(rng.integers(h - mh + 1)), int(rng.integers(w - mw + 1))
            if not (taken[r + 1:r + 1 + mh, c + 1:c + 1 + mw] & m).any():
                break
        else:
            return None
        g[r:r + mh, c:c + mw][m] = col
        if gap:
            for dr in (0, 1, 2):
                for dc in (0, 1, 2):
                    taken[r + dr:r + dr + mh, c + dc:c + dc + mw] |= m
        else:
            taken[r + 1:r + 1 + mh, c + 1:c + 1 + mw] |= m
    return g


def _colours(rng: np.random.Generator, n: int, exclude=()) -> list[int]:
    pool = [c for c in COLOURS if c not in exclude]
    return sorted(int(x) for x in rng.choice(pool, size=n, replace=False))


def _size(rng: np.random.Generator, lo: int = 3, hi: int = MAX_SIDE) -> tuple[int, int]:
    return int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))


def _present(grids) -> set[int]:
    return set(np.unique(np.concatenate([np.asarray(g).ravel() for g in grids])).tolist()) - {0}


# ------------------------------------------------------------------------------ families

@dataclass(frozen=True)
class Family:
    apply: Callable[[dict, np.ndarray], np.ndarray]
    candidates: Callable[[list[np.ndarray]], list[dict]]   # rules to check, given all grids of a puzzle
    blind: Callable[[np.ndarray], list[dict]]              # rules the family could have drawn for a query
    draw_rule: Callable[[np.random.Generator], tuple[dict, dict]]
    draw_input: Callable[[dict, dict, np.random.Generator], np.ndarray | None]
    # demos (input, output) that show the rule's content dependence, e.g. two different counts
    demos_ok: Callable[[list[tuple[np.ndarray, np.ndarray]]], bool] = lambda demos: True


def _outputs_vary(demos) -> bool:
    """At least two demo outputs of different shapes: the size is read from the content."""
    return len({b.shape for _, b in demos}) >= 2


# gravity: cells fall in a drawn direction; cells of a drawn wall colour stay and stop them ----------

def _gravity_apply(rule, g):
    return fall(g, rule["direction"], int(rule["wall"]))


def _gravity_candidates(grids):
    return [{"direction": list(d), "wall": w} for d in DIRS4 for w in COLOURS]


def _gravity_blind(q):  # the wall colour is one of the query's colours
    return [{"direction": list(d), "wall": w} for d in DIRS4 for w in sorted(_present([q]))]


def _gravity_draw_rule(rng):
    colours = _colours(rng, int(rng.integers(2, 4)))
    return ({"direction": list(DIRS4[int(rng.integers(4))]), "wall": int(rng.choice(colours))},
            {"colours": colours})


def _gravity_draw_input(rule, spec, rng):
    h, w = _size(rng)
    density = float(rng.uniform(0.15, 0.4))
    g = np.where(rng.random((h, w)) < density, rng.choice(spec["colours"], size=(h, w)), 0).astype(np.uint8)
    return g if set(spec["colours"]) <= set(np.unique(g).tolist()) else None


# rays: from every cell a line in a drawn direction, over background, until the edge or a cell --------

def rays(g: np.ndarray, direction) -> np.ndarray:
    """Rays of one direction never overlap: a ray reaching another ray's start stops there."""
    g = np.asarray(g, dtype=np.uint8)
    h, w = g.shape
    dr, dc = direction
    out = g.copy()
    for r, c in zip(*np.nonzero(g)):
        rr, cc = r + dr, c + dc
        while 0 <= rr < h and 0 <= cc < w and g[rr, cc] == 0:
            out[rr, cc] = g[r, c]
            rr, cc = rr + dr, cc + dc
    return out


def _rays_draw_input(rule, spec, rng):
    h, w = _size(rng)
    n = int(rng.integers(1, 4))
    g = np.zeros((h, w), dtype=np.uint8)
    cells = rng.permutation(h * w)[:n]
    g.flat[cells] = rng.choice(spec["colours"], size=n)
    return g


# select: the one object of a drawn colour, or the one of a drawn size, cut out ------------------------

def select(g: np.ndarray, rule: dict) -> np.ndarray:
    objs = components(g)
    if rule["select"] == "colour":
        chosen = [o for o in objs if o[0] == int(rule["colour"])]
    elif rule["select"] == "size":
        chosen = [o for o in objs if len(o[1]) == int(rule["size"])]
    else:
        raise ValueError(f"unknown selector {rule['select']!r}; valid: {SELECTORS}")
    if len(chosen) != 1:
        raise ValueError(f"{len(chosen)} objects fit {rule}, not one")
    col, cells = chosen[0]
    rs, cs = [r for r, _ in cells], [c for _, c in cells]
    out = np.zeros((max(rs) - min(rs) + 1, max(cs) - min(cs) + 1), dtype=np.uint8)
    for r, c in cells:
        out[r - min(rs), c - min(cs)] = col
    return out


SELECT_SIZES = (1, 2, 3, 4)


def _select_candidates(grids):
    return [{"select": "colour", "colour": c} for c in COLOURS] + [{"select": "size", "size": k} for k in SELECT_SIZES]


def _select_blind(q):
    sizes = sorted({len(cells) for _, cells in components(q)})
    return ([{"select": "colour", "colour": c} for c in sorted(_present([q]))]
            + [{"select": "size", "size": k} for k in sizes if k in SELECT_SIZES])


def _select_draw_rule(rng):
    colours = _colours(rng, int(rng.integers(5, 8)))
    if SELECTORS[int(rng.integers(2))] == "colour":
        return {"select": "colour", "colour": int(rng.choice(colours))}, {"colours": colours}
    return {"select": "size", "size": int(rng.choice(SELECT_SIZES))}, {"colours": colours}


def _objects_input(rng, colours, n_lo, n_hi, size_lo, size_hi, side_lo=4, distinct=True, must=None):
    """2-D objects (random blobs) of the given colours, not touching; `must` colour always present."""
    h, w = _size(rng, side_lo)
    n = int(rng.integers(n_lo, n_hi + 1))
    if distinct:
        n = min(n, len(colours))
        cols = [int(c) for c in rng.choice(colours, size=n, replace=False)]
    else:
        cols = [int(c) for c in rng.choice(colours, size=n)]
    if must is not None and must not in cols:
        cols[0] = must
    masks = [_blob(rng, int(rng.integers(size_lo, size_hi + 1))) for _ in cols]
    return place(rng, h, w, masks, cols)


def _select_draw_input(rule, spec, rng):
    g = _objects_input(rng, spec["colours"], 4, 6, 1, max(SELECT_SIZES), side_lo=6, must=rule.get("colour"))
    if g is not None and rule["select"] == "size" and not any(len(c) == rule["size"] for _, c in components(g)):
        return None
    return g


# size_recolour: the objects of a drawn size become a drawn colour ------------------------------------

def _size_recolour_apply(rule, g):
    out = np.asarray(g, dtype=np.uint8).copy()
    for _, cells in components(g):
        if len(cells) == int(rule["size"]):
            for r, c in cells:
                out[r, c] = int(rule["colour"])
    return out


def _size_recolour_candidates(grids):
    return [{"size": k, "colour": c} for k in range(1, 7) for c in COLOURS]


def _size_recolour_blind(q):
    sizes = sorted({len(cells) for _, cells in components(q)})
    return [{"size": k, "colour": c} for k in sizes for c in COLOURS if c not in _present([q])]


def _size_recolour_draw_rule(rng):
    colour = int(rng.integers(1, 10))
    return ({"size": int(rng.integers(1, 5)), "colour": int(rng.choice([c for c in COLOURS if c != colour]))},
            {"colours": [colour]})


def _size_recolour_draw_input(rule, spec, rng):
    h, w = _size(rng, 4)
    n = int(rng.integers(3, 7))
    sizes = [int(rule["size"])] + [int(rng.integers(1, 5)) for _ in range(n - 1)]
    if all(s == sizes[0] for s in sizes):
        return None
    return place(rng, h, w, [_blob(rng, s) for s in sizes], spec["colours"] * n)


# enclose: background cells walled off from the border become a drawn colour -------------------------

def enclosed(g: np.ndarray) -> np.ndarray:
    """Background cells with no 4-connected background path to the grid's border."""
    g = np.asarray(g)
    h, w = g.shape
    outside = np.zeros((h, w), dtype=bool)
    stack = [(r, c) for r in range(h) for c in range(w) if (r in (0, h - 1) or c in (0, w - 1)) and g[r, c] == 0]
    for r, c in stack:
        outside[r, c] = True
    while stack:
        r, c = stack.pop()
        for dr, dc in DIRS4:
            rr, cc = r + dr, c + dc
            if 0 <= rr < h and 0 <= cc < w and not outside[rr, cc] and g[rr, cc] == 0:
                outside[rr, cc] = True
                stack.append((rr, cc))
    return (g == 0) & ~outside


def _enclose_apply(rule, g):
    out = np.asarray(g, dtype=np.uint8).copy()
    out[enclosed(g)] = int(rule["colour"])
    return out


def _colour_rules(grids):
    return [{"colour": c} for c in COLOURS]


def _absent_colour_rules(q):
    return [{"colour": c} for c in COLOURS if c not in _present([q])]


def _fill_draw_rule(rng):
    c = int(rng.integers(1, 10))
    return {"colour": c}, {"colours": _colours(rng, int(rng.integers(1, 3)), exclude=(c,))}


def _enclose_draw_input(rule, spec, rng):
    """1-3 rectangle outlines (some with a gap, so their inside is not enclosed) plus noise."""
    h, w = _size(rng, 5)
    g = np.zeros((h, w), dtype=np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        rh, rw = int(rng.integers(3, min(h, 6) + 1)), int(rng.integers(3, min(w, 6) + 1))
        r, c = int(rng.integers(h - rh + 1)), int(rng.integers(w - rw + 1))
        col = int(rng.choice(spec["colours"]))
        g[r, c:c + rw] = g[r + rh - 1, c:c + rw] = col
        g[r:r + rh, c] = g[r:r + rh, c + rw - 1] = col
        if rng.random() < 0.3:  # a gap in one side (not a corner)
            side = int(rng.integers(4))
            if side < 2:
                g[r if side == 0 else r + rh - 1, c + int(rng.integers(1, rw - 1))] = 0
            else:
                g[r + int(rng.integers(1, rh - 1)), c if side == 2 else c + rw - 1] = 0
    noise = (rng.random((h, w)) < 0.08) & (g == 0)
    g[noise] = rng.choice(spec["colours"], size=int(noise.sum()))
    return g if enclosed(g).any() else None


# outline: background cells next to an object (4- or 8-neighbourhood, drawn) become a drawn colour ---

def neighbour_counts(mask: np.ndarray, nbhd: int) -> np.ndarray:
    """For each cell, how many of its 4 or 8 neighbours are in `mask`."""
    if nbhd not in (4, 8):
        raise ValueError(f"neighbourhood {nbhd} is not 4 or 8")
    h, w = mask.shape
    p = np.zeros((h + 2, w + 2), dtype=np.int32)
    p[1:-1, 1:-1] = mask
    offs = DIRS4 if nbhd == 4 else DIRS8
    return sum(p[1 + dr:1 + dr + h, 1 + dc:1 + dc + w] for dr, dc in offs)


def _outline_apply(rule, g):
    g = np.asarray(g, dtype=np.uint8)
    nb = int(rule["nbhd"])
    out = g.copy()
    out[(g == 0) & (neighbour_counts(g != 0, nb) > 0)] = int(rule["colour"])
    return out


def _outline_candidates(grids):
    return [{"colour": c, "nbhd": n} for n in (4, 8) for c in COLOURS]


def _outline_blind(q):
    return [{"colour": c, "nbhd": n} for n in (4, 8) for c in COLOURS if c not in _present([q])]


def _outline_draw_rule(rng):
    c = int(rng.integers(1, 10))
    return {"colour": c, "nbhd": int(rng.choice([4, 8]))}, {"colours": _colours(rng, int(rng.integers(1, 3)), exclude=(c,))}


def _outline_draw_input(rule, spec, rng):
    return _objects_input(rng, spec["colours"], 1, 3, 1, 4, side_lo=4, distinct=False)


# count_bar: a bar as long as the number of objects, in a drawn colour and orientation ----------------

def _count_bar_apply(rule, g):
    n = len(components(g))
    if not 1 <= n <= MAX_SIDE:
        raise ValueError(f"{n} objects: the bar does not fit 1..{MAX_SIDE}")
    shape = (1, n) if rule["orient"] == "row" else (n, 1)
    return np.full(shape, int(rule["colour"]), dtype=np.uint8)


def _count_bar_candidates(grids):
    return [{"colour": c, "orient": o} for o in ("row", "col") for c in COLOURS]


def _count_bar_draw_rule(rng):
    return ({"colour": int(rng.integers(1, 10)), "orient": ("row", "col")[int(rng.integers(2))]},
            {"colours": _colours(rng, int(rng.integers(1, 4)))})


def _count_bar_draw_input(rule, spec, rng):
    return _objects_input(rng, spec["colours"], 1, 6, 1, 4, distinct=False)


# scale_count: scaled along drawn axes by the number of colours in the input ----------------------------

def _scale_apply(rule, g):
    g = np.asarray(g, dtype=np.uint8)
    f = len(_present([g]))
    fr = f if rule["axes"] in ("rows", "both") else 1
    fc = f if rule["axes"] in ("cols", "both") else 1
    if g.shape[0] * fr > MAX_SIDE or g.shape[1] * fc > MAX_SIDE:
        raise ValueError(f"scaling a {g.shape[0]}x{g.shape[1]} grid by {fr}x{fc} exceeds {MAX_SIDE}x{MAX_SIDE}")
    if rule["mode"] == "tile":
        return np.tile(g, (fr, fc))
    return np.repeat(np.repeat(g, fr, axis=0), fc, axis=1)


def _scale_candidates(grids):
    return [{"axes": a, "mode": m} for a in SCALE_AXES for m in SCALE_MODES]


def _scale_draw_rule(rng):
    return {"axes": SCALE_AXES[int(rng.integers(3))], "mode": SCALE_MODES[int(rng.integers(2))]}, {}


def _scale_draw_input(rule, spec, rng):
    # every axes rule must fit the input (2x2 to 4x4 for 2 colours, 2x2 for 3), or its size would tell the axes
    f = int(rng.choice([2, 2, 3]))
    h, w = _size(rng, 2, MAX_SIDE // f)
    if h * w < f + 1:
        return None
    colours = _colours(rng, f)
    g = np.where(rng.random((h, w)) < 0.6, rng.choice(colours, size=(h, w)), 0).astype(np.uint8)
    return g if len(_present([g])) == f else None


# crop_dihedral: cut out the bounding box of the non-background, then a drawn flip/rotation ----------

def crop(g: np.ndarray) -> np.ndarray:
    rs, cs = np.nonzero(g)
    if not len(rs):
        raise ValueError("nothing to crop: the grid is empty")
    return g[rs.min():rs.max() + 1, cs.min():cs.max() + 1]


def _crop_dihedral_apply(rule, g):
    return np.ascontiguousarray(dihedral(crop(np.asarray(g, dtype=np.uint8)), int(rule["dihedral"])))


def _crop_dihedral_candidates(grids):
    return [{"dihedral": d} for d in range(8)]


def _crop_dihedral_draw_rule(rng):
    return {"dihedral": int(rng.integers(8))}, {"colours": _colours(rng, int(rng.integers(2, 4)))}


def _crop_dihedral_draw_input(rule, spec, rng):
    h, w = _size(rng, 4)
    ph, pw = int(rng.integers(2, min(h - 1, 5) + 1)), int(rng.integers(2, min(w - 1, 5) + 1))
    p = np.where(rng.random((ph, pw)) < 0.6, rng.choice(spec["colours"], size=(ph, pw)), 0).astype(np.uint8)
    if not (p[0].any() and p[-1].any() and p[:, 0].any() and p[:, -1].any()):
        return None  # the patch must be its own bounding box
    g = np.zeros((h, w), dtype=np.uint8)
    r, c = int(rng.integers(h - ph + 1)), int(rng.integers(w - pw + 1))
    g[r:r + ph, c:c + pw] = p
    return g


# gravity_recolour: plain gravity in a drawn direction, then one drawn colour becomes another --------

def _gravity_recolour_apply(rule, g):
    out = fall(g, rule["direction"])
    src, dst = (int(x) for x in rule["map"])
    out[out == src] = dst
    return out


def _gravity_recolour_candidates(grids):
    return [{"direction": list(d), "map": [s, t]} for d in DIRS4 for s in COLOURS for t in COLOURS if t != s]


def _gravity_recolour_blind(q):
    present = sorted(_present([q]))
    return [{"direction": list(d), "map": [s, t]} for d in DIRS4 for s in present for t in COLOURS if t not in present]


def _gravity_recolour_draw_rule(rng):
    colours = _colours(rng, int(rng.integers(1, 4)))
    src = int(rng.choice(colours))
    dst = int(rng.choice([c for c in COLOURS if c not in colours]))
    return {"direction": list(DIRS4[int(rng.integers(4))]), "map": [src, dst]}, {"colours": colours}


# crowd: objects' cells with at least k neighbours (4 or 8) in the foreground become a drawn colour ---

CROWD_K = (2, 3)


def _crowd_apply(rule, g):
    g = np.asarray(g, dtype=np.uint8)
    nb = int(rule["nbhd"])
    out = g.copy()
    out[(g != 0) & (neighbour_counts(g != 0, nb) >= int(rule["k"]))] = int(rule["colour"])
    return out


def _crowd_candidates(grids):
    return [{"k": k, "nbhd": n, "colour": c} for n in (4, 8) for k in range(1, n + 1) for c in COLOURS]


def _crowd_blind(q):
    return [{"k": k, "nbhd": n, "colour": c} for n in (4, 8) for k in CROWD_K for c in COLOURS if c not in _present([q])]


def _crowd_draw_rule(rng):
    c = int(rng.integers(1, 10))
    return ({"k": int(rng.choice(CROWD_K)), "nbhd": int(rng.choice([4, 8])), "colour": c},
            {"colours": _colours(rng, 1, exclude=(c,))})


def _crowd_draw_input(rule, spec, rng):
    h, w = _size(rng, 4)
    g = np.where(rng.random((h, w)) < rng.uniform(0.3, 0.55), spec["colours"][0], 0).astype(np.uint8)
    changed = (g != 0) & (neighbour_counts(g != 0, int(rule["nbhd"])) >= int(rule["k"]))
    return g if changed.any() and ((g != 0) & ~changed).any() else None  # some cells change, some stay


# connect: two cells of one colour on a row (or column) are joined by a line ---------------------------

CONNECT_AXES = ("rows", "cols", "both")


def connect(g: np.ndarray, axes: str, colour: int) -> np.ndarray:
    """Background between two same-coloured cells of a row ("rows"), a column ("cols") or either
    ("both"), with only background between them, becomes `colour` (0: the cells' own colour)."""
    g = np.asarray(g, dtype=np.uint8)
    out = g.copy()
    painted = np.zeros(g.shape, dtype=bool)
    for along in (("rows",) if axes == "rows" else ("cols",) if axes == "cols" else ("rows", "cols")):
        v, o, p = (g, out, painted) if along == "rows" else (g.T, out.T, painted.T)  # views: writes land in out
        for r in range(v.shape[0]):
            cols = np.nonzero(v[r])[0]
            for a, b in zip(cols[:-1], cols[1:]):
                if v[r, a] == v[r, b] and b > a + 1:
                    if p[r, a + 1:b].any():
                        raise ValueError("two lines cross")
                    p[r, a + 1:b] = True
                    o[r, a + 1:b] = colour or v[r, a]
    return out


def _connect_candidates(grids):
    return [{"axes": a, "colour": c} for a in CONNECT_AXES for c in (0, *COLOURS)]


def _connect_blind(q):
    return [{"axes": a, "colour": c} for a in CONNECT_AXES for c in (0, *COLOURS) if c not in _present([q])]


def _connect_draw_rule(rng):
    c = int(rng.integers(0, 10))  # 0: the line takes its end cells' colour
    return {"axes": CONNECT_AXES[int(rng.integers(3))], "colour": c}, {"colours": _colours(rng, 4, exclude=(c,))}


def _connect_draw_input(rule, spec, rng):
    """1-3 pairs of same-coloured cells, each on one row or one column (either way, whatever the
    rule), plus up to 2 single cells of other colours."""
    h, w = _size(rng, 4)
    g = np.zeros((h, w), dtype=np.uint8)
    cols = [int(c) for c in rng.permutation(spec["colours"])]
    npairs = int(rng.integers(1, 4))
    for col in cols[:npairs]:
        if rng.random() < 0.5:
            r = int(rng.integers(h))
            a, b = sorted(int(x) for x in rng.choice(w, 2, replace=False))
            g[r, a] = g[r, b] = col
        else:
            c = int(rng.integers(w))
            a, b = sorted(int(x) for x in rng.choice(h, 2, replace=False))
            g[a, c] = g[b, c] = col
    for col in cols[npairs:npairs + int(rng.integers(0, 3))]:
        g.flat[int(rng.integers(h * w))] = col
    return g


FAMILY_SPECS: dict[str, Family] = {
    "gravity": Family(_gravity_apply, _gravity_candidates, _gravity_blind,
                      _gravity_draw_rule, _gravity_draw_input),
    "rays": Family(lambda rule, g: rays(g, rule["direction"]), lambda grids: [{"direction": list(d)} for d in DIRS8],
                   lambda q: [{"direction": list(d)} for d in DIRS8],
                   lambda rng: ({"direction": list(DIRS8[int(rng.integers(8))])}, {"colours": _colours(rng, int(rng.integers(1, 4)))}),
                   _rays_draw_input),
    "select": Family(lambda rule, g: select(g, rule), _select_candidates, _select_blind, _select_draw_rule,
                     _select_draw_input),
    "size_recolour": Family(_size_recolour_apply, _size_recolour_candidates, _size_recolour_blind,
                            _size_recolour_draw_rule, _size_recolour_draw_input),
    "enclose": Family(_enclose_apply, _colour_rules, _absent_colour_rules, _fill_draw_rule, _enclose_draw_input),
    "outline": Family(_outline_apply, _outline_candidates, _outline_blind, _outline_draw_rule, _outline_draw_input),
    "count_bar": Family(_count_bar_apply, _count_bar_candidates, lambda q: _count_bar_candidates([q]),
                        _count_bar_draw_rule, _count_bar_draw_input, _outputs_vary),
    "scale_count": Family(_scale_apply, _scale_candidates, lambda q: _scale_candidates([q]), _scale_draw_rule,
                          _scale_draw_input, lambda demos: len({len(_present([a])) for a, _ in demos}) >= 2),
    "crop_dihedral": Family(_crop_dihedral_apply, _crop_dihedral_candidates, lambda q: _crop_dihedral_candidates([q]),
                            _crop_dihedral_draw_rule, _crop_dihedral_draw_input),
    "crowd": Family(_crowd_apply, _crowd_candidates, _crowd_blind, _crowd_draw_rule, _crowd_draw_input),
    "connect": Family(lambda rule, g: connect(g, rule["axes"], int(rule["colour"])), _connect_candidates,
                      _connect_blind, _connect_draw_rule, _connect_draw_input),
    "gravity_recolour": Family(_gravity_recolour_apply, _gravity_recolour_candidates, _gravity_recolour_blind,
                               _gravity_recolour_draw_rule, _gravity_draw_input),
}
