"""Data pipeline benchmark: build the arc1concept-aug-1000 recipe, then time the loaders.

    python -m bench.data_pipeline [--num-aug 1000] [--out DIR]

The build (train arc-agi-1:train + ConceptARC, eval arc-agi-1:eval) runs in a subprocess so
that its peak resident memory is measured. Targets: build < 60 s, < 200 MB on disk,
peak memory < 2 GiB. Prints a table and a final JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONCEPTARC = REPO.parent / "shared" / "data" / "ConceptARC" / "corpus"
TARGETS = {"build_s": 60.0, "size_mb": 200.0, "peak_rss_mb": 2048.0}


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run_build(out: Path, num_aug: int, conceptarc: Path, seed: int) -> dict:
    cmd = [sys.executable, "-m", "dataset.build_arc_dataset",
           "--train-sources", "arc-agi-1:train", str(conceptarc), "--eval-sources", "arc-agi-1:eval",
           "--output-dir", str(out), "--num-aug", str(num_aug), "--seed", str(seed), "--overwrite", "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of exactly this child
    seconds = time.perf_counter() - t0
    output = proc.stdout.read()
    proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build failed:\n{output}")
    return {"build_s": seconds, "size_mb": _dir_size(out) / 2**20, "peak_rss_mb": usage.ru_maxrss / 1024,
            "build_output": output.strip()}


def time_loaders(out: Path, batch: int, batches: int) -> dict:
    from dataset import EvalLoader, TrainLoader, load_split

    t0 = time.perf_counter()
    train, evaluation = load_split(str(out), "train"), load_split(str(out), "eval")
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    train.canvases(), train.query_tables(train.max_demos)
    evaluation.canvases(), evaluation.query_tables(evaluation.max_demos)
    cache_s = time.perf_counter() - t0
    res = {"load_s": load_s, "cache_s": cache_s, "train_samples_per_epoch": train.num_queries,
           "eval_samples": None, "train_variants": train.num_variants, "eval_variants": evaluation.num_variants}
    for name, loader in (("train", TrainLoader(train, batch, seed=0)), ("eval", EvalLoader(evaluation, batch))):
        it = iter(loader)
        next(it)  # warm-up
        t0 = time.perf_counter()
        for _ in range(batches):
            next(it)
        res[f"{name}_examples_per_s"] = batches * batch / (time.perf_counter() - t0)
        if name == "eval":
            res["eval_samples"] = loader.num_samples
    translated = TrainLoader(train, batch, seed=0)
    translated.translate = True
    next(translated)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(translated)
    res["train_translate_examples_per_s"] = batches * batch / (time.perf_counter() - t0)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.data_pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-aug", type=int, default=1000)
    ap.add_argument("--out", default=None, help="keep the dataset here (default: a temp dir, removed afterwards)")
    ap.add_argument("--conceptarc", default=str(DEFAULT_CONCEPTARC))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch", type=int, default=256, help="global batch size for the loader timings")
    ap.add_argument("--batches", type=int, default=20, help="batches timed per loader")
    args = ap.parse_args(argv)

    tmp = None
    if args.out:
        out = Path(args.out)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="etrm-bench-"))
        out = tmp / f"arc1concept-aug-{args.num_aug}"
    try:
        build = run_build(out, args.num_aug, Path(args.conceptarc), args.seed)
        loaders = time_loaders(out, args.batch, args.batches)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    print(build.pop("build_output"))
    rows = [
        ("build time", f"{build['build_s']:.1f} s", f"< {TARGETS['build_s']:.0f} s"),
        ("size on disk", f"{build['size_mb']:.1f} MB", f"< {TARGETS['size_mb']:.0f} MB"),
        ("build peak RSS", f"{build['peak_rss_mb']:.0f} MB", f"< {TARGETS['peak_rss_mb']:.0f} MB"),
        ("split load", f"{loaders['load_s']:.2f} s", ""),
        ("canvas cache", f"{loaders['cache_s']:.2f} s", ""),
        (f"train loader (batch {args.batch})", f"{loaders['train_examples_per_s']:.0f} ex/s", ""),
        (f"train + translate (batch {args.batch})", f"{loaders['train_translate_examples_per_s']:.0f} ex/s", ""),
        (f"eval loader (batch {args.batch})", f"{loaders['eval_examples_per_s']:.0f} ex/s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'metric':<{width}}  {'value':>14}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>14}  {target}")
    ok = all(build[k] < v for k, v in TARGETS.items())
    print(json.dumps({"num_aug": args.num_aug, **build, **loaders, "batch": args.batch, "targets_met": ok}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
