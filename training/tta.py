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

import contextlib
import copy
import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from dataset import ARCSplit, EvalLoader, TrainLoader
from dataset.adaptation import adaptation_split
from dataset.atomic import atomic_write
from dataset.tokens import NUM_COLOURS
from training.checkpoint import rng_state, set_rng_state
from training.distributed import DistInfo, all_reduce_sum, wrap_ddp
from training.evaluation import (autocast_for, metrics_from_totals, reduce_metrics_on_device, run_evaluation,
                                 run_until_halted, to_device)
from training.host_copy import HostCopy
from training.optim import AdamATan2, clipped_step_on_device, lr_at
from training.preflight import divides_check, require
from training.progress import Progress
from training.settings import settings_block

log = logging.getLogger("etrm")

TTA_MODES = ("none", "context", "full")
OFFSET_SCOPES = ("puzzle", "variant")
PUZZLE_CHOICES = ("all", "unsolved")
PREDICT_CHOICES = ("adapted", "keep_solved", "pooled")
MAX_VARIANT_SLOTS = 64  # per-(puzzle, variant) corrections: a table of N x V x P x H floats
SELECT_VARIANTS = 8     # tta.puzzles=unsolved / tta.predict=keep_solved judge a puzzle on (at most) its first 8 variants;
SOLVED_FRACTION = 0.5   # solved when more than half of its leave-one-out samples are answered exactly
READ_EVERY = 50         # adaptation steps between host reads of their metrics (progress, non-finite warnings)


@dataclass(frozen=True)
class TTASettings:
    """The `tta` config group; config/tta/none.yaml holds every key with its default and meaning."""
    mode: str
    steps: int
    global_batch_size: int
    lr: float
    context_lr: float
    lr_warmup_steps: int
    lr_min_ratio: float
    weight_decay: float
    beta1: float
    beta2: float
    grad_clip_norm: float
    offsets: str
    puzzles: str
    num_variants: int | None
    seed: int
    save_weights: bool
    fit_variants: int
    predict: str

    def __post_init__(self):
        if self.mode not in TTA_MODES:
            raise ValueError(f"tta.mode={self.mode!r} is not one of {list(TTA_MODES)}")
        if self.offsets not in OFFSET_SCOPES:
            raise ValueError(f"tta.offsets={self.offsets!r} is not one of {list(OFFSET_SCOPES)}")
        if self.puzzles not in PUZZLE_CHOICES:
            raise ValueError(f"tta.puzzles={self.puzzles!r} is not one of {list(PUZZLE_CHOICES)}")
        for key in ("steps", "global_batch_size"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 1:
                raise ValueError(f"tta.{key} must be an integer >= 1, got {getattr(self, key)!r}")
        for key in ("lr", "context_lr", "weight_decay", "grad_clip_norm"):
            if not float(getattr(self, key)) >= 0:
                raise ValueError(f"tta.{key} must be >= 0, got {getattr(self, key)!r}")
        if not 0 < float(self.lr_min_ratio) <= 1:
            raise ValueError(f"tta.lr_min_ratio must be in (0, 1], got {self.lr_min_ratio!r}")
        if self.predict not in PREDICT_CHOICES:
            raise ValueError(f"tta.predict={self.predict!r} is not one of {list(PREDICT_CHOICES)}")
        if not isinstance(self.fit_variants, int) or self.fit_variants < 0:
            raise ValueError(f"tta.fit_variants must be an integer >= 0, got {self.fit_variants!r}")
        if self.num_variants is not None and (not isinstance(self.num_variants, int) or self.num_variants < 1):
            raise ValueError(f"tta.num_variants must be an integer >= 1 or null, got {self.num_variants!r}")

    def variants(self, eval_variants: int | None) -> int | None:
        """How many augmented variants of each puzzle adaptation (and the solved judgement) use:
        tta.num_variants, else the evaluation's max_eval_variants (None: all)."""
        return self.num_variants or eval_variants

    @classmethod
    def from_config(cls, node: DictConfig | dict | None, world_size: int = 1) -> "TTASettings | None":
        """Settings from the `tta` config node, checked (also that the adaptation batch divides over
        `world_size` ranks) before any expensive work; None when the config has no `tta`."""
        if node is None:
            return None
        settings = cls(**settings_block(node, [f.name for f in dataclasses.fields(cls)], "tta",
                                        every_key_from="config/tta/none.yaml"))
        if settings.active:
            require([divides_check("tta.global_batch_size", settings.global_batch_size, world_size)])
        return settings

    @property
    def active(self) -> bool:
        return self.mode != "none"

    def metrics(self) -> dict:
        """The settings as eval metrics (tta/<key>)."""
        return {f"tta/{k}": v for k, v in dataclasses.asdict(self).items()}


# ---------------------------------------------------------------------------------------------
# per-puzzle parameters and the head that feeds them to the model


class ContextOffsets(nn.Module):
    """A learned correction of the context tokens per puzzle ([N, 1, P, H]) or per (puzzle,
    variant) ([N, V, P, H], variants counted within their puzzle); zero at the start. Looked up
    per sample from the batch's `puzzle_index` and `variant_index` (global variant index);
    a variant beyond the first V gets no correction.

    With `colour_source` (models whose first 10 context tokens are per-colour slots, i.e. the
    colour table), one correction serves every variant of its puzzle: its colour rows are kept in
    the puzzle's own colours and moved with each variant's colour permutation (the slot of colour
    c in a variant gets the row of the original colour that became c), so what a puzzle learns
    about "colour 3 becomes 5" holds under every recolouring."""

    def __init__(self, num_puzzles: int, num_slots: int, puzzle_emb_len: int, hidden_size: int,
                 slot_of_variant: np.ndarray, colour_source: np.ndarray | None = None):
        super().__init__()
        self.table = nn.Parameter(torch.zeros(num_puzzles, num_slots, puzzle_emb_len, hidden_size))
        self.register_buffer("slot_of_variant", torch.as_tensor(slot_of_variant, dtype=torch.int64), persistent=False)
        source = None if colour_source is None else torch.as_tensor(colour_source, dtype=torch.int64)
        self.register_buffer("colour_source", source, persistent=False)  # [num_variants, 10] or None

    @classmethod
    def for_split(cls, split: ARCSplit, num_slots: int, puzzle_emb_len: int, hidden_size: int,
                  colour_slots: bool = False) -> "ContextOffsets":
        """Slot of each global variant: its index within its puzzle (-1 beyond num_slots), or 0 for all
        with one slot per puzzle (then colour-equivariant when the model has colour slots)."""
        local = np.arange(split.num_variants) - split.puzzle_variant_offsets[split.variant_puzzle]
        slot = np.where(local < num_slots, local, -1) if num_slots > 1 else np.zeros_like(local)
        # variant perm maps original colour c -> perm[c]; slot c' reads the row of perm^-1[c']
        source = np.argsort(split.variants[:, 1:], axis=1) if colour_slots and num_slots == 1 else None
        return cls(split.num_puzzles, num_slots, puzzle_emb_len, hidden_size, slot, source)

    @contextlib.contextmanager
    def swapped_between_puzzles(self, puzzles: np.ndarray):
        """Within the block, each of `puzzles` gets the correction of the next one (cyclically):
        the fit then says how much each correction is about its own puzzle."""
        saved = self.table.detach().clone()
        idx = torch.as_tensor(puzzles, device=saved.device)
        with torch.no_grad():
            self.table[idx] = saved[torch.roll(idx, 1)]
        try:
            yield
        finally:
            with torch.no_grad():
                self.table.copy_(saved)

    def forward(self, data: dict[str, torch.Tensor]) -> torch.Tensor:
        variant = data["variant_index"]
        slot = self.slot_of_variant[variant]
        rows = self.table[data["puzzle_index"], slot.clamp_min(0)]  # [B, P, H]
        if self.colour_source is not None:
            source = self.colour_source[variant]  # [B, 10]
            colours = rows[:, :NUM_COLOURS].gather(1, source[:, :, None].expand(-1, -1, rows.shape[-1]))
            rows = torch.cat([colours, rows[:, NUM_COLOURS:]], dim=1)
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


def adaptation_optimizer(adapted: AdaptedHead, settings: TTASettings) -> torch.optim.Optimizer:
    """The training optimizer (AdamATan2, training/optim.py) over the context corrections (lr
    context_lr, no weight decay) and, in `full` mode, the weights (lr, weight_decay)."""
    groups = [{"params": [adapted.offsets.table], "lr": settings.context_lr, "weight_decay": 0.0,
               "base_lr": settings.context_lr}]
    weights = [p for p in adapted.head.parameters() if p.requires_grad]
    if weights:
        groups.append({"params": weights, "lr": settings.lr, "weight_decay": settings.weight_decay, "base_lr": settings.lr})
    return AdamATan2(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2))


def adaptation_step(train_head: nn.Module, optimizer: torch.optim.Optimizer, carry, batch: dict, step: int,
                    settings: TTASettings, local_batch_size: int, forward_dtype: str):
    """One adaptation step, as a training step: one ACT step of every slot through the loss head,
    backward of the loss / the global batch, clipping, the optimizer (skipped when the loss or the
    gradient norm is not finite: every slot then restarts), all decided on the device as the
    trainer's step. Returns (carry, (metric keys, their sums over ranks + the skip flag as one device
    vector)), read on the host by `read_adaptation_metrics`."""
    for g in optimizer.param_groups:
        g["lr"] = lr_at(step, g["base_lr"], settings.lr_warmup_steps, settings.steps, settings.lr_min_ratio)
    with autocast_for(batch["inputs"].device, forward_dtype):
        carry, loss, metrics, _, _ = train_head(carry, batch)
    # a sum over this rank's samples; DDP averages over ranks -> gradients of sum / global batch
    (loss / local_batch_size).backward()
    keys, _, totals = reduce_metrics_on_device(dict(metrics, total_loss=loss.detach()))
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float()) if grads else totals.new_zeros(())
    ok = clipped_step_on_device(optimizer, grads, norm, float(settings.grad_clip_norm), totals[keys.index("total_loss")])
    carry = dataclasses.replace(carry, halted=carry.halted | ~ok)  # latents may hold NaN: restart every slot
    optimizer.zero_grad(set_to_none=True)
    return carry, (keys, torch.cat([totals, (~ok).float()[None]]))


def read_adaptation_metrics(pending: list, first_step: int, global_batch_size: int) -> list[dict]:
    """The `adaptation_step` metrics of consecutive steps from `first_step` on, read in one host
    read: one dict under tta/ per step; a skipped (non-finite) update is logged."""
    rows = torch.stack([values for _, values in pending]).tolist()
    out = []
    for i, ((keys, _), row) in enumerate(zip(pending, rows)):
        if row[-1]:
            log.warning("tta step %d: non-finite loss or gradient norm, update skipped", first_step + i)
        out.append(metrics_from_totals(keys, [], row[:-1], "tta", global_batch_size))
    return out


def solved_puzzles(head: nn.Module, eval_split: ARCSplit, dist_info: DistInfo, forward_dtype: str,
                   num_variants: int | None = None, max_demos: int | None = None) -> np.ndarray:
    """[num puzzles] bool: the puzzles whose leave-one-out demos `head` answers exactly in more than
    SOLVED_FRACTION of their first (at most SELECT_VARIANTS) variants. A puzzle with a single demo
    has nothing to judge it on and is never solved. The same on every rank (an all-reduced fit)."""
    ada = adaptation_split(eval_split)
    if ada.num_queries == 0:
        return np.zeros(eval_split.num_puzzles, dtype=bool)
    fit = adaptation_fit(head, ada, dist_info, forward_dtype, min(num_variants or SELECT_VARIANTS, SELECT_VARIANTS),
                         max_demos=max_demos)
    with np.errstate(invalid="ignore"):
        return fit["puzzle_exact"] > SOLVED_FRACTION  # NaN (no leave-one-out sample) -> False


def adapt(head: nn.Module, eval_split: ARCSplit, settings: TTASettings, dist_info: DistInfo, forward_dtype: str,
          eval_variants: int | None = None, max_demos: int | None = None,
          solved: np.ndarray | None = None) -> tuple["AdaptedHead", dict]:
    """Adapt a copy of `head` to the demos of `eval_split` (see the module docstring). Returns
    (the adapted head, for run_evaluation; metrics under tta/: the settings, the cost, the loss
    over the run, and with fit_variants the leave-one-out fit before/after adaptation and with
    every puzzle given another puzzle's correction, which says how puzzle-specific they are).
    tta.puzzles=unsolved adapts on the puzzles `solved` (`solved_puzzles` of `head`, computed
    here when not given) does not mark."""
    device, world = dist_info.device, dist_info.world_size
    ada = adaptation_split(eval_split)  # demos only: the test pairs are not in it
    num_variants = settings.variants(eval_variants)
    if settings.offsets == "puzzle":
        slots = 1
    elif num_variants is None or num_variants > MAX_VARIANT_SLOTS:
        raise ValueError(f"tta.offsets=variant keeps a correction per (puzzle, variant) and needs tta.num_variants "
                         f"(or max_eval_variants) <= {MAX_VARIANT_SLOTS}, got {num_variants}; "
                         f"use tta.offsets=puzzle to adapt on many variants")
    else:
        slots = int(num_variants)
    cfg = head.model.config
    adapted = AdaptedHead(_adapted_copy(head, settings.mode),
                          ContextOffsets.for_split(eval_split, slots, cfg.puzzle_emb_len, cfg.hidden_size,
                                                   colour_slots=cfg.context_colour_table)).to(device)
    adapted_puzzles = int((np.diff(ada.puzzle_query_offsets) > 0).sum())
    stats = {**settings.metrics(), "tta/num_variants": num_variants, "tta/adapted_puzzles": adapted_puzzles,
             "tta/single_demo_puzzles": int((ada.puzzle_num_demos == 1).sum()), "tta/demo_queries": ada.num_queries}

    every_demo = ada  # the fit is always measured on every puzzle's demos, before and after

    def fit(prefix: str) -> None:
        if settings.fit_variants and every_demo.num_queries:
            out = adaptation_fit(adapted, every_demo, dist_info, forward_dtype,
                                 min(settings.fit_variants, num_variants or 1), max_demos=max_demos)
            stats.update({f"tta/fit_{prefix}_loss": out["loss"], f"tta/fit_{prefix}_exact": out["exact"]})

    fit("before")
    if settings.puzzles == "unsolved" and ada.num_queries:
        # spend the steps where they are needed: leave out puzzles whose leave-one-out demos the
        # model already answers exactly in most variants (the vote over variants would get them)
        if solved is None:
            solved = solved_puzzles(adapted, eval_split, dist_info, forward_dtype, num_variants, max_demos)
        ada = adaptation_split(eval_split, puzzles=~solved)
        adapted_puzzles = int((np.diff(ada.puzzle_query_offsets) > 0).sum())
        stats.update({"tta/adapted_puzzles": adapted_puzzles, "tta/demo_queries": ada.num_queries,
                      "tta/solved_puzzles": int(solved.sum())})
    if ada.num_queries == 0:
        log.warning("tta: no eval puzzle to adapt on (none has two demos, or every one is already solved)")
        stats.update({"tta/steps_done": 0, "tta/wall_s": 0.0, "tta/samples_per_s": 0.0})
        return adapted.eval(), stats

    loader = TrainLoader(ada, settings.global_batch_size, rank=dist_info.rank, world_size=world, seed=settings.seed,
                         max_demos=max_demos, max_variants=num_variants)
    optimizer = adaptation_optimizer(adapted, settings)
    train_head = wrap_ddp(adapted, device, bool(cfg.context_ablation))  # as the trainer

    torch.manual_seed(settings.seed * 1000 + dist_info.rank)  # halting exploration, as in training
    carry, batches, history, pending = None, iter(loader), [], []
    halted_copy = HostCopy()  # as the trainer: the packing plans made on the host (demo_lengths + halted)
    adapted.train()
    start = time.perf_counter()
    progress = Progress(settings.steps, f"tta {settings.mode}", enabled=dist_info.is_main)
    for step in range(settings.steps):
        batch = to_device(next(batches), device)
        if carry is None:
            carry = adapted.initial_carry(batch)
        elif halted_copy.pending:
            carry = dataclasses.replace(carry, host_halted=halted_copy.get())
        carry, metrics = adaptation_step(train_head, optimizer, carry, batch, step, settings, loader.local_batch_size,
                                         forward_dtype)
        halted_copy.start(carry.halted)
        pending.append(metrics)
        if len(pending) == READ_EVERY or step == settings.steps - 1:  # one host read per READ_EVERY steps
            history += read_adaptation_metrics(pending, step + 1 - len(pending), settings.global_batch_size)
            pending = []
            progress.set_postfix(loss=f"{history[-1]['tta/total_loss']:.3f}")
        progress.update()
    progress.close()
    wall = time.perf_counter() - start
    adapted.eval()

    def mean_of(key: str, rows: list[dict]) -> float:
        vals = [r[key] for r in rows if key in r]
        return float(np.mean(vals)) if vals else float("nan")

    tenth = max(1, len(history) // 10)
    samples = len(history) * settings.global_batch_size
    stats.update({
        "tta/steps_done": len(history), "tta/wall_s": wall, "tta/samples_per_s": samples / max(wall, 1e-9),
        "tta/samples_per_puzzle": samples / max(adapted_puzzles, 1),
        "tta/loss_first": mean_of("tta/total_loss", history[:tenth]),
        "tta/loss_last": mean_of("tta/total_loss", history[-tenth:]),
    })
    fit("after")
    if settings.fit_variants and adapted_puzzles > 1:
        with adapted.offsets.swapped_between_puzzles(np.flatnonzero(np.diff(ada.puzzle_query_offsets) > 0)):
            fit("swapped")
    log.info("tta %s: %d steps in %.1f s (%.1f samples/s); loss %.3f -> %.3f; leave-one-out fit %s",
             settings.mode, len(history), wall, stats["tta/samples_per_s"], stats["tta/loss_first"],
             stats["tta/loss_last"], {k.split("/")[1]: round(v, 3) for k, v in stats.items() if "/fit_" in k})
    return adapted, stats


@torch.no_grad()
def adaptation_fit(head: nn.Module, ada: ARCSplit, dist_info: DistInfo, forward_dtype: str, num_variants: int = 1,
                   batch_size: int = 64, max_demos: int | None = None) -> dict[str, float]:
    """How well `head` answers the adaptation set's leave-one-out queries, the way the evaluation
    predicts (eval mode, each sample's outputs at its halting step), over each puzzle's first
    `num_variants` variants: {"loss": mean per-sample token loss, "exact": exact accuracy,
    "puzzle_exact": per puzzle, the fraction of its samples answered exactly (numpy; NaN without any)}."""
    head.eval()
    device = dist_info.device
    loss_fn = head.head.loss_fn if isinstance(head, AdaptedHead) else head.loss_fn
    loader = EvalLoader(ada, batch_size * dist_info.world_size, rank=dist_info.rank, world_size=dist_info.world_size,
                        max_variants=num_variants, max_demos=max_demos)
    sums = torch.zeros(3, device=device, dtype=torch.float64)  # loss, exact, count
    per_puzzle = torch.zeros(2, ada.num_puzzles, device=device, dtype=torch.float64)  # exact, count
    for batch in loader:
        batch = to_device(batch, device)
        out = run_until_halted(head, batch, forward_dtype, loss_fn=loss_fn)
        loss, exact, valid = out["loss"], out["exact"], batch["valid"]
        sums += torch.stack([(loss * valid).sum(), (exact & valid).sum().double(), valid.sum().double()])
        per_puzzle.index_add_(1, batch["puzzle_index"], torch.stack([(valid & exact).double(), valid.double()]))
    loss_sum, exact_sum, count = all_reduce_sum(sums).tolist()
    puzzle_exact, puzzle_count = all_reduce_sum(per_puzzle).cpu().numpy()
    with np.errstate(invalid="ignore"):
        puzzle_exact = puzzle_exact / puzzle_count
    return {"loss": loss_sum / max(count, 1.0), "exact": exact_sum / max(count, 1.0), "puzzle_exact": puzzle_exact}


# ---------------------------------------------------------------------------------------------
# evaluation with adaptation (training-time evals and evaluate_etrm.py)


def evaluate_with_tta(head: nn.Module, eval_split: ARCSplit, loader, evaluators: list, dist_info: DistInfo,
                      forward_dtype: str, out_dir: Path | None, step: int, tta: TTASettings | None,
                      settings: dict | None = None, max_eval_variants: int | None = None,
                      max_demos: int | None = None) -> dict[str, float]:
    """`run_evaluation`, after adapting a copy of `head` to the eval puzzles' demos when `tta` is
    active. The metrics (and out_dir/settings.json) then hold tta/<setting> and the cost
    (tta/wall_s, tta/steps_done, tta/samples_per_s, ...); with tta.save_weights the adapted model
    and context corrections go to out_dir/tta_adapted.pt. tta.predict=keep_solved: the puzzles that
    `head` already answers leave-one-out (`solved_puzzles`) are predicted by `head` itself, the
    others by the adapted copy (tta/kept_puzzles counts the first); pooled: `head`'s predictions of
    every sample vote beside the adapted copy's."""
    if tta is None or not tta.active:
        return run_evaluation(head, loader, evaluators, dist_info, forward_dtype, out_dir, step, settings=settings)
    # adapting re-seeds the global RNG (halting exploration): the training run that called this
    # evaluation must continue its own random streams afterwards, not replay the adaptation's seed
    saved_rng = rng_state()
    compiled = getattr(head, "_orig_mod", None)  # a torch.compile'd head: adapt the module, predict compiled
    solved = None
    try:
        if tta.predict == "keep_solved" or tta.puzzles == "unsolved":  # one judgement serves both
            solved = solved_puzzles(compiled or head, eval_split, dist_info, forward_dtype,
                                    tta.variants(max_eval_variants), max_demos)
        adapted, stats = adapt(compiled or head, eval_split, tta, dist_info, forward_dtype,
                               eval_variants=max_eval_variants, max_demos=max_demos, solved=solved)
    finally:
        set_rng_state(saved_rng)
    keep = (head, solved) if tta.predict == "keep_solved" else None
    if keep is not None:
        stats["tta/kept_puzzles"] = int(solved.sum())
    results = run_evaluation(torch.compile(adapted) if compiled is not None else adapted, loader, evaluators, dist_info,
                             forward_dtype, out_dir, step, settings=settings, extra_metrics=stats, keep=keep,
                             pool=head if tta.predict == "pooled" else None)
    if tta.save_weights and out_dir is not None and dist_info.is_main:
        state = {"model": adapted.head.model.state_dict(), "context_offsets": adapted.offsets.table.detach().cpu(),
                 "tta": dataclasses.asdict(tta)}
        atomic_write(Path(out_dir) / "tta_adapted.pt", lambda tmp: torch.save(state, tmp))
    return results
