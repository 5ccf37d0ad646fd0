"""Initialise the inner reasoning model (not the encoder) from a checkpoint.

Accepted sources:
- a checkpoint of this project: a `.pt` state dict of TRMWithEncoder, or a directory holding
  `model.pt` (e.g. `<run>/checkpoints/step_N/`);
- a TRM-format state dict (the public TRM code): keys like
  `_orig_mod.model.inner.L_level.layers.0.self_attn.qkv_proj.weight`,
  `inner.embed_tokens.embedding_weight`, `inner.puzzle_emb.weights` (skipped).

Prefixes `_orig_mod.` (torch.compile), `module.` (DDP) and `model.` (loss-head wrapper) are
stripped. Only `inner.*` keys are loaded; encoder keys found in the file are reported as skipped.
"""
from __future__ import annotations

import os

import torch
from torch import nn

_STRIP_PREFIXES = ("_orig_mod.", "module.", "model.")
# TRM name -> this project's name, applied to the part after "inner."
_TRM_RENAMES = (
    ("L_level.layers.", "layers."),
    ("embed_tokens.embedding_weight", "embed_tokens.weight"),
)
_SKIP_INNER = ("puzzle_emb.",)


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _STRIP_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if os.path.isdir(path):
        path = os.path.join(path, "model.pt")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("model", "state_dict", "model_state_dict"):  # {"model": state_dict, ...}
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def load_pretrained_decoder(model: nn.Module, path: str, verbose: bool = True) -> dict[str, list[str]]:
    """Copy the inner model's weights from `path` into `model` (TRMWithEncoder, or a loss head
    wrapping one as `.model`). Returns dict(loaded, missing, unexpected, skipped) of key names
    relative to the inner model. Raises ValueError on a shape mismatch."""
    if not hasattr(model, "inner") and hasattr(model, "model"):
        model = model.model
    model = getattr(model, "_orig_mod", model)
    inner: nn.Module = model.inner
    own = inner.state_dict()

    source: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    unexpected: list[str] = []
    for raw_key, value in _read_state_dict(path).items():
        key = _strip(raw_key)
        if not key.startswith("inner."):
            skipped.append(key)  # encoder or other non-decoder weights
            continue
        key = key[len("inner."):]
        for old, new in _TRM_RENAMES:
            if key.startswith(old) or key == old:
                key = new + key[len(old):]
        if key.startswith(_SKIP_INNER):
            skipped.append(key)
            continue
        if key not in own:
            unexpected.append(key)
            continue
        if tuple(value.shape) != tuple(own[key].shape):
            raise ValueError(
                f"shape mismatch for inner.{key} (from {raw_key!r}): checkpoint {tuple(value.shape)} "
                f"vs model {tuple(own[key].shape)}"
            )
        source[key] = value

    missing = sorted(set(own) - set(source))
    with torch.no_grad():
        for key, value in source.items():
            own[key].copy_(value.to(own[key].dtype))
    report = {"loaded": sorted(source), "missing": missing, "unexpected": sorted(unexpected), "skipped": sorted(skipped)}
    if verbose:
        print(f"load_pretrained_decoder({path}): loaded {len(source)} tensors into the inner model")
        for name in ("missing", "unexpected"):
            print(f"  {name} ({len(report[name])}): {report[name]}")
        print(f"  skipped ({len(skipped)} non-decoder keys, e.g. encoder / puzzle embedding)")
    return report
