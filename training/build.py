"""Everything the trainer and the evaluation entry resolve from the config before any real work:
data (checked, and the config's own default dataset built when missing), model, loss head and
evaluators. (The run's identity: training/run_identity.py; the launch checks: training/preflight.py.)

Each check here fails fast with the key, value or path at fault."""
from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dataset import load_split
from evaluators import load_evaluator_class
from models import load_loss_class, load_model_class
from models.config import DATA_DERIVED_KEYS
from training import checkpoint
from training.preflight import build_command, dataset_checks, eval_paths, is_auto_built, require

log = logging.getLogger("etrm")



def ensure_dataset(cfg: DictConfig, is_main: bool) -> None:
    """Build the config's own default dataset (`build_if_missing`, at its `output_dir`) when it is
    absent (rank 0 only; call barrier after). Any other missing dataset is an error (training/preflight.py)."""
    require(dataset_checks(cfg))
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


def load_eval_split(cfg: DictConfig):
    require(dataset_checks(cfg, splits=("eval",)))
    return load_split(eval_paths(cfg), "eval")


def load_data(cfg: DictConfig):
    """(train_split, eval_split), checked to agree with each other."""
    require(dataset_checks(cfg, splits=("train",)))
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


def load_weights(model, weights_file, config_file) -> None:
    """Load a checkpoint's weights into a model built from its config; a mismatch names both files."""
    try:
        missing, unexpected = model.load_state_dict(torch.load(weights_file, map_location="cpu"), strict=False)
    except RuntimeError as e:  # a shape mismatch: torch names the tensors, not the files
        raise ValueError(f"{weights_file} does not match the model built from {config_file}: {e}") from None
    if missing or unexpected:
        raise ValueError(f"{weights_file} does not match the model built from {config_file}: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def init_from_checkpoint(model, folder, split) -> Path:
    """`init_weights`: a new run starts from a checkpoint's weights (its EMA copy when saved), e.g.
    fine-tuning on ARC what was pretrained on RE-ARC. The checkpoint's grid size and vocabulary must
    fit this run's data, and its weights this run's `arch`. Returns the weights file read."""
    folder = Path(folder)
    saved = checkpoint.read_trainer_state(folder).get("model_kwargs", {})
    check_data_fits(saved, split, f"init_weights={folder}")
    source = checkpoint.weights_file(folder)
    load_weights(model, source, "this run's arch config")
    return source


def build_evaluators(cfg: DictConfig, eval_split, wandb_log: bool) -> list:
    evaluators = []
    for spec in cfg.get("evaluators") or []:
        spec = OmegaConf.to_container(spec, resolve=True)
        cls = load_evaluator_class(spec.pop("name"))
        evaluators.append(cls(eval_split, wandb_log=wandb_log, **spec))
    return evaluators
