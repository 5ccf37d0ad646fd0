"""Train ETRM. Single process:   python pretrain_etrm.py --config-name cfg_pretrain_etrm_tiny
Multi-GPU / multi-node:          torchrun --nproc-per-node 4 pretrain_etrm.py [overrides]
See README.md and jobs-etrm-semi-final.txt for full-scale commands."""
import training.env_defaults  # noqa: F401  (first: sets OMP_WAIT_POLICY before torch is imported)

import hydra
import training.config_schema  # noqa: F401  (registers the arch schema before Hydra composes)
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="config", config_name="cfg_pretrain_etrm_arc_agi_1")
def main(cfg: DictConfig) -> None:
    from training.trainer import train
    from training.user_errors import report_user_errors

    with report_user_errors():
        train(cfg, config_name=HydraConfig.get().job.config_name)


if __name__ == "__main__":
    main()
