"""Where does demo reading fail: in the encoder, or in the inner model's use of its context?

    python -m bench.probe_context CHECKPOINT [--manifest M] [--variants 8] [--init]

CHECKPOINT: a step folder (<run_dir>/checkpoints/step_N). On the held-out split of the
checkpoint's own data (its evaluation data) it measures two things, per family:

1. Does the context tell the rules apart? The encoder's context [P, H] of every (puzzle, variant)
   is fed to two probes scored across puzzles (grouped k-fold: a puzzle's variants stay in one
   fold, so a probe cannot recognise the puzzle instead of its family): a nearest-centroid
   classifier and an L2-regularised linear (softmax) classifier of the family. Chance is
   1 / number of families. --init scores the same model at its initialisation (same config and
   seed): what an untrained encoder's context already separates.
2. Does the inner model use the context? Every held-out query is answered twice: with its own
   demos, and with the demos of a puzzle of another family (rows rolled within the batch until
   every row's family differs). `changed` is the share of answers whose grid differs; `copied`
   the share of answers that equal the query input. A model that ignores its context answers the
   same both times (changed 0).

Families come from the generator's manifest (dataset/synthetic.py), by default
<built dataset>/../puzzles/manifest.json (bench.learning's layout), or --manifest. Without a
manifest, the part of the puzzle id after its first '-' is taken as the family.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from dataset.atomic import atomic_write_text
from training import build, checkpoint
from training.evaluation import run_until_halted


def load_model(cfg, saved_kwargs: dict, ckpt: Path | None):
    """(model, loss head) as the checkpoint's config builds it (same seed), with its EMA weights, or
    left at its initialisation when ckpt is None."""
    torch.manual_seed(int(cfg.get("seed", 0) or 0))
    model, head = build.build_model(cfg, dict(saved_kwargs, eval_halting="max"))
    if ckpt is not None:
        build.load_weights(model, checkpoint.weights_file(ckpt), ckpt / "config.yaml")
    return model.eval(), head.eval()


def families_of(puzzle_ids: list[str], manifest: Path | None) -> list[str]:
    if manifest is not None:
        puzzles = json.loads(manifest.read_text())["puzzles"]
        missing = [i for i in puzzle_ids if i not in puzzles]
        if missing:
            raise ValueError(f"{manifest} has no entry for puzzle(s) {missing[:3]} of the checkpoint's eval split")
        return [puzzles[i]["family"] for i in puzzle_ids]
    return [i.split("-", 1)[1] if "-" in i else i for i in puzzle_ids]


def samples(split, variants: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, variant, puzzle) of each puzzle's first query under its first `variants` variants."""
    q, v, p = [], [], []
    for i in range(split.num_puzzles):
        v0, v1 = split.puzzle_variant_range(i)
        for var in range(v0, min(v1, v0 + variants)):
            q.append(split.puzzle_query_range(i)[0]), v.append(var), p.append(i)
    return np.array(q), np.array(v), np.array(p)


@torch.no_grad()
def contexts(model, split, q, v, max_demos: int, batch: int = 64) -> torch.Tensor:
    out = []
    for s in range(0, len(q), batch):
        b = split.assemble(q[s:s + batch], v[s:s + batch], max_demos)
        enc = model.encoder(b["demo_inputs"], b["demo_labels"], b["demo_mask"], demo_lengths=b["demo_lengths"])
        out.append(enc.context.float().flatten(1))
    return torch.cat(out)


def grouped_folds(groups: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """k folds of sample indices; every sample of a group (puzzle) in the same fold."""
    uniq = np.random.default_rng(seed).permutation(np.unique(groups))
    return [np.flatnonzero(np.isin(groups, part)) for part in np.array_split(uniq, k)]


def probe_accuracy(x: torch.Tensor, y: np.ndarray, groups: np.ndarray, k: int = 5, l2: float = 1e-2,
                   iters: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Held-out predictions of y from x (grouped k-fold): (nearest-centroid, linear)."""
    y_t = torch.as_tensor(y)
    n_cls = int(y.max()) + 1
    pred_nc, pred_lin = np.zeros(len(y), np.int64), np.zeros(len(y), np.int64)
    for test in grouped_folds(groups, k):
        train = np.setdiff1d(np.arange(len(y)), test)
        mu, sd = x[train].mean(0), x[train].std(0).clamp_min(1e-6)
        xtr, xte = (x[train] - mu) / sd, (x[test] - mu) / sd
        centroids = torch.stack([xtr[y_t[train] == c].mean(0) if (y_t[train] == c).any()
                                 else torch.full_like(xtr[0], float("inf")) for c in range(n_cls)])
        pred_nc[test] = torch.cdist(xte, centroids).argmin(1).numpy()
        w = torch.zeros(x.shape[1], n_cls, requires_grad=True)
        b = torch.zeros(n_cls, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=iters, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(xtr @ w + b, y_t[train]) + l2 * w.pow(2).sum()
            loss.backward()
            return loss
        opt.step(closure)
        with torch.no_grad():
            pred_lin[test] = (xte @ w + b).argmax(1).numpy()
    return pred_nc, pred_lin


def other_family_rows(fam: np.ndarray) -> np.ndarray:
    """A permutation of the rows such that every row is paired with a row of another family
    (a roll by the smallest shift that achieves it; -1 where no shift does)."""
    n = len(fam)
    for shift in range(1, n):
        perm = np.roll(np.arange(n), shift)
        if (fam[perm] != fam).all():
            return perm
    return np.full(n, -1)


@torch.no_grad()
def context_use(head, split, q, v, fam: np.ndarray, max_demos: int, dtype: str) -> dict[str, np.ndarray]:
    """Per sample: does the answer change when the demos are another family's; is it the input copied."""
    order = np.argsort(fam, kind="stable")
    perm = other_family_rows(fam[order])  # pairs across the whole set, not within a batch
    if (perm < 0).any():
        raise ValueError("context swap needs at least two families in the eval split")
    own = split.assemble(q[order], v[order], max_demos)
    swapped = dict(own)
    for key in ("demo_inputs", "demo_labels", "demo_mask", "demo_lengths"):
        swapped[key] = own[key][torch.as_tensor(perm)]
    res = {"changed": [], "copied": [], "exact": [], "exact_swapped": []}
    for s in range(0, len(order), 64):
        a = run_until_halted(head, {k: t[s:s + 64] for k, t in own.items()}, dtype)
        b = run_until_halted(head, {k: t[s:s + 64] for k, t in swapped.items()}, dtype)
        res["changed"].append((a["preds"] != b["preds"]).any(-1).numpy())
        labels, inputs = own["labels"][s:s + 64], own["inputs"][s:s + 64]
        on = labels >= 0  # the answer's cells (PAD labels are ignored)
        res["copied"].append(((a["preds"] == inputs) | ~on).all(-1).numpy())
        res["exact"].append(a["exact"].numpy())
        res["exact_swapped"].append(b["exact"].numpy())
    inverse = np.argsort(order)
    return {k: np.concatenate(val)[inverse] for k, val in res.items()}


def probe(model, head, split, fam: np.ndarray, q, v, p, max_demos: int, dtype: str, folds: int) -> dict:
    """Both measures for one model: the family probes' accuracy and the context swap, overall and per family."""
    x = contexts(model, split, q, v, max_demos)
    pred_nc, pred_lin = probe_accuracy(x, fam, p, k=folds)
    use = context_use(head, split, q, v, fam, max_demos, dtype)
    use["probe_right"] = pred_lin == fam  # the linear probe's recall, per family in the report
    return {"nearest_centroid": float((pred_nc == fam).mean()), "linear": float(use["probe_right"].mean()),
            **{k: float(val.mean()) for k, val in use.items()},
            "per_family": {int(i): {k: float(val[fam == i].mean()) for k, val in use.items()} for i in np.unique(fam)}}


def print_report(name: str, rep: dict, names: list[str]) -> None:
    print(f"\n[{name}] family from the context: nearest-centroid {rep['nearest_centroid']:.2f}, linear {rep['linear']:.2f}")
    print(f"  answers with another family's demos: changed {rep['changed']:.2f}; "
          f"exact {rep['exact']:.3f} -> {rep['exact_swapped']:.3f}; input copied {rep['copied']:.2f}")
    print(f"  {'family':<18}{'probe':>9}{'changed':>9}{'copied':>9}{'exact':>9}{'swapped':>9}")
    for f, d in rep["per_family"].items():
        print(f"  {names[f]:<18}{d['probe_right']:>9.2f}{d['changed']:>9.2f}{d['copied']:>9.2f}{d['exact']:>9.2f}"
              f"{d['exact_swapped']:>9.2f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.probe_context", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a checkpoint step folder: <run_dir>/checkpoints/step_N")
    ap.add_argument("--manifest", default=None, help="the generator's manifest.json (families); default: beside the data")
    ap.add_argument("--variants", type=int, default=8, help="augmented variants per held-out puzzle")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--init", action="store_true", help="also probe the model at its initialisation")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    try:
        ckpt = checkpoint.require_evaluable(args.checkpoint)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from None
    cfg = OmegaConf.load(ckpt / "config.yaml")
    saved_kwargs = checkpoint.read_trainer_state(ckpt)["model_kwargs"]
    split = build.load_eval_split(OmegaConf.merge(cfg, {"build_if_missing": None}))
    manifest = Path(args.manifest) if args.manifest else Path(split.paths[0]).parent / "puzzles" / "manifest.json"
    fam_names = families_of(split.puzzle_ids, manifest if manifest.is_file() else None)
    names = sorted(set(fam_names))
    q, v, p = samples(split, args.variants)
    fam = np.array([names.index(fam_names[i]) for i in p])

    models = {"trained": load_model(cfg, saved_kwargs, ckpt)}
    if args.init:
        models["init"] = load_model(cfg, saved_kwargs, None)
    print(f"{ckpt}: {split.num_puzzles} held-out puzzles x {args.variants} variants, {len(names)} families "
          f"(chance {1 / len(names):.2f}), context {models['trained'][0].config.puzzle_emb_len} x "
          f"{models['trained'][0].config.hidden_size}")
    report = {}
    for name, (model, head) in models.items():
        rep = probe(model, head, split, fam, q, v, p, int(saved_kwargs["max_demos"]), cfg.arch.forward_dtype, args.folds)
        print_report(name, rep, names)
        rep["per_family"] = {names[i]: d for i, d in rep["per_family"].items()}
        report[name] = rep
    out = ckpt.parent.parent / "probe_context.json"
    atomic_write_text(out, json.dumps(report, indent=1))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
