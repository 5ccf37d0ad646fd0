"""Data pipeline benchmark: build the arc1concept-aug-1000 recipe, then time the loaders.

    python -m bench.data_pipeline [--num-aug 1000] [--out DIR]
    python -m bench.data_pipeline --re-arc [--re-arc-tasks 400 --re-arc-examples 1000]

The build (train arc-agi-1:train + ConceptARC, eval arc-agi-1:eval) runs in a subprocess so
that its peak resident memory is measured. Targets: build < 60 s, < 200 MB on disk,
peak memory < 2 GiB. Prints a table and a final JSON line.

--re-arc: writes a RE-ARC-format folder (`make_re_arc`: tasks/<id>.json + metadata.json, random
grids with sides uniform in 1-30 as RE-ARC's default difficulty range draws them), builds it as
the train side (eval arc-agi-1:eval, so every example goes through the eval-twin check), then in a
fresh process loads it and runs the whole first epoch of the TrainLoader. Targets: build < 60 s,
loader memory (peak RSS of that process minus its RSS after imports) < 1 GiB.
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
RE_ARC_TARGETS = {"build_s": 60.0, "loader_rss_mb": 1024.0}


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def make_re_arc(path: Path, n_tasks: int, n_examples: int, seed: int = 0, max_side: int = 30) -> Path:
    """A folder in RE-ARC's layout: tasks/<8-hex id>.json (a flat list of {"input", "output"}) and
    metadata.json (per task: n_generations, ..., rng_difficulties and pso_difficulties, one per
    example). Grids are random, sides uniform in 1..max_side; outputs a transform of the input."""
    import numpy as np

    rng = np.random.default_rng(seed)
    (path / "tasks").mkdir(parents=True, exist_ok=True)
    metadata = {}
    for t in range(n_tasks):
        key = f"{t:08x}"
        examples = []
        for _ in range(n_examples):
            h, w = (int(x) for x in rng.integers(1, max_side + 1, 2))
            grid = rng.integers(0, 10, (h, w), dtype=np.int64)
            examples.append({"input": grid.tolist(), "output": np.rot90(grid, 1 + t % 3).tolist()})
        (path / "tasks" / f"{key}.json").write_text(json.dumps(examples))
        diff = rng.random(n_examples).round(4).tolist()
        metadata[key] = {"n_generations": n_examples, "n_verified": n_examples, "n_nondegenerate": n_examples,
                         "rng_difficulties": diff, "pso_difficulties": diff, "runtime": 0.0}
    (path / "metadata.json").write_text(json.dumps(metadata))
    return path


def run_build(out: Path, num_aug: int, conceptarc: Path, seed: int, train_sources: list[str] | None = None) -> dict:
    train_sources = train_sources or ["arc-agi-1:train", str(conceptarc)]
    cmd = [sys.executable, "-m", "dataset.build_arc_dataset",
           "--train-sources", *train_sources, "--eval-sources", "arc-agi-1:eval",
           "--output-dir", str(out), "--num-aug", str(num_aug), "--seed", str(seed), "--overwrite", "--no-progress"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)  # rusage of exactly this child
    seconds = time.perf_counter() - t0
    output = proc.stdout.read()
    proc.stdout.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"build failed:\n{output}")
    return {"build_s": seconds, "build_cpu_s": usage.ru_utime + usage.ru_stime,  # wall time under a shared CPU
            "size_mb": _dir_size(out) / 2**20, "peak_rss_mb": usage.ru_maxrss / 1024,
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


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def probe_pool_loader(out: Path, batch: int) -> dict:
    """(in a fresh process) Load the train split and run the TrainLoader through its first epoch:
    seconds and memory (peak RSS minus the RSS after imports)."""
    import resource

    from dataset import TrainLoader, load_split

    base = _rss_mb()
    t0 = time.perf_counter()
    train = load_split(str(out), "train")
    load_s = time.perf_counter() - t0
    loader = TrainLoader(train, batch, seed=0)
    t0 = time.perf_counter()
    n = 0
    while loader.epoch < 1:
        next(loader)
        n += 1
    epoch_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"load_s": load_s, "first_epoch_s": epoch_s, "first_epoch_batches": n,
            "samples_per_epoch": loader.samples_per_epoch, "pool_examples": train.num_pool_queries,
            "loader_rss_mb": peak - base, "examples_per_s": n * batch / epoch_s}


def run_re_arc(args) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="etrm-bench-rearc-"))
    try:
        src = Path(args.re_arc_data) if args.re_arc_data else tmp / "re_arc"
        if not (src / "tasks").is_dir():
            t0 = time.perf_counter()
            make_re_arc(src, args.re_arc_tasks, args.re_arc_examples, seed=args.seed)
            print(f"wrote {args.re_arc_tasks} x {args.re_arc_examples} RE-ARC-format examples to {src} "
                  f"({_dir_size(src) / 2**20:.0f} MB) in {time.perf_counter() - t0:.0f} s", flush=True)
        out = tmp / "rearc-ds"
        build = run_build(out, args.num_aug, Path(), args.seed, [f"re-arc:{src}"])
        proc = subprocess.run([sys.executable, "-m", "bench.data_pipeline", "--probe-pool-loader", str(out),
                               "--batch", str(args.batch)], cwd=REPO, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"loader probe failed:\n{proc.stdout}{proc.stderr}")
        loader = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(build.pop("build_output"))
    rows = [
        ("build time", f"{build['build_s']:.1f} s", f"< {RE_ARC_TARGETS['build_s']:.0f} s"),
        ("build CPU time (user + sys)", f"{build['build_cpu_s']:.1f} s", ""),
        ("load average (1 min) at the end", f"{os.getloadavg()[0]:.1f}", f"({os.cpu_count()} CPUs)"),
        ("size on disk", f"{build['size_mb']:.1f} MB", ""),
        ("build peak RSS", f"{build['peak_rss_mb']:.0f} MB", ""),
        ("split load", f"{loader['load_s']:.2f} s", ""),
        ("loader memory (peak RSS delta)", f"{loader['loader_rss_mb']:.0f} MB", f"< {RE_ARC_TARGETS['loader_rss_mb']:.0f} MB"),
        (f"first epoch ({loader['samples_per_epoch']} samples, batch {args.batch})", f"{loader['first_epoch_s']:.1f} s", ""),
        ("train loader", f"{loader['examples_per_s']:.0f} ex/s", ""),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{'metric':<{width}}  {'value':>14}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>14}  {target}")
    ok = build["build_s"] < RE_ARC_TARGETS["build_s"] and loader["loader_rss_mb"] < RE_ARC_TARGETS["loader_rss_mb"]
    print(json.dumps({"mode": "re-arc", "tasks": args.re_arc_tasks, "examples": args.re_arc_examples,
                      "num_aug": args.num_aug, **build, **loader, "batch": args.batch, "targets_met": ok}))
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.data_pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-aug", type=int, default=1000)
    ap.add_argument("--out", default=None, help="keep the dataset here (default: a temp dir, removed afterwards)")
    ap.add_argument("--conceptarc", default=str(DEFAULT_CONCEPTARC))
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--batch", type=int, default=256, help="global batch size for the loader timings")
    ap.add_argument("--batches", type=int, default=20, help="batches timed per loader")
    ap.add_argument("--re-arc", action="store_true", help="the RE-ARC pool mode (see above)")
    ap.add_argument("--re-arc-tasks", type=int, default=400)
    ap.add_argument("--re-arc-examples", type=int, default=1000)
    ap.add_argument("--re-arc-data", default=None, help="RE-ARC folder to build (written there first if it has no tasks/)")
    ap.add_argument("--probe-pool-loader", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe_pool_loader:
        print(json.dumps(probe_pool_loader(Path(args.probe_pool_loader), args.batch)))
        return 0
    if args.re_arc:
        return run_re_arc(args)

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
