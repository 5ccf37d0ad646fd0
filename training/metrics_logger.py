"""Rank-0 metric sinks: `<run_dir>/metrics.jsonl` always, W&B when its mode allows.

The W&B run id is kept in `<run_dir>/wandb_run_id`, so a resumed (or requeued) run continues
the same W&B run. Without a login, or on a compute node that cannot reach the W&B server (probed
with a short connect; a failing online `wandb.init` too), W&B runs offline instead of failing the
run: `wandb sync <run_dir>/wandb/offline-run-*` uploads it later.

Every point is logged with `trainer/step` as its x-axis (`define_metric`), never as W&B's own
`step=`: W&B drops every point whose step is below the last one it logged, so after a restart
from an older checkpoint the replayed steps (and everything after them) would be missing.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from pathlib import Path
from urllib.parse import urlparse

from dataset.atomic import atomic_write_text

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


STEP_METRIC = "trainer/step"


def wandb_reachable(timeout_s: float = 3.0) -> bool:
    """Whether a TCP connection to the W&B server (WANDB_BASE_URL, default api.wandb.ai) opens
    within `timeout_s`: compute nodes often have no route out, and online mode would then fail."""
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout_s):
            return True
    except OSError:
        return False


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
            atomic_write_text(id_file, run_id)
            if mode == "online" and not wandb_reachable():
                log.warning("W&B: no connection to the server from this node: logging offline "
                            "(upload later with: wandb sync %s/wandb/offline-run-*)", self.run_dir)
                mode = "offline"

            def init(m):
                return wandb.init(project=project, name=name, id=run_id, resume="allow", mode=m,
                                  dir=str(self.run_dir), config=config)

            try:
                self.wandb_run = init(mode)
            except Exception as e:  # noqa: BLE001 (wandb raises its own CommError, UsageError, ...)
                if mode != "online":
                    raise
                log.warning("W&B online init failed (%s: %s): logging offline", type(e).__name__, e)
                mode, self.wandb_run = "offline", init("offline")
            self.wandb_run.define_metric(STEP_METRIC)
            self.wandb_run.define_metric("*", step_metric=STEP_METRIC)
            log.info("W&B %s run %s/%s (id %s)", mode, project, name, run_id)

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.wandb_run is not None:
            self.wandb_run.log({**metrics, STEP_METRIC: step})

    def close(self) -> None:
        if not self.enabled:
            return
        self.jsonl.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
