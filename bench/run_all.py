"""Run every speed bench, one after another, and write their tables and a JSON file.

    python -m bench.run_all [--quick] [--device cpu|cuda] [--dtype float32|bfloat16] [--skip NAME ...]

Benches (each in its own process, OMP_NUM_THREADS=--threads):
  train_step   bench.train_step --compare for every preset (padded vs packed encoder, side by side)
  padding      bench.padding: padding fractions, inner-canvas options, encoder/step speedups
  throughput   bench.throughput: samples/s, tokens/s, peak memory, utilisation ratio
  eval         bench.eval_throughput: tiny model over ARC-AGI-1 eval with all variants (extrapolated)
  data         bench.data_pipeline: dataset build time, size, loader throughput

Writes bench/results/run_all-<timestamp>.{txt,json} (bench/results/ is git-ignored). --quick uses
fewer repeats and a smaller eval subset (numbers are noisier).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "bench" / "results"
PRESET_REPEATS = {"tiny": 3, "paper": 2, "hybrid_standard": 1, "hybrid_variational": 1}


def _run(cmd: list[str], env: dict, log) -> dict | None:
    log("$ python " + " ".join(cmd[1:]))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    text = proc.stdout.strip()
    log(text if text else "(no output)")
    if proc.returncode not in (0, 1) or not text:
        log(f"[failed rc={proc.returncode}]\n{proc.stderr[-3000:]}")
        return None
    log(f"[{time.perf_counter() - t0:.0f} s]\n")
    try:
        return json.loads(text.splitlines()[-1])
    except json.JSONDecodeError:
        return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip", nargs="*", default=[], choices=("train_step", "padding", "throughput", "eval", "data"))
    args = ap.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    txt = open(OUT / f"run_all-{stamp}.txt", "w")

    def log(s: str) -> None:
        print(s, flush=True)
        txt.write(s + "\n")
        txt.flush()

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(REPO))
    py = [sys.executable, "-m"]
    common = ["--device", args.device, "--dtype", args.dtype]
    results: dict = {"device": args.device, "dtype": args.dtype, "threads": args.threads, "started": stamp}
    if "train_step" not in args.skip:
        results["train_step"] = {}
        for preset, reps in PRESET_REPEATS.items():
            reps = 1 if args.quick else reps
            results["train_step"][preset] = _run(py + ["bench.train_step", "--preset", preset, "--compare",
                                                       "--repeats", str(reps), "--threads", str(args.threads)] + common,
                                                 env, log)
    if "padding" not in args.skip:
        results["padding"] = _run(py + ["bench.padding", "--threads", str(args.threads),
                                        "--repeats", "1" if args.quick else "2"], env, log)
    if "throughput" not in args.skip:
        results["throughput"] = _run(py + ["bench.throughput", "--threads", str(args.threads),
                                           "--repeats", "1" if args.quick else "2"] + common, env, log)
    if "eval" not in args.skip:
        results["eval_throughput"] = _run(py + ["bench.eval_throughput", "--threads", str(args.threads),
                                                "--batches", "1" if args.quick else "2"] + common, env, log)
    if "data" not in args.skip:
        results["data_pipeline"] = _run(py + ["bench.data_pipeline"], env, log)
    path = OUT / f"run_all-{stamp}.json"
    path.write_text(json.dumps(results, indent=1))
    log(f"wrote {path} and {path.with_suffix('.txt')}")
    txt.close()
    print(json.dumps({"json": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
