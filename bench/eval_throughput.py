"""Eval throughput: the tiny model over the full ARC-AGI-1 evaluation set with all its variants.

    python -m bench.eval_throughput [--num-aug 1000] [--batch 32] [--batches 2] [--threads 2]
                                    [--device cpu|cuda] [--dtype float32|bfloat16] [--padded]

Builds arc-agi-1:eval with --num-aug variants per puzzle (a temp dir), then runs the tiny
preset's model (bench/common.py; random weights: speed only) the way training/trainer.py's
run_evaluation does: every sample runs halt_max_steps (16) ACT steps in eval mode, no grad.
Only --batches batches are timed: examples/s is MEASURED on that subset, and the time for the
whole split (every variant of every test input) is EXTRAPOLATED from it.
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

import torch

from bench.common import autocast, build_head, fmt_table, model_config, set_threads, sync

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.eval_throughput", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-aug", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--padded", action="store_true", help="padded encoder layout (the baseline)")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        set_threads(args.threads)

    from dataset import EvalLoader, load_split
    tmp = Path(tempfile.mkdtemp(prefix="etrm-evalbench-"))
    try:
        out = tmp / "arc1-eval"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dataset.build_arc_dataset", "--eval-sources", "arc-agi-1:eval",
                        "--output-dir", str(out), "--num-aug", str(args.num_aug), "--no-progress"],
                       cwd=REPO, check=True, capture_output=True)
        build_s = time.perf_counter() - t0
        split = load_split(str(out), "eval")
        loader = EvalLoader(split, args.batch)
        cfg = model_config("tiny", args.batch, split.max_demos, encoder_packed=not args.padded)
        head = build_head(cfg, args.device).eval()
        steps = cfg["halt_max_steps"]

        def run_batch(batch):
            batch = {k: v.to(args.device) for k, v in batch.items()}
            with torch.inference_mode(), autocast(args.device, args.dtype):
                carry = head.initial_carry(batch)
                for _ in range(steps):
                    carry, _, _, outputs, _ = head(carry, batch)
            sync(args.device)
            return outputs["preds"]

        run_batch(loader.batch(0))  # warm-up
        t0 = time.perf_counter()
        n = 0
        for b in range(args.batches):
            batch = loader.batch(1 + b)
            run_batch(batch)
            n += int(batch["valid"].sum())
        sec = time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    rate = n / sec
    total = loader.num_samples
    res = {"measured_examples": n, "measured_s": sec, "examples_per_s": rate, "eval_samples_total": total,
           "extrapolated_full_eval_s": total / rate, "num_aug": args.num_aug, "batch": args.batch,
           "act_steps": steps, "build_s": build_s, "layout": "padded" if args.padded else "packed"}
    print(f"tiny model, ARC-AGI-1 eval, {args.num_aug} aug: {total} samples (variant x test input), "
          f"{steps} ACT steps each; {args.device} {args.dtype}")
    print(fmt_table(["metric", "value"], [
        ["examples/s (MEASURED on %d examples)" % n, f"{rate:.2f}"],
        ["full eval set (EXTRAPOLATED)", f"{total / rate / 3600:.1f} h"],
        ["eval dataset build", f"{build_s:.1f} s"],
    ]))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
