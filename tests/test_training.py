"""The training path end to end on CPU: the tiny config trains, evaluates and checkpoints;
DDP under torchrun (gloo) matches a single process; a killed run resumes onto the same
trajectory; non-finite updates are skipped and counted; W&B offline runs are written."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tests.helpers import (kill9_then_rerun_matches_uninterrupted, RANDOM_DRAWS, _cmdline, _descendants, assert_same_end, compose_cfg, compose_tiny,
                           last_train_record, load_scorer, read_metrics, run_cli, small_overrides)

from dataset.loader import load_split
from training import checkpoint, trainer
from training.distributed import DistInfo

REPO = Path(__file__).resolve().parents[1]


def test_tiny_config_trains_evaluates_and_checkpoints(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    cfg = compose_tiny(small_overrides(tiny_data, run_dir))
    results = trainer.train(cfg)
    records = read_metrics(run_dir)
    every_step = {"train/lm_loss", "train/q_halt_loss", "train/kl_loss", "train/lr", "grad/encoder_norm",
                  "grad/inner_norm", "train/encoder_cross_sample_var"}
    halting_steps = {"train/accuracy", "train/exact_accuracy", "train/q_halt_accuracy", "train/steps"}
    train_records = [r for r in records if "train/lr" in r]
    assert all(every_step <= set(r) for r in train_records)
    # accuracies are over the samples that halted this step, so only steps where some did have them
    assert [r["step"] for r in train_records if halting_steps <= set(r)] == \
        [r["step"] for r in train_records if r["train/count"] > 0] != []
    assert all(1 <= r["train/steps"] <= 3 for r in train_records if "train/steps" in r)
    assert [r["step"] for r in records if "train/lr" in r] == list(range(1, 9))
    assert all(r["grad/encoder_norm"] > 0 for r in records if "grad/encoder_norm" in r)
    # the returned pass@2 is what the written submission scores against the dataset's answers for
    # the first max_eval_groups=4 eval puzzles
    eval_split = load_split(str(tiny_data), "eval")
    truths = {eval_split.puzzle_ids[p]: [b.tolist() for _, b in eval_split.test_pairs(p)] for p in range(4)}
    submission = json.loads((run_dir / "eval" / "step_8" / "submission.json").read_text())
    assert set(submission) == set(truths)
    assert all(len(submission[pid]) == len(truths[pid]) for pid in truths)
    official = load_scorer().score(submission, truths)
    assert results["ARC/pass@2"] == pytest.approx(official["pass@2"])
    assert results["ARC/task_pass@2"] == pytest.approx(official["task_pass@2"])
    assert (results["ARC/num_puzzles"], results["ARC/num_test_inputs"]) == (4, official["num_test_inputs"])
    written = json.loads((run_dir / "eval" / "step_8" / "metrics.json").read_text())
    assert {k: v for k, v in written.items() if k != "step"} == {k: v for k, v in results.items() if k.startswith("ARC/")}
    assert (run_dir / "config.yaml").is_file()
    ckpt = checkpoint.latest_checkpoint(run_dir)
    assert ckpt is not None and ckpt.name == "step_8" and checkpoint.is_complete(ckpt)
    assert {"model.pt", "ema.pt", "optimizer.pt", "trainer_state.json", "rank_0.pt", "config.yaml"} <= \
        {p.name for p in ckpt.iterdir()}


def test_global_batch_must_divide_over_ranks(tiny_data, tmp_path):
    cfg = compose_tiny(small_overrides(tiny_data, tmp_path / "run", global_batch_size=10))
    with pytest.raises(ValueError, match=r"global_batch_size=10.*world_size=3"):
        trainer._train(cfg, [], DistInfo(rank=0, world_size=3, local_rank=0, device=torch.device("cpu")))


def test_checkpoint_without_marker_is_ignored(tmp_path):
    complete = tmp_path / "checkpoints" / "step_4"
    complete.mkdir(parents=True)
    (complete / checkpoint.MARKER).write_text("4")
    half_written = tmp_path / "checkpoints" / "step_8"
    half_written.mkdir()
    (half_written / "model.pt").write_bytes(b"partial")
    (tmp_path / "checkpoints" / "step_12.tmp").mkdir()
    assert checkpoint.latest_checkpoint(tmp_path) == complete
    with pytest.raises(FileNotFoundError, match="marker"):
        checkpoint.load_checkpoint(half_written, rank=0)


def test_nonfinite_updates_are_skipped_then_stop_the_run(tiny_data, tmp_path, monkeypatch):
    real = trainer.grad_norms
    calls = {"n": 0}

    def nan_on_steps_3_and_4(model):
        calls["n"] += 1
        enc, inner = real(model)
        return (enc * float("nan"), inner) if calls["n"] in (3, 4) else (enc, inner)

    monkeypatch.setattr(trainer, "grad_norms", nan_on_steps_3_and_4)
    run_dir = tmp_path / "skip"
    trainer.train(compose_tiny(small_overrides(tiny_data, run_dir)))
    records = [r for r in read_metrics(run_dir) if "train/nonfinite_skipped" in r]
    assert [r["train/nonfinite_skipped"] for r in records] == [0, 0, 1, 2, 2, 2, 2, 2]
    assert all(r["grad/total_norm"] == r["grad/total_norm"] for r in records if r["step"] not in (3, 4))

    # always non-finite after the first checkpoint: stops with a clear message, checkpoint intact
    def nan_after_step_2(model):
        calls["n"] += 1
        enc, inner = real(model)
        return (enc * float("nan"), inner) if calls["n"] > 2 else (enc, inner)

    calls["n"] = 0
    monkeypatch.setattr(trainer, "grad_norms", nan_after_step_2)
    run_dir = tmp_path / "stop"
    cfg = compose_tiny(small_overrides(tiny_data, run_dir, checkpoint_interval=2, max_nonfinite_in_a_row=3))
    with pytest.raises(RuntimeError, match="3 non-finite updates in a row"):
        trainer.train(cfg)
    assert [p.name for p in checkpoint.list_checkpoints(run_dir)] == ["step_2"]


def test_wandb_offline_run_is_written(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tmp_path / "wb"
    trainer.train(compose_tiny(small_overrides(tiny_data, run_dir, wandb_mode="offline", max_steps=3)))
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    offline_runs = list((run_dir / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(offline_runs) == 1
    # the offline record stream (protobuf) names every logged key in plain UTF-8; wandb 0.31's
    # finish() may return before its writer has flushed the stream: wait for it (bounded)
    stream, deadline = next(offline_runs[0].glob("*.wandb")), time.time() + 30
    while b"trainer/step" not in stream.read_bytes() and time.time() < deadline:
        time.sleep(0.2)
    records = stream.read_bytes()
    for key in ("train/lm_loss", "train/exact_accuracy", "grad/encoder_norm", "ARC/pass@2", "arch", "trainer/step"):
        assert key.encode() in records, key


def test_evaluations_during_training_read_a_subset_the_final_one_every_variant(tiny_data, tmp_path):
    """train_eval_max_variants=1: the evaluations at steps 1 and 2 read each puzzle's first variant,
    the final one (step 3) every variant (max_eval_variants=null)."""
    from dataset import EvalLoader
    run_dir = tmp_path / "run"
    trainer.train(compose_tiny(small_overrides(tiny_data, run_dir, max_steps=3, eval_interval=1e-6, ema="false",
                                               max_eval_variants="null", train_eval_max_variants=1, max_eval_groups=2)))
    split = load_split(str(tiny_data), "eval")
    expected = {v: EvalLoader(split, 8, max_eval_groups=2, max_variants=v).num_samples for v in (1, None)}
    assert expected[None] > expected[1]
    for step, variants in ((1, 1), (2, 1), (3, None)):
        record = json.loads((run_dir / "eval" / f"step_{step}" / "settings.json").read_text())
        assert record["settings"]["max_eval_variants"] == variants, step
        assert record["metrics"]["eval/count"] == expected[variants], step


# the curriculum's weights come from statistics summed over both ranks. Here samples halt in lockstep
# at steps 3, 6, 9, ...; puzzles are grouped by their id's first character (16 groups), so the second
# halt moves the weights at step 6, which draw the rows that enter the carry at step 13 (weights every
# step, blocks of one global batch, scheduled 5 blocks ahead): they differ if a rank used its own sums
@pytest.mark.parametrize("extra", [{}, {"curriculum.mode": "progress", "curriculum.interval": 1,
                                        "curriculum.uniform_share": 0.0, "curriculum.group_regex": "'^(.)'"}],
                         ids=["plain", "curriculum"])
def test_two_ranks_match_one_rank(tiny_data, tmp_path, extra):
    """global batch 8 on one process == 4 + 4 on two gloo ranks, step for step."""
    one, two = tmp_path / "one", tmp_path / "two"
    steps = 15 if extra else 5
    run_cli(small_overrides(tiny_data, one, max_steps=steps, ema="false", **extra))
    run_cli(small_overrides(tiny_data, two, max_steps=steps, ema="false", **extra), nproc=2)
    a, b = read_metrics(one), read_metrics(two)
    for step in range(1, steps + 1):
        ra, rb = last_train_record(a, step), last_train_record(b, step)
        for key in ("train/total_loss", "train/lm_loss", "grad/inner_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), (step, key)
    assert {"rank_0.pt", "rank_1.pt"} <= {p.name for p in (two / "checkpoints" / f"step_{steps}").iterdir()}


def test_resume_continues_the_random_streams(tiny_data, tmp_path):
    """A run resumed from its step-4 checkpoint makes the same random draws, hence the same
    losses, as the run that never stopped."""
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    trainer.train(compose_tiny(small_overrides(tiny_data, clean, checkpoint_interval=4, **RANDOM_DRAWS)))
    shutil.copytree(clean, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_8")
    kept = [r for r in read_metrics(clean) if r["step"] <= 4]
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    trainer.train(compose_tiny(small_overrides(tiny_data, resumed, checkpoint_interval=4, **RANDOM_DRAWS)))
    a, b = read_metrics(clean), read_metrics(resumed)
    assert [r["step"] for r in b if "train/lr" in r] == list(range(1, 9))
    for step in range(5, 9):
        ra, rb = last_train_record(a, step), last_train_record(b, step)
        for key in ("train/total_loss", "train/lm_loss", "train/kl_loss", "train/q_halt_loss", "grad/total_norm"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (step, key)


@pytest.mark.slow
def test_kill9_then_rerun_matches_uninterrupted(tiny_data, tmp_path):
    kill9_then_rerun_matches_uninterrupted(tiny_data, tmp_path, steps=40)


@pytest.mark.slow
def test_torchrun_max_restarts_recovers_a_killed_worker(tiny_data, tmp_path):
    """torchrun restarts both ranks after one is killed; they resume from the last checkpoint
    (each rank its own RNG state and carry) onto the trajectory of a run that never stopped."""
    clean, run_dir = tmp_path / "clean", tmp_path / "restart"
    steps = 40
    run_cli(small_overrides(tiny_data, clean, max_steps=steps, checkpoint_interval=5, **RANDOM_DRAWS), nproc=2)
    proc = run_cli(small_overrides(tiny_data, run_dir, max_steps=steps, checkpoint_interval=5, **RANDOM_DRAWS),
                   nproc=2, extra_torchrun=("--max-restarts", "1"), wait=False)
    first = run_dir / "checkpoints" / "step_5" / checkpoint.MARKER
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    workers = [p for p in _descendants(proc.pid) if b"pretrain_etrm.py" in _cmdline(p) and p != proc.pid]
    assert workers, "no worker processes found"
    os.kill(max(workers), signal.SIGKILL)
    assert not (run_dir / "checkpoints" / f"step_{steps}").exists(), "the run finished before a worker was killed"
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out.decode()[-3000:]
    assert b"resumed from" in out, out.decode()[-3000:]
    assert checkpoint.latest_checkpoint(run_dir).name == f"step_{steps}"
    assert_same_end(clean, run_dir, steps)


def compose_eval(overrides: list[str]):
    return compose_cfg("cfg_evaluate_etrm", overrides)


def test_evaluate_checkpoint_reproduces_the_training_eval(tiny_data, tmp_path):
    from training.evaluate import evaluate_checkpoint

    run_dir = tmp_path / "run"
    trained = trainer.train(compose_tiny(small_overrides(tiny_data, run_dir, max_steps=4)))
    ckpt = run_dir / "checkpoints" / "step_4"
    again = evaluate_checkpoint(compose_eval([f"checkpoint={ckpt}", f"run_dir={tmp_path / 'eval_again'}"]))
    assert {k: v for k, v in again.items() if k.startswith("ARC/")} == \
        {k: v for k, v in trained.items() if k.startswith("ARC/")}
    out = Path(again["eval_dir"])
    assert out.parent == tmp_path / "eval_again" / "eval" and out.name.startswith("step_4-ema-")
    assert (out / "submission.json").is_file()
    # eval overrides apply: fewer puzzles, Q-head halting reports its mean steps
    fewer = evaluate_checkpoint(compose_eval([f"checkpoint={ckpt}", "max_eval_groups=2", "eval_halting=q",
                                              f"run_dir={tmp_path / 'eval_q'}"]))
    assert fewer["ARC/num_puzzles"] <= 2 and 1 <= fewer["ARC/mean_steps"] <= 3


def test_an_evaluation_never_overwrites_another_evaluations_outputs(tiny_data, tmp_path):
    """README's own example (`evaluate_etrm.py checkpoint=... max_eval_groups=32 eval_halting=q`) used to
    replace the training run's eval/step_N/ with a smaller result."""
    from training.evaluate import evaluate_checkpoint

    run_dir = tmp_path / "run"
    trainer.train(compose_tiny(small_overrides(tiny_data, run_dir, max_steps=2)))
    ckpt, own = run_dir / "checkpoints" / "step_2", run_dir / "eval" / "step_2"
    before = {p.name: p.read_bytes() for p in own.iterdir()}
    a = evaluate_checkpoint(compose_eval([f"checkpoint={ckpt}", "max_eval_groups=2", "eval_halting=q"]))
    b = evaluate_checkpoint(compose_eval([f"checkpoint={ckpt}", "max_eval_groups=3"]))
    c = evaluate_checkpoint(compose_eval([f"checkpoint={ckpt}", "max_eval_groups=3", "weights=model"]))
    folders = {Path(r["eval_dir"]) for r in (a, b, c)}
    assert len(folders) == 3 and all(f.parent == run_dir / "eval" for f in folders)
    assert {p.name: p.read_bytes() for p in own.iterdir()} == before  # the training run's eval untouched
    for f, r in ((Path(a["eval_dir"]), a), (Path(b["eval_dir"]), b)):
        record = json.loads((f / "settings.json").read_text())
        assert record["settings"]["max_eval_groups"] == r["ARC/num_puzzles"] and record["step"] == 2
    assert Path(a["eval_dir"]).name.startswith("step_2-ema-g2-halt-q-")
    # the identical evaluation again: same folder, replaced whole (no leftover from the earlier run)
    (Path(b["eval_dir"]) / "stale.txt").write_text("from an earlier run")
    b2 = evaluate_checkpoint(compose_eval([f"checkpoint={ckpt}", "max_eval_groups=3"]))
    assert b2["eval_dir"] == b["eval_dir"] and not (Path(b["eval_dir"]) / "stale.txt").exists()
    assert sorted(p.name for p in (run_dir / "eval").iterdir()) == sorted(["step_2", *(f.name for f in folders)])


def test_evaluate_rejects_missing_or_incomplete_checkpoints(tiny_data, tmp_path):
    from training.evaluate import evaluate_checkpoint

    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        evaluate_checkpoint(compose_eval([f"checkpoint={tmp_path / 'nope'}"]))
    run_dir = tmp_path / "run"
    trainer.train(compose_tiny(small_overrides(tiny_data, run_dir, max_steps=2)))
    ckpt = run_dir / "checkpoints" / "step_2"
    (ckpt / checkpoint.MARKER).unlink()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        evaluate_checkpoint(compose_eval([f"checkpoint={ckpt}"]))
    (ckpt / checkpoint.MARKER).write_text("2")
    other = tmp_path / "data8"
    subprocess.run([sys.executable, "-m", "dataset.build_arc_dataset", "--train-sources", "arc-agi-1:train",
                    "--eval-sources", "arc-agi-1:eval", "--output-dir", str(other), "--max-grid-size", "8",
                    "--num-aug", "1"], cwd=REPO, check=True, capture_output=True)
    with pytest.raises(ValueError, match="grid size does not fit"):
        evaluate_checkpoint(compose_eval([f"checkpoint={ckpt}", f"data_paths=[{other}]"]))


def test_collapse_warning_fires_for_a_constant_context_only(tiny_data, tmp_path, caplog):
    """The public ETRM encoder collapsed to one context for every puzzle; training must say so."""
    ablated, healthy = tmp_path / "ablated", tmp_path / "healthy"
    with caplog.at_level("WARNING", logger="etrm"):
        trainer.train(compose_tiny(small_overrides(tiny_data, ablated, collapse_patience=3,
                                                   **{"arch.context_ablation": "true"})))
    flags = [r["train/encoder_collapse_warning"] for r in read_metrics(ablated) if "train/lr" in r]
    assert flags == [0, 0, 1, 1, 1, 1, 1, 1]
    assert "encoder collapse?" in caplog.text
    trainer.train(compose_tiny(small_overrides(tiny_data, healthy, collapse_patience=3)))
    records = [r for r in read_metrics(healthy) if "train/lr" in r]
    assert all(r["train/encoder_collapse_warning"] == 0 for r in records)
    assert min(r["train/encoder_cross_sample_var"] for r in records) > 0.01


def test_a_changed_config_never_resumes_silently_nor_rewrites_config_yaml(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    trainer.train(compose_tiny(small_overrides(tiny_data, run_dir, max_steps=2)))
    saved = (run_dir / "config.yaml").read_bytes()
    with pytest.raises(ValueError, match=r"refusing to resume .*step_2.*lr: 0\.001 -> 0\.002"):
        trainer.train(compose_tiny(small_overrides(tiny_data, run_dir, max_steps=4, lr=2e-3)))
    assert (run_dir / "config.yaml").read_bytes() == saved
    assert checkpoint.latest_checkpoint(run_dir).name == "step_2"  # nothing was trained
    # keys that may change on a resume (here: how long to train) resume as before
    trainer.train(compose_tiny(small_overrides(tiny_data, run_dir, max_steps=3)))
    assert checkpoint.latest_checkpoint(run_dir).name == "step_3" and (run_dir / "config.yaml").read_bytes() == saved
    # an explicit flag allows the change; config.yaml stays what the checkpoints were trained with
    trainer.train(compose_tiny(small_overrides(tiny_data, run_dir, max_steps=4, lr=2e-3, allow_config_change="true")))
    assert checkpoint.latest_checkpoint(run_dir).name == "step_4" and (run_dir / "config.yaml").read_bytes() == saved
    assert "lr: 0.002" in (run_dir / "config.resumed-step_3.yaml").read_text()


@pytest.mark.parametrize("loss, grad_norm, clip, expect_step, expect_scale", [
    (1.0, 4.0, 1.0, True, 1.0 / (4.0 + 1e-6)),   # clipped to the norm limit
    (1.0, 0.5, 1.0, True, 1.0),                 # under the limit: untouched
    (1.0, 4.0, 0.0, True, 1.0),                 # clip 0: no clipping
    (float("nan"), 4.0, 1.0, False, 1.0),       # non-finite loss: no update
    (1.0, float("inf"), 1.0, False, 1.0),       # non-finite gradient norm: no update
])
def test_clipped_step_clips_and_skips_non_finite_updates(loss, grad_norm, clip, expect_step, expect_scale):
    """The update rule shared by training and test-time adaptation (training/optim.py)."""
    from training.optim import clipped_step

    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([1.0, -2.0, 3.0])
    optimizer = torch.optim.SGD([p], lr=1.0)
    assert clipped_step(optimizer, [p.grad], grad_norm, clip, loss) is expect_step
    torch.testing.assert_close(p.grad, torch.tensor([1.0, -2.0, 3.0]) * expect_scale)
    torch.testing.assert_close(p.detach(), -p.grad if expect_step else torch.zeros(3))


def test_init_weights_starts_a_new_run_from_a_checkpoints_weights(tiny_data, tmp_path):
    """init_weights (pretrain on one source, fine-tune on another): a new run starts at step 0 from
    the checkpoint's EMA weights (its average too), a resumed run never reads it again, and a bad
    value stops the launch naming the key."""
    source = tmp_path / "source"
    trainer.train(compose_tiny(small_overrides(tiny_data, source, max_steps=4)))
    init = source / "checkpoints" / "step_4"
    saved_ema = torch.load(init / "ema.pt")
    assert any(not torch.equal(v, torch.load(init / "model.pt")[k]) for k, v in saved_ema.items())

    # lr=1e-30: the run's weights stay (to float precision) what it started from
    tuned = tmp_path / "tuned"
    trainer.train(compose_tiny(small_overrides(tiny_data, tuned, max_steps=2, lr=1e-30, init_weights=init,
                                               checkpoint_interval=1)))
    assert [r["step"] for r in read_metrics(tuned) if "train/lr" in r] == [1, 2]  # a new run: step 0
    for name in ("model.pt", "ema.pt"):
        got = torch.load(tuned / "checkpoints" / "step_2" / name)
        assert all(torch.allclose(got[k], saved_ema[k], rtol=0, atol=1e-12) for k in saved_ema), name

    # a resumed run continues from its own checkpoint, whatever init_weights now names
    shutil.rmtree(tuned / "checkpoints" / "step_2")
    shutil.rmtree(source)
    trainer.train(compose_tiny(small_overrides(tiny_data, tuned, max_steps=2, lr=1e-30, init_weights=init,
                                               checkpoint_interval=1)))
    assert [r["step"] for r in read_metrics(tuned) if "train/lr" in r][-1] == 2

    fresh = tmp_path / "fresh"
    with pytest.raises(FileNotFoundError, match=r"init_weights=.*step_4 does not exist"):
        trainer.train(compose_tiny(small_overrides(tiny_data, fresh, init_weights=init)))
    assert not fresh.exists()  # stopped before any work


def test_init_weights_must_fit_the_arch_and_be_the_only_initialisation(tiny_data, tmp_path):
    source = tmp_path / "source"
    trainer.train(compose_tiny(small_overrides(tiny_data, source, max_steps=1)))
    init = source / "checkpoints" / "step_1"
    with pytest.raises(ValueError, match=r"ema.pt does not match the model built from this run's arch"):
        trainer.train(compose_tiny(small_overrides(tiny_data, tmp_path / "wide", **{"arch.hidden_size": 16},
                                                   init_weights=init)))
    with pytest.raises(ValueError, match="together with load_pretrained_decoder"):
        trainer.train(compose_tiny(small_overrides(tiny_data, tmp_path / "both", init_weights=init,
                                                   load_pretrained_decoder=init)))
    (init / checkpoint.MARKER).unlink()
    with pytest.raises(FileNotFoundError, match="no COMPLETE marker"):
        trainer.train(compose_tiny(small_overrides(tiny_data, tmp_path / "partial", init_weights=init)))
