"""Sampling by learning progress (training/curriculum.py): the weights from hand-computed
statistics, the group of each puzzle, the config's checks, and a resumed run that draws what the
uninterrupted one drew."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tests.helpers import compose_tiny, last_train_record, read_metrics, small_overrides

from training import trainer
from training.curriculum import CurriculumSettings, LearningProgressCurriculum, puzzle_groups
from training.preflight import curriculum_checks


def _curriculum(**kw):
    settings = CurriculumSettings(mode="progress", **kw)
    # puzzles 0, 1 -> group a; 2 -> b; 3 -> c
    return LearningProgressCurriculum(settings, np.array([0, 0, 1, 2]), ["a", "b", "c"], torch.device("cpu"))


def test_weights_follow_the_moving_averages_of_each_groups_accuracy():
    cur = _curriculum(fast_rate=0.5, slow_rate=0.25, uniform_share=0.2)
    # step statistics: halted samples only; group c never halts in the first window
    cur.observe(torch.tensor([0, 1, 2, 3]), torch.tensor([True, True, True, False]), torch.tensor([0.2, 0.4, 0.5, 0.9]))
    cur.update()
    assert cur.fast.tolist() == pytest.approx([0.3, 0.5, 0.0]) and cur.seen.tolist() == [True, True, False]
    # no progress yet on a or b; c unseen counts as the fastest (here: all 0 -> uniform)
    assert cur.weights == pytest.approx([1 / 3] * 3)
    cur.observe(torch.tensor([0, 2, 3]), torch.tensor([True, True, True]), torch.tensor([0.7, 0.5, 0.6]))
    metrics = cur.update()
    # a: 0.3 -> fast 0.5, slow 0.4 (progress 0.1); b: unchanged (0); c: first seen, 0.6 both (0)
    assert cur.fast.tolist() == pytest.approx([0.5, 0.5, 0.6]) and cur.slow.tolist() == pytest.approx([0.4, 0.5, 0.6])
    assert cur.weights == pytest.approx([0.2 / 3 + 0.8, 0.2 / 3, 0.2 / 3])
    assert metrics["curriculum/weight/a"] == pytest.approx(0.2 / 3 + 0.8)
    assert metrics["curriculum/accuracy/c"] == pytest.approx(0.6)
    # the sums were cleared: a window without halted samples moves nothing
    cur.update()
    assert cur.fast.tolist() == pytest.approx([0.5, 0.5, 0.6])
    # falling accuracy is progress too (forgetting is worth the samples)
    cur.observe(torch.tensor([2]), torch.tensor([True]), torch.tensor([0.1]))
    cur.update()
    assert cur.weights[1] > cur.weights[2]


def test_unseen_groups_get_the_largest_progress():
    cur = _curriculum(fast_rate=0.5, slow_rate=0.25, uniform_share=0.0)
    cur.observe(torch.tensor([0, 2]), torch.tensor([True, True]), torch.tensor([0.2, 0.2]))
    cur.update()
    cur.observe(torch.tensor([0, 2]), torch.tensor([True, True]), torch.tensor([0.6, 0.2]))
    cur.update()  # a moved by 0.2 - 0.1 = 0.1, b by 0, c unseen -> 0.1
    assert cur.weights == pytest.approx([0.5, 0.0, 0.5])


@pytest.mark.parametrize("noise_z", [1.0, 0.0])
def test_progress_within_a_groups_sampling_noise_draws_no_samples(noise_z):
    """Group a: 4 samples a window, 0/1 each (its window means jump 0.5 -> 0.75 by chance); group b:
    4 samples of one value, 0.5 -> 0.6. By |fast - slow| alone a moves more; counting only what
    exceeds one standard deviation of the noise of a's window means, b is the one progressing."""
    cur = _curriculum(fast_rate=0.5, slow_rate=0.25, uniform_share=0.0, noise_z=noise_z)
    a, b, c = torch.zeros(4, dtype=torch.long), torch.full((4,), 2), torch.full((4,), 3)  # c: flat at 0.3
    done = torch.ones(12, dtype=torch.bool)
    for acc_a, acc_b in (([0.0, 0.0, 1.0, 1.0], 0.5), ([1.0, 1.0, 1.0, 0.0], 0.6)):
        cur.observe(torch.cat([a, b, c]), done, torch.tensor(acc_a + [acc_b] * 4 + [0.3] * 4))
        cur.update()
    # a: fast 0.625, slow 0.5625; the variance of its window means (1/12, then 1/16) averaged at the slow rate
    assert cur.noise[0] == pytest.approx(1 / 12 + 0.25 * (1 / 16 - 1 / 12))
    moved = np.array([0.0625, 0.025, 0.0])
    spread = np.sqrt(cur.noise[0] * (0.5 / 1.5 + 0.25 / 1.75 - 2 * 0.125 / 0.625))
    assert spread > 0.0625
    expected = moved if noise_z == 0 else np.array([0.0, 0.025, 0.0])
    assert cur.weights == pytest.approx(expected / expected.sum())


def test_exploration_focuses_a_few_random_groups_per_window():
    """explore_share 0.5 over 1 group per window of 2 updates, no progress anywhere: the focused
    group gets half the samples on top of the uniform share, the draw changes only between
    windows, depends on the seed alone, and every group gets its window before any gets a second."""
    def weights_over(seed, updates):
        settings = CurriculumSettings(mode="progress", uniform_share=0.5, explore_share=0.5, explore_groups=1,
                                      explore_updates=2)
        cur = LearningProgressCurriculum(settings, np.arange(6), list("abcdef"), torch.device("cpu"), seed=seed)
        out = []
        for _ in range(updates):
            cur.observe(torch.arange(6), torch.ones(6, dtype=torch.bool), torch.full((6,), 0.4))
            cur.update()
            out.append(cur.weights.copy())
        return np.array(out), cur

    w, cur = weights_over(seed=7, updates=40)
    focused = w.argmax(1)
    assert w[:, focused].diagonal() == pytest.approx(np.full(40, 0.5 / 6 + 0.5))
    assert np.allclose(w.sum(1), 1) and (np.sort(w, 1)[:, :-1] == pytest.approx(0.5 / 6))
    assert (focused[0::2] == focused[1::2]).all()                   # one draw per window
    for cycle in range(40 // 12):                                   # 6 windows of 2 updates: each group in turn
        assert sorted(focused[12 * cycle:12 * (cycle + 1):2]) == list(range(6))
    assert (focused[12:24] != focused[:12]).any()                   # in a new order each cycle
    assert (weights_over(seed=7, updates=40)[0] == w).all()          # the same on every rank and rerun
    assert (weights_over(seed=8, updates=40)[0].argmax(1) != focused).any()
    # a resumed run continues the windows where the checkpoint left them
    again = LearningProgressCurriculum(cur.settings, np.arange(6), list("abcdef"), torch.device("cpu"), seed=7)
    again.load_state_dict(weights_over(seed=7, updates=25)[1].state_dict())
    assert again.updates == 25 and (again.explored_groups(again.updates) == cur.explored_groups(25)).all()


def test_puzzle_groups_and_settings_are_checked():
    ids = ["t00001-rays", "t00002-outline", "t00003-rays"]
    assert puzzle_groups(ids, "-([a-z_]+)$")[0].tolist() == [0, 1, 0]
    assert puzzle_groups(ids, None) == (pytest.approx([0, 1, 2]), ids)
    with pytest.raises(ValueError, match="'odd'"):
        puzzle_groups(ids + ["odd"], "-([a-z_]+)$")
    with pytest.raises(ValueError, match="capture group"):
        CurriculumSettings(mode="progress", group_regex="-[a-z]+$")
    with pytest.raises(ValueError, match="slow_rate"):
        CurriculumSettings(mode="progress", fast_rate=0.1, slow_rate=0.5)
    with pytest.raises(ValueError, match="curriculum.mode"):
        CurriculumSettings(mode="sometimes")
    with pytest.raises(ValueError, match=r"explore_share must be in \[0, 1 - uniform_share = 0.8\]"):
        CurriculumSettings(mode="progress", uniform_share=0.2, explore_share=0.9)
    with pytest.raises(ValueError, match="explore_groups"):
        CurriculumSettings(mode="progress", explore_groups=0)
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['intervall'\]"):
        CurriculumSettings.from_config({"intervall": 3})


def test_a_regex_that_misses_a_training_puzzle_stops_the_launch(tiny_data, tmp_path):
    cfg = compose_tiny(small_overrides(tiny_data, tmp_path / "run", **{"curriculum.mode": "progress",
                                                                      "curriculum.group_regex": "'-([a-z]+)$'"}))
    failed = [c for c in curriculum_checks(cfg) if not c.ok]
    assert failed and "does not match puzzle id" in failed[0].detail and "puzzles.json" in failed[0].detail
    with pytest.raises(ValueError, match="does not match puzzle id"):
        trainer.train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before any training


def test_resumed_curriculum_run_draws_what_the_uninterrupted_one_drew(tiny_data, tmp_path):
    """Weights move every 2 steps and apply from the first block the prefetcher has not planned: a
    run resumed at step 9 (samples halt at steps 3, 6, 9, ...: its sums are not empty) must restore the weights' schedule, its averages and the partial sums to
    train on the same samples (same losses) and end with the same weights."""
    extra = {"curriculum.mode": "progress", "curriculum.interval": 2, "curriculum.uniform_share": 0.0,
             "curriculum.explore_share": 0.3, "curriculum.explore_updates": 3,  # a window spans the resume
             "max_steps": 14, "checkpoint_interval": 9}
    clean, resumed = tmp_path / "clean", tmp_path / "resumed"
    trainer.train(compose_tiny(small_overrides(tiny_data, clean, **extra)))
    shutil.copytree(clean, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_14")
    kept = [r for r in read_metrics(clean) if r["step"] <= 9]
    (resumed / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    trainer.train(compose_tiny(small_overrides(tiny_data, resumed, **extra)))
    a, b = read_metrics(clean), read_metrics(resumed)
    weights = [r for r in a if "curriculum/max_weight" in r]
    num_groups = len(json.loads((tiny_data / "train" / "puzzles.json").read_text()))  # one per puzzle
    assert len(weights) == 7 and weights[-1]["curriculum/effective_groups"] < 0.9 * num_groups  # off uniform
    for step in range(10, 15):
        ra, rb = last_train_record(a, step), last_train_record(b, step)
        for key in ("train/total_loss", "train/lm_loss", "train/q_halt_loss"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-6, abs=1e-9), (step, key)
    ta, tb = (json.loads((run / "checkpoints" / "step_14" / "trainer_state.json").read_text()) for run in (clean, resumed))
    # the schedule keeps only what a resume can still read: the entry in force and those ahead
    assert ta["curriculum"] == tb["curriculum"] and 1 <= len(ta["curriculum"]["schedule"]) <= 4


@pytest.mark.parametrize("signal, key", [("changed", "sample_changed_accuracy"), ("token", "sample_accuracy")])
def test_the_signal_picks_the_loss_heads_per_sample_accuracy(signal, key):
    cur = _curriculum(signal=signal)
    outputs = {"sample_done": torch.tensor([True, True]), "sample_accuracy": torch.tensor([0.9, 0.8]),
               "sample_changed_accuracy": torch.tensor([0.1, 0.0])}
    cur.observe_outputs(torch.tensor([0, 2]), outputs)
    cur.update()
    assert cur.fast[:2].tolist() == pytest.approx(outputs[key].tolist())


def test_a_curriculum_key_added_at_its_default_keeps_the_run_identity():
    """A run whose config.yaml predates a curriculum key (it ran with the default) is the same run;
    a changed value is not."""
    from training.run_identity import config_differences
    old = {"lr": 1e-4, "curriculum": {"mode": "progress", "group_regex": "-([a-z]+)$"}}
    assert config_differences(old, {**old, "curriculum": {**old["curriculum"], "noise_z": 0.0}}) == []
    assert config_differences(old, {**old, "curriculum": {**old["curriculum"], "noise_z": 1.0}}) == [
        ("curriculum.noise_z", "<unset>", 1.0)]
    off = {"lr": 1e-4, "curriculum": {"mode": "none", "interval": 7}}
    assert config_differences({"lr": 1e-4}, off) == []


def test_per_rank_sums_of_another_layout_start_the_window_empty(caplog):
    cur = _curriculum()
    cur.observe(torch.tensor([0]), torch.tensor([True]), torch.tensor([0.5]))
    cur.load_rank_state(torch.ones(2, 3))  # an earlier checkpoint layout: [2, groups]
    assert "starts empty" in caplog.text and cur.sums[:, 0].tolist() == [1.0, 0.5, 0.25]
    cur.load_rank_state(torch.full((3, 3), 2.0))
    assert cur.sums.tolist() == [[2.0] * 3] * 3
