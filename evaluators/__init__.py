"""Evaluators, named in configs as ``module@Class`` (e.g. ``arc@ARC``).

An evaluator is built as ``cls(split, **kwargs)`` and driven with ``begin()``,
``update(batch, outputs)`` per eval batch and ``result(run_dir, step) -> dict | None``.
"""
from __future__ import annotations

import importlib

# name -> (module under evaluators/, class name). Only names listed here are valid choices.
EVALUATORS: dict[str, tuple[str, str]] = {
    "arc@ARC": ("arc", "ARC"),
}


def load_evaluator_class(name: str):
    """Resolve an evaluator name such as ``"arc@ARC"`` to its class."""
    if name not in EVALUATORS:
        choices = ", ".join(sorted(EVALUATORS))
        raise ValueError(f"unknown evaluator {name!r}; valid choices: {choices}")
    module_name, class_name = EVALUATORS[name]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)


__all__ = ["EVALUATORS", "load_evaluator_class"]
