"""Does ETRM learn to use the demos? A budget any 2-core CPU can run.

    python -m bench.learning                      # default rows, 10 minutes of training each
    python -m bench.learning --minutes 5 --encoders cell_perceiver,standard
    python -m bench.learning --max-steps 1100     # a step budget instead (comparable across machines)
    python -m bench.learning --max-steps 1100 --minutes 0 --encoders colour_slots --tag base --resume \
        --tta context,full --tta-set tta.steps=1600  # TTA rows on already trained rows

Generates puzzles whose rule is drawn per puzzle (dataset/synthetic.py: colour_map, dihedral,
shift, fill, swap, tile), builds them with the normal builder (dataset/build_arc_dataset.py, grids up
to 8x8, leave-one-out train queries), trains `config/cfg_pretrain_etrm_synthetic.yaml` (the tiny
config plus the benchmark's settings) once per row through `pretrain_etrm.py`, and evaluates
with the real ARC evaluator on held-out generated puzzles that training never saw.

Rows: ETRM with each encoder in --encoders; `ablation` (arch.context_ablation=true: the context
is zeros, the model sees only the query input, so it can do no better than a rule-blind guess);
and `rule-blind bound`, the pass@k of the best guess that ignores the demos (k / number of rules
the family allows for that query, capped at 1), computed from the generator's manifest.

Columns: held-out pass@1 / pass@2 (ARC/pass@k: per-test-input credit, votes over
--eval-variants augmented variants), train exact accuracy and mean ACT steps (train samples
that halted, averaged over the last 10% of steps), encoder cross-sample variance
(train/encoder_cross_sample_var, same window), collapse warning, steps done, wall time (training
+ evaluation). A per-family table of held-out pass@2 follows, recomputed from each run's
submission.json against the generated answers (its mean matches ARC/pass@2).

Test-time adaptation rows (--tta, default "context,full"): the first encoder row's final
checkpoint evaluated through `evaluate_etrm.py tta=<mode>` (training/tta.py: adapt to each
held-out puzzle's demos, then the same evaluation), and `full` also from the zeroed-context row's
checkpoint (same adaptation settings and steps: is the encoder a better starting point than
nothing?). Their table adds the adaptation's wall time, steps, samples/s, samples per adapted
puzzle and the leave-one-out loss on the demos before -> after (and with every puzzle given
another puzzle's context correction: how puzzle-specific the corrections are). --tta-set passes
overrides (e.g. tta.steps=1600); --encoders/--set pick the model, so the rows run for any encoder
or config; with --resume the trained rows of an earlier --tag are reused, not retrained.

One training per family instead of the rows above: --lofo FAMILIES (leave-one-family-out: trained on
every other family, scored on the left-out one: a concept the training set lacks, as in ARC's eval
set) and --alone FAMILIES (trained and scored on that family only: can the model learn this kind of
step at this budget when no other family competes for the steps?), each family's row scored on
--family-eval held-out puzzles without adaptation and with each --tta mode.

Outputs: bench/results/learning-<tag>.{txt,json}, runs under bench/results/runs/<tag>/<row>/,
data under bench/results/data/. Rows run one after another, each in its own process with
OMP_NUM_THREADS=--threads. Wall times are noisy on a shared CPU: with a --minutes budget the
step count (and so the score) depends on the machine's load; --max-steps removes that.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "bench" / "results"
CONFIG_NAME = "cfg_pretrain_etrm_synthetic"
DEFAULT_ENCODERS = "colour_slots,cell_perceiver,standard,hybrid_standard"


# ------------------------------------------------------------------------------------- data

def prepare_data(out: Path, num_train: int, num_eval: int, seed: int, families: list[str] | None, num_aug: int,
                 train_queries: str, log=print, held_out: str | None = None) -> tuple[Path, Path]:
    """(puzzles dir, built dataset dir), generated and built once per setting and then reused.
    held_out: leave-one-family-out, that family is generated for the eval split only and the
    built eval split holds only its puzzles (puzzles/eval/<family>)."""
    fam_tag = "all" if not families else "-".join(families)
    name = f"syn-{fam_tag}-n{num_train}-{num_eval}-s{seed}" + (f"-lofo-{held_out}" if held_out else "")
    puzzles = out / "data" / name / "puzzles"
    built = out / "data" / name / f"built-aug{num_aug}-{train_queries}"
    puzzles.parent.mkdir(parents=True, exist_ok=True)
    # rows run side by side (one core each) may ask for the same data at once: one builds, the others wait
    with open(puzzles.parent / ".prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _build_once(puzzles, built, num_train, num_eval, seed, families, num_aug, train_queries, log, held_out)
    return puzzles, built


def _build_once(puzzles: Path, built: Path, num_train: int, num_eval: int, seed: int, families: list[str] | None,
                num_aug: int, train_queries: str, log, held_out: str | None) -> None:
    if not puzzles.exists():
        cmd = [sys.executable, "-m", "dataset.synthetic", "--output-dir", str(puzzles), "--num-train", str(num_train),
               "--num-eval", str(num_eval), "--seed", str(seed)] + (["--families", *families] if families else [])
        cmd += ["--exclude-families", held_out] if held_out else []
        log("$ " + " ".join(cmd[1:]))
        subprocess.run(cmd, cwd=REPO, check=True)
    if not built.exists():
        cmd = [sys.executable, "-m", "dataset.build_arc_dataset", "--train-sources", str(puzzles / "train"),
               "--eval-sources", str(eval_dir(puzzles, held_out)), "--output-dir", str(built), "--max-grid-size", "8",
               "--max-demos", "4", "--num-aug", str(num_aug), "--seed", str(seed), "--train-queries", train_queries,
               "--no-progress"]
        log("$ " + " ".join(cmd[1:]))
        subprocess.run(cmd, cwd=REPO, check=True)


def eval_dir(puzzles: Path, held_out: str | None = None) -> Path:
    """The held-out puzzles that are built and scored: all of them, or one family's (leave-one-family-out)."""
    return puzzles / "eval" / held_out if held_out else puzzles / "eval"


def eval_truths(puzzles: Path, held_out: str | None = None) -> dict[str, tuple[str, list[np.ndarray]]]:
    """{puzzle id: (family, [test output grids])} of the held-out puzzles."""
    out = {}
    for p in sorted(eval_dir(puzzles, held_out).rglob("*.json")):
        task = json.loads(p.read_text())
        out[p.stem] = (p.parent.name, [np.array(t["output"]) for t in task["test"]])
    return out


def rule_blind_bound(puzzles: Path, ks=(1, 2), held_out: str | None = None) -> dict[str, dict[str, float]]:
    """Per family (and "all"): mean over held-out test inputs of the best rule-blind guess's pass@k
    (dataset.synthetic.blind_bound)."""
    from dataset.synthetic import blind_bound, load_manifest

    manifest = load_manifest(puzzles)["puzzles"]
    per: dict[str, dict[int, list[float]]] = {}
    for p in sorted(eval_dir(puzzles, held_out).rglob("*.json")):
        meta = manifest[p.stem]
        task = json.loads(p.read_text())
        scores = [[blind_bound(meta["family"], meta["rule"], np.array(t["input"]), k) for k in ks]
                  for t in task["test"]]
        for fam in (meta["family"], group_of(meta["family"]), "all"):
            for i, k in enumerate(ks):
                per.setdefault(fam, {}).setdefault(k, []).append(float(np.mean([s[i] for s in scores])))
    return {fam: {f"pass@{k}": float(np.mean(v)) for k, v in d.items()} for fam, d in per.items()}


# ------------------------------------------------------------------------------------- runs

def row_overrides(row: dict, built: Path, run_dir: Path, args) -> list[str]:
    o = [f"data_paths=[{built}]", f"run_dir={run_dir}", "wandb_mode=disabled", "build_if_missing=null",
         f"max_eval_variants={args.eval_variants}", f"seed={args.train_seed}"]
    o.append(f"max_train_minutes={args.minutes}" if args.minutes else "max_train_minutes=null")
    if args.max_steps:
        o.append(f"max_steps={args.max_steps}")
    from models.encoders import ENCODERS

    table = bool(getattr(ENCODERS[row["encoder"]], "colour_table", False))
    o += [f"arch.encoder_type={row['encoder']}", f"arch.context_colour_table={str(table).lower()}"]
    if row["ablation"]:
        o.append("arch.context_ablation=true")
    return o + list(args.set or [])


def run_settings(args) -> str:
    """The table headers' account of how every row ran: budget, threads, extra overrides."""
    budget = " / ".join(([f"{args.minutes} min"] if args.minutes else [])
                        + ([f"{args.max_steps} steps"] if args.max_steps else []))
    return (f"budget per row: {budget}, {args.threads} threads; extra overrides: {args.set or []}; "
            f"TTA overrides: {args.tta_set or []}")


def group_of(family: str) -> str:
    """The table's family groups: "map" (one fixed cell map or colour table per rule: the families
    map_read and the colour table were built for) or "content" (the rule depends on the content)."""
    from dataset.synthetic import CONTENT_FAMILIES

    return "content" if family in CONTENT_FAMILIES else "map"


def _attempts(sub_file: Path, truths: dict):
    """(puzzle id, test input index, family, truth, that test input's attempts) for every held-out
    test input, in order, from a submission.json (an input it does not answer gets no attempts)."""
    submission = json.loads(sub_file.read_text())
    for pid, (fam, outs) in truths.items():
        attempts = submission.get(pid, [])
        for i, truth in enumerate(outs):
            yield pid, i, fam, truth, attempts[i] if i < len(attempts) else {}


def _group_means(entries) -> dict[str, dict[str, float]]:
    """(family, {metric: value}) entries -> each metric's mean per family, per group (group_of) and "all"."""
    acc: dict[str, dict[str, list[float]]] = {}
    for fam, vals in entries:
        for f in (fam, group_of(fam), "all"):
            d = acc.setdefault(f, {})
            for k, v in vals.items():
                d.setdefault(k, []).append(v)
    return {f: {k: float(np.mean(v)) for k, v in d.items()} for f, d in acc.items()}


def family_scores(sub_file: Path, truths: dict) -> dict[str, dict[str, float]]:
    """Held-out pass@1 / pass@2 per family (and "all") of a submission.json against the generated
    answers (per-test-input credit, as ARC/pass@k: a puzzle scores the mean over its test inputs)."""
    if not sub_file.exists():
        return {}
    per_puzzle: dict[str, tuple[str, list[tuple[float, float]]]] = {}
    for pid, _, fam, truth, a in _attempts(sub_file, truths):
        hit = [np.array_equal(np.array(a.get(f"attempt_{j}", [[0]])), truth) for j in (1, 2)]
        per_puzzle.setdefault(pid, (fam, []))[1].append((float(hit[0]), float(hit[0] or hit[1])))
    return _group_means((fam, {"pass@1": float(np.mean([h[0] for h in hits])),
                               "pass@2": float(np.mean([h[1] for h in hits]))})
                        for fam, hits in per_puzzle.values())


def eval_inputs(puzzles: Path, held_out: str | None = None) -> dict[str, list[np.ndarray]]:
    """{puzzle id: [test input grids]} of the held-out puzzles (eval_truths' order)."""
    return {p.stem: [np.array(t["input"]) for t in json.loads(p.read_text())["test"]]
            for p in sorted(eval_dir(puzzles, held_out).rglob("*.json"))}


def answer_anatomy(sub_file: Path, truths: dict, inputs: dict) -> dict[str, dict[str, float]]:
    """What the first attempts get right, per family (and group, "all"): `shape` the share with the
    answer's shape; for answers of the input's shape whose attempt has it too, `changed` the
    accuracy on the cells the rule changes, `kept` on the cells it keeps, and `copied` the share
    of attempts that are the test input unchanged (a model that learned to copy and no rule)."""
    if not sub_file.exists():
        return {}
    entries = []
    for pid, i, fam, truth, attempts in _attempts(sub_file, truths):
        a, x = np.array(attempts.get("attempt_1", [[0]])), inputs[pid][i]
        vals = {"shape": float(a.shape == truth.shape)}
        if a.shape == truth.shape == x.shape:
            changed = x != truth
            if changed.any():
                vals["changed"] = float((a == truth)[changed].mean())
            if (~changed).any():
                vals["kept"] = float((a == truth)[~changed].mean())
            vals["copied"] = float(np.array_equal(a, x))
        entries.append((fam, vals))
    return _group_means(entries)


def summarise_run(run_dir: Path, truths: dict, window: float = 0.1) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in records if "train/total_loss" in r]
    evals = [r for r in records if "ARC/pass@2" in r]
    if not evals:
        raise RuntimeError(f"{run_dir}: no evaluation in metrics.jsonl")
    ev = evals[-1]
    steps = int(train[-1]["step"]) if train else 0
    tail = [r for r in train if r["step"] > steps * (1 - window)] or train[-1:]

    def wmean(key):  # weighted by the samples that halted on each step
        num = sum(r.get(key, 0.0) * r.get("train/count", 0.0) for r in tail)
        den = sum(r.get("train/count", 0.0) for r in tail)
        return num / den if den else float("nan")

    out = {
        "pass@1": ev["ARC/pass@1"], "pass@2": ev["ARC/pass@2"], "task_pass@2": ev.get("ARC/task_pass@2"),
        "eval_exact": ev.get("eval/exact_accuracy"), "eval_unparseable": ev.get("ARC/unparseable_frac"),
        "train_exact": wmean("train/exact_accuracy"), "train_steps": wmean("train/steps"),
        "enc_var": float(np.mean([r["train/encoder_cross_sample_var"] for r in tail])),
        "enc_var_first": float(train[0]["train/encoder_cross_sample_var"]) if train else float("nan"),
        "collapse_warning": any(r.get("train/encoder_collapse_warning", 0) for r in train),
        "steps": steps, "train_loss": float(np.mean([r["train/total_loss"] for r in tail])),
    }
    out["submission"] = str(run_dir / "eval" / f"step_{ev['step']}" / "submission.json")
    out["families"] = family_scores(Path(out["submission"]), truths)
    return out


def run_logged(name: str, cmd: list[str], runs: Path, threads: int, log=print) -> float:
    """Run one row's command (a Python entry point of this repository) with `threads` threads and
    W&B off, its output in runs/<name>.log; -> wall seconds. A failure raises with the log's tail."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), WANDB_MODE="disabled")
    log(f"[{name}] $ " + " ".join(cmd[1:]))
    t0 = time.perf_counter()
    log_file = runs / f"{name}.log"
    runs.mkdir(parents=True, exist_ok=True)
    with open(log_file, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log_file.read_text()[-3000:]
        raise RuntimeError(f"row {name} failed (exit {proc.returncode}); log {log_file}:\n{tail}")
    return time.perf_counter() - t0


def run_row(row: dict, built: Path, runs: Path, args, truths: dict, log=print) -> dict:
    run_dir = runs / row["name"]
    if run_dir.exists() and not args.resume:
        import shutil
        shutil.rmtree(run_dir)
    overrides = row_overrides(row, built, run_dir, args)
    cmd = [sys.executable, "pretrain_etrm.py", "--config-name", args.config_name, *overrides]
    wall = run_logged(row["name"], cmd, runs, args.threads, log)
    res = summarise_run(run_dir, truths)
    res.update(name=row["name"], encoder=row["encoder"], ablation=row["ablation"], wall_s=wall, run_dir=str(run_dir))
    log(f"[{row['name']}] pass@2 {res['pass@2']:.3f} pass@1 {res['pass@1']:.3f} train exact {res['train_exact']:.3f} "
        f"steps {res['steps']} wall {wall / 60:.1f} min")
    return res


# ------------------------------------------------------------------------------------- test-time adaptation

def tta_plan(rows: list[dict], modes: list[str]) -> list[tuple[dict, str]]:
    """(trained row, mode) pairs: every mode on the first encoder row's checkpoint, and `full` also
    on the zeroed-context row's (is the encoder a better starting point than nothing?)."""
    modes = [m for m in modes if m != "none"]  # the trained row's own evaluation is the no-adaptation score
    encoder_rows = [r for r in rows if not r["ablation"]]
    plan = [(encoder_rows[0], m) for m in modes] if encoder_rows else []
    plan += [(r, "full") for r in rows if r["ablation"] and "full" in modes]
    return plan


def run_tta_row(start: dict, mode: str, runs: Path, args, truths: dict, log=print) -> dict:
    """Evaluate a trained row's final checkpoint through evaluate_etrm.py with `tta=<mode>`."""
    from training.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(start["run_dir"])
    if ckpt is None:
        raise RuntimeError(f"row {start['name']} left no checkpoint in {start['run_dir']}")
    name = f"{start['name']}+tta-{mode}"
    out_dir = runs / name
    cmd = [sys.executable, "evaluate_etrm.py", f"checkpoint={ckpt}", f"run_dir={out_dir}", f"tta={mode}",
           f"max_eval_variants={args.eval_variants}", *(args.tta_set or [])]
    wall = run_logged(name, cmd, runs, args.threads, log)
    folders = sorted((out_dir / "eval").glob("*/settings.json"), key=lambda p: p.stat().st_mtime)
    if not folders:
        raise RuntimeError(f"row {name} wrote no evaluation under {out_dir / 'eval'}; log {runs / f'{name}.log'}")
    metrics = json.loads(folders[-1].read_text())["metrics"]
    res = {"name": name, "start": start["name"], "mode": mode, "pass@1": metrics["ARC/pass@1"],
           "pass@2": metrics["ARC/pass@2"], "task_pass@2": metrics.get("ARC/task_pass@2"),
           "families": family_scores(folders[-1].parent / "submission.json", truths), "wall_s": wall,
           "submission": str(folders[-1].parent / "submission.json"),
           "eval_dir": str(folders[-1].parent), **{k: v for k, v in metrics.items() if k.startswith("tta/")}}
    if "alone/ARC/pass@2" in metrics:  # tta.predict=pooled: the adapted weights alone, scored in the same run
        res["alone_pass@2"] = metrics["alone/ARC/pass@2"]
        res["alone_families"] = family_scores(folders[-1].parent / "alone" / "submission.json", truths)
    alone = f", the adapted weights alone {res['alone_pass@2']:.3f}" if "alone_pass@2" in res else ""
    log(f"[{name}] pass@2 {res['pass@2']:.3f} (start {start['pass@2']:.3f}{alone}), adaptation "
        f"{res.get('tta/wall_s', 0.0) / 60:.1f} min, wall {wall / 60:.1f} min")
    return res


def alone_rows(tta_rows: list[dict]) -> list[dict]:
    """The adapted weights alone of the pooled TTA rows, as rows of the per-family table."""
    return [{"name": f"{r['name']}:alone", "families": r["alone_families"]} for r in tta_rows if "alone_families" in r]


# ------------------------------------------------------------------------------------- table

def format_table(rows: list[dict], blind: dict, families: list[str], header: str) -> str:
    lines = [header, ""]
    cols = f"{'row':<24} {'pass@1':>7} {'pass@2':>7} {'train_exact':>11} {'ACT_steps':>9} {'enc_var':>9} {'collapse':>8} {'steps':>6} {'wall_min':>8}"
    lines += [cols, "-" * len(cols)]
    for r in rows:
        lines.append(f"{r['name']:<24} {r['pass@1']:>7.3f} {r['pass@2']:>7.3f} {r['train_exact']:>11.3f} "
                     f"{r['train_steps']:>9.2f} {r['enc_var']:>9.4f} {('yes' if r['collapse_warning'] else 'no'):>8} "
                     f"{r['steps']:>6d} {r['wall_s'] / 60:>8.1f}")
    b = blind.get("all", {})
    lines.append(f"{'rule-blind bound':<24} {b.get('pass@1', float('nan')):>7.3f} {b.get('pass@2', float('nan')):>7.3f}")
    return "\n".join(lines)


def format_family_table(rows: list[dict], blind: dict, families: list[str]) -> str:
    """Held-out pass@2 per family (one line each, the map and content groups' means first) for every
    trained and adapted row, beside the rule-blind bound and that bound + 0.30."""
    groups = ["all", "map", "content"] + list(families)
    names = [r["name"] for r in rows]
    width = max([13] + [len(n) for n in names])
    head = f"{'family':<18} {'blind':>6} {'blind+.3':>8} " + " ".join(f"{n:>{width}}" for n in names)
    lines = ["", "held-out pass@2 per family (rows as columns; pass@1 in brackets):", head, "-" * len(head)]
    for f in groups:
        b = blind.get(f, {}).get("pass@2", float("nan"))
        cells = []
        for r in rows:
            d = r.get("families", {}).get(f, {})
            cells.append(f"{d.get('pass@2', float('nan')):.2f} ({d.get('pass@1', float('nan')):.2f})".rjust(width))
        lines.append(f"{f:<18} {b:>6.2f} {min(1.0, b + 0.3):>8.2f} " + " ".join(cells))
    return "\n".join(lines)


def format_anatomy_table(rows: list[dict], families: list[str]) -> str:
    """Every row's `anatomy` (answer_anatomy of its first attempts): shape / changed / copied per
    family (rows as columns). Tells a model that copies its input (copied ~1, changed ~0) from one
    that tries the rule and misses a few cells (changed high, pass@2 low) or gets the size wrong
    (shape low)."""
    if not rows:
        return ""
    anat = [r.get("anatomy", {}) for r in rows]
    width = max([19] + [len(r["name"]) + 1 for r in rows])
    head = f"{'family':<18} " + " ".join(f"{r['name']:>{width}}" for r in rows)
    lines = ["", "first attempts, per family: shape right / changed cells right / input copied "
             "(the last two over answers of the input's shape; - = none):", head, "-" * len(head)]
    fmt = lambda d, k: f"{d[k]:.2f}" if k in d else "-"  # noqa: E731
    for f in ["all", "map", "content"] + list(families):
        cells = [f"{fmt(a.get(f, {}), 'shape')} / {fmt(a.get(f, {}), 'changed')} / {fmt(a.get(f, {}), 'copied')}"
                 for a in anat]
        if any(a.get(f) for a in anat):
            lines.append(f"{f:<18} " + " ".join(c.rjust(width) for c in cells))
    return "\n".join(lines)


def format_tta_table(tta_rows: list[dict], families: list[str]) -> str:
    """Held-out pass@2 overall and per family after each test-time adaptation, its cost, and the
    leave-one-out fit on the demos (loss before -> after; with other puzzles' corrections)."""
    if not tta_rows:
        return ""
    lines = ["", "test-time adaptation of the trained checkpoints (evaluate_etrm.py tta=<mode>; same eval variants):"]
    head = (f"{'row':<34} {'pass@2':>6} {'map':>6} {'content':>7}"
            + f" {'adapt_min':>9} {'steps':>5} {'smp/s':>6} {'smp/puz':>7} {'demo loss before->after (swapped)':>34}")
    lines += [head, "-" * len(head)]
    for r in tta_rows:
        fam = r.get("families", {})
        fit = (f"{r['tta/fit_before_loss']:.3f} -> {r['tta/fit_after_loss']:.3f} ({r.get('tta/fit_swapped_loss', float('nan')):.3f})"
               if "tta/fit_after_loss" in r else "")
        lines.append(f"{r['name']:<34} {r['pass@2']:>6.3f} {fam.get('map', {}).get('pass@2', float('nan')):>6.2f}"
                     f" {fam.get('content', {}).get('pass@2', float('nan')):>7.2f}"
                     + f" {r.get('tta/wall_s', 0.0) / 60:>9.1f} {int(r.get('tta/steps_done', 0)):>5d}"
                     f" {r.get('tta/samples_per_s', 0.0):>6.1f} {r.get('tta/samples_per_puzzle', 0.0):>7.0f} {fit:>34}")
    return "\n".join(lines)


def chosen_families(spec: str, families: list[str] | None, flag: str = "--lofo") -> list[str]:
    """--lofo's / --alone's families: 'all' (every generated family) or a comma-separated list of them."""
    from dataset.synthetic import FAMILIES

    pool = list(families or FAMILIES)
    chosen = pool if spec == "all" else [f for f in spec.split(",") if f]
    if bad := [f for f in chosen if f not in pool]:
        raise SystemExit(f"{flag} {spec!r}: {bad} are not among the generated families {pool}")
    return chosen


# The two one-training-per-family protocols: what each family's row is trained on and scored on.
PER_FAMILY = {
    "lofo": "leave-one-family-out: trained on every other family, scored on the left-out family's held-out puzzles",
    "alone": "each family alone: trained on that family's puzzles only, scored on its held-out puzzles "
             "(can the model learn this kind of step at this budget when nothing else competes for it?)",
}


def per_family_data(kind: str, fam: str, args, out: Path) -> tuple[Path, Path, str | None]:
    """(puzzles dir, built dir, held-out family for eval_dir) of family `fam`'s row: --lofo generates
    every family but `fam` for training and `fam` alone for the eval split; --alone generates `fam`
    only (--num-train puzzles of it, --family-eval held out)."""
    from dataset.synthetic import FAMILIES

    if kind == "lofo":
        families = list(args.families or FAMILIES)
        puzzles, built = prepare_data(out, args.num_train, args.lofo_eval * len(families), args.seed, args.families,
                                      args.num_aug, args.train_queries, held_out=fam)
        return puzzles, built, fam
    puzzles, built = prepare_data(out, args.num_train, args.lofo_eval, args.seed, [fam], args.num_aug,
                                  args.train_queries)
    return puzzles, built, None


def format_per_family_table(results: list[dict], modes: list[str], header: str, kind: str = "lofo") -> str:
    first = "left out" if kind == "lofo" else "family"
    # a pooled mode's adapted weights alone (`<mode>:alone`) beside it, where measured
    modes = [c for m in modes for c in (m, f"{m}:alone") if c == m or any(c in r for r in results)]
    lines = [header, "", PER_FAMILY[kind] + "; changed / copied: the first attempts' anatomy without adaptation",
             f"{first:<18} {'puzzles':>7} {'blind':>6} {'none':>6} " + " ".join(f"{m:>6}" for m in modes)
             + f" {'changed':>7} {'copied':>6} {'train_exact':>11} {'steps':>6} {'wall_min':>8}"]
    lines.append("-" * len(lines[-1]))
    fmt = lambda v, width: f"{v:>{width}.2f}" if v is not None else f"{'-':>{width}}"  # noqa: E731
    for r in results:
        anat = r.get("anatomy", {})
        lines.append(f"{r['family']:<18} {r['puzzles']:>7d} {r['blind']:>6.2f} {r['none']:>6.2f} "
                     + " ".join(f"{r.get(m, float('nan')):>{max(6, len(m))}.2f}" for m in modes)
                     + f" {fmt(anat.get('changed'), 7)} {fmt(anat.get('copied'), 6)}"
                     + f" {r['train_exact']:>11.3f} {r['steps']:>6d} {r['wall_s'] / 60:>8.1f}")
    return "\n".join(lines)


def run_per_family(args, tta_modes: list[str], out: Path, tag: str, kind: str = "lofo") -> int:
    """One training per family, then each TTA mode from that checkpoint. kind "lofo"
    (leave-one-family-out): trained on every other family, scored on the left-out one; "alone":
    trained and scored on that family only. Writes learning-<tag>.{txt,json} after every family
    and prints the command for the families not yet run."""
    from dataset.synthetic import FAMILIES

    flag = "--" + kind
    families = list(args.families or FAMILIES)
    chosen = chosen_families(getattr(args, kind), args.families, flag)
    encoder = [e for e in args.encoders.split(",") if e][0]
    modes = [m for m in tta_modes if m != "none"]
    runs = out / "runs" / tag
    if kind == "lofo":
        what = (f"leave-one-family-out: {args.num_train} train puzzles, {args.lofo_eval} held-out puzzles of the "
                "left-out family")
    else:
        what = f"each family alone: {args.num_train} train / {args.lofo_eval} held-out puzzles of the family"
    header = (f"ETRM learning benchmark '{tag}' ({what}, seed {args.seed}), config {args.config_name}, "
              f"encoder {encoder}, {run_settings(args)}")
    results: list[dict] = []
    table = ""
    for fam in chosen:
        puzzles, built, held_out = per_family_data(kind, fam, args, out)
        truths = eval_truths(puzzles, held_out=held_out)
        blind = rule_blind_bound(puzzles, held_out=held_out)
        row = {"name": f"{kind}-{fam}", "encoder": encoder, "ablation": False}
        trained = run_row(row, built, runs, args, truths)
        anatomy = answer_anatomy(Path(trained["submission"]), truths, eval_inputs(puzzles, held_out))
        res = {"family": fam, "puzzles": len(truths), "blind": blind.get(fam, {}).get("pass@2", float("nan")),
               "none": trained["pass@2"], "train_exact": trained["train_exact"], "steps": trained["steps"],
               "wall_s": trained["wall_s"], "anatomy": anatomy.get(fam, {}), "rows": [trained]}
        for mode in modes:
            tta = run_tta_row(trained, mode, runs, args, truths)
            res[mode] = tta["pass@2"]
            if "alone_pass@2" in tta:
                res[f"{mode}:alone"] = tta["alone_pass@2"]
            res["wall_s"] += tta["wall_s"]
            res["rows"].append(tta)
        results.append(res)
        table = format_per_family_table(results, modes, header, kind)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"learning-{tag}.txt").write_text(table + "\n")
        (out / f"learning-{tag}.json").write_text(json.dumps({"tag": tag, "args": vars(args), kind: results}, indent=1))
    print(table)
    rest = [f for f in families if f not in chosen]
    if rest:
        argv = list(args.argv)
        if flag in argv:
            i = argv.index(flag)
            argv[i + 1] = ",".join(rest)
        print("\nthe other families: python -m bench.learning " + " ".join(argv))
    print(f"\nwritten: {out / f'learning-{tag}.txt'} and .json")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per row (0 = no time budget)")
    ap.add_argument("--max-steps", type=int, default=None, help="step budget per row (with --minutes: whichever first)")
    ap.add_argument("--encoders", default=DEFAULT_ENCODERS, help="comma-separated encoder types, one row each")
    ap.add_argument("--ablation-encoder", default=None,
                    help="encoder of the zeroed-context row (default: the first of --encoders; 'none' drops the row)")
    ap.add_argument("--num-train", type=int, default=300)
    ap.add_argument("--num-eval", type=int, default=100)
    ap.add_argument("--families", nargs="*", default=None, help="generator families (default: all)")
    ap.add_argument("--seed", type=int, default=0, help="data seed (generator and builder)")
    ap.add_argument("--train-seed", type=int, default=0)
    ap.add_argument("--num-aug", type=int, default=1000, help="builder variants per puzzle (train augmentation)")
    ap.add_argument("--train-queries", choices=("test", "all"), default="all")
    ap.add_argument("--eval-variants", type=int, default=8, help="augmented variants voted over per held-out puzzle")
    ap.add_argument("--threads", type=int, default=1,
                    help="OMP_NUM_THREADS of each training process (1: on a shared 2-core CPU two threads were 5x slower)")
    ap.add_argument("--parallel", type=int, default=1,
                    help="rows trained at once (each with --threads threads); wall times then include the sharing")
    ap.add_argument("--config-name", default=CONFIG_NAME)
    ap.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra Hydra override for every row (repeatable)")
    ap.add_argument("--tag", default=None, help="name of this benchmark run (default: a timestamp)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--resume", action="store_true", help="keep existing run dirs (a finished row is not retrained)")
    ap.add_argument("--tta", default="context,full",
                    help="test-time adaptation rows: comma-separated modes (context, full) evaluated on the first "
                         "encoder row's checkpoint, plus `full` on the zeroed-context row's; 'none' or '' for no "
                         "TTA row (the trained rows are the no-adaptation scores)")
    ap.add_argument("--lofo", default=None, metavar="FAMILIES",
                    help="leave-one-family-out instead of the main rows: for each family in FAMILIES (comma-separated, "
                         "or 'all'), train the first of --encoders on every other family, score that family's held-out "
                         "puzzles without adaptation and with each --tta mode")
    ap.add_argument("--alone", default=None, metavar="FAMILIES",
                    help="each family alone instead of the main rows: for each family in FAMILIES (comma-separated, or "
                         "'all'), train the first of --encoders on --num-train puzzles of that family only, score its "
                         "held-out puzzles without adaptation and with each --tta mode")
    ap.add_argument("--family-eval", "--lofo-eval", dest="lofo_eval", type=int, default=10,
                    help="held-out puzzles of each family's row (--lofo: the left-out family; --alone: the family)")
    ap.add_argument("--tta-set", action="append", metavar="KEY=VALUE",
                    help="extra Hydra override for every TTA evaluation, e.g. tta.steps=600 (repeatable)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # (--lofo prints the command for the other families)
    from training.tta import TTA_MODES  # noqa: PLC0415 (torch is only imported once the arguments are read)

    tta_modes = [m for m in args.tta.split(",") if m]
    if any(m not in TTA_MODES for m in tta_modes):  # checked before any data is generated
        raise SystemExit(f"--tta {args.tta!r}: modes must be among {list(TTA_MODES)}")
    out = Path(args.out)
    tag = args.tag or time.strftime("%Y%m%d-%H%M%S")
    if args.lofo and args.alone:
        raise SystemExit("--lofo and --alone are two protocols: pass one")
    if args.lofo or args.alone:
        return run_per_family(args, tta_modes, out, tag, "lofo" if args.lofo else "alone")
    puzzles, built = prepare_data(out, args.num_train, args.num_eval, args.seed, args.families, args.num_aug,
                                  args.train_queries)
    from dataset.synthetic import FAMILIES, load_manifest

    families = load_manifest(puzzles).get("families") or list(FAMILIES)
    truths = eval_truths(puzzles)
    inputs = eval_inputs(puzzles)
    blind = rule_blind_bound(puzzles)
    encoders = [e for e in args.encoders.split(",") if e]
    rows = [{"name": e, "encoder": e, "ablation": False} for e in encoders]
    abl = args.ablation_encoder or (encoders[0] if encoders else "standard")
    if abl != "none":
        rows.append({"name": "ablation (context=0)", "encoder": abl, "ablation": True})
    runs = out / "runs" / tag
    for row in rows:
        row["name"] = row["name"].replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
    results: list[dict] = []
    if args.parallel > 1:  # rows side by side (each with --threads threads): for idle multi-core machines
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(args.parallel) as pool:
            done = list(pool.map(lambda r: run_row(r, built, runs, args, truths), rows))
    else:
        done = (run_row(row, built, runs, args, truths) for row in rows)
    tta_results: list[dict] = []

    def write() -> str:
        header = (f"ETRM learning benchmark '{tag}': {args.num_train} train / {args.num_eval} held-out generated puzzles "
                  f"(seed {args.seed}), config {args.config_name}, {run_settings(args)}")
        table = (format_table(results, blind, families, header) + format_tta_table(tta_results, families)
                 + format_family_table(results + tta_results + alone_rows(tta_results), blind, families)
                 + format_anatomy_table(results + tta_results, families))
        out.mkdir(parents=True, exist_ok=True)
        (out / f"learning-{tag}.txt").write_text(table + "\n")
        (out / f"learning-{tag}.json").write_text(json.dumps(
            {"tag": tag, "args": vars(args), "rule_blind": blind, "rows": results, "tta_rows": tta_results}, indent=1))
        return table

    def with_anatomy(res: dict) -> dict:  # read once per row, kept in its JSON
        return dict(res, anatomy=answer_anatomy(Path(res["submission"]), truths, inputs))

    for res in done:
        results.append(with_anatomy(res))
        table = write()
    for start, mode in tta_plan(results, tta_modes):
        tta_results.append(with_anatomy(run_tta_row(start, mode, runs, args, truths)))
        table = write()
    print(table)
    print(f"\nwritten: {out / f'learning-{tag}.txt'} and .json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
