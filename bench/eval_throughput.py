"""Eval throughput: a model over the full ARC-AGI-1 evaluation set with all its variants.

    python -m bench.eval_throughput [--arch-config cfg_pretrain_etrm_arc_agi_1 | --preset tiny]
        [--data DIR | --num-aug 1000] [--batch 32] [--batches 2] [--device cpu|cuda]
        [--dtype float32|bfloat16] [--padded] [--compile] [--evaluator-full] [--threads 2]

The model (random weights: speed only) is a bench preset (bench/common.py; default tiny) or, with
--arch-config, the `arch` of that Hydra config (the paper-size model of the job files:
cfg_pretrain_etrm_arc_agi_1). The eval split is --data's, or arc-agi-1:eval built with --num-aug
variants per puzzle into a temp dir.

The loop is the one eval loop, `run_evaluation` (training/evaluation.py) with the ARC evaluator: every
sample runs halt_max_steps ACT steps in eval mode, no grad, autocast to --dtype on CUDA (CPU runs
float32, as in training). Only --batches batches, spread evenly over the split, are timed after a
warm-up of two ACT steps on the first of them: examples/s is MEASURED on them (loader, model and
evaluator together), the time for the whole split is EXTRAPOLATED. The evaluator's own share is
its update() time per sample (measured) times the split, plus result(): measured on the whole
split with --evaluator-full (the measured batches' predictions repeated over every sample of the
split; CPU only), else extrapolated from the measured batches. FLOPs: one eval ACT step counted
on the first timed batch (torch.utils.flop_counter) times the ACT steps; `floor_s` is the whole
split's FLOPs at the FLOP/s of a plain matmul of the same dtype and shape [B*(P+S), H] @ [H, 6H]
timed in this process.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import (PRESETS, add_device_args, flop_counter, fmt_table, matmul_flops_per_s, model_config, sync,
                          use_device_args)

REPO = Path(__file__).resolve().parents[1]


class TimedEvaluator:
    """Wraps an evaluator and adds up the wall time of its update() and result() calls."""

    def __init__(self, inner):
        self.inner = inner
        self.update_s = self.result_s = 0.0
        self.last_outputs: dict | None = None

    def begin(self) -> None:
        self.inner.begin()

    def update(self, batch: dict, outputs: dict) -> None:
        t0 = time.perf_counter()
        self.inner.update(batch, outputs)
        self.update_s += time.perf_counter() - t0
        self.last_outputs = {k: v.detach().cpu() for k, v in outputs.items()}

    def local_data(self):
        return self.inner.local_data()

    def result(self, run_dir, step: int, parts=None):
        t0 = time.perf_counter()
        out = self.inner.result(run_dir, step, parts)
        self.result_s += time.perf_counter() - t0
        return out


class BatchSlice:
    """The eval loader's batches `indices`, timing their assembly. `on_progress(samples, seconds)`
    is called whenever a batch has been fully processed (when the next one is asked for), so a
    run stopped half-way still leaves a rate behind."""

    def __init__(self, loader, indices: list[int], on_progress=None):
        self.loader, self.indices = loader, list(indices)
        self.on_progress = on_progress or (lambda n, s: None)
        self.assemble_s = 0.0

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        t0, done = time.perf_counter(), 0
        for b in self.indices:
            if done:
                self.on_progress(done, time.perf_counter() - t0)
            t1 = time.perf_counter()
            batch = self.loader.batch(b)
            self.assemble_s += time.perf_counter() - t1
            yield batch
            done += int(batch["valid"].sum())


def build_model(arch_config: str | None, preset: str, split, batch: int, packed: bool):
    """(loss head, model config dict) on CPU, seeded."""
    torch.manual_seed(0)
    if arch_config:
        from training import build
        from training.config_schema import compose_config
        cfg = compose_config(arch_config, [f"arch.encoder_packed={str(packed).lower()}"])
        kwargs = build.model_kwargs(cfg, split, batch)
        _, head = build.build_model(cfg, kwargs)
        return head, kwargs
    from bench.common import build_head
    cfg = model_config(preset, batch, split.max_demos, encoder_packed=packed)
    return build_head(cfg), cfg


def evaluator_full_pass(split, loader, outputs: dict, run_dir: Path) -> dict:
    """The ARC evaluator over every sample of the split, `outputs` (one batch's preds, q_halt_logits,
    steps) repeated in turn: its update + result cost at full scale, model excluded."""
    from evaluators.arc import ARC
    ev = ARC(split)
    preds, q, steps = (outputs[k].numpy() for k in ("preds", "q_halt_logits", "steps"))
    B, n = loader.local_batch_size, len(preds)
    t0 = time.perf_counter()
    for b in range(len(loader)):
        rows = b * B + np.arange(B)
        valid = rows < loader.num_samples
        rows = np.where(valid, rows, 0)
        take = rows % n
        ev.update({"variant_index": loader.sample_variant[rows], "query_index": loader.sample_query[rows],
                   "valid": valid}, {"preds": preds[take], "q_halt_logits": q[take], "steps": steps[take]})
    update_s = time.perf_counter() - t0
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    metrics = ev.result(str(run_dir), 0)
    return {"full_evaluator_update_s": update_s, "full_evaluator_result_s": time.perf_counter() - t0,
            "full_evaluator_samples": int(metrics["ARC/num_samples"])}


def run(arch_config: str | None = None, preset: str = "tiny", data: str | None = None, num_aug: int = 1000,
        batch: int = 32, batches: int = 2, device: str = "cpu", dtype: str = "float32", padded: bool = False,
        compile: bool = False, evaluator_full: bool = False, record=None, save_outputs: Path | None = None) -> dict:
    """Measure; `record(dict)` (optional) receives the results as they come; `save_outputs` keeps
    the last measured batch's outputs (torch.save) for a later evaluator_full_pass."""
    from dataset import EvalLoader, load_split
    from evaluators.arc import ARC
    from training.distributed import DistInfo
    from training.evaluation import autocast_for, run_evaluation

    record = record or (lambda d: None)
    res: dict = {"arch_config": arch_config, "preset": None if arch_config else preset, "batch": batch,
                 "device": device, "dtype": dtype, "compile": compile, "layout": "padded" if padded else "packed"}
    tmp = Path(tempfile.mkdtemp(prefix="etrm-evalbench-"))
    try:
        if data is None:
            data = str(tmp / "arc1-eval")
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dataset.build_arc_dataset", "--eval-sources", "arc-agi-1:eval",
                            "--output-dir", data, "--num-aug", str(num_aug), "--no-progress"],
                           cwd=REPO, check=True, capture_output=True)
            res["build_s"] = time.perf_counter() - t0
        split = load_split(data, "eval")
        loader = EvalLoader(split, batch)
        head, cfg = build_model(arch_config, preset, split, batch, not padded)
        head = head.to(device).eval()
        steps = int(cfg["halt_max_steps"])
        forward_dtype = dtype if device == "cuda" else "float32"
        res.update(eval_samples_total=loader.num_samples, act_steps=steps, hidden_size=cfg["hidden_size"],
                   L_cycles=cfg["L_cycles"], H_cycles=cfg["H_cycles"], encoder_type=cfg["encoder_type"],
                   params_total=sum(p.numel() for p in head.parameters()))
        record(res)
        head_run = torch.compile(head) if compile else head
        dev = torch.device(device)
        full = max(1, loader.num_samples // batch)  # the last batch may be part padding: not timed
        indices = sorted({min(full - 1, int((i + 0.5) * full / batches)) for i in range(batches)})  # evenly spread

        # warm-up: two ACT steps on the first timed batch (compiles with --compile)
        first = {k: v.to(dev) for k, v in loader.batch(indices[0]).items()}
        t0 = time.perf_counter()
        with torch.no_grad(), autocast_for(dev, forward_dtype):
            carry = head_run.model.initial_carry(first)
            for _ in range(2):
                carry, *_ = head_run(carry, first)
        sync(device)
        res["warmup_s"] = time.perf_counter() - t0

        timed = TimedEvaluator(ARC(split))
        total = loader.num_samples

        def progress(n_done: int, sec: float) -> None:
            res.update(partial_examples=n_done, partial_s=sec, partial_extrapolated_full_eval_s=total * sec / n_done)
            record(res)
        batches_it = BatchSlice(loader, indices, progress)
        t0 = time.perf_counter()
        run_evaluation(head_run, batches_it, [timed], DistInfo(0, 1, 0, dev), forward_dtype, tmp / "run", 0,
                       show_progress=False)
        sync(device)
        sec = time.perf_counter() - t0
        n = int(sum(min(batch, loader.num_samples - b * batch) for b in indices))
        rate = n / sec
        upd_per_sample = timed.update_s / n
        res.update(measured_batches=indices, measured_examples=n, measured_s=sec, examples_per_s=rate,
                   extrapolated_full_eval_s=total / rate, loader_assemble_s=batches_it.assemble_s,
                   evaluator_update_s=timed.update_s, evaluator_result_s=timed.result_s,
                   evaluator_share=(upd_per_sample * total + timed.result_s * total / n) / (total / rate))
        record(res)
        if save_outputs is not None and timed.last_outputs is not None:
            torch.save(timed.last_outputs, save_outputs)

        # FLOPs of one eval ACT step (eager), and the matmul reference
        with torch.no_grad(), autocast_for(dev, forward_dtype), flop_counter() as fc:
            head(head.model.initial_carry(first), first)
        flops_sample = fc.get_total_flops() / first["inputs"].shape[0] * steps
        H, tokens = cfg["hidden_size"], batch * (cfg["puzzle_emb_len"] + cfg["seq_len"])
        mm = matmul_flops_per_s(tokens, H, 6 * H, device, dtype if device == "cuda" else "float32")
        res.update(gflop_per_sample=flops_sample / 1e9, matmul_tflops_per_s=mm / 1e12,
                   floor_s=flops_sample * total / mm, utilisation=flops_sample * rate / mm)
        record(res)

        if evaluator_full and timed.last_outputs is not None:
            full = evaluator_full_pass(split, loader, timed.last_outputs, tmp / "full")
            full["evaluator_share"] = (full["full_evaluator_update_s"] + full["full_evaluator_result_s"]) / (total / rate)
            res.update(full)
            record(res)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.eval_throughput", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch-config", default=None, help="use the arch of this Hydra config (e.g. cfg_pretrain_etrm_arc_agi_1)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--data", default=None, help="a built dataset dir with an eval split (default: build one)")
    ap.add_argument("--num-aug", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=2)
    add_device_args(ap)
    ap.add_argument("--padded", action="store_true", help="padded encoder layout (the baseline)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the loss head")
    ap.add_argument("--evaluator-full", action="store_true", help="time the evaluator on every sample of the split")
    args = ap.parse_args(argv)
    use_device_args(args)
    r = run(args.arch_config, args.preset, args.data, args.num_aug, args.batch, args.batches, args.device, args.dtype,
            args.padded, args.compile, args.evaluator_full)
    model = args.arch_config or f"{args.preset} preset"
    print(f"{model} (hidden {r['hidden_size']}, H_cycles {r['H_cycles']}, L_cycles {r['L_cycles']}, {r['encoder_type']}), "
          f"ARC-AGI-1 eval: {r['eval_samples_total']} samples (variant x test input), {r['act_steps']} ACT steps each; "
          f"{args.device} {args.dtype}, batch {args.batch}{', compiled' if args.compile else ''}")
    rows = [["examples/s (MEASURED on %d examples)" % r["measured_examples"], f"{r['examples_per_s']:.2f}"],
            ["full eval set (EXTRAPOLATED)", f"{r['extrapolated_full_eval_s'] / 60:.1f} min"],
            ["evaluator share of it", f"{r['evaluator_share']:.1%}"],
            ["FLOP floor at the matmul rate", f"{r['floor_s'] / 60:.1f} min"],
            ["utilisation (model FLOP/s / matmul FLOP/s)", f"{r['utilisation']:.2f}"]]
    if "build_s" in r:
        rows.append(["eval dataset build", f"{r['build_s']:.1f} s"])
    print(fmt_table(["metric", "value"], rows))
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
