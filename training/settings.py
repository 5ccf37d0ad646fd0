"""Settings blocks of the config (`tta`, `curriculum`) read into their frozen dataclasses, keys checked
first: a misspelt key stops the run with the block's keys named, before any work."""
from __future__ import annotations

from omegaconf import DictConfig, OmegaConf


def settings_block(node: DictConfig | dict, fields: list[str], block: str, every_key_from: str | None = None) -> dict:
    """A settings block (`tta`, `curriculum`) as a plain dict, its keys checked against the settings
    dataclass's `fields`: unknown keys are refused, and with `every_key_from` (the file that holds
    them all) missing ones too."""
    data = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    unknown = sorted(set(data) - set(fields))
    missing = [k for k in fields if k not in data] if every_key_from else []
    if unknown or missing:
        raise ValueError(f"{block} config: unknown key(s) {unknown}" + (f", missing key(s) {missing}" if missing else "")
                         + f"; the keys are {'those of ' + every_key_from + ': ' if every_key_from else ''}{fields}")
    return data
