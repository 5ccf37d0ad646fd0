"""Train ETRM. Single process:   python pretrain_etrm.py --config-name cfg_pretrain_etrm_tiny
Multi-GPU / multi-node:          torchrun --nproc-per-node 4 pretrain_etrm.py [overrides]
See README.md and jobs-etrm-semi-final.txt for full-scale commands."""
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path="config", config_name="cfg_pretrain_etrm_arc_agi_1")
def main(cfg: DictConfig) -> None:
    from training.trainer import train

    train(cfg, overrides=list(HydraConfig.get().overrides.task))


if __name__ == "__main__":
    main()
