"""Time one ETRM training step and one eval step on a real ARC-AGI-1 batch.

    python -m bench.train_step --preset tiny|paper|hybrid_standard|hybrid_variational
        [--batch B] [--device cpu|cuda] [--dtype float32|bfloat16] [--max-demos 10]
        [--padded] [--compare] [--arch KEY=VALUE ...|recipe] [--repeats N] [--threads 2] [--compile]
        [--utilisation] [--train-only]

Presets (bench/common.py PRESETS: the model defaults of ETRMConfig with a few changes; 30x30
canvas): paper = the defaults (hidden 512, 8 heads, H_cycles 3, L_cycles 6, L_layers 2, standard
encoder 2 layers, puzzle_emb_len 16), batch 2; tiny = hidden 64, 4 heads, H_cycles 2, L_cycles 2,
encoder 1 layer, batch 8; hybrid_standard / hybrid_variational = paper with that encoder at 4
layers (kl_weight 1e-4). (Before the presets were tied to the defaults, paper had L_cycles 4.)

The batch: the first B tasks of ARC-AGI-1 training (sorted by id), all their demos (up to
--max-demos), their first test pair as the query. Training step = fresh carry, one ACT step
through ACTLossHead, backward (no optimizer). Eval step = one ACT step in eval mode, no grad.
Median of --repeats runs after a warm-up; the first call is timed on its own (`first_call_s`:
with --compile it holds the compilation).

--padded runs the padded encoder layout (every demo slot at 2 x 900 tokens, masked as keys: the
baseline); the default packs each real demo pair to its own tokens (same math). --compare runs
both on the same model weights, side by side (packed first: the padded layout's large
allocations slow down whatever runs after it in the process), and prints the speedups.
--arch KEY=VALUE ... also times the preset with those model options (e.g. `--arch map_read=true`,
`--arch demo_attention=true`; `--arch recipe`: the small-scale recipe's options, read from
config/experiment/synthetic.yaml, the preset's sizes kept) in the same process and layout, after the preset, on the same batch, and
prints the cost ratio (CPU peak memory is the process's peak RSS, so the later row is the larger).
--utilisation adds the step's model FLOP/s over a plain matmul's FLOP/s timed in this process
(bench/common.py `utilisation`). Peak memory: torch's max allocated on CUDA (per layout), the
process's peak RSS on CPU. The last line printed is JSON with train_ms, eval_ms, samples_per_s,
peak_mib, params_total (and the utilisation keys when asked).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time

import torch
import yaml

from bench.common import (PRESETS, add_device_args, arc_batch, build_head, eval_step, fmt_table, model_config,
                          peak_memory_mib, recipe_arch, reset_peak_memory, sync, time_fn, train_step, use_device_args,
                          utilisation)
from models.recursive_reasoning.etrm import ETRMConfig


def measure(head, batch, device: str, dtype: str, repeats: int, packed: bool, train_only: bool = False) -> dict:
    head.model.set_encoder_packing(packed)
    reset_peak_memory(device)
    t0 = time.perf_counter()
    train_step(head, batch, device, dtype)  # compiles with --compile
    sync(device)
    first = time.perf_counter() - t0
    warmup = 1 if device == "cuda" else 0  # the first call warmed up the CPU; CUDA's allocator and autotuning settle later
    train_s = time_fn(lambda: train_step(head, batch, device, dtype), repeats=repeats, warmup=warmup, device=device)
    B = batch["inputs"].shape[0]
    out = {"train_ms": 1000 * train_s, "samples_per_s": B / train_s, "first_call_s": first,
           "peak_mib": peak_memory_mib(device)}
    if not train_only:
        out["eval_ms"] = 1000 * time_fn(lambda: eval_step(head, batch, device, dtype), repeats=repeats, device=device)
    return out


def parse_arch_option(text: str) -> list[tuple[str, object]]:
    """'key=value' -> [(key, value parsed as YAML: 'true' -> True, '16' -> 16)]; 'recipe' -> the
    small-scale recipe's model options (config/experiment/synthetic.yaml, bench/common.py recipe_arch)."""
    if text == "recipe":
        return list(recipe_arch().items())
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--arch expects KEY=VALUE or recipe, got {text!r}")
    return [(key, yaml.safe_load(value))]


def run(preset: str, batch_size: int | None = None, device: str = "cpu", dtype: str = "float32", max_demos: int = 10,
        repeats: int = 3, layouts: tuple[str, ...] = ("packed",), compile: bool = False, train_only: bool = False,
        with_utilisation: bool = False, variant: dict | None = None) -> dict:
    """Measure `preset` in each encoder layout ("packed", "padded"); utilisation on the first.
    `variant` (model options): also the preset with those options, in the first layout, as layout
    "variant", and its cost ratios to the first layout in out["variant"]."""
    if variant:  # checked before anything is timed
        unknown = sorted(set(variant) - {f.name for f in dataclasses.fields(ETRMConfig)})
        if unknown:
            raise ValueError(f"--arch {unknown}: not fields of ETRMConfig (models/recursive_reasoning/etrm.py)")
    batch_size = batch_size or PRESETS[preset]["batch"]
    batch = {k: v.to(device) for k, v in arc_batch(batch_size, max_demos).items()}
    cfg = model_config(preset, batch_size, max_demos)
    head = build_head(cfg, device)
    # attribute look-ups (initial_carry, model) reach the wrapped head through the compiled one
    head_run = torch.compile(head) if compile else head
    out = {"preset": preset, "batch": batch_size, "device": device, "dtype": dtype, "compile": compile,
           "params_total": sum(p.numel() for p in head.parameters()), "layouts": {}}
    for name in layouts:
        out["layouts"][name] = measure(head_run, batch, device, dtype, repeats, name == "packed", train_only)
    if variant:
        variant_head = build_head(dict(cfg, **variant), device)
        base = out["layouts"][layouts[0]]
        var = out["layouts"]["variant"] = measure(torch.compile(variant_head) if compile else variant_head, batch,
                                                  device, dtype, repeats, layouts[0] == "packed", train_only)
        out["variant"] = dict(variant, params_total=sum(p.numel() for p in variant_head.parameters()),
                              train_ratio=var["train_ms"] / base["train_ms"])
        if not train_only:
            out["variant"]["eval_ratio"] = var["eval_ms"] / base["eval_ms"]
        del variant_head
    if with_utilisation:
        first = out["layouts"][layouts[0]]
        head.model.set_encoder_packing(layouts[0] == "packed")
        first.update(utilisation(head, batch, cfg, first["train_ms"] / 1000, device, dtype))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--batch", type=int, default=None)
    add_device_args(ap)
    ap.add_argument("--max-demos", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--padded", action="store_true", help="padded encoder layout (the baseline)")
    ap.add_argument("--compare", action="store_true", help="time padded and packed side by side")
    ap.add_argument("--compile", action="store_true", help="torch.compile the loss head")
    ap.add_argument("--utilisation", action="store_true", help="model FLOP/s over a matmul's FLOP/s")
    ap.add_argument("--train-only", action="store_true", help="skip the eval step")
    ap.add_argument("--arch", nargs="+", type=parse_arch_option, metavar="KEY=VALUE", default=None,
                    help="also time the preset with these model options (e.g. map_read=true; recipe: the "
                         "small-scale recipe's, config/experiment/synthetic.yaml)")
    args = ap.parse_args(argv)
    if args.arch:
        args.arch = [option for options in args.arch for option in options]

    use_device_args(args)
    layouts = ("packed", "padded") if args.compare else ("padded",) if args.padded else ("packed",)
    res = run(args.preset, args.batch, args.device, args.dtype, args.max_demos, args.repeats, layouts, args.compile,
              args.train_only, args.utilisation, dict(args.arch) if args.arch else None)
    results = res["layouts"]

    print(f"preset {args.preset}  batch {res['batch']}  device {args.device}  dtype {args.dtype}  "
          f"compile {args.compile}  params {res['params_total']:,}  "
          f"threads {torch.get_num_threads() if args.device == 'cpu' else '-'}")
    ev = lambda r: f"{r['eval_ms']:.0f}" if "eval_ms" in r else "-"  # noqa: E731
    rows = [[name, f"{r['train_ms']:.0f}", ev(r), f"{r['samples_per_s']:.1f}", f"{r['peak_mib']:.0f}",
             f"{r['first_call_s']:.1f}"] for name, r in results.items()]
    if args.compare:
        p, q = results["padded"], results["packed"]
        rows.append(["speedup", f"{p['train_ms'] / q['train_ms']:.2f}x",
                     f"{p['eval_ms'] / q['eval_ms']:.2f}x" if "eval_ms" in q else "-", "", "", ""])
    if args.arch:
        ratios = res["variant"]
        rows[[r[0] for r in rows].index("variant")][0] = "+ " + " ".join(f"{k}={json.dumps(v)}" for k, v in args.arch)
        rows.append(["cost ratio", f"{ratios['train_ratio']:.2f}x",
                     f"{ratios['eval_ratio']:.2f}x" if "eval_ratio" in ratios else "-", "", "", ""])
    print(fmt_table(["encoder layout", "train ms", "eval ms", "samples/s", "peak MiB", "first call s"], rows))
    main_name = layouts[0]
    main_res = results[main_name]
    if "utilisation" in main_res:
        print(f"{main_name}: {main_res['model_gflop']:.0f} GFLOP/step, {main_res['model_gflops_per_s'] / 1000:.3g} "
              f"TFLOP/s; matmul {main_res['matmul_gflops_per_s'] / 1000:.3g} TFLOP/s; "
              f"utilisation {main_res['utilisation']:.2f}")
    out = {k: res[k] for k in ("preset", "batch", "device", "dtype", "compile", "params_total")}
    out.update({k: round(v, 3) if isinstance(v, float) else v for k, v in main_res.items()})
    out["layout"] = main_name
    if args.compare:
        out["padded_train_ms"] = round(results["padded"]["train_ms"], 1)
        if "eval_ms" in results["padded"]:
            out["padded_eval_ms"] = round(results["padded"]["eval_ms"], 1)
    if args.arch:
        options = {k: v for k, v in res["variant"].items() if not k.endswith("_ratio")}
        out.update(variant=options, **{f"variant_{k}": round(v, 3) for k, v in results["variant"].items()},
                   **{f"variant_{k}": round(v, 3) for k, v in res["variant"].items() if k.endswith("_ratio")})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
