"""How good is `arch.cell_lookup`'s vote on its own, before any training?

    python -m bench.lookup_vote PUZZLES_DIR [--sharpness 8] [--colour-share 0.5] [--seed 0] [--side 8]
        [--through-map] [--select [--other-weight 0]] [--table]

PUZZLES_DIR: ARC JSON puzzles, one sub-folder per family (bench.learning's
<data>/puzzles/eval layout) or a flat folder (one row, "all"). For every test pair whose output
has its input's shape, a freshly initialised CellLookup (models/cell_lookup.py) answers each cell
with its vote alone (the colour the demo cells that look like it became, "unchanged" = its own
colour), and the bench prints per family the share of exact answers and of the cells the rule
changes that the vote gets right. It is the prior that training starts from: the settings it
compares (how sharp the read is at init, how much the cell's colour weighs against its grid
features) are the constants of models/cell_lookup.py. No model, no training: seconds.

--through-map (`arch.cell_lookup_map`): every grid is first read through the cell maps that, with
one colour relabelling, explain the demos (models/grid_maps.py map_cover: the best map, and the
copies of a tiling); a test pair counts when its output has the shape of its input as the maps
carry it, and "changed cells" are those the maps do not carry unchanged.

--select (`arch.cell_lookup_select`): cells are compared by the grid features the demos' changes
follow (models/feature_select.py), the other features weighted --other-weight. --table
(`arch.cell_lookup_table`, implies --select): the demos' table for the best feature votes too.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from bench.common import grid_canvas, task_files
from dataset.tokens import COLOUR_OFFSET
from models.answer_size import answer_size
from models.cell_lookup import COLOUR_SHARE, OTHER_WEIGHT, CellLookup
from models.grid_maps import map_cover


@torch.no_grad()
def vote_scores(lookup: CellLookup, files: list[Path], side: int, through_map: bool = False, frames: bool = False
                ) -> tuple[float, float, int]:
    """-> (exact share, changed cells right, number of test pairs scored). through_map: read every
    grid through the map that explains the demos best (--through-map); frames: the frame maps too,
    the query's frame from models/answer_size.py (--frame)."""
    exact = right = changed_total = n = 0
    enc = lambda g: grid_canvas(g, side)  # noqa: E731
    for f in files:
        puzzle = json.loads(f.read_text())
        d_in = torch.stack([enc(p["input"]) for p in puzzle["train"]])[None]
        d_out = torch.stack([enc(p["output"]) for p in puzzle["train"]])[None]
        mask = torch.ones(1, d_in.shape[1], dtype=torch.bool)
        cover = map_cover(d_in, d_out, mask, side, frames=frames, regions=lookup.regions) if through_map else None
        for test in puzzle["test"]:
            q, a = np.asarray(test["input"]), np.asarray(test["output"])
            query = enc(q)[None]
            frame = None   # the frame maps' query frame: the answer's size (0 x 0 when not known)
            if frames:
                size, known = answer_size(d_in, d_out, mask, query, side)
                frame = size * known[:, None]
            # the query as the map carries it (itself without a map): what "unchanged" answers
            carried, shape = query, query >= COLOUR_OFFSET
            if cover is not None:
                carried, _, shape = lookup._through_map(query, query[..., None], *cover, frame)
            carried = carried[0].view(side, side).numpy().astype(np.int64) - COLOUR_OFFSET
            h, w = a.shape
            if (shape[0].view(side, side).numpy() != (np.arange(side)[:, None] < h) & (np.arange(side) < w)).any():
                continue   # the answer has another shape than the carried query: not a per-cell rule
            _, logits = lookup(query, d_in, d_out, mask, cover, frame)
            pred = logits[0, :, COLOUR_OFFSET:].argmax(-1).view(side, side)[:h, :w].numpy()
            changed = carried[:h, :w] != a
            n += 1
            exact += bool((pred == a).all())
            right += int((pred[changed] == a[changed]).sum())
            changed_total += int(changed.sum())
    return exact / max(n, 1), right / max(changed_total, 1), n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("puzzles", type=Path)
    ap.add_argument("--sharpness", type=float, default=8.0)
    ap.add_argument("--colour-share", type=float, default=COLOUR_SHARE)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--side", type=int, default=8, help="canvas side (8: the learning benchmark's)")
    ap.add_argument("--select", action="store_true",
                    help="weigh the grid features the demos' changes follow most (arch.cell_lookup_select)")
    ap.add_argument("--other-weight", type=float, default=OTHER_WEIGHT,
                    help="--select: the weight of the other features")
    ap.add_argument("--table", action="store_true",
                    help="--select: the demos' table for the best feature votes too (arch.cell_lookup_table)")
    ap.add_argument("--through-map", action="store_true",
                    help="read every grid through the map the demos agree with most (arch.cell_lookup_map)")
    ap.add_argument("--frame", action="store_true",
                    help="--through-map: the input tiled / stretched into the answer's frame is a candidate map too "
                         "(arch.cell_lookup_frame)")
    ap.add_argument("--box", action="store_true",
                    help="--frame: a box of the input (the content's through a flip / rotation, one colour's) is a "
                         "candidate map too (arch.cell_lookup_box)")
    args = ap.parse_args(argv)
    if args.box and not args.frame:
        raise SystemExit("error: --box adds region maps after --frame's frame maps: pass --frame too")
    if not args.puzzles.is_dir():
        raise SystemExit(f"error: {args.puzzles} is not a folder of ARC JSON puzzles")
    torch.manual_seed(args.seed)
    lookup = CellLookup(64, 12, args.side, sharpness=args.sharpness, colour_share=args.colour_share,
                        select_features=args.select or args.table, other_weight=args.other_weight,
                        table_vote=args.table, regions=args.box)
    lookup.vote_gain.data.fill_(1.0)
    if args.table:
        lookup.table_gain.data.fill_(1.0)
    print(f"cell_lookup vote at init (sharpness {args.sharpness}, colour share {args.colour_share}, seed {args.seed}"
          f"{', through the demos map' if args.through_map else ''}{' (+ frame maps)' if args.frame else ''}"
          f"{' (+ region maps)' if args.box else ''}"
          f"{f', features selected (others x {args.other_weight})' if args.select or args.table else ''}"
          f"{', + the table vote' if args.table else ''})")
    print(f"{'family':18s} {'pairs':>5s} {'exact':>6s} {'changed right':>13s}")
    for family, files in task_files(args.puzzles).items():
        exact, right, n = vote_scores(lookup, files, args.side, args.through_map, args.frame)
        if n:
            print(f"{family:18s} {n:5d} {exact:6.2f} {right:13.2f}")


if __name__ == "__main__":
    main()
