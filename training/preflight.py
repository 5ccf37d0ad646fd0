"""Launch checks: what would stop a run before any expensive work. One definition, called by the
trainer (`_train`), the checkpoint evaluation (`training/evaluate.py`) and `verify.py` (which
reports every check of every job line instead of stopping at the first).

- every dataset the config names is present with the split it is read for (the config's own
  default dataset, `build_if_missing.output_dir`, may be absent: the trainer builds it);
- every global batch (training, evaluation, test-time adaptation) divides over the ranks;
- `init_weights`, when set, is a complete checkpoint folder, and not combined with `load_pretrained_decoder`;
- the `curriculum` block is valid, and its `group_regex` gives every training puzzle present a group.

A missing dataset's message names the path, the config key and the config's own recipe for it
(`data_recipe`, or the `build_if_missing` builder command)."""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

GENERIC_RECIPE = "python -m dataset.build_arc_dataset --output-dir {path} ... (python -m dataset.build_arc_dataset --help)"


@dataclass(frozen=True)
class Check:
    name: str                    # what was checked, e.g. "dataset data/x"
    ok: bool
    detail: str                  # the reason and the fix when not ok
    error: type[Exception] = ValueError  # what `require` raises when not ok


def require(checks: list[Check]) -> None:
    """Raise the first failed check's error with its detail (the trainer and the evaluation stop there)."""
    for check in checks:
        if not check.ok:
            raise check.error(check.detail)


# ---------------------------------------------------------------------------------------------
# datasets


def eval_paths(cfg: DictConfig) -> list[str]:
    """Where the eval split comes from: `data_paths_test` when set, else `data_paths`."""
    return list(cfg.data_paths_test) if cfg.get("data_paths_test") else list(cfg.data_paths)


def build_command(spec: DictConfig | dict) -> list[str]:
    """The builder command line of a `build_if_missing` spec (its output_dir included)."""
    spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    cmd = [sys.executable, "-m", "dataset.build_arc_dataset"]
    for key, value in spec.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, (list, tuple)):
            cmd += [flag, *map(str, value)]
        elif isinstance(value, bool):
            cmd += [flag] if value else []
        else:
            cmd += [flag, str(value)]
    return cmd


def _same_path(a, b) -> bool:
    return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()


def is_auto_built(cfg: DictConfig, path) -> bool:
    """Whether `path` is the config's own default dataset (`build_if_missing.output_dir`), which
    the trainer builds when it is missing."""
    spec = cfg.get("build_if_missing")
    auto = spec.get("output_dir") if spec else None
    return bool(auto) and _same_path(path, auto)


def data_recipe(cfg: DictConfig, path) -> str:
    """How to build the dataset `path` for this config: its `build_if_missing` builder command
    (with --output-dir path), else its `data_recipe` text (`{path}` = path), else the builder's help."""
    spec = cfg.get("build_if_missing")
    if spec:
        spec = dict(OmegaConf.to_container(spec, resolve=True), output_dir=str(path))
        return "python " + shlex.join(build_command(spec)[1:])
    recipe = cfg.get("data_recipe")
    text = " && ".join(recipe) if isinstance(recipe, (list, tuple)) or OmegaConf.is_list(recipe) else recipe
    return (text or GENERIC_RECIPE).replace("{path}", str(path))


def dataset_checks(cfg: DictConfig, splits: tuple[str, ...] = ("train", "eval")) -> list[Check]:
    """One check per dataset directory the run reads: `data_paths` for the train split, the eval
    source (`data_paths_test`, else `data_paths`) for the eval split; only `splits` are checked
    (an evaluation reads no train split)."""
    needs: dict[str, tuple[str, set[str]]] = {}
    if "train" in splits:
        for path in cfg.get("data_paths") or []:
            needs.setdefault(str(path), ("data_paths", set()))[1].add("train")
    if "eval" in splits:
        key = "data_paths_test" if cfg.get("data_paths_test") else "data_paths"
        for path in eval_paths(cfg):
            needs.setdefault(str(path), (key, set()))[1].add("eval")
    auto = (cfg.get("build_if_missing") or {}).get("output_dir")
    checks = []
    for path, (key, wanted) in needs.items():
        name = f"dataset {path}"
        if is_auto_built(cfg, path) and not Path(path).exists():
            checks.append(Check(name, True, "built at launch when missing (build_if_missing)"))
            continue
        recipe = data_recipe(cfg, path)
        if not (Path(path) / "metadata.json").is_file():
            what = "does not exist" if not Path(path).exists() else "is not a dataset (no metadata.json)"
            detail = f"{key}: dataset directory {path} {what}. Build it with: {recipe}"
            if auto:
                detail += (f"; or leave {key} at the config's default ({auto}), which is built automatically "
                           f"when missing")
            checks.append(Check(name, False, detail, FileNotFoundError))
            continue
        absent = sorted(s for s in wanted if not (Path(path) / s / "arrays.npz").is_file())
        checks.append(Check(name, not absent, "present" if not absent else
                            f"{key}: dataset {path} has no {' or '.join(repr(s) for s in absent)} split "
                            f"({path}/<split>/arrays.npz); rebuild it with: {recipe}", FileNotFoundError))
    return checks


# ---------------------------------------------------------------------------------------------
# batches over ranks


def divides_check(key: str, value: int, world_size: int) -> Check:
    ok = int(value) % int(world_size) == 0
    return Check(f"{key} divides over {world_size} rank(s)", ok,
                 f"{key}={value}" if ok else f"{key}={value} does not divide evenly over world_size={world_size} "
                                             f"ranks: pick a multiple of {world_size}")


# the per-rank eval batch on a GPU when eval_global_batch_size is null (config key eval_batch_per_rank;
# checkpoints of older runs lack the key): an eval step has no backward, so it holds one ACT step's
# activations, not the ones a training step keeps for backward; 256 rows of the 30x30 canvas keep the
# GPU's matmuls large (SF runs train at 32 per rank), and the GPU check's eval stage runs 1024 per GPU
EVAL_BATCH_PER_RANK = 256


def eval_global_batch(cfg: DictConfig, world_size: int, device_type: str) -> int:
    """The eval's global batch: `eval_global_batch_size` when set; else, per rank, the training
    batch on CPU (tiny CPU runs keep their small batches) and max(training batch,
    `eval_batch_per_rank`) on a GPU (throughput: no backward, so a larger batch fits)."""
    if cfg.get("eval_global_batch_size"):
        return int(cfg.eval_global_batch_size)
    per_rank = max(1, int(cfg.global_batch_size) // int(world_size))
    if device_type == "cuda":
        per_rank = max(per_rank, int(cfg.get("eval_batch_per_rank") or EVAL_BATCH_PER_RANK))
    return per_rank * int(world_size)


def batch_checks(cfg: DictConfig, world_size: int, train: bool = True) -> list[Check]:
    """The training batch (when `train`), the eval batch (`eval_global_batch`) and an active
    test-time adaptation's batch must each split evenly over `world_size` ranks."""
    gbs = int(cfg.global_batch_size)
    checks = [divides_check("global_batch_size", gbs, world_size)] if train else []
    # the GPU's value: an explicit one as it is; the default divides by construction
    checks.append(divides_check("eval_global_batch_size", eval_global_batch(cfg, world_size, "cuda"), world_size))
    tta = cfg.get("tta")
    if tta is not None and tta.get("mode", "none") != "none":
        checks.append(divides_check("tta.global_batch_size", int(tta.global_batch_size), world_size))
    return checks


def init_weights_checks(cfg: DictConfig) -> list[Check]:
    """`init_weights` names a complete step folder holding weights, and is the only initialisation asked for."""
    path = cfg.get("init_weights")
    if not path:
        return []
    from training.checkpoint import incomplete_reason, weights_file  # no torch import for the other checks
    folder = Path(path)
    problem, error = incomplete_reason(folder), FileNotFoundError
    if not problem and (not weights_file(folder).exists() or not (folder / "trainer_state.json").exists()):
        problem = "holds no model.pt / trainer_state.json"
    if not problem and cfg.get("load_pretrained_decoder"):
        problem, error = (f"is set together with load_pretrained_decoder={cfg.load_pretrained_decoder}: "
                          f"init_weights loads the whole model; give one of the two"), ValueError
    return [Check(f"init_weights {path}", problem is None, f"init_weights={path} {problem}" if problem else "", error)]


def curriculum_checks(cfg: DictConfig) -> list[Check]:
    """The `curriculum` block parses, and its group_regex matches the id of every training puzzle in
    the datasets that exist already (one not built yet is checked when the trainer loads it)."""
    import json

    from training.curriculum import CurriculumSettings, puzzle_groups
    try:
        settings = CurriculumSettings.from_config(cfg.get("curriculum"))
    except ValueError as e:
        return [Check("curriculum", False, str(e))]
    if not settings.active:
        return []
    checks = [Check("curriculum", True, f"mode {settings.mode}, signal {settings.signal}")]
    if settings.group_regex is not None:
        for path in cfg.get("data_paths") or []:
            ids_file = Path(path) / "train" / "puzzles.json"
            if not ids_file.is_file():
                continue
            try:
                groups = puzzle_groups(json.loads(ids_file.read_text()), settings.group_regex, f" ({ids_file})")[1]
                checks.append(Check(f"curriculum groups of {path}", True, f"{len(groups)} groups"))
            except ValueError as e:
                checks.append(Check(f"curriculum groups of {path}", False, str(e)))
    return checks
