"""The Hydra schema of the `arch` config group, generated from the model's own config dataclass
(models/config.py ETRMConfig), so the model defaults live in one place: config/arch/etrm.yaml
starts from this schema (`defaults: [etrm_schema]`) and names only the model class and its loss.
A mistyped arch key or a value of the wrong type fails when the config is composed.

Import this module before Hydra composes a config (the entry points do); `compose_config` composes
one in code (verify, benches, tests) exactly as the command line would."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore

from models.config import DATA_DERIVED_KEYS, RUN_DERIVED_KEYS, ETRMConfig

SCHEMA_NAME = "etrm_schema"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"


def _arch_schema() -> type:
    hints = typing.get_type_hints(ETRMConfig)
    model_fields = [(f.name, hints[f.name], dataclasses.field(default=f.default)) for f in dataclasses.fields(ETRMConfig)
                    if f.name not in DATA_DERIVED_KEYS + RUN_DERIVED_KEYS]
    return dataclasses.make_dataclass("ArchSchema", [
        ("name", str, dataclasses.field(default="???")),       # "module@Class" under models/, e.g. recursive_reasoning.etrm@TRMWithEncoder
        ("loss", Any, dataclasses.field(default_factory=dict)),  # {name: losses@ACTLossHead, loss_type, kl_weight}
        *model_fields])


ArchSchema = _arch_schema()


def arch_defaults() -> dict:
    """The model defaults as the `arch` config holds them (ETRMConfig minus data-derived keys)."""
    return {k: v for k, v in ETRMConfig.defaults().items() if k not in RUN_DERIVED_KEYS}


ConfigStore.instance().store(group="arch", name=SCHEMA_NAME, node=ArchSchema)


def compose_config(name: str, overrides: list[str] | tuple[str, ...] = ()):
    """The config `name` with `overrides`, as `python pretrain_etrm.py --config-name name overrides...`
    (or evaluate_etrm.py) composes it."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
        return compose(config_name=name, overrides=list(overrides))
