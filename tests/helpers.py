"""Helpers shared by several test modules (test modules import this, never each other)."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "config"


def compose_cfg(name: str, overrides: list[str] | tuple[str, ...] = ()):
    """The config `name` with `overrides`, composed exactly as `python pretrain_etrm.py
    --config-name name overrides...` (or evaluate_etrm.py) would compose it."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=name, overrides=list(overrides))
