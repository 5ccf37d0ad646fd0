"""Helpers shared by several test modules (test modules import this, never each other):
the one compose helper, small synthetic batches and model configs, and the reference scorer."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import time
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dataset.tokens import IGNORE_LABEL_ID, PAD_ID
from dataset.grids import encode_grid
from training.config_schema import compose_config as compose_cfg  # noqa: F401 (the one compose helper)

REPO = Path(__file__).resolve().parents[1]

torch.set_num_threads(2)

RULES = (
    lambda g: g,
    lambda g: g[:, ::-1],
    lambda g: g[::-1, :],
    lambda g: (g + 1) % 10,
)


def grid_tokens(grids, side: int) -> torch.Tensor:
    """ARC grids (numpy) -> their canvases' tokens [len(grids), side * side] (dataset/grids.py)."""
    return torch.stack([torch.from_numpy(encode_grid(g, side)).long() for g in grids])


def tiny_config(**kw) -> dict:
    cfg = dict(
        batch_size=4, seq_len=25, vocab_size=12, max_demos=3, puzzle_emb_len=4, hidden_size=32, num_heads=4,
        expansion=2.0, H_cycles=2, L_cycles=2, L_layers=1, halt_max_steps=4, halt_exploration_prob=0.0,
        encoder_num_layers=1, encoder_set_layers=1,
    )
    cfg.update(kw)
    return cfg


def make_batch(B: int = 4, D: int = 3, side: int = 5, seed: int = 0, n_demos: list[int] | None = None,
               rules: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Each row: a puzzle with a rule from RULES, up to D demos (the rest masked, PAD), a query."""
    rng = np.random.default_rng(seed)
    S = side * side
    out = dict(
        inputs=np.zeros((B, S), np.int64), labels=np.zeros((B, S), np.int64),
        demo_inputs=np.zeros((B, D, S), np.int64), demo_labels=np.zeros((B, D, S), np.int64),
        demo_mask=np.zeros((B, D), bool),
    )
    for b in range(B):
        rule = RULES[(rules[b] if rules is not None else b) % len(RULES)]
        nd = n_demos[b] if n_demos is not None else int(rng.integers(1, D + 1))
        pairs = []
        for _ in range(nd + 1):
            h, w = rng.integers(2, side, size=2)
            g = rng.integers(0, 10, size=(h, w))
            pairs.append((g, np.ascontiguousarray(rule(g))))
        for d, (gi, go) in enumerate(pairs[:nd]):
            out["demo_inputs"][b, d] = encode_grid(gi, side)
            out["demo_labels"][b, d] = encode_grid(go, side)
            out["demo_mask"][b, d] = True
        qi, qo = pairs[-1]
        out["inputs"][b] = encode_grid(qi, side)
        lab = encode_grid(qo, side)
        out["labels"][b] = np.where(lab == PAD_ID, IGNORE_LABEL_ID, lab)
    batch = {k: torch.from_numpy(v) for k, v in out.items()}
    batch["variant_index"] = torch.arange(B)
    batch["query_index"] = torch.arange(B)
    batch["puzzle_index"] = torch.arange(B)
    batch["valid"] = torch.ones(B, dtype=torch.bool)
    return batch


def assert_gradient_every_act_step(model, params: list[tuple[str, torch.Tensor]], batch, steps: int = 3) -> None:
    """Run `steps` ACT steps from a fresh carry; after each, every named parameter must get a
    non-zero gradient (the demos are re-read with grad at every step, never cached)."""
    carry = model.initial_carry(batch)
    for step in range(steps):
        model.zero_grad()
        carry, out = model(carry, batch)
        out["logits"].square().mean().backward()
        for name, p in params:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"step {step}: no gradient at {name}"


def assert_lookup_option_in_the_model(option: str, options: dict, side: int, grids: list, rule) -> None:
    """A parameter-free option of cell_lookup's cover (`option`, on top of `options`) in the model, on a
    batch whose every row has the demos grids[:-1] -> rule(grid) and the query grids[-1]: at step 0 (the
    vote's gain zero) the model computes exactly what the model without the option computes; with the
    gain at 1 the lookup's vote answers rule(query); every cell_lookup parameter gets a gradient at
    every ACT step."""
    from dataset.tokens import COLOUR_OFFSET
    from models.recursive_reasoning.etrm import TRMWithEncoder
    options = dict(options, seq_len=side * side)
    torch.manual_seed(0)
    model = TRMWithEncoder(tiny_config(**{option: True}, **options)).eval()
    torch.manual_seed(0)
    without = TRMWithEncoder(tiny_config(**options)).eval()
    batch = make_batch(side=side, D=len(grids) - 1)
    batch["demo_inputs"][:] = grid_tokens(grids[:-1], side).unsqueeze(0)
    batch["demo_labels"][:] = grid_tokens([rule(g) for g in grids[:-1]], side).unsqueeze(0)
    batch["inputs"][:] = grid_tokens([grids[-1]], side)
    batch["demo_mask"][:] = True
    torch.testing.assert_close(model(model.initial_carry(batch), batch)[1]["logits"],
                               without(without.initial_carry(batch), batch)[1]["logits"], rtol=0, atol=0)
    seen = []
    model.cell_lookup.register_forward_hook(lambda mod, args, out: seen.append(out[1]))
    with torch.no_grad():
        model.cell_lookup.vote_gain.fill_(1.0)
        model(model.initial_carry(batch), batch)
    want = rule(grids[-1])
    answer = seen[0][0, :, COLOUR_OFFSET:COLOUR_OFFSET + 10].argmax(-1).view(side, side)
    np.testing.assert_array_equal(answer[:want.shape[0], :want.shape[1]].numpy(), want)
    with torch.no_grad():
        torch.nn.init.normal_(model.cell_lookup.o_proj.weight, std=0.2)
    assert_gradient_every_act_step(model.train(), [(n, p) for n, p in model.named_parameters()
                                                   if n.startswith("cell_lookup.")], batch)


def build_and_step(config_name: str, overrides: list[str]):
    """Compose the real Hydra config with `overrides`, build the model and loss head through the
    trainer's builder for a 5x5 split, run one ACT step of make_batch() and backprop.
    -> (model, loss); the loss is checked finite."""
    from training import build

    cfg = compose_cfg(config_name, overrides)
    split = type("Split", (), {"seq_len": 25, "vocab_size": 12, "max_demos": 3, "side": 5})()
    model, head = build.build_model(cfg, build.model_kwargs(cfg, split, 4))
    batch = make_batch()
    _, loss, _, _, _ = head(head.initial_carry(batch), batch)
    loss.backward()
    assert torch.isfinite(loss)
    return model, loss


def small_encoder(kind, pooling="mean", side=5, seed=0):
    from models.encoders import build_encoder

    torch.manual_seed(seed)
    return build_encoder(kind, hidden_size=32, num_heads=4, seq_len=side * side, puzzle_emb_len=4,
                         num_layers=1, expansion=2.0, pooling=pooling, set_layers=1)


def demos_of(batch):
    return batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"]


PADDING_SIDE = 12  # tests/test_padding.py's canvas


def ragged_batch(B: int = 3, D: int = 4, side: int = PADDING_SIDE, seed: int = 0) -> dict[str, torch.Tensor]:
    """Grids of many sizes (1x1 up to the full canvas, outputs larger than inputs), a ragged
    number of real demos per row (at least one)."""
    rng = np.random.default_rng(seed)
    S = side * side
    d_in = np.zeros((B, D, S), np.int64)
    d_out = np.zeros((B, D, S), np.int64)
    mask = np.zeros((B, D), bool)
    inputs = np.zeros((B, S), np.int64)
    labels = np.zeros((B, S), np.int64)
    for b in range(B):
        n = 1 + b % D
        for d in range(n):
            h, w = rng.integers(1, side + 1, 2)
            h2, w2 = (side, side) if (b, d) == (0, 0) else rng.integers(1, side + 1, 2)
            d_in[b, d] = encode_grid(rng.integers(0, 10, (h, w)), side)
            d_out[b, d] = encode_grid(rng.integers(0, 10, (h2, w2)), side)
            mask[b, d] = True
        inputs[b] = encode_grid(rng.integers(0, 10, (3, 4)), side)
        labels[b] = encode_grid(rng.integers(0, 10, (5, 2)), side)
    labels = np.where(labels == PAD_ID, IGNORE_LABEL_ID, labels)
    t = torch.from_numpy
    return dict(inputs=t(inputs), labels=t(labels), demo_inputs=t(d_in), demo_labels=t(d_out), demo_mask=t(mask),
                variant_index=torch.arange(B), query_index=torch.arange(B), valid=torch.ones(B, dtype=torch.bool))


def load_scorer():
    """scripts/score_submission.py as a module (the reference scorer)."""
    spec = importlib.util.spec_from_file_location("score_submission", REPO / "scripts" / "score_submission.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------------
# short training runs of the tiny config (test_training.py, test_cluster_faults.py); the dataset
# they train on is conftest.py's `tiny_data` fixture

def small_overrides(data: Path, run_dir: Path, **extra) -> list[str]:
    base = {
        "data_paths": f"[{data}]", "build_if_missing": "null", "run_dir": str(run_dir),
        "arch.hidden_size": 32, "arch.num_heads": 2, "arch.H_cycles": 2, "arch.L_cycles": 1,
        "arch.puzzle_emb_len": 4, "arch.halt_max_steps": 3, "arch.halt_exploration_prob": 0.0,
        "global_batch_size": 8, "max_steps": 8, "eval_interval": "null", "max_eval_variants": 1,
        "max_eval_groups": 4, "lr_warmup_steps": 2, "wandb_mode": "disabled", "checkpoint_keep_last": 10,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def compose_tiny(overrides: list[str]):
    return compose_cfg("cfg_pretrain_etrm_tiny", overrides)


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def last_train_record(records: list[dict], step: int) -> dict:
    return [r for r in records if r["step"] == step and "train/total_loss" in r][-1]


def run_cli(overrides: list[str], nproc: int = 0, extra_torchrun: tuple[str, ...] = (), wait: bool = True):
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
               *extra_torchrun, "pretrain_etrm.py"]
    else:
        cmd = [sys.executable, "pretrain_etrm.py"]
    cmd += ["--config-name", "cfg_pretrain_etrm_tiny", *overrides]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# training that draws random numbers every step (halting exploration, the variational encoder's
# sampling): a resume that lost the RNG state would take other draws, so other losses
RANDOM_DRAWS = {"arch.encoder_type": "hybrid_variational", "arch.halt_exploration_prob": 0.5}


def assert_same_end(clean: Path, other: Path, steps: int) -> None:
    """The last train record and the final evaluation of two runs agree (timing aside)."""
    a, b = last_train_record(read_metrics(clean), steps), last_train_record(read_metrics(other), steps)
    assert set(a) == set(b)
    for key in a:
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9) or key == "train/steps_per_s", key
    eval_a = json.loads((clean / "eval" / f"step_{steps}" / "metrics.json").read_text())
    eval_b = json.loads((other / "eval" / f"step_{steps}" / "metrics.json").read_text())
    assert eval_a == eval_b


def kill9_then_rerun_matches_uninterrupted(data: Path, tmp_path: Path, steps: int, checkpoint_every: int = 5) -> None:
    """Train `steps` steps clean; train again, SIGKILL the run once its first checkpoint is complete,
    rerun the same command: it must end exactly where the clean run ended."""
    from training import checkpoint

    clean, killed = tmp_path / "clean", tmp_path / "killed"
    run_cli(small_overrides(data, clean, max_steps=steps, checkpoint_interval=checkpoint_every, **RANDOM_DRAWS))
    overrides = small_overrides(data, killed, max_steps=steps, checkpoint_interval=checkpoint_every, **RANDOM_DRAWS)
    proc = run_cli(overrides, wait=False)
    first = killed / "checkpoints" / f"step_{checkpoint_every}" / checkpoint.MARKER
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the run never wrote its first checkpoint"
    assert not (killed / "checkpoints" / f"step_{steps}").exists(), "the run finished before it could be killed"
    run_cli(overrides)
    assert_same_end(clean, killed, steps)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _descendants(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                children.append(int(entry.name))
    return children + [d for c in children for d in _descendants(c)]
