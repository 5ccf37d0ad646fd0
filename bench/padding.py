"""The padding tax: how much of what ETRM computes on is PAD, and what removing it buys.

    python -m bench.padding [--threads 2] [--repeats 3] [--skip-timing]

1. Padding fractions on the real ARC-AGI-1 size distribution (training + evaluation tasks, up to
   10 demos each): encoder tokens (every demo slot at 2 x 900 tokens in the padded layout,
   empty slots included; or only the real slots), inner-model query tokens (900 per query).
2. The inner canvas options: cropping the 30x30 canvas needs a side that holds the answer.
   - per-batch crop: the largest grid (+ EOS border) of a random batch sets the side for all
     rows; expected side and token saving at realistic batch sizes;
   - demo-derived canvas: the side the demos and the query input suggest, and how often the true
     test output would not fit it (a wrong answer that no training can fix);
   - size-bucketed batches: the tokens saved if every query ran at its own side.
3. The encoder and whole training step, padded vs packed encoder layout, on real ARC batches
   (the same weights, measured side by side in this process; packed first).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from bench.common import (PRESETS, arc_batch, build_head, fmt_table, load_arc_tasks, model_config, set_threads,
                          time_fn, train_step)

SIDE = 30
S = SIDE * SIDE


def _real(shape) -> int:
    """Non-PAD tokens of an h x w grid on the canvas: the grid plus its EOS row and column."""
    h, w = shape
    return min(h + 1, SIDE) * min(w + 1, SIDE) - (1 if h < SIDE and w < SIDE else 0)


def _side(shape) -> int:
    return min(max(shape) + 1, SIDE)


def padding_stats(max_demos: int = 10) -> dict:
    res = {}
    for split in ("train", "eval"):
        tasks = load_arc_tasks(split)
        enc_real = enc_real_slots = enc_all_slots = 0
        q_real = q_labels = n_q = 0
        for t in tasks:
            demos = t.train[:max_demos]
            enc_real += sum(_real(np.shape(x)) + _real(np.shape(y)) for x, y in demos)
            enc_real_slots += 2 * S * len(demos)
            enc_all_slots += 2 * S * max_demos
            for x, y in t.test:
                q_real += _real(np.shape(x))
                q_labels += _real(np.shape(y))
                n_q += 1
        res[split] = {
            "encoder_pad_frac_all_slots": 1 - enc_real / enc_all_slots,
            "encoder_pad_frac_real_slots": 1 - enc_real / enc_real_slots,
            "query_input_pad_frac": 1 - q_real / (n_q * S),
            "query_label_pad_frac": 1 - q_labels / (n_q * S),
        }
    return res


def canvas_options(seed: int = 0) -> dict:
    """Numbers for the inner-model canvas decision."""
    rng = np.random.default_rng(seed)
    out = {}
    tasks = load_arc_tasks("train")
    # per-query side needed: input and output (+ EOS) of the query; per-task max over demos
    need, demo_side, q_in_side = [], [], []
    for split in ("train", "eval"):
        for t in load_arc_tasks(split):
            d = max(max(_side(np.shape(x)), _side(np.shape(y))) for x, y in t.train)
            for x, y in t.test:
                need.append(max(_side(np.shape(x)), _side(np.shape(y))))
                demo_side.append(max(d, _side(np.shape(x))))
                q_in_side.append(_side(np.shape(x)))
    need, demo_side = np.array(need), np.array(demo_side)
    out["demo_canvas_overflow_frac"] = float((need > demo_side).mean())   # answer would not fit
    out["demo_canvas_token_frac"] = float((demo_side ** 2).mean() / S)     # tokens vs 30x30
    out["bucketed_token_frac"] = float((need ** 2).mean() / S)             # oracle: own side per query
    # per-batch crop: training queries of every task; the batch's largest side sets the canvas
    train_need = []
    for t in tasks:
        for x, y in list(t.train) + list(t.test):
            train_need.append(max(_side(np.shape(x)), _side(np.shape(y))))
    train_need = np.array(train_need)
    out["batch_crop"] = {}
    for b in (8, 64, 192, 768):
        sides = np.array([train_need[rng.integers(0, len(train_need), b)].max() for _ in range(200)])
        out["batch_crop"][b] = {"mean_side": float(sides.mean()), "p_full_30": float((sides == SIDE).mean()),
                                "token_frac": float((sides ** 2).mean() / S)}
    return out


def encoder_timing(preset: str, batch_size: int, repeats: int) -> dict:
    batch = arc_batch(batch_size)
    head = build_head(model_config(preset, batch_size))
    enc = head.model.encoder

    def enc_step():
        out = enc(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"])
        out.context.sum().backward()
        for p in enc.parameters():
            p.grad = None

    res = {}
    for name, packed in (("packed", True), ("padded", False)):
        head.model.set_encoder_packing(packed)
        res[f"encoder_{name}_ms"] = 1000 * time_fn(enc_step, repeats=repeats)
        res[f"step_{name}_ms"] = 1000 * time_fn(lambda: train_step(head, batch), repeats=repeats)
    res["encoder_speedup"] = res["encoder_padded_ms"] / res["encoder_packed_ms"]
    res["step_speedup"] = res["step_padded_ms"] / res["step_packed_ms"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.padding", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--presets", default="tiny,paper", help="presets for the padded-vs-packed timing")
    ap.add_argument("--skip-timing", action="store_true")
    args = ap.parse_args(argv)
    set_threads(args.threads)

    stats = padding_stats()
    print("Padding fraction on ARC-AGI-1 (30x30 canvas, up to 10 demos)")
    rows = [[k, f"{stats['train'][k]:.1%}", f"{stats['eval'][k]:.1%}"] for k in stats["train"]]
    print(fmt_table(["tokens that are PAD", "train", "eval"], rows))

    canvas = canvas_options()
    print("\nInner-model canvas options (fraction of the 30x30 canvas's tokens kept)")
    rows = [["keep 30x30", "100.0%", "0.0%"],
            ["demo-derived side (max demo/query side)", f"{canvas['demo_canvas_token_frac']:.1%}",
             f"{canvas['demo_canvas_overflow_frac']:.1%}"],
            ["oracle per-query side (size-bucketed)", f"{canvas['bucketed_token_frac']:.1%}", "0.0%"]]
    for b, r in canvas["batch_crop"].items():
        rows.append([f"crop to batch max, batch {b} (P(side 30) {r['p_full_30']:.0%})", f"{r['token_frac']:.1%}", "0.0%"])
    print(fmt_table(["option", "tokens kept", "answers cut off"], rows))

    timing = {}
    if not args.skip_timing:
        rows = []
        for preset in args.presets.split(","):
            B = PRESETS[preset]["batch"]
            t = encoder_timing(preset, B, args.repeats)
            timing[preset] = t
            rows.append([f"{preset} (batch {B})", f"{t['encoder_padded_ms']:.0f}", f"{t['encoder_packed_ms']:.0f}",
                         f"{t['encoder_speedup']:.2f}x", f"{t['step_padded_ms']:.0f}", f"{t['step_packed_ms']:.0f}",
                         f"{t['step_speedup']:.2f}x"])
        print(f"\nPadded vs packed encoder on real ARC-AGI-1 batches ({torch.get_num_threads()} threads, fwd+bwd ms)")
        print(fmt_table(["preset", "enc padded", "enc packed", "enc speedup", "step padded", "step packed",
                         "step speedup"], rows))
    print(json.dumps({"padding": stats, "canvas": canvas, "timing": timing}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
