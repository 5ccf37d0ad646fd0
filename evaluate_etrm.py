"""Evaluate a checkpoint with its own config and EMA weights:
    python evaluate_etrm.py checkpoint=runs/<project>/<run>/checkpoints/step_N [max_eval_groups=32 ...]
Works on CPU or CUDA, under torchrun or not. Outputs go to a folder of their own, named from the
evaluation's settings, under <run_dir>/eval/ (printed at the end)."""
import training.env_defaults  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch is imported)

import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="config", config_name="cfg_evaluate_etrm")
def main(cfg: DictConfig) -> None:
    from training.evaluate import evaluate_checkpoint
    from training.user_errors import report_user_errors

    with report_user_errors():
        evaluate_checkpoint(cfg)


if __name__ == "__main__":
    main()
