"""bench/train_step.py `--arch recipe`: the small-scale recipe's model options, read from
config/experiment/synthetic.yaml (its sizing options left to the preset), timed as the variant row;
options after it override it."""
from __future__ import annotations

import dataclasses
import json

from omegaconf import OmegaConf

from bench import train_step
from bench.common import RECIPE, recipe_arch
from models.config import ETRMConfig


def test_recipe_options_are_the_yaml_arch_block_without_sizes():
    yaml_arch = OmegaConf.to_container(OmegaConf.load(RECIPE)["arch"])
    options = recipe_arch()
    assert "puzzle_emb_len" in yaml_arch and "puzzle_emb_len" not in options
    assert options == {k: v for k, v in yaml_arch.items() if k != "puzzle_emb_len"}
    assert set(options) <= {f.name for f in dataclasses.fields(ETRMConfig)}
    assert recipe_arch(sizes=True) == yaml_arch


def test_arch_recipe_is_timed_and_later_options_override_it(capsys):
    train_step.main(["--preset", "tiny", "--batch", "1", "--repeats", "1", "--train-only", "--threads", "2",
                     "--arch", "recipe", "map_read=false"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    variant = out["variant"]
    assert variant["map_read"] is False and variant["cell_lookup"] is True
    assert {k: v for k, v in variant.items() if k not in ("params_total", "map_read")} == \
        {k: v for k, v in recipe_arch().items() if k != "map_read"}
    assert out["variant_train_ratio"] > 0
