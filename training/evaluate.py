"""Evaluate a checkpoint folder with the config it was trained with, plus eval overrides.

Outputs go to a folder of their own under `<run_dir>/eval/` (run_dir: the checkpoint's run, or
`run_dir=`), named from the evaluation's settings: `step_N-<what differs>-<hash of all settings>`.
So an evaluation never overwrites the training run's `eval/step_N/` nor another evaluation with
other settings; re-running the identical evaluation replaces its own folder, whole."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from dataset import EvalLoader
from training import build, checkpoint, preflight
from training.distributed import init_distributed, shutdown
from training.evaluation import eval_folder_name, eval_settings
from training.tta import TTASettings, evaluate_with_tta

log = logging.getLogger("etrm")
OVERRIDABLE = ("data_paths", "data_paths_test", "max_eval_groups", "max_eval_variants", "eval_global_batch_size",
               "eval_halting", "device")


def evaluate_checkpoint(cfg: DictConfig) -> dict:
    dist_info = init_distributed(cfg.device)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s")
    log.setLevel(logging.INFO if dist_info.is_main else logging.WARNING)  # one rank logs
    try:
        path = checkpoint.require_evaluable(cfg.checkpoint, "checkpoint=")
        if cfg.weights not in ("ema", "model"):
            raise ValueError(f"weights must be ema or model, got {cfg.weights!r}")
        train_cfg = OmegaConf.load(path / "config.yaml")
        overridden = {key: cfg[key] for key in OVERRIDABLE if cfg.get(key) is not None}
        for key, value in overridden.items():
            OmegaConf.update(train_cfg, key, value, force_add=True)
        # the evaluation's own test-time adaptation (not the one the run used for its evals)
        tta = TTASettings.from_config(cfg.get("tta"), dist_info.world_size)
        OmegaConf.update(train_cfg, "tta", cfg.get("tta"), force_add=True, merge=False)
        # nothing is built for an evaluation: the run's auto-built dataset must be there too
        preflight.require(preflight.dataset_checks(OmegaConf.merge(train_cfg, {"build_if_missing": None}), splits=("eval",))
                          + preflight.batch_checks(train_cfg, dist_info.world_size, train=False))
        saved = checkpoint.read_trainer_state(path)
        step = int(saved["step"])
        weights_file = checkpoint.weights_file(path, ema=cfg.weights == "ema")
        settings = eval_settings(train_cfg, weights=weights_file.stem)
        run_dir = Path(cfg.run_dir) if cfg.run_dir else path.parent.parent
        out_dir = run_dir / "eval" / eval_folder_name(step, settings, path, overridden)

        eval_split = build.load_eval_split(train_cfg)  # the train split is not needed
        kwargs = dict(saved["model_kwargs"], eval_halting=train_cfg.get("eval_halting", "max"))
        build.check_data_fits(kwargs, eval_split, f"checkpoint {path}")
        model, head = build.build_model(train_cfg, kwargs)
        build.load_weights(model, weights_file, path / "config.yaml")
        model.to(dist_info.device)
        if train_cfg.get("compile"):  # as the run's own evaluations (training/trainer.py)
            head = torch.compile(head)

        gbs = preflight.eval_global_batch(train_cfg, dist_info.world_size, dist_info.device.type)
        loader = EvalLoader(eval_split, gbs, rank=dist_info.rank, world_size=dist_info.world_size,
                            max_eval_groups=train_cfg.get("max_eval_groups"), max_variants=train_cfg.get("max_eval_variants"),
                            max_demos=train_cfg.get("max_demos"))
        evaluators = build.build_evaluators(train_cfg, eval_split, wandb_log=False)
        log.info("evaluating %s (%s weights) on %d samples", path, weights_file.stem, loader.num_samples)
        results = evaluate_with_tta(head, eval_split, loader, evaluators, dist_info, train_cfg.arch.forward_dtype,
                                    out_dir, step, tta, settings={**settings, "checkpoint": str(path)},
                                    max_eval_variants=train_cfg.get("max_eval_variants"),
                                    max_demos=train_cfg.get("max_demos"))
        if dist_info.is_main:
            print(json.dumps(results, indent=1))
            log.info("outputs in %s", out_dir)
        results["eval_dir"] = str(out_dir)
        return results
    finally:
        shutdown()
