"""dataset/atomic.py is the one way files and folders are published (datasets, evaluations,
checkpoints, TTA weights, configs): a failed write leaves the old version and no debris, and a
replaced folder is replaced whole."""
from __future__ import annotations

import pytest
import torch

from dataset.atomic import atomic_write, publish_directory
from training import checkpoint


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "tta_adapted.pt"
    atomic_write(target, lambda tmp: torch.save({"v": 1}, tmp))

    def half_then_crash(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert torch.load(target) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["tta_adapted.pt"]


def test_publishing_over_a_folder_replaces_it_whole(tmp_path):
    out, new = tmp_path / "out", tmp_path / "new"
    out.mkdir()
    (out / "stale.json").write_text("old")
    new.mkdir()
    (new / "fresh.json").write_text("new")
    with pytest.raises(FileExistsError):
        publish_directory(new, out, overwrite=False)
    publish_directory(new, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in out.iterdir()] == ["fresh.json"]


def test_a_resaved_checkpoint_step_holds_only_the_new_files(tmp_path):
    """A step saved again (a resume that ends where a checkpoint already is) replaces the folder."""
    state = {"trainer_state": {"step": 4}}
    checkpoint.save_checkpoint(tmp_path, 4, 0, {**state, "model": {"w": 1}, "ema": {"w": 1}}, {"carry": None}, keep_last=2)
    path = checkpoint.save_checkpoint(tmp_path, 4, 0, {**state, "model": {"w": 2}}, {"carry": None}, keep_last=2)
    assert sorted(p.name for p in path.iterdir()) == ["COMPLETE", "model.pt", "rank_0.pt", "trainer_state.json"]
    assert checkpoint.load_checkpoint(path, 0)["model"] == {"w": 2}
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_4"]
