"""Sampling by learning progress: the `curriculum` config block.

Why: on the learning benchmark a mix of rules the model cannot learn yet pulls the shared model
towards copying its input, and the rules it could learn alone are then not learned either; the
same rules trained in hand-picked stages are (docs/RESULTS.md, issue 18). Hand-picking needs an
oracle. This is the generic form (teacher-student curriculum learning, Matiisen et al. 2017):
puzzles are grouped (a generator family, a RE-ARC task, a data source), each group's accuracy is
followed with a fast and a slow moving average, and groups are drawn in proportion to how fast
their accuracy moves (|fast - slow|; with `noise_z` > 0, only what exceeds that many standard
deviations of what the noise of a group's few samples per update gives), plus a uniform share. Groups being learned get the samples;
groups mastered or not moving fall back to the uniform share.

Exploration (`explore_share` > 0): progress cannot start a group that does not move while it gets
only the uniform share (measured: the benchmark's copied families never drew samples, while
hand-picked stages that gave such a family half the samples from step 0 taught it). So a share of
the samples goes to a few groups at a time (`explore_groups`, the next ones of a shuffled order
every `explore_updates` updates, the same on every rank and after a resume): each group in turn
gets a focused window, and one that starts moving in it keeps its samples through its progress.

The statistic is every halted training sample's accuracy on the cells its rule changes (`signal:
changed`; the cells where the label differs from the input, all cells when none does) or on all its
cells (`signal: token`), summed per group on the device
(no host read per step); every `interval` steps the sums are all-reduced and read once, the
weights recomputed on the host (identically on every rank) and scheduled in the loader for the
first block of samples its prefetching thread cannot have planned yet (dataset/loader.py), so a
run's draws do not depend on thread timing and a resumed run draws the same samples.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re

import numpy as np
import torch
from omegaconf import DictConfig

from training.distributed import all_reduce_sum
from training.settings import settings_block

log = logging.getLogger("etrm")
CURRICULUM_MODES = ("none", "progress")
# what each group's progress is measured on: the loss head's per-sample outputs (models/losses.py)
CURRICULUM_SIGNALS = {"changed": "sample_changed_accuracy", "token": "sample_accuracy"}
# groups logged one curve each on the dashboard up to this many (beyond: only summaries)
MAX_LOGGED_GROUPS = 32


@dataclasses.dataclass(frozen=True)
class CurriculumSettings:
    """The `curriculum` config block (config/cfg_pretrain_etrm_arc_agi_1.yaml holds every key with its meaning)."""
    mode: str = "none"
    group_regex: str | None = None
    signal: str = "changed"
    interval: int = 50
    fast_rate: float = 0.5
    slow_rate: float = 0.1
    uniform_share: float = 0.2
    noise_z: float = 0.0
    explore_share: float = 0.0
    explore_groups: int = 2
    explore_updates: int = 4

    def __post_init__(self):
        if self.mode not in CURRICULUM_MODES:
            raise ValueError(f"curriculum.mode={self.mode!r} is not one of {list(CURRICULUM_MODES)}")
        if self.signal not in CURRICULUM_SIGNALS:
            raise ValueError(f"curriculum.signal={self.signal!r} is not one of {list(CURRICULUM_SIGNALS)}")
        if not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"curriculum.interval must be an integer >= 1, got {self.interval!r}")
        for key in ("fast_rate", "slow_rate"):
            if not 0 < float(getattr(self, key)) <= 1:
                raise ValueError(f"curriculum.{key} must be in (0, 1], got {getattr(self, key)!r}")
        if not float(self.slow_rate) < float(self.fast_rate):
            raise ValueError(f"curriculum.slow_rate ({self.slow_rate}) must be below curriculum.fast_rate "
                             f"({self.fast_rate}): their difference is the progress signal")
        if not float(self.noise_z) >= 0:
            raise ValueError(f"curriculum.noise_z must be >= 0, got {self.noise_z!r}")
        if not 0 <= float(self.uniform_share) <= 1:
            raise ValueError(f"curriculum.uniform_share must be in [0, 1], got {self.uniform_share!r}")
        if not 0 <= float(self.explore_share) <= 1 - float(self.uniform_share):
            raise ValueError(f"curriculum.explore_share must be in [0, 1 - uniform_share = "
                             f"{1 - float(self.uniform_share):g}], got {self.explore_share!r}")
        for key in ("explore_groups", "explore_updates"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"curriculum.{key} must be an integer >= 1, got {getattr(self, key)!r}")
        if self.group_regex is not None:
            try:
                compiled = re.compile(self.group_regex)
            except re.error as e:
                raise ValueError(f"curriculum.group_regex={self.group_regex!r} is not a regular expression: {e}") from None
            if compiled.groups < 1:
                raise ValueError(f"curriculum.group_regex={self.group_regex!r} has no capture group: the group of a "
                                 f"puzzle is the first capture group's match in its id")

    @classmethod
    def from_config(cls, node: DictConfig | dict | None) -> "CurriculumSettings":
        if node is None:
            return cls()
        return cls(**settings_block(node, [f.name for f in dataclasses.fields(cls)], "curriculum"))

    @property
    def active(self) -> bool:
        return self.mode != "none"


def puzzle_groups(puzzle_ids: list[str], group_regex: str | None, where: str = "") -> tuple[np.ndarray, list[str]]:
    """(each puzzle's group index, the group names in order of first appearance). Without a regex
    every puzzle is its own group; with one, the group is the first capture group of its match."""
    if group_regex is None:
        return np.arange(len(puzzle_ids), dtype=np.int64), list(puzzle_ids)
    pattern = re.compile(group_regex)
    names: dict[str, int] = {}
    out = np.empty(len(puzzle_ids), dtype=np.int64)
    for i, pid in enumerate(puzzle_ids):
        m = pattern.search(pid)
        if m is None or m.group(1) is None:
            raise ValueError(f"curriculum.group_regex={group_regex!r} does not match puzzle id {pid!r}{where}: every "
                             f"training puzzle needs a group (null: each puzzle is its own)")
        out[i] = names.setdefault(m.group(1), len(names))
    return out, list(names)


class LearningProgressCurriculum:
    """Per-group accuracy sums on the device, weights from learning progress on the host."""

    def __init__(self, settings: CurriculumSettings, puzzle_group: np.ndarray, group_names: list[str],
                 device: torch.device, seed: int = 0):
        self.settings = settings
        self.seed = int(seed)
        self.updates = 0  # weight updates so far: which exploration window this is
        self.group_names = list(group_names)
        self.num_groups = len(self.group_names)
        self.puzzle_group_host = np.asarray(puzzle_group, dtype=np.int64)  # the loader's copy (no device read)
        self.puzzle_group = torch.as_tensor(self.puzzle_group_host, device=device)
        # halted samples, the sum of their accuracy and of its square, per group
        self.sums = torch.zeros(3, self.num_groups, device=device)
        self.fast = np.zeros(self.num_groups)
        self.slow = np.zeros(self.num_groups)
        self.noise = np.zeros(self.num_groups)  # moving average of the variance of a window's mean accuracy
        self.seen = np.zeros(self.num_groups, dtype=bool)
        self.weights = np.full(self.num_groups, 1.0 / self.num_groups)
        self.schedule: list[tuple[int, list[float]]] = []  # (from block, weights): the loader's draws

    def observe_outputs(self, puzzle_index: torch.Tensor, outputs: dict) -> None:
        """`observe` with the loss head's per-sample outputs, on the configured signal."""
        self.observe(puzzle_index, outputs["sample_done"], outputs[CURRICULUM_SIGNALS[self.settings.signal]])

    def observe(self, puzzle_index: torch.Tensor, done: torch.Tensor, accuracy: torch.Tensor) -> None:
        """Add this step's halted samples (`done` [B] bool, their `accuracy` [B]) to their
        puzzles' groups. No host read."""
        g = self.puzzle_group[puzzle_index.long()]
        d = done.float()
        a = d * accuracy.float()
        self.sums.index_add_(1, g, torch.stack([d, a, a * accuracy.float()]))

    def update(self) -> dict[str, float]:
        """Read the summed statistics (all ranks), move the averages, recompute the weights.
        Returns the metrics to log."""
        counts, acc, acc2 = all_reduce_sum(self.sums).cpu().double().numpy()
        self.sums.zero_()
        s = self.settings
        a, b = float(s.fast_rate), float(s.slow_rate)
        fresh = (counts > 0) & ~self.seen
        moved = (counts > 0) & self.seen
        n = np.maximum(counts, 1)
        mean = acc / n
        # the variance of this window's mean (sample variance / n; one sample: no estimate, 0)
        var_of_mean = np.where(counts > 1, np.maximum(acc2 / n - mean ** 2, 0) / np.maximum(counts - 1, 1), 0.0)
        self.fast[fresh] = self.slow[fresh] = mean[fresh]
        self.noise[fresh] = var_of_mean[fresh]
        self.fast[moved] += a * (mean[moved] - self.fast[moved])
        self.slow[moved] += b * (mean[moved] - self.slow[moved])
        self.noise[moved] += b * (var_of_mean[moved] - self.noise[moved])
        self.seen |= counts > 0
        # what |fast - slow| is from noise alone: for i.i.d. window means of variance v, the two moving
        # averages' difference has variance v (a/(2-a) + b/(2-b) - 2ab/(a+b-ab)); progress is what exceeds
        # noise_z of its standard deviations (a flat group with noisy windows does not draw samples)
        spread = np.sqrt(self.noise * (a / (2 - a) + b / (2 - b) - 2 * a * b / (a + b - a * b)))
        progress = np.maximum(np.abs(self.fast - self.slow) - float(s.noise_z) * spread, 0.0)
        # a group not seen yet counts as the fastest-moving one: every group gets observed
        progress[~self.seen] = progress[self.seen].max() if self.seen.any() else 1.0
        uniform = np.full(self.num_groups, 1.0 / self.num_groups)
        total = progress.sum()
        share = progress / total if total > 0 else uniform
        explore = np.zeros(self.num_groups)
        explore[self.explored_groups(self.updates)] = 1.0
        u, e = float(s.uniform_share), float(s.explore_share)
        self.weights = u * uniform + e * explore / explore.sum() + (1 - u - e) * share
        self.updates += 1
        metrics = {"curriculum/effective_groups": float(math.exp(-(self.weights * np.log(self.weights + 1e-30)).sum())),
                   "curriculum/max_weight": float(self.weights.max())}
        if self.num_groups <= MAX_LOGGED_GROUPS:
            for name, w, a in zip(self.group_names, self.weights, self.fast):
                metrics[f"curriculum/weight/{name}"] = float(w)
                metrics[f"curriculum/accuracy/{name}"] = float(a)
        return metrics

    def explored_groups(self, update: int) -> np.ndarray:
        """The groups the exploration share goes to at weight update `update` (0-based): the next
        `explore_groups` of a shuffled order of all groups per window of `explore_updates` updates,
        a new order per cycle through them (so every group gets its window before any gets a
        second), from (seed, cycle) alone."""
        s = self.settings
        k = min(s.explore_groups, self.num_groups)
        per_cycle = -(-self.num_groups // k)  # windows per cycle; the last one tops up from the order's start
        window = update // s.explore_updates
        order = np.random.default_rng([self.seed, 3, window // per_cycle]).permutation(self.num_groups)
        start = (window % per_cycle) * k
        return np.sort(np.resize(np.roll(order, -start), k))

    def schedule_in(self, loader, consumed_state: dict, batches_ahead: int) -> int:
        """Give the loader the current weights for its first block a producer `batches_ahead`
        global batches past `consumed_state` has not planned; returns that block."""
        block = loader.block_after(consumed_state, batches_ahead)
        loader.schedule_weights(block, self.weights)
        self.schedule.append((block, [float(w) for w in self.weights]))
        # entries superseded before the block being consumed are never read again (a resumed run
        # re-plans from its consumed position): the checkpointed schedule stays a few entries long
        current = loader.block_after(consumed_state, 0) - 1
        while len(self.schedule) > 1 and self.schedule[1][0] <= current:
            self.schedule.pop(0)
        return block

    def attach(self, loader) -> None:
        """Switch `loader` to weighted blocks of `interval` steps' samples, with the schedule so far."""
        loader.enable_weighted_sampling(self.puzzle_group_host, self.num_groups,
                                        self.settings.interval * loader.global_batch_size)
        for block, weights in self.schedule:
            loader.schedule_weights(block, weights)

    def state_dict(self) -> dict:
        return {"group_names": self.group_names, "fast": self.fast.tolist(), "slow": self.slow.tolist(),
                "noise": self.noise.tolist(),
                "seen": self.seen.tolist(), "weights": self.weights.tolist(), "schedule": self.schedule,
                "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        if list(state["group_names"]) != self.group_names:
            raise ValueError(f"the checkpoint's curriculum has {len(state['group_names'])} groups "
                             f"({state['group_names'][:5]}...), this run's data {self.num_groups} "
                             f"({self.group_names[:5]}...): the training data or curriculum.group_regex changed")
        self.fast, self.slow = np.asarray(state["fast"], float), np.asarray(state["slow"], float)
        self.noise = np.asarray(state.get("noise", np.zeros(self.num_groups)), float)  # absent before noise_z
        self.seen, self.weights = np.asarray(state["seen"], bool), np.asarray(state["weights"], float)
        self.schedule = [(int(b), list(w)) for b, w in state["schedule"]]
        self.updates = int(state.get("updates", 0))  # absent before exploration (its windows then restart)

    def rank_state(self) -> torch.Tensor:
        """This rank's sums since the last update (a checkpoint's per-rank part)."""
        return self.sums.cpu().clone()

    def load_rank_state(self, sums: torch.Tensor) -> None:
        if tuple(sums.shape) != tuple(self.sums.shape):  # a checkpoint of an earlier layout: drop one window's sums
            log.warning("curriculum: the checkpoint's per-rank sums have shape %s, not %s: this update window "
                        "starts empty", tuple(sums.shape), tuple(self.sums.shape))
            return
        self.sums.copy_(sums.to(self.sums))


def build_curriculum(settings: CurriculumSettings, train_split, device: torch.device,
                     seed: int = 0) -> LearningProgressCurriculum | None:
    """The run's curriculum (None when `curriculum.mode` is none), its groups checked against the
    training puzzles' ids before any model work."""
    if not settings.active:
        return None
    groups, names = puzzle_groups(train_split.puzzle_ids, settings.group_regex, f" (training data {train_split.paths})")
    return LearningProgressCurriculum(settings, groups, names, device, seed)
