"""Host syncs per training step and per eval batch, and the data wait per step, of the real trainer.

A host sync is a point where the Python thread reads a device value (`.item()`, `.tolist()`,
`bool(t)`, `float(t)`, `.cpu()`, `.numpy()`, `nonzero`, a boolean-mask index, ...): on a GPU each
one drains the queue and leaves the GPU idle while the host catches up. On CPU there is no queue,
so they are counted by intercepting those calls on the main thread while `training.trainer.train`
runs (with --device cuda, torch's sync debug mode is used as well, which also catches what the
interception cannot see). Reads of host-side numpy arrays are not syncs and are not counted.

Data wait: the seconds the main thread spends getting the next training batch (assembly on the
main thread today; a wait on the prefetch queue when batches are assembled on a worker thread),
against the seconds of the whole step.

    python -m bench.host_syncs                      # tiny model on a 6x6 ARC-AGI-1 build (built if absent)
    python -m bench.host_syncs --preset paper --data /path/to/arc1-dataset --steps 4 --batch 16
    python -m bench.host_syncs --rows standard      # one row only (rows: standard, demo_attention, map_read, tta, curriculum, recipe)
    python -m bench.host_syncs --preset paper --data DIR --rows standard --host-plan-only --no-eval --steps 5 --batch 4

Rows: the standard model, with `arch.demo_attention`, with `arch.map_read`, with test-time
adaptation (`tta=context`: syncs per adaptation step), with `curriculum.mode=progress` (its
weights updated every 5 steps), and with the small-scale recipe's options (`recipe`: the cell lookup,
the answer's size and their grid features). Each row runs twice in the same process:
with the host's packing plan (the batches' `demo_lengths`) and without it (the key dropped from
every batch, so the model reads the device for its plans: the code before the plan moved to the host).
Prints one table and the call sites of what remains; with --json, writes it all as JSON.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from bench.common import recipe_arch

REPO = Path(__file__).resolve().parents[1]

# the paper preset's arch (bench/common.py PRESETS["paper"]) as trainer overrides
PAPER_ARCH = {"arch.hidden_size": 512, "arch.num_heads": 8, "arch.H_cycles": 3, "arch.L_cycles": 4,
              "arch.encoder_num_layers": 2, "arch.puzzle_emb_len": 16, "arch.halt_max_steps": 16}
TINY_ARCH = {"arch.hidden_size": 32, "arch.num_heads": 2, "arch.H_cycles": 2, "arch.L_cycles": 1,
             "arch.puzzle_emb_len": 4, "arch.halt_max_steps": 3}


class SyncCounter:
    """Counts host syncs on the main thread by phase ("train", "eval", "other"), with the caller's
    file:line of each, while installed (a context manager)."""

    # `.numpy()` is left out: it only works on CPU tensors, whose device read was the `.cpu()` before it
    METHODS = ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "nonzero")

    def __init__(self):
        self.phase = "other"
        self.counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self._main = threading.get_ident()
        self._inside = False
        self.overlapped: collections.Counter = collections.Counter()
        self._saved: list[tuple[object, str, object]] = []

    def _where(self) -> str:
        for frame in reversed(traceback.extract_stack(limit=12)[:-2]):
            if str(REPO) in frame.filename and "bench/host_syncs.py" not in frame.filename:
                return f"{Path(frame.filename).relative_to(REPO)}:{frame.lineno}"
        return "?"

    def record(self, what: str) -> None:
        if self._inside or threading.get_ident() != self._main:
            return
        self._inside = True  # a sync point that calls another one counts once
        try:
            self.counts[self.phase][f"{what} @ {self._where()}"] += 1
        finally:
            self._inside = False

    def _wrap(self, owner, name: str, test=None) -> None:
        original = getattr(owner, name)
        counter = self

        def wrapped(*args, **kwargs):
            if test is None or test(*args, **kwargs):
                counter.record(name)
            return original(*args, **kwargs)

        self._saved.append((owner, name, original))
        setattr(owner, name, wrapped)

    def __enter__(self):
        for m in self.METHODS:
            self._wrap(torch.Tensor, m)
        self._wrap(torch, "nonzero")
        self._wrap(torch, "masked_select")
        for name in ("equal", "allclose", "unique"):  # each returns a host value or a data-sized tensor
            self._wrap(torch, name)
        self._wrap(torch.Tensor, "unique")
        self._wrap(torch.cuda, "synchronize")
        from training.host_copy import HostCopy  # a wait on a copy queued a step earlier: counted apart
        original_get, counter = HostCopy.get, self

        def get(host_copy):
            if threading.get_ident() == counter._main:
                counter.overlapped[counter.phase] += 1
            return original_get(host_copy)

        self._saved.append((HostCopy, "get", original_get))
        HostCopy.get = get

        def bool_index(self_, index, *rest):  # t[mask] with a bool tensor: a nonzero inside
            items = index if isinstance(index, tuple) else (index,)
            return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)

        self._wrap(torch.Tensor, "__getitem__", bool_index)
        self._wrap(torch.Tensor, "__setitem__", bool_index)
        return self

    def __exit__(self, *exc):
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)
        self._saved.clear()

    def total(self, phase: str) -> int:
        return sum(self.counts[phase].values())


def build_tiny_data(out: Path) -> Path:
    if not (out / "metadata.json").is_file():
        subprocess.run([sys.executable, "-m", "dataset.build_arc_dataset", "--train-sources", "arc-agi-1:train",
                        "--eval-sources", "arc-agi-1:eval", "--output-dir", str(out), "--max-grid-size", "6",
                        "--num-aug", "2", "--seed", "0"], cwd=REPO, check=True, capture_output=True)
    return out


# the rows of the table: config overrides on top of the preset (tta: its batch is the training batch)
ROWS = {"standard": {}, "demo_attention": {"arch.demo_attention": "true"}, "map_read": {"arch.map_read": "true"},
        "tta": {"tta": "context", "tta.steps": 6, "tta.fit_variants": 0},
        # sampling by learning progress: one read of the groups' sums per curriculum.interval steps
        "curriculum": {"curriculum.mode": "progress", "curriculum.interval": 5},
        # the small-scale recipe's model options (config/experiment/synthetic.yaml): its grid reads
        "recipe": {f"arch.{k}": v for k, v in recipe_arch(sizes=True).items()}}
# device reads a row adds per forward by design: the recipe's two component labellings (the cell
# lookup's features, the answer's size; models/grid_features.py component_labels) each test
# convergence once
LABELLING_READS_PER_FORWARD = {"recipe": 2}


def measure(data: Path, run_dir: Path, arch: dict, steps: int, batch: int, log_interval: int, eval_batches: int,
            device: str, extra: dict | None = None, host_plan: bool = True) -> dict:
    """Train `steps` steps (then the final eval over `eval_batches` batches, after test-time
    adaptation when `extra` turns it on) with every sync point counted, and return the per-step,
    per-eval-batch and per-adaptation-step numbers. `host_plan=False` drops `demo_lengths` from
    every batch (the model then reads its packing plans from the device)."""
    from hydra import compose, initialize_config_dir

    from training import evaluation, trainer, tta

    overrides = {"data_paths": f"[{data}]", "build_if_missing": "null", "run_dir": str(run_dir), **arch,
                 "arch.halt_exploration_prob": 0.1, "global_batch_size": batch, "eval_global_batch_size": batch,
                 "max_steps": steps, "eval_interval": "null", "max_eval_variants": 1, "max_eval_groups": eval_batches * batch,
                 "lr_warmup_steps": 2, "wandb_mode": "disabled", "log_interval": log_interval, "device": device,
                 "arch.forward_dtype": "float32", "tta.global_batch_size": batch, **(extra or {})}
    with initialize_config_dir(config_dir=str(REPO / "config"), version_base=None):
        cfg = compose(config_name="cfg_pretrain_etrm_tiny", overrides=[f"{k}={v}" for k, v in overrides.items()])

    counter = SyncCounter()
    timing = {"data_s": [], "step_s": [], "eval_batches": 0}
    loaders = _loader_classes()
    originals = {cls: cls.__next__ for cls in loaders}
    step_clock = {"last": None}

    def planless(b: dict) -> dict:
        return b if host_plan else {k: v for k, v in b.items() if k != "demo_lengths"}

    def timed_next(self):
        if threading.get_ident() != counter._main:  # the prefetch worker's assembly: timed, not a wait of the step
            start = time.perf_counter()
            try:
                return planless(originals[type(self)](self))
            finally:
                timing.setdefault("assembly_s", []).append(time.perf_counter() - start)
        if type(self) not in timing.setdefault("outer", {type(self)}):
            return planless(originals[type(self)](self))  # TTA's loader
        start = time.perf_counter()
        if step_clock["last"] is not None:  # one step = from one batch request to the next
            timing["step_s"].append(start - step_clock["last"])
        step_clock["last"] = start
        counter.phase = "data"
        try:
            return planless(originals[type(self)](self))
        finally:
            timing["data_s"].append(time.perf_counter() - start)
            counter.phase = "train"

    real_eval = evaluation.run_evaluation

    def counted_eval(head, loader, *a, **kw):
        counter.phase = "eval"
        step_clock["last"] = None

        class Counted:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                for b in loader:
                    timing["eval_batches"] += 1
                    yield planless(b)

        try:
            return real_eval(head, Counted(), *a, **kw)
        finally:
            counter.phase = "other"

    real_adapt, real_adapt_step = tta.adapt, tta.adaptation_step

    def counted_adapt(*a, **kw):  # test-time adaptation: its own phase, syncs per adaptation step
        before, counter.phase = counter.phase, "tta"
        try:
            return real_adapt(*a, **kw)
        finally:
            counter.phase = before

    def counted_adapt_step(*a, **kw):
        timing["tta_steps"] = timing.get("tta_steps", 0) + 1
        return real_adapt_step(*a, **kw)

    patches = [(cls, "__next__", timed_next) for cls in loaders]
    patches += [(mod, "run_evaluation", counted_eval) for mod in _modules_with("run_evaluation", real_eval)]
    patches += [(tta, "adapt", counted_adapt), (tta, "adaptation_step", counted_adapt_step)]
    saved = [(o, n, getattr(o, n)) for o, n, _ in patches]
    debug = contextlib.nullcontext()
    cuda_warnings: collections.Counter = collections.Counter()
    if device == "cuda":  # torch's own count: every synchronizing CUDA call warns, whatever reached it
        import warnings
        debug = warnings.catch_warnings()
        shown = warnings.showwarning

        def showwarning(message, *a, **kw):
            if "synchroniz" in str(message) and threading.get_ident() == counter._main:
                cuda_warnings[counter.phase] += 1
            else:
                shown(message, *a, **kw)

        warnings.showwarning = showwarning
        torch.cuda.set_sync_debug_mode("warn")
    try:
        for o, n, v in patches:
            setattr(o, n, v)
        with counter, debug:
            if device == "cuda":
                import warnings
                warnings.simplefilter("always")
                warnings.showwarning = showwarning
            trainer.train(cfg)
    finally:
        for o, n, v in saved:
            setattr(o, n, v)
        if device == "cuda":
            torch.cuda.set_sync_debug_mode(0)
    n_steps = len(timing["data_s"])
    log_steps = len([s for s in range(1, steps + 1) if s % log_interval == 0 or s == steps])
    data_s = sum(timing["data_s"][1:]) / max(1, n_steps - 1)  # the first batch also builds the canvas cache
    step_s = sum(timing["step_s"]) / max(1, len(timing["step_s"]))
    return {
        "steps": n_steps, "log_steps": log_steps, "log_interval": log_interval,
        "train_syncs": counter.total("train"), "train_syncs_per_step": counter.total("train") / max(1, n_steps),
        "train_overlapped_reads_per_step": counter.overlapped["train"] / max(1, n_steps),
        "eval_batches": timing["eval_batches"], "eval_syncs": counter.total("eval"),
        "eval_syncs_per_batch": counter.total("eval") / max(1, timing["eval_batches"]),
        "cuda_sync_warnings_per_step": cuda_warnings["train"] / max(1, n_steps) if device == "cuda" else None,
        "cuda_sync_warnings_per_eval_batch": (cuda_warnings["eval"] / max(1, timing["eval_batches"])
                                              if device == "cuda" else None),
        "data_wait_ms_per_step": 1e3 * data_s, "step_ms": 1e3 * step_s,
        # batch assembly on the prefetch worker (the first also builds the canvas cache)
        "assembly_ms_per_batch": 1e3 * sum(timing.get("assembly_s", [0.0])[1:]) / max(1, len(timing.get("assembly_s", [])) - 1),
        "data_wait_frac": data_s / step_s if step_s else float("nan"),
        "tta_steps": timing.get("tta_steps", 0), "tta_syncs": counter.total("tta"),
        "tta_syncs_per_step": counter.total("tta") / timing["tta_steps"] if timing.get("tta_steps") else None,
        "train_sites": dict(counter.counts["train"].most_common()),
        "eval_sites": dict(counter.counts["eval"].most_common()),
        "tta_sites": dict(counter.counts["tta"].most_common()),
    }


def _loader_classes() -> list:
    import dataset.loader
    classes = [dataset.loader.TrainLoader]
    try:
        from dataset.prefetch import Prefetcher
        classes.append(Prefetcher)
    except ImportError:
        pass
    return classes


def _modules_with(name: str, fn) -> list:
    return [m for m in list(sys.modules.values()) if m is not None and getattr(m, name, None) is fn]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=("tiny", "paper"), default="tiny")
    ap.add_argument("--data", type=Path, default=None, help="dataset dir (default: a 6x6 ARC-AGI-1 build in /tmp)")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--log-interval", type=int, default=4)
    ap.add_argument("--eval-batches", type=int, default=3)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of {','.join(ROWS)}")
    ap.add_argument("--host-plan-only", action="store_true", help="skip the rows' runs without the host plan")
    ap.add_argument("--no-eval", action="store_true", help="no evaluation after training (evaluators=[]): "
                    "the data wait of a paper-size CPU run without its 16-ACT-step eval")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        ap.error(f"--rows: unknown {unknown}; choose from {list(ROWS)}")
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    import tempfile
    data = args.data or build_tiny_data(Path(tempfile.gettempdir()) / "etrm-host-syncs-arc1-6x6")
    arch = PAPER_ARCH if args.preset == "paper" else TINY_ARCH
    results = {}
    for row in rows:
        for host_plan in (True,) if args.host_plan_only else (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                results[f"{row}{'' if host_plan else ' (no host plan)'}"] = measure(
                    data, Path(tmp) / "run", arch, args.steps, args.batch, args.log_interval, args.eval_batches,
                    args.device, {**ROWS[row], **({"evaluators": "[]"} if args.no_eval else {})}, host_plan=host_plan)
    first = next(iter(results.values()))
    print(f"host syncs, {args.preset} preset, batch {args.batch}, {first['steps']} steps, log_interval "
          f"{first['log_interval']} ({first['log_steps']} log steps), {args.device}; 'no host plan': the batches "
          f"without demo_lengths (the model reads its packing plans from the device, as before the host plan)")
    print(f"  {'row':34s} {'train/step':>10s} {'overlapped':>10s} {'eval/batch':>10s} {'tta/step':>9s} "
          f"{'data wait of step (ms)':>24s} {'assembly (ms)':>14s}")
    for name, r in results.items():
        tta_col = f"{r['tta_syncs_per_step']:9.2f}" if r["tta_syncs_per_step"] is not None else f"{'-':>9s}"
        print(f"  {name:34s} {r['train_syncs_per_step']:10.2f} {r['train_overlapped_reads_per_step']:10.2f} "
              f"{r['eval_syncs_per_batch']:10.2f} {tta_col} {r['data_wait_ms_per_step']:10.2f} of {r['step_ms']:10.1f} "
              f"{r['assembly_ms_per_batch']:14.2f}")
    print("  overlapped: reads of a copy queued a step earlier (training/host_copy.py), which leave the device's queue full;"
          " assembly: a batch's assembly on the prefetch worker, overlapped with the step")
    for name, r in results.items():
        if name.endswith("(no host plan)"):
            continue
        for phase in ("train", "eval", "tta"):
            for site, n in r[f"{phase}_sites"].items():
                print(f"    {name:16s} {phase:5s} {n:5d}  {site}")
    if args.json:
        from dataset.atomic import atomic_write_text
        atomic_write_text(args.json, json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
