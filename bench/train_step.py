"""Time one ETRM training step and one eval step on a real ARC-AGI-1 batch.

    python -m bench.train_step --preset tiny|paper|hybrid_standard|hybrid_variational
        [--batch B] [--device cpu|cuda] [--dtype float32|bfloat16] [--max-demos 10]
        [--padded] [--compare] [--arch KEY=VALUE ...] [--repeats N] [--threads 2] [--compile]

Presets (TRM numbers, puzzle_emb_len 16, 30x30 canvas): tiny = hidden 64, 4 heads, expansion 4,
H_cycles 2, L_cycles 2, L_layers 2, standard encoder 1 layer, batch 8; paper = hidden 512, 8 heads,
H_cycles 3, L_cycles 4, standard encoder 2 layers, batch 2; hybrid_standard / hybrid_variational =
paper with that encoder at 4 layers (kl_weight 1e-4).

The batch: the first B tasks of ARC-AGI-1 training (sorted by id), all their demos (up to
--max-demos), their first test pair as the query. Training step = fresh carry, one ACT step
through ACTLossHead, backward (no optimizer). Eval step = one ACT step in eval mode, no grad.
Median of --repeats runs after a warm-up.

--padded runs the padded encoder layout (every demo slot at 2 x 900 tokens, masked as keys: the
baseline); the default packs each real demo pair to its own tokens (same math). --compare runs
both on the same model weights, side by side (packed first: the padded layout's large
allocations slow down whatever runs after it in the process), and prints the speedups.
--arch KEY=VALUE ... times the preset (packed) and the same preset with those model options (e.g.
`--arch demo_attention=true map_read=true`) side by side, baseline first, and prints the cost
ratio and each one's peak memory (CPU: the process's peak RSS after each, so the second is the
larger of the two; CUDA: max allocated, reset in between). The last line printed is JSON with
train_ms, eval_ms, params_total, peak_rss_mib (and variant_* keys with --arch).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from bench.common import (PRESETS, arc_batch, build_head, eval_step, fmt_table, model_config, peak_rss_mib,
                          set_threads, time_fn, train_step)


def peak_memory_mib(device: str) -> float:
    """Peak memory so far: CUDA max allocated (then reset, so the next reading is its own), else
    the process's peak RSS."""
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        return peak
    return peak_rss_mib()


def parse_arch_override(ap, text: str) -> tuple[str, object]:
    """'key=value' -> (key, value parsed as YAML: true -> True, 16 -> 16)."""
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        ap.error(f"--arch expects KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def measure(head, batch, device: str, dtype: str, repeats: int, packed: bool) -> dict:
    head.model.set_encoder_packing(packed)
    train_s = time_fn(lambda: train_step(head, batch, device, dtype), repeats=repeats, device=device)
    eval_s = time_fn(lambda: eval_step(head, batch, device, dtype), repeats=repeats, device=device)
    return {"train_ms": 1000 * train_s, "eval_ms": 1000 * eval_s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--max-demos", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--padded", action="store_true", help="padded encoder layout (the baseline)")
    ap.add_argument("--compare", action="store_true", help="time padded and packed side by side")
    ap.add_argument("--compile", action="store_true", help="torch.compile the loss head (CUDA)")
    ap.add_argument("--arch", nargs="+", metavar="KEY=VALUE", default=None,
                    help="also time the preset with these model options, side by side (e.g. demo_attention=true)")
    args = ap.parse_args(argv)
    if args.arch and (args.compare or args.padded):
        ap.error("--arch compares against the packed preset; drop --compare/--padded")
    variant = dict(parse_arch_override(ap, o) for o in args.arch or [])

    if args.device == "cpu":
        set_threads(args.threads)
    batch_size = args.batch or PRESETS[args.preset]["batch"]
    batch = {k: v.to(args.device) for k, v in arc_batch(batch_size, args.max_demos).items()}
    cfg = model_config(args.preset, batch_size, args.max_demos)
    head = build_head(cfg, args.device)
    params = sum(p.numel() for p in head.parameters())
    if args.compile:
        head_run = torch.compile(head)  # attribute look-ups (initial_carry, model) reach the wrapped head
    else:
        head_run = head

    layouts = [("packed", True), ("padded", False)] if args.compare else [("padded" if args.padded else "packed", not args.padded)]
    results = {}
    for name, packed in layouts:
        results[name] = measure(head_run, batch, args.device, args.dtype, args.repeats, packed)
    if variant:
        results["packed"]["peak_mib"] = peak_memory_mib(args.device)
        variant_head = build_head(dict(cfg, **variant), args.device)
        variant_params = sum(p.numel() for p in variant_head.parameters())
        results["variant"] = measure(torch.compile(variant_head) if args.compile else variant_head, batch, args.device,
                                     args.dtype, args.repeats, True)
        results["variant"]["peak_mib"] = peak_memory_mib(args.device)

    print(f"preset {args.preset}  batch {batch_size}  device {args.device}  dtype {args.dtype}  "
          f"params {params:,}  threads {torch.get_num_threads() if args.device == 'cpu' else '-'}")
    rows = [[name, f"{r['train_ms']:.0f}", f"{r['eval_ms']:.0f}"] for name, r in results.items()]
    if args.compare:
        p, q = results["padded"], results["packed"]
        rows.append(["speedup", f"{p['train_ms'] / q['train_ms']:.2f}x", f"{p['eval_ms'] / q['eval_ms']:.2f}x"])
    if variant:
        p, q = results["packed"], results["variant"]
        rows[0][0] = "packed (preset)"
        rows[1][0] = "+ " + " ".join(args.arch)
        rows.append(["cost ratio", f"{q['train_ms'] / p['train_ms']:.2f}x", f"{q['eval_ms'] / p['eval_ms']:.2f}x"])
        for row, name in ((rows[0], "packed"), (rows[1], "variant")):
            row.append(f"{results[name]['peak_mib']:.0f}")
        rows[-1].append("")
    print(fmt_table(["model", "train ms", "eval ms"] + (["peak MiB"] if variant else []), rows))
    main_res = results["packed"] if "packed" in results else results["padded"]
    out = {"preset": args.preset, "batch": batch_size, "device": args.device, "dtype": args.dtype,
           "train_ms": round(main_res["train_ms"], 1), "eval_ms": round(main_res["eval_ms"], 1),
           "params_total": params, "peak_rss_mib": round(peak_rss_mib(), 1),
           "layout": "packed" if "packed" in results else "padded"}
    if args.compare:
        out["padded_train_ms"] = round(results["padded"]["train_ms"], 1)
        out["padded_eval_ms"] = round(results["padded"]["eval_ms"], 1)
    if variant:
        q = results["variant"]
        out.update(peak_mib=round(results["packed"]["peak_mib"], 1), variant=variant,
                   variant_train_ms=round(q["train_ms"], 1), variant_eval_ms=round(q["eval_ms"], 1),
                   variant_peak_mib=round(q["peak_mib"], 1), variant_params_total=variant_params,
                   variant_train_ratio=round(q["train_ms"] / results["packed"]["train_ms"], 3),
                   variant_eval_ratio=round(q["eval_ms"] / results["packed"]["eval_ms"], 3))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
