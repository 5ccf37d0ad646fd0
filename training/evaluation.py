"""Evaluation: the one eval loop and its helpers, used by the trainer's evaluations, test-time
adaptation (training/tta.py) and the checkpoint evaluation (training/evaluate.py, evaluate_etrm.py).

- `run_until_halted`: run ACT steps on one batch until every sample has halted and keep each
  sample's outputs at its own halting step (the eval loop and TTA's leave-one-out fit both use it);
- `run_evaluation`: every eval batch through `run_until_halted`, the evaluators, and the eval folder
  written whole (`dataset/atomic.py`);
- `eval_settings` / `eval_folder_name`: what an evaluation computes, and the folder it writes;
- `to_device`, `autocast_for`, `reduce_metrics`: device moves, the autocast policy and the metric
  all-reduce, shared with the training step.

Imports nothing from the trainer or TTA (they import this module)."""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dataset.atomic import atomic_directory
from dataset.tokens import IGNORE_LABEL_ID
from models.recursive_reasoning.etrm import HOST_KEYS
from training.distributed import DistInfo, all_reduce_sum, gather_to_main
from training.host_copy import HostCopy
from training.preflight import eval_paths
from training.progress import Progress


# ---------------------------------------------------------------------------------------------
# helpers shared with the training step


def to_device(obj, device: torch.device):
    """Move tensors inside dicts / dataclasses (batches, ACT carries) to `device`. Copies to the GPU
    are asynchronous; copies back to the CPU are not (an asynchronous one hands back a tensor that
    may still be filling, which torch.save would write half-copied). HOST_KEYS stay on the host."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=device.type == "cuda")
    if isinstance(obj, dict):
        return {k: v if k in HOST_KEYS else to_device(v, device) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(obj, **{f.name: to_device(getattr(obj, f.name), device)
                                           for f in dataclasses.fields(obj) if f.name not in HOST_KEYS})
    return obj


def autocast_for(device: torch.device, forward_dtype: str):
    """bf16 autocast on CUDA when asked; the CPU path always runs float32."""
    if device.type == "cuda" and forward_dtype in ("bfloat16", "float16"):
        return torch.autocast("cuda", dtype=getattr(torch, forward_dtype))
    return contextlib.nullcontext()


def reduce_metrics(sums: dict[str, torch.Tensor], prefix: str, batch_size: int,
                   rank_means: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """One all-reduce for a step's metrics. `sums` come from the loss head: `*_loss` keys are sums
    over the batch (reported per sample), the rest sums over the samples that halted (reported
    per halted sample, with their `count`). `rank_means` are per-rank values averaged over ranks."""
    keys, mean_keys, stacked = reduce_metrics_on_device(sums, rank_means)
    return metrics_from_totals(keys, mean_keys, stacked.tolist(), prefix, batch_size)


def reduce_metrics_on_device(sums: dict[str, torch.Tensor], rank_means: dict[str, torch.Tensor] | None = None
                             ) -> tuple[list[str], list[str], torch.Tensor]:
    """The all-reduce of `reduce_metrics` without reading its result: (sum keys, rank-mean keys,
    the summed values as one device vector). `metrics_from_totals` turns its values into metrics."""
    rank_means = rank_means or {}
    keys, mean_keys = sorted(sums), sorted(rank_means)
    stacked = torch.stack([sums[k].detach().float() for k in keys] + [rank_means[k].detach().float() for k in mean_keys])
    return keys, mean_keys, all_reduce_sum(stacked)


def metrics_from_totals(keys: list[str], mean_keys: list[str], totals: list[float], prefix: str,
                        batch_size: int) -> dict[str, float]:
    """`reduce_metrics`' metrics from the host values of `reduce_metrics_on_device`'s vector."""
    values = dict(zip(keys, totals[:len(keys)]))
    count = values.pop("count", 0.0)
    # a step on which no sample halted has no accuracy or step count: leave those keys out rather
    # than logging zeros that would read as a collapse on the dashboard
    out = {f"{prefix}/{k}": v / batch_size if k.endswith("_loss") else v / count
           for k, v in values.items() if k.endswith("_loss") or count > 0}
    out[f"{prefix}/count"] = count
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    out.update({f"{prefix}/{k}": v / world for k, v in zip(mean_keys, totals[len(keys):])})
    return out


# ---------------------------------------------------------------------------------------------
# one batch, run to halting


def exact_match(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[B] bool: the prediction equals the label on every token the loss does not ignore."""
    return ((preds == labels) | (labels == IGNORE_LABEL_ID)).all(dim=-1)


@torch.no_grad()
def run_until_halted(head: nn.Module, batch: dict, forward_dtype: str, loss_fn=None) -> dict[str, torch.Tensor]:
    """Run ACT steps of `head` on `batch` from a fresh carry until every sample has halted (at most
    halt_max_steps; with eval_halting=q the Q head may halt a sample earlier) and return each
    sample's outputs at its own halting step: `preds` [B, S], `q_halt_logits` [B], `steps` [B],
    `exact` [B] (exact_match), and with `loss_fn` (per-token loss) `loss` [B], the mean token loss
    over the non-ignored tokens."""
    device = batch["inputs"].device
    labels = batch["labels"]
    carry = head.model.initial_carry(batch)
    done = torch.zeros(labels.shape[0], dtype=torch.bool, device=device)
    preds = torch.zeros_like(batch["inputs"])
    q_halt = torch.zeros(done.shape, device=device)
    steps = torch.zeros(done.shape, dtype=torch.int32, device=device)
    loss = torch.zeros(done.shape, device=device, dtype=torch.float64) if loss_fn is not None else None
    n_tokens = (labels != IGNORE_LABEL_ID).sum(-1).clamp_min(1)
    # eval_halting=max from a fresh carry: every sample halts at halt_max_steps, nothing to read
    every_sample_runs_max = not head.training and head.model.config.eval_halting == "max"
    all_done = HostCopy()
    for _ in range(head.model.config.halt_max_steps):
        with autocast_for(device, forward_dtype):
            carry, _, _, outputs, _ = head(carry, batch)
        newly = carry.halted & ~done
        preds = torch.where(newly[:, None], outputs["preds"], preds)
        q_halt = torch.where(newly, outputs["q_halt_logits"].float(), q_halt)
        steps = torch.where(newly, carry.steps.to(steps.dtype), steps)
        if loss is not None:
            loss = torch.where(newly, (loss_fn(outputs["logits"], labels).sum(-1) / n_tokens).to(loss.dtype), loss)
        done |= carry.halted
        if every_sample_runs_max:
            continue
        # the Q head may halt them all early: on a GPU read whether it did one step late (a copy
        # queued behind this step, read after the next one is queued), so the device never waits on the host
        if all_done.pending and bool(all_done.get().numpy()):  # a host tensor: no device read
            break
        all_done.start(done.all())
        if device.type != "cuda" and bool(all_done.get().numpy()):  # no queue to keep full: stop now
            break
    out = {"preds": preds, "q_halt_logits": q_halt, "steps": steps, "exact": exact_match(preds, labels)}
    if loss is not None:
        out["loss"] = loss
    return out


# ---------------------------------------------------------------------------------------------
# the eval loop


def _predict(head: nn.Module, batch: dict, forward_dtype: str, other: nn.Module | None,
             other_rows: np.ndarray | None) -> dict[str, torch.Tensor]:
    """`run_until_halted(head)`, with the rows `other_rows` marks taken from `other`'s run."""
    if other is None or not other_rows.any():
        return run_until_halted(head, batch, forward_dtype)
    kept = run_until_halted(other, batch, forward_dtype)
    if other_rows.all():
        return kept
    out = run_until_halted(head, batch, forward_dtype)
    rows = torch.from_numpy(other_rows).to(batch["inputs"].device)
    return {k: torch.where(rows.view(-1, *[1] * (v.dim() - 1)), kept[k], v) for k, v in out.items()}


@torch.no_grad()
def run_evaluation(head: nn.Module, loader, evaluators: list, dist_info: DistInfo, forward_dtype: str,
                   out_dir: Path | None, step: int, settings: dict | None = None,
                   show_progress: bool = True, extra_metrics: dict | None = None,
                   keep: tuple[nn.Module, np.ndarray] | None = None, pool: nn.Module | None = None
                   ) -> dict[str, float]:
    """Run every eval batch to halting (`run_until_halted`), feed the halting step's predictions to
    the evaluators, and return their metrics (rank 0). Rank 0 writes the evaluators' outputs and
    `settings.json` into `out_dir` as one folder, made whole beside it and then renamed into place:
    an evaluation replaces an older run of the same folder entirely, never in part.
    `keep` = (another head, [num puzzles] bool): the marked puzzles' samples are predicted by that
    head instead (test-time adaptation's tta.predict=keep_solved); a batch runs both heads only
    when it holds samples of both kinds. `pool`: every sample is also predicted by this head and
    both predictions go to the evaluators, which vote over them together (tta.predict=pooled;
    eval/exact_accuracy then counts both); `head`'s predictions alone are scored too, by a fresh copy
    of each evaluator (metrics `alone/<name>`, outputs in `<out_dir>/alone/`): the vote and the
    adapted weights alone from one run."""
    for h in (head, keep[0] if keep is not None else None, pool):
        if h is not None:
            h.eval()
    device = dist_info.device
    alone = [copy.copy(e) for e in evaluators] if pool is not None else []  # begin() gives each its own state
    for evaluator in alone:
        if hasattr(evaluator, "wandb_log"):
            evaluator.wandb_log = False  # the dashboard's report is the vote's
    for evaluator in evaluators + alone:
        evaluator.begin()
    exact_sum = torch.zeros((), device=device)
    valid_count = torch.zeros((), device=device)
    progress = Progress(len(loader), f"eval step {step}", enabled=show_progress and dist_info.is_main, unit="batch")
    for batch in loader:
        kept_rows = keep[1][batch["puzzle_index"].numpy()] if keep is not None else None  # host arrays: no sync
        batch = to_device(batch, device)
        valid = batch["valid"]
        outs = [_predict(head, batch, forward_dtype, keep[0] if keep is not None else None, kept_rows)]
        if pool is not None:
            outs.append(run_until_halted(pool, batch, forward_dtype))
        for i, out in enumerate(outs):
            exact_sum += (out["exact"] & valid).sum()
            valid_count += valid.sum()
            for evaluator in evaluators + (alone if i == 0 else []):
                evaluator.update(batch, {k: out[k] for k in ("preds", "q_halt_logits", "steps")})
        progress.update(1)
    progress.close()
    # exact accuracy of single augmented samples, before any voting
    exact_sum, valid_count = all_reduce_sum(torch.stack([exact_sum, valid_count]).float()).tolist()
    results = {"eval/exact_accuracy": exact_sum / max(valid_count, 1.0), "eval/count": valid_count,
               **(extra_metrics or {})}

    def collect(folder: Path | None) -> None:
        # evaluators never see ranks: each rank's samples are gathered here, rank 0 scores them all
        # with pool, the first head's predictions alone: metrics alone/<name>, outputs in <folder>/alone
        for evaluator, prefix in [(e, "") for e in evaluators] + [(e, "alone/") for e in alone]:
            parts = gather_to_main(evaluator.local_data())
            if parts is None:
                continue
            sub = folder / prefix if folder is not None and prefix else folder
            if sub is not folder:
                sub.mkdir(exist_ok=True)  # one folder for every evaluator's copy
            results.update({prefix + k: v for k, v in (evaluator.result(sub, step, parts) or {}).items()})

    if out_dir is not None and dist_info.is_main:
        with atomic_directory(out_dir, overwrite=True) as tmp:
            collect(tmp)
            record = {"step": step, "settings": settings or {}, "metrics": results}
            (tmp / "settings.json").write_text(json.dumps(record, indent=1, default=str))
    else:
        collect(None)
    return results


# ---------------------------------------------------------------------------------------------
# what an evaluation computes, and where it writes


# Config keys that change what an evaluation computes (its output folder and settings.json record them).
EVAL_SETTING_KEYS = ("max_eval_groups", "max_eval_variants", "max_demos", "eval_halting", "evaluators", "tta")
# short readable tags for a standalone evaluation's folder name (the hash covers everything else)
_NAME_TAGS = (("max_eval_groups", "g{}"), ("max_eval_variants", "v{}"), ("eval_halting", "halt-{}"))


def eval_settings(cfg: DictConfig, weights: str) -> dict:
    """What an evaluation of `cfg` computes: weights, eval data and every EVAL_SETTING_KEYS value."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {"weights": weights, "data_paths": eval_paths(cfg), **{k: resolved.get(k) for k in EVAL_SETTING_KEYS}}


def eval_folder_name(step: int, settings: dict, checkpoint_path: str | Path, overridden: dict) -> str:
    """A standalone evaluation's folder under <run_dir>/eval/ (the run's own evaluations write
    `step_N`): `step_N-<weights>[-g32][-v8][-halt-q][-tta-<mode>]-<hash8>`; the hash covers the
    checkpoint and every setting, so two evaluations share a folder only when they compute the
    same thing."""
    tags = [str(settings.get("weights", "ema"))]
    tags += [fmt.format(overridden[k]) for k, fmt in _NAME_TAGS if overridden.get(k) is not None]
    tta = settings.get("tta") or {}
    if isinstance(tta, dict) and tta.get("mode") not in (None, "none"):
        tags.append(f"tta-{tta['mode']}")
    blob = json.dumps({"checkpoint": str(Path(checkpoint_path).resolve()), "settings": settings},
                      sort_keys=True, default=str)
    return "-".join([f"step_{step}", *tags, hashlib.sha1(blob.encode()).hexdigest()[:8]])
