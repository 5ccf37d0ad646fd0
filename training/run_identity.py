"""Which run a command is, and whether it may resume the checkpoints it finds.

A run's identity is its config name plus its resolved config, minus RESUME_MUTABLE_KEYS: the keys
that may legitimately change between a run and its resumption (how long to train, how and how often
to evaluate and checkpoint, where to log, which device). Without `+run_name`, the run directory is
named from a hash of that identity, so editing a YAML value or switching configs starts a new run
instead of silently resuming an old one. With an explicit name (job files), resuming checkpoints
trained with a different identity is refused with the differing keys named, unless
`allow_config_change=true`. The run's `config.yaml` is only written for a fresh run: it is never
rewritten under existing checkpoints (an allowed change is recorded beside it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from models.config import LOSS_DEFAULTS
from training.config_schema import arch_defaults
from training.curriculum import CurriculumSettings

# Top-level keys left out of a run's identity: changing them on a resume is expected.
RESUME_MUTABLE_KEYS = frozenset({
    # naming and placement
    "project_name", "run_name", "run_dir", "load_checkpoint", "allow_config_change",
    "init_weights",  # read only when a run starts (a resumed run continues from its own weights)
    # how long to train (the LR schedule stretches to the new length)
    "epochs", "max_steps", "max_train_minutes",
    # evaluation: when, on what, how
    "eval_interval", "eval_global_batch_size", "eval_batch_per_rank", "max_eval_groups", "max_eval_variants", "train_eval_max_variants", "eval_halting",
    "evaluators", "data_paths_test", "tta", "summary_note",
    # checkpoints, logging, runtime, guards
    "checkpoint_every_eval", "checkpoint_interval", "checkpoint_interval_minutes", "dist_timeout_minutes",
    "checkpoint_keep_last", "log_interval", "wandb_mode",
    "device", "compile", "build_if_missing", "data_recipe", "max_nonfinite_in_a_row", "collapse_var_threshold", "collapse_patience",
})


def _without_defaults(section: dict, defaults: dict) -> dict:
    """`section` without the keys that hold their default value."""
    return {k: v for k, v in section.items() if k not in defaults or v != defaults[k]}


def identity_config(cfg: DictConfig | dict) -> dict:
    """The resolved config without the resume-mutable keys (plain containers), and without the keys
    that hold their default: `arch` (ETRMConfig; arch.loss: LOSS_DEFAULTS) and `curriculum`
    (CurriculumSettings; a curriculum that is off is left out whole). A run whose config.yaml was
    written before a key was listed in the config (it then ran with the default) is the same run."""
    resolved = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    out = {k: v for k, v in resolved.items() if k not in RESUME_MUTABLE_KEYS}
    if isinstance(out.get("curriculum"), dict):
        if out["curriculum"].get("mode", "none") == "none":
            del out["curriculum"]
        else:
            out["curriculum"] = _without_defaults(out["curriculum"], dataclasses.asdict(CurriculumSettings()))
    if isinstance(out.get("arch"), dict):
        out["arch"] = _without_defaults(out["arch"], arch_defaults())
        if isinstance(out["arch"].get("loss"), dict):
            out["arch"]["loss"] = _without_defaults(out["arch"]["loss"], LOSS_DEFAULTS)
    return out


def identity_hash(cfg: DictConfig | dict, config_name: str | None) -> str:
    blob = json.dumps({"config_name": config_name or "", "config": identity_config(cfg)}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:8]


def run_identity(cfg: DictConfig, config_name: str | None = None) -> tuple[str, str, Path]:
    """(project_name, run_name, run_dir). Deterministic: every rank and every restart of the same
    command agree on it, so a restarted job finds its own checkpoints."""
    project = cfg.get("project_name") or "etrm"
    name = cfg.get("run_name") or f"{cfg.arch.encoder_type}-{identity_hash(cfg, config_name)}"
    run_dir = Path(cfg.run_dir) if cfg.get("run_dir") else Path("runs") / project / name
    return project, name, run_dir


def _flatten(d, prefix: str = "") -> dict:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out or {prefix: {}}
    return {prefix: d}


def config_differences(old: dict, new: dict) -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) for every identity key that differs (absent -> '<unset>')."""
    a, b = _flatten(identity_config(old)), _flatten(identity_config(new))
    missing = "<unset>"
    return [(k, a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]


def check_resume_compatible(cfg: DictConfig, checkpoint_path: str | Path) -> list[tuple[str, object, object]]:
    """Compare the config a checkpoint was trained with (its config.yaml) to this command's.
    Returns the differences when `allow_config_change` is set; raises a ValueError naming them
    otherwise. Cheap: call it before any data or model work."""
    saved_file = Path(checkpoint_path) / "config.yaml"
    if not saved_file.is_file():
        return []
    saved = OmegaConf.to_container(OmegaConf.load(saved_file), resolve=True)
    diffs = config_differences(saved, OmegaConf.to_container(cfg, resolve=True))
    if diffs and not cfg.get("allow_config_change", False):
        shown = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in diffs[:12])
        more = f" (+{len(diffs) - 12} more)" if len(diffs) > 12 else ""
        raise ValueError(
            f"refusing to resume {checkpoint_path}: it was trained with a different config ({shown}{more}). "
            f"Start a new run (another +run_name= or run_dir=), or pass allow_config_change=true to resume with "
            f"the new values (keys that may always change: {', '.join(sorted(RESUME_MUTABLE_KEYS))})")
    return diffs
