"""Rank-0 metric sinks: `<run_dir>/metrics.jsonl` always, W&B when its mode allows.

The W&B run id is kept in `<run_dir>/wandb_run_id`, so a resumed run continues the same
W&B run. Without a login W&B falls back to offline mode instead of failing the run.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger("etrm")


def resolve_wandb_mode(configured: str | None) -> str:
    mode = configured or os.environ.get("WANDB_MODE")
    if mode:
        if mode not in ("online", "offline", "disabled"):
            raise ValueError(f"wandb_mode must be online, offline or disabled, got {mode!r}")
        return mode
    try:
        import wandb
        logged_in = wandb.login(prompt=False, verify=False)
    except Exception:  # unreadable settings or netrc: treat as not logged in
        logged_in = False
    return "online" if logged_in else "offline"


class MetricsLogger:
    def __init__(self, run_dir: Path, project: str, name: str, config: dict, wandb_mode: str | None, enabled: bool):
        self.enabled = enabled
        self.wandb_run = None
        if not enabled:
            return
        self.run_dir = Path(run_dir)
        self.jsonl = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        mode = resolve_wandb_mode(wandb_mode)
        if mode != "disabled":
            import wandb
            id_file = self.run_dir / "wandb_run_id"
            run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
            id_file.write_text(run_id)
            self.wandb_run = wandb.init(project=project, name=name, id=run_id, resume="allow", mode=mode,
                                        dir=str(self.run_dir), config=config)
            log.info("W&B %s run %s/%s (id %s)", mode, project, name, run_id)

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
