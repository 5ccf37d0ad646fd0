"""ETRM data: builder (``python -m dataset.build_arc_dataset``), loader, grids and variants.

The loader names are imported lazily so that the builder never imports torch.
"""
from __future__ import annotations

__all__ = ["ARCSplit", "EvalLoader", "TrainLoader", "load_split"]


def __getattr__(name: str):
    if name in __all__:
        from . import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'dataset' has no attribute {name!r}")
