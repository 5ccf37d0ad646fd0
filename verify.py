"""Check every command of a job file before spending GPU-days on it:

    python -m verify jobs-etrm-semi-final.txt [--steps 12] [--hidden 32]

For each torchrun/python line that runs pretrain_etrm.py: compose the config exactly as that
command would (same --config-name, same overrides), check what would stop it at launch (its
datasets exist; its global batch divides over the GPUs the line asks for: --nproc-per-node x
--nnodes), build the model with the job's encoder and halting settings at a reduced width, run
a few training steps on CPU on a small random batch, and print a checklist. Exits non-zero if
any check of any job fails. Relative data paths are resolved from the current directory, as the
job itself would.

To exercise the halting paths in a handful of steps, the Q head is re-initialised with random
weights and zero bias and kept fixed, so q_halt is positive for about half the samples (at
TRM's init, weights 0 and bias -5, a fresh model would only ever halt at halt_max_steps).
"""
from __future__ import annotations

import training.env_defaults  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch is imported)

import argparse
import shlex
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from omegaconf import OmegaConf

from dataset.random_batch import random_batch
from models import load_model_class
from training import build, preflight
from training.config_schema import compose_config

ENTRY = "pretrain_etrm.py"


def parse_job_line(line: str) -> tuple[str, list[str]]:
    """(config_name, overrides) of one job command."""
    args = shlex.split(line)
    names = [i for i, a in enumerate(args) if a.endswith(ENTRY)]
    if not names:
        raise ValueError(f"no {ENTRY} in the command")
    rest = args[names[0] + 1:]
    config_name, overrides, i = "cfg_pretrain_etrm_arc_agi_1", [], 0
    while i < len(rest):
        a = rest[i]
        if a in ("--config-name", "-cn"):
            config_name, i = rest[i + 1], i + 2
            continue
        if a.startswith("--config-name="):
            config_name = a.split("=", 1)[1]
        elif a.startswith("-"):
            raise ValueError(f"unsupported Hydra flag {a!r} in a job line")
        else:
            overrides.append(a)
        i += 1
    return config_name, overrides


def _int_or_range(value: str, flag: str) -> list[int]:
    """'4' -> [4]; an elastic range '1:3' -> [1, 2, 3]."""
    try:
        lo, _, hi = value.partition(":")
        return list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise ValueError(f"{flag} {value!r} is not a number or a MIN:MAX range") from None


def job_world_sizes(line: str) -> list[int]:
    """Every world size (GPUs in all) the command can run with: --nproc-per-node x --nnodes for
    torchrun (elastic --nnodes ranges give several), 1 for a plain python command."""
    args = shlex.split(line)
    entry = next(i for i, a in enumerate(args) if a.endswith(ENTRY))
    launcher = args[:entry]
    if not any(a.endswith("torchrun") or a == "torch.distributed.run" for a in launcher):
        return [1]
    values = {"--nproc-per-node": "1", "--nnodes": "1"}
    i = 0
    while i < len(launcher):
        a = launcher[i]
        flag, _, inline = a.replace("_", "-").partition("=")
        if flag in values:
            values[flag] = inline or launcher[i + 1]
            i += 0 if inline else 1
        i += 1
    if not values["--nproc-per-node"].isdigit():
        raise ValueError(f"--nproc-per-node {values['--nproc-per-node']!r}: give the GPU count as a number so the "
                         f"batch split can be checked")
    per_node = int(values["--nproc-per-node"])
    return [per_node * n for n in _int_or_range(values["--nnodes"], "--nnodes")]


def check_launch(cfg, world_sizes: list[int], check) -> None:
    """What would stop the job at launch, before any GPU time (training/preflight.py, the trainer's
    own checks): a missing dataset, or a global batch that does not split evenly over the GPUs."""
    for item in preflight.dataset_checks(cfg) + preflight.init_weights_checks(cfg) + preflight.curriculum_checks(cfg):
        check(item.name, item.ok, item.detail)
    for world in world_sizes:
        for item in preflight.batch_checks(cfg, world):
            check(item.name.replace(" rank(s)", " GPU(s)"), item.ok, item.detail)


def verify_job(config_name: str, overrides: list[str], steps: int, hidden: int,
               world_sizes: list[int] | None = None) -> list[tuple[str, bool, str]]:
    checks: list[tuple[str, bool, str]] = []

    def check(name: str, ok: bool, detail: str = "") -> bool:
        checks.append((name, bool(ok), detail))
        return bool(ok)

    try:
        cfg = compose_config(config_name, overrides)
    except Exception as e:  # report, do not crash: the next job lines still get checked
        check("config composes", False, f"{type(e).__name__}: {e}")
        return checks
    check("config composes", True, f"{config_name} + {len(overrides)} overrides")
    check_launch(cfg, world_sizes or [1], check)
    encoder_type = cfg.arch.encoder_type
    try:
        model_cls = load_model_class(cfg.arch.name)
    except Exception as e:
        check("arch resolves to TRMWithEncoder", False, str(e))
        return checks
    check("arch resolves to TRMWithEncoder", model_cls.__name__ == "TRMWithEncoder",
          f"{cfg.arch.name} -> {model_cls.__name__}, encoder {encoder_type}")

    # reduced width, same encoder and halting settings
    small = OmegaConf.merge(cfg, {"arch": {"hidden_size": hidden, "num_heads": 2, "H_cycles": 2, "L_cycles": 1,
                                           "puzzle_emb_len": 4}})
    side, demos, batch_size = 6, 3, 8
    fake_split = SimpleNamespace(seq_len=side * side, vocab_size=12, max_demos=demos, side=side)
    torch.manual_seed(0)
    kwargs = build.model_kwargs(small, fake_split, batch_size)
    model, head = build.build_model(small, kwargs)
    with torch.no_grad():
        model.q_head.weight.normal_(0.0, 1.0 / hidden ** 0.5)
        model.q_head.bias.fill_(0.0)
    # the Q head is left out of the updates so its random halting pattern survives the few steps
    q_params = {id(p) for p in model.q_head.parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if id(p) not in q_params], lr=1e-3)
    max_steps = int(cfg.arch.halt_max_steps)
    halted_steps: list[int] = []
    encoder_grads: list[float] = []
    kl_seen: list[bool] = []
    carry = None
    head.train()
    for i in range(steps):
        batch = random_batch(batch_size, side, demos, seed=i)
        if carry is None:
            carry = model.initial_carry(batch)
        carry, loss, metrics, outputs, _ = head(carry, batch)
        (loss / batch_size).backward()
        encoder_grads.append(sum(float(p.grad.norm()) for n, p in model.named_parameters()
                                 if n.startswith("encoder.") and p.grad is not None))
        kl_seen.append("kl" in outputs and float(metrics.get("kl_loss", torch.zeros(()))) != 0.0)
        halted_steps += carry.steps[carry.halted].tolist()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    in_range = all(1 <= s <= max_steps for s in halted_steps)
    check("ACT steps vary within [1, halt_max_steps]", in_range and len(set(halted_steps)) > 1,
          f"halting steps seen {sorted(set(halted_steps))} (max {max_steps}, explore {cfg.arch.halt_exploration_prob})")
    check("encoder gets a non-zero gradient at every step", all(g > 0 for g in encoder_grads),
          f"min encoder grad norm {min(encoder_grads):.3g} over {steps} steps")
    want_kl = encoder_type == "hybrid_variational" and float(cfg.arch.loss.kl_weight) > 0
    check("KL term present iff variational and kl_weight > 0", all(k == want_kl for k in kl_seen),
          f"expected {'present' if want_kl else 'absent'}, seen {'present' if any(kl_seen) else 'absent'}")
    return checks


def check_sbatch(path: Path) -> tuple[list[tuple[str, bool, str]], int]:
    """Checks of a Slurm script that runs job lines (scripts/slurm/etrm.sbatch or a copy of it):
    what preemption, requeue and multi-node restarts need (docs/CLUSTER.md). Returns the checks
    and the script's node count."""
    import re
    import subprocess

    from training.preemption import EXIT_PREEMPTED

    text = path.read_text()
    body = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#") or line.startswith("#SBATCH"))
    checks: list[tuple[str, bool, str]] = []
    syntax = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    checks.append(("script parses (bash -n)", syntax.returncode == 0, syntax.stderr.strip()[:200]))
    nodes = re.search(r"^#SBATCH\s+(?:--nodes[= ]|-N\s*)(\d+)", text, re.M)
    checks.append(("#SBATCH --nodes", nodes is not None, f"{nodes.group(1)} nodes" if nodes else "missing"))
    checks.append(("#SBATCH --requeue", re.search(r"^#SBATCH\s+--requeue\b", text, re.M) is not None,
                   "a preempted or signalled job goes back in the queue"))
    sig = re.search(r"^#SBATCH\s+--signal[= ](B:)?(?:SIG)?(\w+)@(\d+)", text, re.M)
    checks.append(("#SBATCH --signal=[B:]USR1@SECONDS", sig is not None and sig.group(2) in ("USR1", "USR2", "TERM"),
                   f"SIG{sig.group(2)} {sig.group(3)} s before the limit" if sig else "missing: no warning before the time limit"))
    handled = re.search(r"--signals[-_]to[-_]handle[= ]\s*(\S+)", body)
    forwarded = sig is not None and handled is not None and f"SIG{sig.group(2)}" in handled.group(1)
    checks.append(("torchrun --signals-to-handle forwards that signal to the workers", forwarded,
                   handled.group(1) if handled else "missing: torchrun's agent would die of SIGUSR1, workers unsaved"))
    checks.append(("srun --kill-on-bad-exit", re.search(r"srun\b[^\n]*--kill-on-bad-exit", body) is not None, ""))
    checks.append(("torchrun c10d rendezvous keyed on the job id",
                   re.search(r"--rdzv-backend[= ]c10d", body) is not None
                   and re.search(r"--rdzv-id[= ]\"?\$\{?SLURM_JOB_ID", body) is not None, ""))
    declared = re.search(r"^EXIT_PREEMPTED=(\d+)", text, re.M)
    checks.append((f"requeues on the trainer's stop status {EXIT_PREEMPTED}",
                   declared is not None and int(declared.group(1)) == EXIT_PREEMPTED and "scontrol requeue" in body,
                   f"script says {declared.group(1) if declared else 'nothing'}"))
    return checks, int(nodes.group(1)) if nodes else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job_file", type=Path)
    parser.add_argument("--steps", type=int, default=16, help="training steps per job (default 16)")
    parser.add_argument("--hidden", type=int, default=32, help="reduced hidden size (default 32)")
    parser.add_argument("--sbatch", type=Path, help="the Slurm script the lines will run under (scripts/slurm/etrm.sbatch): "
                        "checked, and each line's batch split checked over its nodes x --nproc-per-node GPUs")
    args = parser.parse_args(argv)
    if not args.job_file.is_file():
        parser.error(f"job file {args.job_file} does not exist")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    failures, nodes = 0, None
    if args.sbatch:
        if not args.sbatch.is_file():
            parser.error(f"sbatch script {args.sbatch} does not exist")
        sbatch_checks, nodes = check_sbatch(args.sbatch)
        print(f"{args.sbatch}")
        for name, ok, detail in sbatch_checks:
            print(f"  [{'x' if ok else ' '}] {name}" + (f"  ({detail})" if detail else ""))
            failures += not ok
    jobs = [(n, line.strip()) for n, line in enumerate(args.job_file.read_text().splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]
    if not jobs:
        print(f"{args.job_file}: no job lines found")
        return 1
    for lineno, line in jobs:
        try:
            config_name, overrides = parse_job_line(line)
            run_name = next((o.split("=", 1)[1].strip('"') for o in overrides if o.lstrip("+").startswith("run_name=")), "?")
            # under the sbatch script the line's launcher is replaced: its GPUs per node x the script's nodes
            worlds = job_world_sizes(line) if nodes is None else [job_world_sizes(line)[0] * nodes]
            checks = verify_job(config_name, overrides, args.steps, args.hidden, worlds)
        except Exception as e:
            run_name, checks = "?", [("job line parses and runs", False, f"{type(e).__name__}: {e}")]
        print(f"\n{args.job_file}:{lineno}  {run_name}")
        for name, ok, detail in checks:
            print(f"  [{'x' if ok else ' '}] {name}" + (f"  ({detail})" if detail else ""))
            failures += not ok
    print(f"\n{len(jobs)} jobs, {failures} failed checks")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
