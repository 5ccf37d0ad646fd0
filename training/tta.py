"""Test-time adaptation (TTA): before predicting, adapt to each eval puzzle's demos.

The adaptation set is `dataset.adaptation.adaptation_split(eval_split)`: every demo of a puzzle
as a query whose context is the other demos, under the puzzle's variants; it holds no test pair,
so nothing here can read a test output. Modes (`tta.mode`):
  none     the checkpoint as it is;
  context  weights frozen; each puzzle (or each (puzzle, variant), `tta.offsets`) gets its own
           learned correction of the encoder's context tokens, a table [N, V, P, H] starting
           at 0 (i.e. at the encoder's output), trained for all puzzles at once;
  full     all weights and the per-puzzle corrections, fine-tuned on the adaptation sets of all
           eval puzzles together (arXiv 2511.02886), from a copy of the given weights (the
           checkpoint on disk and the caller's model are never modified).
Training semantics are the trainer's: the ACT carry persists across batches, halted slots take
new samples, every ACT step is supervised by the same ACTLossHead, DDP shards the batches over
ranks (the correction table is a parameter of the DDP module, so its gradients are all-reduced
like the weights'). Prediction is then the usual `run_evaluation` with the adapted weights and
each sample's correction: all variants, inverse augmentation, voting, pass@k, submission.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dataset import ARCSplit, TrainLoader
from dataset.adaptation import adaptation_split
from training.distributed import DistInfo
from training.optim import lr_at

log = logging.getLogger("etrm")

TTA_MODES = ("none", "context", "full")
OFFSET_SCOPES = ("puzzle", "variant")


@dataclass
class TTASettings:
    """The `tta` config group (config/tta/*.yaml). Every value is checked in __post_init__."""
    mode: str = "none"
    steps: int = 300                # optimizer steps (one ACT step of the whole batch each)
    global_batch_size: int = 32     # adaptation samples per step, over all ranks
    lr: float = 1e-3                # weights (full)
    context_lr: float = 1e-2        # the per-puzzle context corrections
    lr_warmup_steps: int = 0
    lr_min_ratio: float = 1.0       # cosine to lr * lr_min_ratio at the last step (1.0 = constant)
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip_norm: float = 1.0
    offsets: str = "variant"        # one correction per puzzle, or per (puzzle, variant)
    num_variants: int | None = None  # adapt on each puzzle's first N variants (null: the evaluation's max_eval_variants)
    seed: int = 0
    save_weights: bool = False      # full: write the adapted weights beside the eval outputs

    def __post_init__(self):
        if self.mode not in TTA_MODES:
            raise ValueError(f"tta.mode={self.mode!r} is not one of {list(TTA_MODES)}")
        if self.offsets not in OFFSET_SCOPES:
            raise ValueError(f"tta.offsets={self.offsets!r} is not one of {list(OFFSET_SCOPES)}")
        for key in ("steps", "global_batch_size"):
            if int(getattr(self, key)) < 1:
                raise ValueError(f"tta.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("lr", "context_lr"):
            if not float(getattr(self, key)) >= 0:
                raise ValueError(f"tta.{key} must be >= 0, got {getattr(self, key)}")
        if self.num_variants is not None and int(self.num_variants) < 1:
            raise ValueError(f"tta.num_variants must be >= 1 or null, got {self.num_variants}")

    @classmethod
    def from_config(cls, node: DictConfig | dict | None) -> "TTASettings":
        data = {} if node is None else (OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig)
                                         else dict(node))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown tta option(s) {unknown}; valid keys: {sorted(known)}")
        return cls(**data)

    def metrics(self) -> dict:
        """The settings as eval metrics (tta/<key>)."""
        return {f"tta/{k}": v for k, v in dataclasses.asdict(self).items()}


# ---------------------------------------------------------------------------------------------
# per-puzzle parameters and the head that feeds them to the model


class ContextOffsets(nn.Module):
    """A learned correction of the context tokens per puzzle ([N, 1, P, H]) or per (puzzle,
    variant) ([N, V, P, H], variants counted within their puzzle); zero at the start. Looked up
    per sample from the batch's `puzzle_index` and `puzzle_identifiers` (global variant index);
    a variant beyond the first V gets no correction."""

    def __init__(self, split: ARCSplit, puzzle_emb_len: int, hidden_size: int, num_slots: int):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(split.num_puzzles, num_slots, puzzle_emb_len, hidden_size))
        local = np.arange(split.num_variants) - split.puzzle_variant_offsets[split.variant_puzzle]
        slot = np.where(local < num_slots, local, -1) if num_slots > 1 else np.zeros_like(local)
        self.register_buffer("slot_of_variant", torch.from_numpy(slot.astype(np.int64)), persistent=False)

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        slot = self.slot_of_variant[data["puzzle_identifiers"]]
        rows = self.table[data["puzzle_index"], slot.clamp_min(0)]
        return rows * (slot >= 0).to(rows.dtype)[:, None, None]


class AdaptedHead(nn.Module):
    """The loss head with each sample's context correction as the model input `context_offset`,
    for the batch's rows and for the rows the ACT carry keeps (looked up afresh every step, so
    a sample that stays in its slot sees its correction's current value and sends it gradient)."""

    def __init__(self, head: nn.Module, offsets: ContextOffsets):
        super().__init__()
        self.head = head
        self.offsets = offsets

    @property
    def model(self) -> nn.Module:
        return self.head.model

    def initial_carry(self, batch):
        return self.head.initial_carry(batch)

    def forward(self, carry, batch):
        batch = dict(batch, context_offset=self.offsets(batch))
        carry = dataclasses.replace(carry, current_data=dict(carry.current_data,
                                                             context_offset=self.offsets(carry.current_data)))
        return self.head(carry, batch)


# ---------------------------------------------------------------------------------------------
# adaptation


def _adapted_copy(head: nn.Module, mode: str) -> nn.Module:
    """A copy of the loss head + model to adapt; `context` freezes its weights."""
    head = copy.deepcopy(head)
    for p in head.parameters():
        p.requires_grad_(mode == "full")
    return head


def adapt(head: nn.Module, eval_split: ARCSplit, settings: TTASettings, dist_info: DistInfo, forward_dtype: str,
          eval_variants: int | None = None, max_demos: int | None = None) -> tuple[nn.Module, dict]:
    """Adapt a copy of `head` to the demos of `eval_split` (see the module docstring). Returns
    (the adapted head, to pass to run_evaluation; metrics: settings and cost under tta/)."""
    from training.trainer import autocast_for, reduce_metrics, to_device  # the trainer's own helpers

    device, world = dist_info.device, dist_info.world_size
    if settings.global_batch_size % world:
        raise ValueError(f"tta.global_batch_size={settings.global_batch_size} does not divide over world_size={world}")
    ada = adaptation_split(eval_split)  # demos only: the test pairs are not in it
    num_variants = settings.num_variants or eval_variants
    slots = 1 if settings.offsets == "puzzle" else int(num_variants or np.diff(eval_split.puzzle_variant_offsets).max())
    cfg = head.model.config
    adapted = AdaptedHead(_adapted_copy(head, settings.mode),
                          ContextOffsets(eval_split, cfg.puzzle_emb_len, cfg.hidden_size, slots)).to(device)
    stats = settings.metrics()
    stats.update({"tta/num_variants": num_variants, "tta/adapted_puzzles": int((np.diff(ada.puzzle_query_offsets) > 0).sum()),
                  "tta/single_demo_puzzles": int((ada.puzzle_num_demos == 1).sum())})
    if ada.num_queries == 0:
        log.warning("tta: no eval puzzle has two demos; nothing to adapt on")
        stats.update({"tta/steps_done": 0, "tta/wall_s": 0.0, "tta/samples_per_s": 0.0})
        return adapted.eval(), stats

    loader = TrainLoader(ada, settings.global_batch_size, rank=dist_info.rank, world_size=world, seed=settings.seed,
                         max_demos=max_demos, max_variants=num_variants)
    weights = [p for p in adapted.head.parameters() if p.requires_grad]
    groups = [{"params": [adapted.offsets.table], "lr": settings.context_lr, "weight_decay": 0.0, "base_lr": settings.context_lr}]
    if weights:
        groups.append({"params": weights, "lr": settings.lr, "weight_decay": settings.weight_decay, "base_lr": settings.lr})
    from adam_atan2_pytorch import AdamAtan2  # the training optimizer (training/optim.py)
    optimizer = AdamAtan2(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2))
    train_head: nn.Module = adapted
    if world > 1:
        train_head = DistributedDataParallel(adapted, device_ids=[device.index] if device.type == "cuda" else None,
                                             find_unused_parameters=bool(cfg.context_ablation))

    torch.manual_seed(settings.seed * 1000 + dist_info.rank)  # halting exploration, as in training
    params = [p for g in groups for p in g["params"]]
    carry, it, history = None, iter(loader), []
    start = time.perf_counter()
    adapted.train()
    for step in range(settings.steps):
        batch = to_device(next(it), device)
        if carry is None:
            carry = adapted.initial_carry(batch)
        for g in optimizer.param_groups:
            g["lr"] = lr_at(step, g["base_lr"], settings.lr_warmup_steps, settings.steps, settings.lr_min_ratio)
        with autocast_for(device, forward_dtype):
            carry, loss, metrics, _, _ = train_head(carry, batch)
        (loss / loader.local_batch_size).backward()
        reduced = reduce_metrics(dict(metrics, total_loss=loss.detach()), "tta", settings.global_batch_size)
        grads = [p.grad for p in params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))) if grads else torch.zeros(())
        if math.isfinite(reduced["tta/total_loss"]) and math.isfinite(float(norm)):
            if settings.grad_clip_norm and float(norm) > settings.grad_clip_norm:
                torch._foreach_mul_(grads, settings.grad_clip_norm / (float(norm) + 1e-6))
            optimizer.step()
        else:
            carry = None
            log.warning("tta step %d: non-finite loss or gradient norm, update skipped", step)
        optimizer.zero_grad(set_to_none=True)
        history.append(reduced)
    wall = time.perf_counter() - start
    adapted.eval()

    def mean_of(key, rows):
        vals = [r[key] for r in rows if key in r]
        return float(np.mean(vals)) if vals else float("nan")

    tenth = max(1, len(history) // 10)
    stats.update({
        "tta/steps_done": len(history), "tta/wall_s": wall,
        "tta/samples_per_s": len(history) * settings.global_batch_size / max(wall, 1e-9),
        "tta/loss_first": mean_of("tta/total_loss", history[:tenth]),
        "tta/loss_last": mean_of("tta/total_loss", history[-tenth:]),
        "tta/exact_first": mean_of("tta/exact_accuracy", history[:tenth]),
        "tta/exact_last": mean_of("tta/exact_accuracy", history[-tenth:]),
        "tta/updates_per_puzzle": len(history) * settings.global_batch_size / max(ada.num_queries, 1),
    })
    log.info("tta %s: %d steps in %.1f s, loss %.3f -> %.3f, exact %.3f -> %.3f", settings.mode, len(history), wall,
             stats["tta/loss_first"], stats["tta/loss_last"], stats["tta/exact_first"], stats["tta/exact_last"])
    return adapted, stats
