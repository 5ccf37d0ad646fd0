"""Launch checks (training/preflight.py), shared by the trainer, the checkpoint evaluation and
verify: a missing dataset names each config's own recipe, a dataset without the split a run reads
fails before any work, and every batch a run splits over ranks is checked."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.helpers import compose_cfg
from training import preflight


def failed(checks):
    return [c for c in checks if not c.ok]


@pytest.mark.parametrize("config, present, absent", [
    ("cfg_pretrain_etrm_arc_agi_1", ["dataset.build_arc_dataset", "ConceptARC", "--num-aug 1000"], ["dataset.synthetic"]),
    ("cfg_pretrain_etrm_synthetic", ["python -m dataset.synthetic", "--max-grid-size 8", "--train-queries all"],
     ["ConceptARC"]),
    ("cfg_pretrain_etrm_tiny", ["dataset.build_arc_dataset", "--max-grid-size 10", "--num-aug 8", "built automatically"],
     ["ConceptARC", "dataset.synthetic"]),
])
def test_a_missing_dataset_prints_the_configs_own_recipe(tmp_path, config, present, absent):
    missing = tmp_path / "absent"
    (check,) = failed(preflight.dataset_checks(compose_cfg(config, [f"data_paths=[{missing}]"])))
    assert check.error is FileNotFoundError and f"data_paths: dataset directory {missing} does not exist" in check.detail
    assert f"--output-dir {missing}" in check.detail
    for text in present:
        assert text in check.detail
    for text in absent:
        assert text not in check.detail


def test_a_dataset_without_the_split_the_run_reads_fails(tmp_path):
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "train" / "arrays.npz").write_bytes(b"")
    (data / "metadata.json").write_text("{}")
    cfg = compose_cfg("cfg_pretrain_etrm_arc_agi_1", [f"data_paths=[{data}]"])
    (check,) = failed(preflight.dataset_checks(cfg))
    assert "has no 'eval' split" in check.detail
    assert failed(preflight.dataset_checks(cfg, splits=("train",))) == []
    with pytest.raises(FileNotFoundError, match="has no 'eval' split"):
        preflight.require(preflight.dataset_checks(cfg))


def test_every_batch_split_over_ranks_is_checked():
    cfg = compose_cfg("cfg_pretrain_etrm_arc_agi_1", ["global_batch_size=256", "eval_global_batch_size=96"])
    assert [c.name for c in failed(preflight.batch_checks(cfg, 64))] == ["eval_global_batch_size divides over 64 rank(s)"]
    assert failed(preflight.batch_checks(cfg, 64, train=False))[0].detail.startswith("eval_global_batch_size=96 does not")
    tta = compose_cfg("cfg_pretrain_etrm_arc_agi_1", ["tta=context", "tta.global_batch_size=12"])
    assert [c.name for c in failed(preflight.batch_checks(tta, 8))] == ["tta.global_batch_size divides over 8 rank(s)"]
    off = compose_cfg("cfg_pretrain_etrm_arc_agi_1", ["tta.global_batch_size=12"])  # tta.mode none: never run
    assert failed(preflight.batch_checks(off, 8)) == []


def test_eval_batch_defaults_to_a_per_rank_batch_on_a_gpu():
    sf = compose_cfg("cfg_pretrain_etrm_arc_agi_1", ["global_batch_size=128"])  # SF1-4: 32 per rank on 4 GPUs
    assert preflight.eval_global_batch(sf, 4, "cuda") == 4 * 256
    assert preflight.eval_global_batch(sf, 4, "cpu") == 128  # CPU runs keep the training batch
    big = compose_cfg("cfg_pretrain_etrm_arc_agi_1", ["global_batch_size=2048", "eval_batch_per_rank=64"])
    assert preflight.eval_global_batch(big, 4, "cuda") == 2048  # never below the training batch
    explicit = compose_cfg("cfg_pretrain_etrm_arc_agi_1", ["eval_global_batch_size=96"])
    assert preflight.eval_global_batch(explicit, 4, "cuda") == preflight.eval_global_batch(explicit, 4, "cpu") == 96
    old_run = OmegaConf.create({"global_batch_size": 128, "eval_global_batch_size": None})  # config.yaml without the key
    assert preflight.eval_global_batch(old_run, 4, "cuda") == 4 * preflight.EVAL_BATCH_PER_RANK
    assert failed(preflight.batch_checks(sf, 4)) == []  # the default always divides
