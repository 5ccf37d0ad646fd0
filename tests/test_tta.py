"""Test-time adaptation (training/tta.py, dataset/adaptation.py): the adaptation set holds only
demos, so corrupting every test output changes neither the adapted weights nor a prediction;
adaptation lowers the leave-one-out loss; `full` solves a puzzle the frozen model cannot;
bad settings fail with the key and the choices; DDP gives the one-process result."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset import EvalLoader, load_split
from dataset.adaptation import adaptation_split
from dataset.build_arc_dataset import build_dataset, split_arrays
from dataset.loader import ARCSplit
from dataset.synthetic import generate, write_dataset
from training import build
from training.distributed import DistInfo
from tests.helpers import compose_cfg
from training.evaluation import run_evaluation
from training import tta
from training.tta import TTASettings, adapt, adaptation_fit

REPO = Path(__file__).resolve().parents[1]
CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def synthetic_data(root: Path, num_train: int, num_eval: int, seed: int, family: str) -> Path:
    puzzles = write_dataset(generate(num_train, num_eval, seed=seed, families=[family]), root / "puzzles")
    build_dataset([str(puzzles / "train")], [str(puzzles / "eval")], root / "built", num_aug=8, seed=0,
                  max_grid_size=8, max_demos=4, progress=False, log=lambda *a, **k: None)
    return root / "built"


@pytest.fixture(scope="module")
def fill_data(tmp_path_factory) -> Path:
    """Generated `fill` puzzles (the background takes a colour drawn per puzzle): 8 train, 6 eval."""
    return synthetic_data(tmp_path_factory.mktemp("tta"), 8, 6, seed=3, family="fill")


SMALL_ARCH = ["arch.hidden_size=32", "arch.num_heads=2", "arch.H_cycles=1", "arch.L_cycles=1", "arch.L_layers=1",
              "arch.halt_max_steps=2", "arch.halt_exploration_prob=0.0", "arch.encoder_num_layers=1",
              "arch.puzzle_emb_len=12"]


def small_model(data: Path, extra: list[str] = (), seed: int = 0):
    """(cfg, head) of the synthetic benchmark's config at a few thousand parameters."""
    cfg = compose_cfg("cfg_pretrain_etrm_synthetic", [f"data_paths=[{data}]", *SMALL_ARCH, *extra])
    split = load_split(str(data), "eval")
    torch.manual_seed(seed)
    _, head = build.build_model(cfg, build.model_kwargs(cfg, split, 8))
    return cfg, head


def tta_settings(cfg, **over) -> TTASettings:
    return TTASettings.from_config({**dict(cfg.tta), **over})


class Collect:
    """An evaluator that keeps every prediction, in order."""

    def begin(self):
        self.preds = []

    def update(self, batch, outputs):
        self.preds.append(outputs["preds"].clone())

    def local_data(self):
        return {}

    def result(self, run_dir, step, parts=None):
        return {"samples": sum(len(p) for p in self.preds), "checksum": checksum(self.preds)}


def checksum(preds: list[torch.Tensor]) -> float:
    """A number that changes with any prediction and with their order."""
    flat = torch.cat(preds).flatten().double() if preds else torch.zeros(0, dtype=torch.float64)
    return float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64).sqrt()).sum())


def predict(head, split: ARCSplit) -> torch.Tensor:
    collect = Collect()
    run_evaluation(head, EvalLoader(split, 16, max_variants=4), [collect], CPU, "float32", None, 0, show_progress=False)
    return torch.cat(collect.preds)


def with_corrupted_test_outputs(split: ARCSplit, seed: int = 0) -> ARCSplit:
    """The same split with every test output replaced by a random grid of another shape."""
    rng = np.random.default_rng(seed)

    def corrupt(grid: np.ndarray) -> np.ndarray:
        h, w = (int(x) for x in rng.integers(1, split.side + 1, size=2))
        h = h % split.side + 1 if (h, w) == grid.shape else h
        return rng.integers(0, 10, size=(h, w)).astype(np.uint8)

    puzzles, tables = [], []
    for p in range(split.num_puzzles):
        q0, q1 = split.puzzle_query_range(p)
        first = int(split.puzzle_pair_offsets[p])
        queries = [(int(split.query_pair_index[q]) - first, int(split.query_test_index[q])) for q in range(q0, q1)]
        puzzles.append((split.demos(p) + [(a, corrupt(b)) for a, b in split.test_pairs(p)],
                        int(split.puzzle_num_demos[p]), queries))
        v0, v1 = split.puzzle_variant_range(p)
        tables.append(split.variants[v0:v1])
    return ARCSplit.from_arrays(split_arrays(puzzles, tables), split.puzzle_ids, split.metadata, split.split, split.paths)


# ------------------------------------------------------------------------------------ data


def test_adaptation_split_holds_the_demos_only_as_leave_one_out_queries(fill_data):
    split = load_split(str(fill_data), "eval")
    ada = adaptation_split(split)
    assert ada.puzzle_ids == split.puzzle_ids and np.array_equal(ada.variants, split.variants)
    assert ada.num_grids == 2 * int(split.puzzle_num_demos.sum())  # no test grid copied
    assert (ada.query_test_index == -1).all()
    for p in range(split.num_puzzles):
        demos = split.demos(p)
        q0, q1 = ada.puzzle_query_range(p)
        assert q1 - q0 == (len(demos) if len(demos) > 1 else 0)
        for q in range(q0, q1):
            query = ada.query_pair(q)
            context = ada.query_demos(q)
            assert len(context) == len(demos) - 1
            others = [d for d in demos if not (np.array_equal(d[0], query[0]) and np.array_equal(d[1], query[1]))]
            assert all(any(np.array_equal(c[0], o[0]) and np.array_equal(c[1], o[1]) for o in others) for c in context)


# ------------------------------------------------------------------------------------ no peeking


@pytest.mark.parametrize("mode", ["context", "full"])
def test_corrupting_every_test_output_changes_no_adapted_weight_and_no_prediction(fill_data, mode):
    split = load_split(str(fill_data), "eval")
    corrupted = with_corrupted_test_outputs(split)
    assert not all(np.array_equal(a[1], b[1]) for p in range(split.num_puzzles)
                   for a, b in zip(split.test_pairs(p), corrupted.test_pairs(p)))
    results = []
    for s in (split, corrupted):
        cfg, head = small_model(fill_data)
        adapted, _ = adapt(head, s, tta_settings(cfg, mode=mode, steps=4, global_batch_size=8), CPU, "float32",
                           eval_variants=4)
        results.append(({k: v.clone() for k, v in adapted.state_dict().items()}, predict(adapted, s)))
    (w_clean, p_clean), (w_bad, p_bad) = results
    assert w_clean.keys() == w_bad.keys()
    assert all(torch.equal(w_clean[k], w_bad[k]) for k in w_clean)
    assert torch.equal(p_clean, p_bad)
    assert w_clean["offsets.table"].abs().sum() > 0  # something was adapted


# ------------------------------------------------------------------------------------ learning


def held_out_pass2(head, cfg, split: ARCSplit, variants: int) -> float:
    evaluators = build.build_evaluators(cfg, split, wandb_log=False)
    loader = EvalLoader(split, 16, max_variants=variants)
    return run_evaluation(head, loader, evaluators, CPU, "float32", None, 0, show_progress=False)["ARC/pass@2"]


def test_context_adaptation_lowers_the_leave_one_out_loss_with_corrections_of_its_own(fill_data, caplog):
    split = load_split(str(fill_data), "eval")
    cfg, head = small_model(fill_data)
    frozen = {k: v.clone() for k, v in head.state_dict().items()}
    caplog.set_level("INFO", logger="etrm")
    adapted, stats = adapt(head, split, tta_settings(cfg, mode="context", steps=60, global_batch_size=8,
                                                     context_lr=0.1, fit_variants=4), CPU, "float32", eval_variants=4)
    assert stats["tta/fit_after_loss"] < 0.8 * stats["tta/fit_before_loss"], stats
    # a redirected log says how far the adaptation got (pytest's stderr is no terminal)
    assert any(r.getMessage().startswith("tta context: step 60/60 (100%) | loss ") for r in caplog.records)
    # another puzzle's correction fits worse: the corrections are about their own puzzle
    assert stats["tta/fit_swapped_loss"] > stats["tta/fit_after_loss"], stats
    # weights frozen, and the caller's model untouched
    assert all(torch.equal(v, adapted.head.state_dict()[k]) for k, v in frozen.items())
    assert all(torch.equal(v, head.state_dict()[k]) for k, v in frozen.items())


@pytest.fixture(scope="module")
def one_puzzle(tmp_path_factory) -> Path:
    return synthetic_data(tmp_path_factory.mktemp("one"), 1, 1, seed=5, family="colour_map")


def test_full_adaptation_solves_a_puzzle_the_frozen_model_cannot(one_puzzle):
    split = load_split(str(one_puzzle), "eval")
    cfg, head = small_model(one_puzzle)  # untrained: it cannot infer any rule
    assert held_out_pass2(head, cfg, split, variants=4) == 0.0
    settings = tta_settings(cfg, mode="full", steps=60, global_batch_size=8, lr=3e-3, context_lr=3e-2, num_variants=4)
    adapted, stats = adapt(head, split, settings, CPU, "float32")
    assert held_out_pass2(adapted, cfg, split, variants=4) == 1.0, stats
    assert held_out_pass2(head, cfg, split, variants=4) == 0.0  # the given model is not modified


def test_unsolved_focus_adapts_only_the_puzzles_whose_demos_the_model_gets_wrong(fill_data, monkeypatch):
    split = load_split(str(fill_data), "eval")
    solved = np.arange(split.num_puzzles) % 2 == 0  # pretend the model answers the even puzzles' demos

    def fake_fit(head, ada, *args, **kwargs):
        return {"loss": 1.0, "exact": 0.5, "puzzle_exact": np.where(solved, 0.75, 0.5)}

    monkeypatch.setattr(tta, "adaptation_fit", fake_fit)
    cfg, head = small_model(fill_data)
    adapted, stats = adapt(head, split, tta_settings(cfg, mode="context", steps=6, puzzles="unsolved"), CPU,
                           "float32", eval_variants=4)
    moved = adapted.offsets.table.detach().abs().flatten(1).sum(1) > 0
    assert moved.tolist() == (~solved).tolist()
    assert stats["tta/adapted_puzzles"] == int((~solved).sum())


def test_keep_solved_predicts_solved_puzzles_with_the_checkpoint_and_the_others_adapted(fill_data, monkeypatch):
    split = load_split(str(fill_data), "eval")
    cfg, head = small_model(fill_data)
    solved = np.arange(split.num_puzzles) % 2 == 0  # pretend the checkpoint answers the even puzzles' demos
    monkeypatch.setattr(tta, "solved_puzzles", lambda *a, **k: solved)
    settings = tta_settings(cfg, mode="full", steps=6, global_batch_size=8, lr=3e-2, predict="keep_solved")
    batches = list(EvalLoader(split, 16, max_variants=4))
    rows = torch.from_numpy(solved)[torch.cat([b["puzzle_index"] for b in batches])]
    assert any(0 < solved[b["puzzle_index"].numpy()].sum() < len(b["puzzle_index"]) for b in batches)  # mixed batches
    collect = Collect()
    metrics = tta.evaluate_with_tta(head, split, EvalLoader(split, 16, max_variants=4), [collect], CPU, "float32",
                                    None, 0, settings, max_eval_variants=4)
    routed = torch.cat(collect.preds)
    adapted, _ = adapt(head, split, settings, CPU, "float32", eval_variants=4)  # seeded: the same adapted weights
    original, adapted_preds = predict(head, split), predict(adapted, split)
    assert not torch.equal(original[~rows], adapted_preds[~rows])  # adaptation changed the predictions
    assert not torch.equal(original[rows], adapted_preds[rows])
    assert torch.equal(routed[rows], original[rows]) and torch.equal(routed[~rows], adapted_preds[~rows])
    assert metrics["tta/kept_puzzles"] == solved.sum() and metrics["tta/predict"] == "keep_solved"


def test_pooled_prediction_votes_the_checkpoints_and_the_adapted_predictions_of_every_sample(fill_data):
    split = load_split(str(fill_data), "eval")
    cfg, head = small_model(fill_data)
    settings = tta_settings(cfg, mode="full", steps=6, global_batch_size=8, lr=3e-2, predict="pooled")
    collect = Collect()
    results = tta.evaluate_with_tta(head, split, EvalLoader(split, 16, max_variants=4), [collect], CPU, "float32",
                                    None, 0, settings, max_eval_variants=4)
    adapted, _ = adapt(head, split, settings, CPU, "float32", eval_variants=4)
    original, adapted_preds = predict(head, split), predict(adapted, split)
    assert not torch.equal(original, adapted_preds)
    # per batch: the adapted weights' predictions, then the checkpoint's, of the same samples
    assert torch.equal(torch.cat(collect.preds[0::2]), adapted_preds)
    assert torch.equal(torch.cat(collect.preds[1::2]), original)
    # and the adapted weights' predictions alone, scored from the same run by a copy of the evaluator
    assert results["samples"] == 2 * len(adapted_preds) and results["alone/samples"] == len(adapted_preds)
    assert results["alone/checksum"] == pytest.approx(checksum([adapted_preds]), rel=1e-12)


def test_training_time_evaluation_adapts_and_logs_the_settings_and_the_cost(fill_data, tmp_path):
    from training import trainer

    run = tmp_path / "run"
    trainer.train(compose_cfg("cfg_pretrain_etrm_synthetic", [
        f"data_paths=[{fill_data}]", f"run_dir={run}", *SMALL_ARCH, "global_batch_size=8", "max_steps=2",
        "max_train_minutes=null", "eval_interval=null", "max_eval_variants=2", "wandb_mode=disabled",
        "tta=context", "tta.steps=3", "tta.global_batch_size=8"]))
    record = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "ARC/pass@2" in line][-1]
    assert record["tta/mode"] == "context" and record["tta/steps_done"] == 3 and record["tta/wall_s"] > 0
    assert record["tta/samples_per_s"] > 0 and "tta/fit_after_loss" in record
    settings = json.loads((run / "eval" / "step_2" / "settings.json").read_text())
    assert settings["settings"]["tta"]["mode"] == "context" and settings["metrics"]["tta/steps_done"] == 3


# ------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("override, message", [
    ("tta.mode=sometimes", "tta.mode='sometimes' is not one of ['none', 'context', 'full']"),
    ("tta.offsets=task", "tta.offsets='task' is not one of ['puzzle', 'variant']"),
    ("tta.predict=both", "tta.predict='both' is not one of ['adapted', 'keep_solved', 'pooled']"),
    ("tta.steps=0", "tta.steps must be an integer >= 1"),
    ("tta.lr=-1", "tta.lr must be >= 0"),
    ("+tta.learning_rate=1", "unknown key(s) ['learning_rate']"),
])
def test_bad_tta_settings_name_the_key_and_the_choices(override, message):
    cfg = compose_cfg("cfg_evaluate_etrm", ["checkpoint=x", override])
    with pytest.raises(ValueError) as err:
        TTASettings.from_config(cfg.tta)
    assert message in str(err.value)


def test_tta_group_selects_a_mode_with_every_key_and_checks_the_batch_against_ranks():
    full = compose_cfg("cfg_pretrain_etrm_arc_agi_1", ["tta=full"]).tta
    assert TTASettings.from_config(full).mode == "full"
    assert TTASettings.from_config(compose_cfg("cfg_pretrain_etrm_arc_agi_1", []).tta).active is False
    assert TTASettings.from_config(compose_cfg("cfg_evaluate_etrm", ["checkpoint=x", "tta.mode=context"]).tta).mode == "context"
    with pytest.raises(ValueError, match="tta.global_batch_size=32 does not divide evenly over world_size=3"):
        TTASettings.from_config(full, world_size=3)


# ------------------------------------------------------------------------------------ DDP


def run_evaluate(overrides: list[str], nproc: int = 0) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc
                else [sys.executable])
    proc = subprocess.run([*launcher, "evaluate_etrm.py", *overrides], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.slow
def test_two_ranks_adapt_like_one_rank(fill_data, tmp_path):
    """tta.global_batch_size 8 on one process == 4 + 4 on two gloo ranks: the same adapted weights
    and context corrections (to float tolerance) and the same held-out scores."""
    from training import trainer

    run = tmp_path / "run"
    # map_read off: its sharp map choice (logit scale 10) turns float32 reduction-order noise into
    # ~1e-4 relative gradient differences between one batch of 8 and two of 4 (1e-6 without it),
    # and Adam makes noise-level gradient elements full lr-sized steps: after 6 steps its choice
    # weights differ by ~2e-3 between 1 and 2 ranks. Sharding is what is tested here, at 1e-5.
    trainer.train(compose_cfg("cfg_pretrain_etrm_synthetic", [
        f"data_paths=[{fill_data}]", f"run_dir={run}", *SMALL_ARCH, "arch.map_read=false", "global_batch_size=8", "max_steps=4",
        "max_train_minutes=null", "eval_interval=null", "max_eval_variants=2", "wandb_mode=disabled"]))
    ckpt = run / "checkpoints" / "step_4"
    common = [f"checkpoint={ckpt}", "tta=full", "tta.steps=6", "tta.global_batch_size=8", "tta.save_weights=true",
              "max_eval_variants=2", "eval_global_batch_size=8"]
    run_evaluate([*common, f"run_dir={tmp_path / 'one'}"])
    run_evaluate([*common, f"run_dir={tmp_path / 'two'}"], nproc=2)
    (one,), (two,) = (list((tmp_path / d / "eval").glob("*/tta_adapted.pt")) for d in ("one", "two"))
    a, b = torch.load(one), torch.load(two)
    assert torch.allclose(a["context_offsets"], b["context_offsets"], atol=1e-5)
    assert a["context_offsets"].abs().sum() > 0
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-5), key
    ma, mb = (json.loads((p.parent / "settings.json").read_text())["metrics"] for p in (one, two))
    for key in ("ARC/pass@2", "eval/exact_accuracy", "tta/steps_done", "tta/fit_after_loss"):
        assert ma[key] == pytest.approx(mb[key], rel=1e-4), key


def test_adaptation_reads_the_device_once_per_read_interval_and_skips_non_finite_steps(fill_data, monkeypatch, caplog):
    """6 adaptation steps read the device twice (READ_EVERY=3): metrics, clipping, the skip and the
    packing plans stay on the device (bench.host_syncs' tta row). A non-finite step (step 1 here)
    is skipped: its update is not applied, every slot restarts, and it is logged at the next read."""
    from bench.host_syncs import LABELLING_READS_PER_FORWARD, SyncCounter
    monkeypatch.setattr(tta, "READ_EVERY", 3)
    real_clip, real_step, calls, carries = tta.clipped_step_on_device, tta.adaptation_step, [], []

    def clip(optimizer, grads, norm, clip_norm, loss):
        calls.append(optimizer.param_groups[0]["params"][0].detach().clone())
        return real_clip(optimizer, grads, norm, clip_norm, loss * float("nan") if len(calls) == 2 else loss)

    def step(*args, **kwargs):
        carry, metrics = real_step(*args, **kwargs)
        carries.append(carry.halted.clone())
        return carry, metrics

    monkeypatch.setattr(tta, "clipped_step_on_device", clip)
    monkeypatch.setattr(tta, "adaptation_step", step)
    split = load_split(str(fill_data), "eval")
    cfg, head = small_model(fill_data, ["arch.halt_max_steps=4"])  # no slot halts by itself at step 1
    with SyncCounter() as counter, caplog.at_level("WARNING", logger="etrm"):
        counter.phase = "tta"
        adapted, stats = adapt(head, split, tta_settings(cfg, mode="context", steps=6, global_batch_size=8,
                                                         fit_variants=0), CPU, "float32", eval_variants=4)
    assert stats["tta/steps_done"] == 6
    # the recipe's component labellings test their convergence once per forward each (bench.host_syncs)
    labelling = sum(n for site, n in counter.counts["tta"].items() if "models/grid_features.py" in site)
    assert labelling == LABELLING_READS_PER_FORWARD["recipe"] * 6, dict(counter.counts["tta"])
    assert counter.total("tta") - labelling == 2, dict(counter.counts["tta"])
    assert torch.equal(calls[1], calls[2])  # the skipped step (1) left the corrections as they were
    assert not torch.equal(calls[0], calls[1]) and not torch.equal(calls[2], calls[3])
    assert bool(carries[1].all())  # every slot restarts after the skip
    assert [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()] == \
        ["tta step 1: non-finite loss or gradient norm, update skipped"]
