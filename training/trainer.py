"""The training loop: one forward per batch with the ACT carry persisting across batches.

Read top to bottom: set-up (distributed, data, model, optimizer, resume), then the loop
(forward, backward, skip non-finite updates, clip, step, EMA, metrics), evaluations and
checkpoints at their intervals, and a final evaluation + checkpoint.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from dataset import EvalLoader, TrainLoader
from dataset.atomic import atomic_write_text
from dataset.prefetch import Prefetcher
from training import build, checkpoint, preflight, run_identity
from training.curriculum import CurriculumSettings, build_curriculum
from training.distributed import (DistInfo, barrier, broadcast_object, init_distributed, is_distributed, shutdown,
                                  training_module)
from training.evaluation import (autocast_for, eval_settings, metrics_from_totals, reduce_metrics_on_device,
                                 to_device)
from training.host_copy import HostCopy
from training.metrics_logger import MetricsLogger, resolve_wandb_mode
from training.optim import EMA, build_optimizer, clipped_step_on_device, lr_at
from training.preemption import LoopControl, Preempted, restore_signal_handlers
from training.progress import Progress
from training.tta import TTASettings, evaluate_with_tta

log = logging.getLogger("etrm")
# the step's guards, counted on the device and read at log steps and checkpoints (trainer_state["counters"])
GUARD_COUNTERS = ("nonfinite_total", "nonfinite_in_a_row", "low_var_in_a_row")


# ---------------------------------------------------------------------------------------------
# small helpers


def cross_sample_variance(context: torch.Tensor) -> torch.Tensor:
    """Variance of the encoder's context over the batch, averaged over positions and channels:
    near 0 means every puzzle gets the same context (the collapse the public ETRM run hit)."""
    return context.detach().float().var(dim=0, unbiased=False).mean()


def grad_norms(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(encoder_norm, inner_norm) of the current gradients."""
    encoder, inner = [], []
    for name, p in model.named_parameters():
        if p.grad is not None:
            (encoder if name.startswith("encoder.") else inner).append(p.grad)

    def norm(grads):
        if not grads:
            return torch.zeros((), device=next(model.parameters()).device)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)).float())

    return norm(encoder), norm(inner)


def training_eval_variants(cfg: DictConfig, final: bool) -> int | None:
    """Variants per puzzle an evaluation reads: `max_eval_variants` (null: all) for the final one,
    at most `train_eval_max_variants` for those during training (null: as the final one)."""
    full, during = cfg.get("max_eval_variants"), cfg.get("train_eval_max_variants")
    if final or during is None:
        return full
    return int(during) if full is None else min(int(during), int(full))


def learning_summary(step: int, recent: list[dict], results: dict, note: str | None) -> str:
    """A few lines at the end of a run saying what was learned: train accuracy over the last
    steps (weighted by the samples that halted), the held-out scores, and what to expect at this
    config's scale (`summary_note`)."""
    count = sum(r.get("train/count", 0.0) for r in recent)

    def mean(key):
        return sum(r.get(key, 0.0) * r.get("train/count", 0.0) for r in recent) / count if count else float("nan")

    lines = [f"what was learned, after {step} steps:",
             f"  train (last {len(recent)} steps, {int(count)} samples halted): exact accuracy "
             f"{mean('train/exact_accuracy'):.3f}, token accuracy {mean('train/accuracy'):.3f}"]
    if "ARC/pass@2" in results:
        lines.append(f"  held-out eval ({int(results.get('ARC/num_puzzles', 0))} puzzles, "
                     f"{int(results.get('ARC/num_samples', 0))} augmented samples voted): pass@2 "
                     f"{results['ARC/pass@2']:.3f}, task_pass@2 {results.get('ARC/task_pass@2', 0.0):.3f}; "
                     f"single-sample exact accuracy {results.get('eval/exact_accuracy', 0.0):.3f}")
    else:
        lines.append("  held-out eval: none ran (no evaluators configured)")
    if note:
        lines.append("  " + " ".join(str(note).split()))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# training


def train(cfg: DictConfig, config_name: str | None = None) -> dict[str, float]:
    """Train (or resume) the run `cfg` describes. `config_name` (the Hydra config's name) is part
    of the run's identity (training/run_identity.py)."""
    dist_info = init_distributed(cfg.device, cfg.get("dist_timeout_minutes"))
    try:
        return _train(cfg, config_name, dist_info)
    finally:
        restore_signal_handlers()
        shutdown()


def _train(cfg: DictConfig, config_name: str | None, dist_info: DistInfo) -> dict[str, float]:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO if dist_info.is_main else logging.WARNING)  # one rank logs
    device, rank, world_size = dist_info.device, dist_info.rank, dist_info.world_size
    project, run_name, run_dir = run_identity.run_identity(cfg, config_name)
    # resume: an explicit checkpoint, else the newest complete one in run_dir. Checked against this
    # command's config before any data or model work (a changed config must not resume silently).
    # Rank 0 reads the file system and decides for every rank (a stale cache must not split them).
    checkpoint.require_shared_run_dir(run_dir, rank)
    ckpt_path = broadcast_object(cfg.get("load_checkpoint") or checkpoint.latest_checkpoint(run_dir) if rank == 0 else None)
    config_changes = run_identity.check_resume_compatible(cfg, ckpt_path) if ckpt_path else []

    # --- data (validated before any model work) ---
    preflight.require(preflight.batch_checks(cfg, world_size))  # the datasets: ensure_dataset below
    if not ckpt_path:  # a resumed run does not read init_weights again
        preflight.require(preflight.init_weights_checks(cfg))
    gbs = int(cfg.global_batch_size)
    eval_gbs = preflight.eval_global_batch(cfg, world_size, device.type)
    tta = TTASettings.from_config(cfg.get("tta"), world_size)
    preflight.require(preflight.curriculum_checks(cfg))
    curriculum_settings = CurriculumSettings.from_config(cfg.get("curriculum"))
    build.ensure_dataset(cfg, dist_info.is_main)
    barrier()
    train_split, eval_split = build.load_data(cfg)
    train_loader = TrainLoader(train_split, gbs, rank=rank, world_size=world_size, seed=int(cfg.seed),
                               max_demos=cfg.get("max_demos"))
    curriculum = build_curriculum(curriculum_settings, train_split, device, int(cfg.seed))  # None: every puzzle group alike (training/curriculum.py)
    # evaluations during training read each puzzle's first train_eval_max_variants variants; the
    # final one reads max_eval_variants (all by default): training_eval_variants
    eval_loaders = {final: EvalLoader(eval_split, eval_gbs, rank=rank, world_size=world_size,
                                      max_eval_groups=cfg.get("max_eval_groups"),
                                      max_variants=training_eval_variants(cfg, final), max_demos=cfg.get("max_demos"))
                    for final in (False, True)}
    steps_per_epoch = train_loader.samples_per_epoch / gbs
    total_steps = max(1, int(cfg.epochs * steps_per_epoch))
    if cfg.get("max_steps"):
        total_steps = min(total_steps, int(cfg.max_steps))
    eval_every = max(1, round(cfg.eval_interval * steps_per_epoch)) if cfg.get("eval_interval") else total_steps

    # --- model, optimizer, EMA (same init on every rank) ---
    torch.manual_seed(int(cfg.seed))
    kwargs = build.model_kwargs(cfg, train_split, gbs // world_size)
    model, head = build.build_model(cfg, kwargs)
    if cfg.get("load_pretrained_decoder"):
        from models.pretrained import load_pretrained_decoder
        load_pretrained_decoder(model, cfg.load_pretrained_decoder)
    model.to(device)
    optimizer = build_optimizer(model, float(cfg.lr), float(cfg.beta1), float(cfg.beta2), float(cfg.weight_decay))
    ema = EMA(model, float(cfg.ema_rate)) if cfg.ema else None
    forward_dtype = cfg.arch.forward_dtype

    # --- resume: an explicit checkpoint, else the newest complete one in run_dir ---
    step, carry, counters = 0, None, dict.fromkeys(GUARD_COUNTERS, 0)
    torch.manual_seed(int(cfg.seed) * 1000 + rank)  # per-rank stream for halting exploration
    state = checkpoint.load_for_resume(run_dir, cfg.get("load_checkpoint"), rank, map_location=device) if ckpt_path else None
    if state is not None:
        ckpt_path = state["path"]  # an unreadable newest one falls back to the previous (load_for_resume)
        build.check_data_fits(state["trainer_state"].get("model_kwargs", {}), train_split, f"checkpoint {ckpt_path}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None and state["ema"] is not None:
            ema.load_state_dict(state["ema"])
        ts = state["trainer_state"]
        step = int(ts["step"])
        counters.update(ts.get("counters", {}))
        if ts.get("world_size") == world_size and state["per_rank"] is not None:
            train_loader.load_state_dict(state["per_rank"]["loader"])
            checkpoint.set_rng_state(state["per_rank"]["rng"])
            carry = to_device(state["per_rank"]["carry"], device)
            if curriculum is not None and state["per_rank"].get("curriculum_sums") is not None:
                curriculum.load_rank_state(state["per_rank"]["curriculum_sums"])
        else:
            train_loader.load_state_dict(ts["loader"])
        if curriculum is not None and ts.get("curriculum") is not None:
            curriculum.load_state_dict(ts["curriculum"])
        log.info("resumed from %s at step %d", ckpt_path, step)
    elif cfg.get("init_weights"):  # a new run from another run's weights: step 0, new optimizer
        source = build.init_from_checkpoint(model, cfg.init_weights, train_split)
        ema = EMA(model, float(cfg.ema_rate)) if cfg.ema else None  # the average starts from them too
        log.info("initialised from %s", source)

    # DDP, then compile over it (overlap of the gradient all-reduce with backward: training_module)
    train_head = training_module(head, device, bool(cfg.compile), bool(cfg.arch.get("context_ablation", False)))
    eval_head = build.loss_head(cfg, ema.model) if ema is not None else head
    if cfg.compile:  # compiled once here, reused by every evaluation (the EMA's weights change in place)
        eval_head = torch.compile(eval_head)
    encoder_params = [p for n, p in model.named_parameters() if n.startswith("encoder.")]

    # --- run directory, config, logging (rank 0 only) ---
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if dist_info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_text = OmegaConf.to_yaml(cfg, resolve=True)
        if ckpt_path is None:  # a fresh run: the config its checkpoints will be trained with
            atomic_write_text(run_dir / "config.yaml", config_text)
        elif config_changes:  # allowed change: config.yaml stays what the checkpoints were trained with
            changed = run_dir / f"config.resumed-step_{step}.yaml"
            atomic_write_text(changed, config_text)
            log.warning("resuming with a changed config (allow_config_change=true): %s; written to %s",
                        "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in config_changes), changed)
    barrier()
    mode = resolve_wandb_mode(cfg.get("wandb_mode"))
    logger = MetricsLogger(run_dir, project, run_name, resolved, mode, enabled=dist_info.is_main)
    evaluators = build.build_evaluators(cfg, eval_split, wandb_log=logger.wandb_run is not None)
    n_params = sum(p.numel() for p in model.parameters())
    group = f"{torch.distributed.get_backend()}, DDP" if is_distributed() else "no process group"
    log.info("run %s/%s -> %s | %d ranks (%s) on %s | %.2fM params (encoder %.2fM) | %d steps (%.1f per epoch), eval every %d",
             project, run_name, run_dir, world_size, group, device, n_params / 1e6,
             sum(p.numel() for p in encoder_params) / 1e6, total_steps, steps_per_epoch, eval_every)

    def save(at_step: int) -> None:
        if guards_read_at != at_step:  # read at checkpoints (a log step just read them)
            counters.update(zip(GUARD_COUNTERS, (int(v) for v in guards.tolist())))
        if counters["nonfinite_in_a_row"]:
            log.warning("step %d: no checkpoint while updates are being skipped as non-finite", at_step)
            return
        trainer_state = {"step": at_step, "total_steps": total_steps, "world_size": world_size,
                         "loader": train_iter.state_dict(), "counters": counters, "model_kwargs": kwargs,
                         "project_name": project, "run_name": run_name,
                         "curriculum": curriculum.state_dict() if curriculum is not None else None}
        shared = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "trainer_state": trainer_state,
                  "config_yaml": OmegaConf.to_yaml(cfg, resolve=True)}
        if ema is not None:
            shared["ema"] = ema.state_dict()
        per_rank = {"rng": checkpoint.rng_state(), "loader": train_iter.state_dict(),
                    "carry": to_device(carry, torch.device("cpu")) if carry is not None else None,
                    "curriculum_sums": curriculum.rank_state() if curriculum is not None else None}
        path = checkpoint.save_checkpoint(run_dir, at_step, rank, shared, per_rank, int(cfg.checkpoint_keep_last))
        control.saved()
        log.info("checkpoint %s", path)

    settings = eval_settings(cfg, weights="ema" if ema is not None else "model")

    def evaluate(at_step: int, final: bool) -> dict:
        variants = training_eval_variants(cfg, final)
        results = evaluate_with_tta(eval_head, eval_split, eval_loaders[final], evaluators, dist_info, forward_dtype,
                                    run_dir / "eval" / f"step_{at_step}", at_step, tta,
                                    settings=dict(settings, max_eval_variants=variants, final=final),
                                    max_eval_variants=variants, max_demos=cfg.get("max_demos"))
        results["eval/max_variants"] = float(variants or 0)  # 0: every variant
        if dist_info.is_main:
            logger.log(results, at_step)
            shown = {k: round(v, 4) for k, v in results.items() if "pass@" in k or k.endswith("exact_accuracy")}
            log.info("eval at step %d: %s", at_step, shown)
        return results

    # --- the loop ---
    if curriculum is not None:  # weighted draws, with the schedule a resumed run had (before any batch is made)
        curriculum.attach(train_loader)
    # batches assembled on a worker thread (pinned with CUDA); its state is that of the consumed batches
    prefetch_depth = 2
    train_iter = Prefetcher(train_loader, depth=prefetch_depth, pin=device.type == "cuda")
    progress = Progress(total_steps, run_name, enabled=dist_info.is_main, initial=step)
    # the end-of-run summary's window: the log steps' records of the run's last tenth
    recent = collections.deque(maxlen=max(1, total_steps // 10 // int(cfg.log_interval)))
    results: dict[str, float] = {}
    tick = time.perf_counter()
    halted_copy = HostCopy()  # the carry's halted mask, copied to the host one step ahead of its use
    if carry is not None:
        halted_copy.start(carry.halted)
    guards = torch.tensor([float(counters[k]) for k in GUARD_COUNTERS], device=device)  # on the device between reads
    guards_read_at = step if state is not None else -1  # the step whose guards `counters` holds
    reported_nonfinite, collapse_warned = counters["nonfinite_total"], counters["low_var_in_a_row"] >= int(cfg.collapse_patience)
    # optional wall-clock budget (benchmarks): training time, evaluations excluded; the LR schedule
    # follows whichever of steps or time is further along, so the cosine ends at the deadline
    budget_s = float(cfg.max_train_minutes) * 60 if cfg.get("max_train_minutes") else None
    train_seconds = 0.0
    stop_signal = 0
    control = LoopControl(cfg.get("checkpoint_interval_minutes"), cfg.get("max_train_minutes"), dist_info.is_main)
    control.__enter__()  # signal handlers: only flags (training/preemption.py); restored below
    while step < total_steps:
        step_start = time.perf_counter()
        head.train()
        batch = to_device(next(train_iter), device)
        if carry is None:
            carry = head.model.initial_carry(batch)
        elif halted_copy.pending:  # which slots take this batch's rows: the packing plan is made on the host
            carry = dataclasses.replace(carry, host_halted=halted_copy.get())
        sched_step = step
        if budget_s is not None and step >= int(cfg.lr_warmup_steps):
            warm = int(cfg.lr_warmup_steps)
            sched_step = max(step, warm + int(min(1.0, train_seconds / budget_s) * (total_steps - warm)))
        lr = lr_at(sched_step, float(cfg.lr), int(cfg.lr_warmup_steps), total_steps, float(cfg.lr_min_ratio))
        for group in optimizer.param_groups:
            group["lr"] = lr

        with autocast_for(device, forward_dtype):
            carry, loss, metrics, outputs, _ = train_head(carry, batch)
        if curriculum is not None:  # the halted samples' accuracy by group, summed on the device
            curriculum.observe_outputs(carry.current_data["puzzle_index"], outputs)
        # the loss is a sum over this rank's samples; DDP averages over ranks -> grads of sum / global batch
        (loss / train_loader.local_batch_size).backward()

        encoder_norm, inner_norm = grad_norms(model)
        total_norm = torch.sqrt(encoder_norm ** 2 + inner_norm ** 2)
        # nothing of this step is read on the host until the log step: metrics, the skip decision
        # and the guards' counters stay on the device (one read per log interval)
        keys, mean_keys, totals = reduce_metrics_on_device(
            dict(metrics, total_loss=loss.detach()),
            rank_means={"encoder_cross_sample_var": cross_sample_variance(outputs["context"])})
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        # the loss summed over ranks decides (every rank skips alike), with the norm of the reduced grads
        ok = clipped_step_on_device(optimizer, grads, total_norm, float(cfg.grad_clip_norm or 0.0),
                                    totals[keys.index("total_loss")])
        if ema is not None:
            ema.update(model, ok)
        # a skipped step's latents may hold NaN: every slot restarts from fresh data (as a fresh carry)
        carry = dataclasses.replace(carry, halted=carry.halted | ~ok)
        halted_copy.start(carry.halted)  # read at the next step, after the optimizer's work is queued
        skipped = (~ok).float()
        # collapse guard: the public ETRM encoder ended with nearly the same context for every puzzle
        var = totals[len(keys) + mean_keys.index("encoder_cross_sample_var")] / world_size
        low = (var < float(cfg.collapse_var_threshold)).float()
        guards = torch.stack([guards[0] + skipped, (guards[1] + 1) * skipped, (guards[2] + 1) * low])
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if curriculum is not None and step % curriculum.settings.interval == 0:
            # one read of the groups' sums; the weights go to the first block the prefetcher has not planned
            curriculum_metrics = curriculum.update()
            block = curriculum.schedule_in(train_loader, train_iter.state_dict(), prefetch_depth + 2)
            if dist_info.is_main:
                logger.log(curriculum_metrics, step)
                log.debug("curriculum at step %d: weights from block %d, %.1f effective groups", step, block,
                          curriculum_metrics["curriculum/effective_groups"])

        if step % int(cfg.log_interval) == 0 or step == total_steps:
            values = torch.cat([totals, torch.stack([encoder_norm, inner_norm, total_norm]).float(), guards]).tolist()
            n = len(keys) + len(mean_keys)
            reduced = metrics_from_totals(keys, mean_keys, values[:n], "train", gbs)
            encoder_norm_v, inner_norm_v, total_norm_v = values[n:n + 3]
            counters.update(zip(GUARD_COUNTERS, (int(v) for v in values[n + 3:])))
            guards_read_at = step
            if counters["nonfinite_total"] > reported_nonfinite:
                log.warning("step %d: %d non-finite losses or gradient norms so far, their updates skipped (%d in a row)",
                            step, counters["nonfinite_total"], counters["nonfinite_in_a_row"])
                reported_nonfinite = counters["nonfinite_total"]
            if counters["nonfinite_in_a_row"] >= int(cfg.max_nonfinite_in_a_row):
                raise RuntimeError(f"{counters['nonfinite_in_a_row']} non-finite updates in a row at step {step}: stopping. "
                                   f"The last good checkpoint in {run_dir / 'checkpoints'} is intact; lower lr or check the data.")
            collapsed = counters["low_var_in_a_row"] >= int(cfg.collapse_patience)
            if collapsed and not collapse_warned:
                log.warning("encoder collapse? train/encoder_cross_sample_var=%.3g has stayed below %.3g for %d steps",
                            reduced["train/encoder_cross_sample_var"], cfg.collapse_var_threshold,
                            counters["low_var_in_a_row"])
            collapse_warned = collapsed
            if dist_info.is_main:
                now = time.perf_counter()
                reduced.update({"train/lr": lr, "grad/encoder_norm": encoder_norm_v, "grad/inner_norm": inner_norm_v,
                                "grad/total_norm": total_norm_v, "train/nonfinite_skipped": counters["nonfinite_total"],
                                "train/encoder_collapse_warning": float(collapsed), "train/epoch": step / steps_per_epoch,
                                "train/steps_per_s": int(cfg.log_interval) / max(now - tick, 1e-9)})
                tick = now
                logger.log(reduced, step)
                progress.set_postfix(loss=f"{reduced['train/total_loss']:.3f}",
                                     exact=f"{reduced.get('train/exact_accuracy', 0):.2f}")
            # the end-of-run summary's window holds the log steps' records
            recent.append({k: reduced[k] for k in ("train/count", "train/exact_accuracy", "train/accuracy") if k in reduced})
        progress.update(1)

        train_seconds += time.perf_counter() - step_start
        # every rank takes the same decision at the same step (rank 0's clock, any rank's signal)
        stop_signal, minutes_due, out_of_time = control.decide(train_seconds)
        if out_of_time and step < total_steps:
            log.info("max_train_minutes=%s reached after %d steps: final evaluation", cfg.max_train_minutes, step)
            total_steps = step
        if stop_signal:
            log.warning("signal %d received: checkpoint at step %d, then exit", stop_signal, step)
            save(step)
            break
        last = step == total_steps
        eval_due = step % eval_every == 0 or last
        # the checkpoint comes before the evaluation: an evaluation that crashes loses no training
        if (eval_due and (cfg.checkpoint_every_eval or last)) or minutes_due or \
                (cfg.get("checkpoint_interval") and step % int(cfg.checkpoint_interval) == 0):
            save(step)
        if eval_due and evaluators:
            results = evaluate(step, final=last)
    control.__exit__()
    progress.close()
    train_iter.close()
    if stop_signal:
        logger.close()
        raise Preempted(stop_signal, step)
    if step > 0 and broadcast_object(not (run_dir / "checkpoints" / f"step_{step}").exists() if rank == 0 else None):
        save(step)  # resumed at the very end: still leave a final checkpoint
    logger.close()
    if dist_info.is_main:
        log.info("done: %d steps. Outputs in %s (config.yaml, metrics.jsonl, checkpoints/, eval/)", step, run_dir)
        log.info("%s", learning_summary(step, list(recent), results, cfg.get("summary_note")))
    return results
