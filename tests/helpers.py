"""Helpers shared by several test modules (test modules import this, never each other)."""
from __future__ import annotations

from pathlib import Path

from training.config_schema import compose_config as compose_cfg  # noqa: F401 (the one compose helper)

REPO = Path(__file__).resolve().parents[1]
