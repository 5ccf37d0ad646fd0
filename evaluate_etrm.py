"""Evaluate a checkpoint with its own config and EMA weights:
    python evaluate_etrm.py checkpoint=runs/<project>/<run>/checkpoints/step_N [max_eval_groups=32 ...]
Works on CPU or CUDA, under torchrun or not."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="config", config_name="cfg_evaluate_etrm")
def main(cfg: DictConfig) -> None:
    from training.evaluate import evaluate_checkpoint

    evaluate_checkpoint(cfg)


if __name__ == "__main__":
    main()
