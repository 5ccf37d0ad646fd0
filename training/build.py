"""Everything the trainer and the evaluation entry resolve from the config before any real work:
data (checked, and the config's own default dataset built when missing), model, loss head and
evaluators. (The run's identity: training/run_identity.py.)

Each check here fails fast with the key, value or path at fault."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dataset import load_split
from dataset.loader import BUILD_HINT
from evaluators import load_evaluator_class
from models import load_loss_class, load_model_class

log = logging.getLogger("etrm")

# Added to the arch config from the dataset's metadata, never set by hand.
DATA_DERIVED_KEYS = ("seq_len", "vocab_size", "max_demos", "batch_size")


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
    ensure_dataset builds when it is missing."""
    spec = cfg.get("build_if_missing")
    auto = spec.get("output_dir") if spec else None
    return bool(auto) and _same_path(path, auto)


def check_data_paths(cfg: DictConfig) -> None:
    """Every dataset the config names must exist, except the config's own default dataset, which
    `ensure_dataset` builds at its own default path (`build_if_missing.output_dir`). A path the user
    gave that does not exist is an error naming it and the build command, before any work: it is
    never built, so a typo cannot train on freshly built data of the wrong kind."""
    spec = cfg.get("build_if_missing")
    auto = spec.get("output_dir") if spec else None
    for key in ("data_paths", "data_paths_test"):
        for path in cfg.get(key) or []:
            if Path(path).exists() or is_auto_built(cfg, path):
                continue
            hint = BUILD_HINT.format(path=path)
            if auto:
                hint += (f"; or leave {key} at the config's default ({auto}), which is built automatically "
                         f"when missing")
            raise FileNotFoundError(f"{key}: dataset directory {path} does not exist. Build it with: {hint}")


def ensure_dataset(cfg: DictConfig, is_main: bool) -> None:
    """Build the config's own default dataset (`build_if_missing`, at its `output_dir`) when it is
    absent (rank 0 only; call barrier after). Any other missing path is an error (check_data_paths)."""
    check_data_paths(cfg)
    spec = cfg.get("build_if_missing")
    if not spec or not is_main:
        return
    path = Path(spec.output_dir)
    if path.exists() or not any(is_auto_built(cfg, p) for p in cfg.data_paths):
        return
    cmd = build_command(spec)
    log.info("dataset %s is missing: building it first (%s)", path, " ".join(cmd[1:]))
    if subprocess.run(cmd).returncode != 0:
        raise RuntimeError(f"building the dataset {path} failed (the builder's message is above): {' '.join(cmd[1:])}")


# Config keys that change what an evaluation computes (its output folder and settings.json record them).
EVAL_SETTING_KEYS = ("max_eval_groups", "max_eval_variants", "max_demos", "eval_halting", "evaluators", "tta")


def eval_settings(cfg: DictConfig, weights: str) -> dict:
    """What an evaluation of `cfg` computes: weights, eval data and every EVAL_SETTING_KEYS value."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return {"weights": weights, "data_paths": eval_paths(cfg), **{k: resolved.get(k) for k in EVAL_SETTING_KEYS}}


def eval_paths(cfg: DictConfig) -> list[str]:
    """Where the eval split comes from: `data_paths_test` when set, else `data_paths`."""
    return list(cfg.data_paths_test) if cfg.get("data_paths_test") else list(cfg.data_paths)


def load_eval_split(cfg: DictConfig):
    return load_split(eval_paths(cfg), "eval")


def load_data(cfg: DictConfig):
    """(train_split, eval_split), checked to agree with each other."""
    train = load_split(list(cfg.data_paths), "train")
    evaluation = load_eval_split(cfg)
    if (train.side, train.vocab_size) != (evaluation.side, evaluation.vocab_size):
        raise ValueError(f"train data {list(cfg.data_paths)} (grid {train.side}, vocab {train.vocab_size}) and eval data "
                         f"{eval_paths(cfg)} (grid {evaluation.side}, vocab {evaluation.vocab_size}) do not agree")
    return train, evaluation


def model_kwargs(cfg: DictConfig, split, local_batch_size: int) -> dict:
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    for key in DATA_DERIVED_KEYS:
        if key in arch:
            raise ValueError(f"arch.{key} comes from the dataset's metadata and must not be set in the config")
    arch.pop("name")
    arch.pop("loss")
    max_demos = int(cfg.max_demos) if cfg.get("max_demos") else split.max_demos
    return dict(arch, seq_len=split.seq_len, vocab_size=split.vocab_size, max_demos=min(max_demos, split.max_demos),
                batch_size=local_batch_size, eval_halting=cfg.get("eval_halting", "max"))


def check_data_fits(saved_kwargs: dict, split, source: str) -> None:
    """A model built for another canvas or vocabulary cannot read this dataset: say which."""
    for key, have in (("seq_len", split.seq_len), ("vocab_size", split.vocab_size)):
        want = saved_kwargs.get(key)
        if want is not None and int(want) != int(have):
            what = "grid size" if key == "seq_len" else "vocabulary"
            raise ValueError(f"{source} was built for {key}={want} but the dataset has {key}={have}: its {what} does not fit "
                             f"the model (dataset side {split.side}x{split.side})")


def loss_head(cfg: DictConfig, model):
    loss_cfg = OmegaConf.to_container(cfg.arch.loss, resolve=True)
    return load_loss_class(loss_cfg.pop("name"))(model, **loss_cfg)


def build_model(cfg: DictConfig, kwargs: dict):
    """(model, loss_head). Unknown class names, encoder types or loss types fail here with the choices."""
    model = load_model_class(cfg.arch.name)(kwargs)
    return model, loss_head(cfg, model)


def build_evaluators(cfg: DictConfig, eval_split, wandb_log: bool) -> list:
    evaluators = []
    for spec in cfg.get("evaluators") or []:
        spec = OmegaConf.to_container(spec, resolve=True)
        cls = load_evaluator_class(spec.pop("name"))
        evaluators.append(cls(eval_split, wandb_log=wandb_log, **spec))
    return evaluators
