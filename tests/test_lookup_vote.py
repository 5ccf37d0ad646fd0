"""bench/lookup_vote.py: the cell_lookup vote at init answers a colour-recolouring puzzle exactly
(cells like the query's became that colour in the demos; with --select at the default colour share
too), is scored per family folder, reads an upscaling through the frame maps with --frame and a crop
+ flip through the region maps with --box, and a path that is not a folder is refused with its name."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bench import lookup_vote


def _recolour_puzzle(rng: np.random.Generator) -> dict:
    """Colour 1 becomes 3, colour 2 stays: a rule the vote reads from the demos' colours."""
    def pair():
        g = rng.choice([0, 1, 2], size=(4, 5))
        return {"input": g.tolist(), "output": np.where(g == 1, 3, g).tolist()}
    return {"train": [pair() for _ in range(3)], "test": [pair()]}


def test_vote_solves_a_recolouring_family_and_reports_it(tmp_path, capsys):
    rng = np.random.default_rng(0)
    fam = tmp_path / "recolour"
    fam.mkdir()
    for i in range(3):
        (fam / f"p{i}.json").write_text(json.dumps(_recolour_puzzle(rng)))
    lookup_vote.main([str(tmp_path), "--colour-share", "1.0"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("recolour")]
    assert row and row[0].split()[1:] == ["3", "1.00", "1.00"]
    # --select (arch.cell_lookup_select): the colour alone predicts the demos, so the features are
    # left out and the vote is exact at the default colour share too
    lookup_vote.main([str(tmp_path), "--select"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("recolour")]
    assert row and row[0].split()[1:] == ["3", "1.00", "1.00"]


def test_frame_scores_the_pairs_read_into_the_answers_frame(tmp_path, capsys):
    """--frame (arch.cell_lookup_frame): an x2 upscaling + recolouring has no pair of the input's shape,
    so without frame maps nothing is scored; with them the query stretched into its frame is exact."""
    rng = np.random.default_rng(0)
    fam = tmp_path / "upscale"
    fam.mkdir()
    def pair(h, w):
        g = rng.choice([0, 1, 2], size=(h, w))
        return {"input": g.tolist(), "output": np.where(g == 1, 3, g).repeat(2, 0).repeat(2, 1).tolist()}
    for i in range(2):
        puzzle = {"train": [pair(2, 3), pair(3, 2), pair(3, 3)], "test": [pair(2, 2)]}
        (fam / f"p{i}.json").write_text(json.dumps(puzzle))
    lookup_vote.main([str(tmp_path), "--through-map", "--select", "--table"])
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("upscale")]
    lookup_vote.main([str(tmp_path), "--through-map", "--select", "--table", "--frame"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("upscale")]
    assert row and row[0].split()[1:3] == ["2", "1.00"]


def test_box_scores_the_pairs_read_from_a_box_of_the_input(tmp_path, capsys):
    """--box (arch.cell_lookup_box): the content cropped and flipped left-right has no pair of the
    input's shape or of a frame map's reading, so without region maps it is not answered; with them
    the query's content, flipped, is exact. --box without --frame is refused."""
    rng = np.random.default_rng(1)
    fam = tmp_path / "crop_flip"
    fam.mkdir()
    def pair(top, left):
        g = np.zeros((6, 6), int)
        g[top:top + 2, left:left + 3] = rng.integers(1, 10, (2, 3))
        return {"input": g.tolist(), "output": g[top:top + 2, left:left + 3][:, ::-1].tolist()}
    for i in range(2):
        puzzle = {"train": [pair(0, 1), pair(3, 2), pair(2, 0)], "test": [pair(4, 3)]}
        (fam / f"p{i}.json").write_text(json.dumps(puzzle))
    args = [str(tmp_path), "--through-map", "--select", "--table", "--frame"]
    lookup_vote.main(args)
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("crop_flip")]
    assert not row or row[0].split()[2] == "0.00"
    lookup_vote.main(args + ["--box"])
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("crop_flip")]
    assert row and row[0].split()[1:3] == ["2", "1.00"]
    with pytest.raises(SystemExit, match="--box adds region maps"):
        lookup_vote.main([str(tmp_path), "--through-map", "--box"])


def test_not_a_folder_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="nope is not a folder"):
        lookup_vote.main([str(tmp_path / "nope")])
