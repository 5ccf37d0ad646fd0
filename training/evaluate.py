"""Evaluate a checkpoint folder with the config it was trained with, plus eval overrides."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dataset import EvalLoader
from training import build, checkpoint
from training.distributed import init_distributed, shutdown
from training.trainer import run_evaluation

log = logging.getLogger("etrm")
OVERRIDABLE = ("data_paths", "data_paths_test", "max_eval_groups", "max_eval_variants", "eval_global_batch_size",
               "eval_halting", "device")


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    dist_info = init_distributed(cfg.device)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO if dist_info.is_main else logging.WARNING)  # one rank logs
    try:
        path = Path(cfg.checkpoint)
        if not (path / "config.yaml").is_file() or not checkpoint.is_complete(path):
            raise FileNotFoundError(f"checkpoint={path} is not a complete checkpoint folder (expected config.yaml and the "
                                    f"{checkpoint.MARKER} marker in <run_dir>/checkpoints/step_N)")
        if cfg.weights not in ("ema", "model"):
            raise ValueError(f"weights must be ema or model, got {cfg.weights!r}")
        train_cfg = OmegaConf.load(path / "config.yaml")
        for key in OVERRIDABLE:
            if cfg.get(key) is not None:
                OmegaConf.update(train_cfg, key, cfg[key], force_add=True)
        saved = json.loads((path / "trainer_state.json").read_text())
        step = int(saved["step"])
        run_dir = Path(cfg.run_dir) if cfg.run_dir else path.parent.parent

        eval_split = build.load_eval_split(train_cfg)  # the train split is not needed
        kwargs = dict(saved["model_kwargs"], eval_halting=train_cfg.get("eval_halting", "max"))
        build.check_data_fits(kwargs, eval_split, f"checkpoint {path}")
        model, head = build.build_model(train_cfg, kwargs)
        weights_file = path / ("ema.pt" if cfg.weights == "ema" and (path / "ema.pt").exists() else "model.pt")
        missing, unexpected = model.load_state_dict(torch.load(weights_file, map_location="cpu"), strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights_file} does not match the model built from {path / 'config.yaml'}: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.to(dist_info.device)

        gbs = int(train_cfg.eval_global_batch_size or train_cfg.global_batch_size)
        if gbs % dist_info.world_size:
            raise ValueError(f"eval_global_batch_size={gbs} does not divide evenly over world_size={dist_info.world_size}")
        loader = EvalLoader(eval_split, gbs, rank=dist_info.rank, world_size=dist_info.world_size,
                            max_eval_groups=train_cfg.get("max_eval_groups"), max_variants=train_cfg.get("max_eval_variants"),
                            max_demos=train_cfg.get("max_demos"))
        evaluators = build.build_evaluators(train_cfg, eval_split, wandb_log=False)
        log.info("evaluating %s (%s weights) on %d samples", path, weights_file.stem, loader.num_samples)
        results = run_evaluation(head, loader, evaluators, dist_info, train_cfg.arch.forward_dtype, run_dir, step)
        if dist_info.is_main:
            print(json.dumps(results, indent=1))
            log.info("outputs in %s", run_dir / "eval" / f"step_{step}")
        return results
    finally:
        shutdown()
