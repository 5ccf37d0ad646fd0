"""ETRM models. Resolve classes by "module@Class" inside this package, e.g.
load_model_class("recursive_reasoning.etrm@TRMWithEncoder"), load_loss_class("losses@ACTLossHead")."""
from __future__ import annotations

import importlib
import inspect
import pkgutil

_SKIP_MODULES = {"config", "layers", "pretrained"}


def _modules() -> list[str]:
    pkg = importlib.import_module(__name__)
    return sorted(
        m.name[len(__name__) + 1:]
        for m in pkgutil.walk_packages(pkg.__path__, prefix=__name__ + ".")
        if not m.ispkg and m.name.rsplit(".", 1)[-1] not in _SKIP_MODULES and ".encoders." not in m.name
    )


def _load(identifier: str, kind: str) -> type:
    if "@" not in identifier:
        raise ValueError(f"{kind} identifier {identifier!r} must look like 'module@Class'; modules: {_modules()}")
    module_name, class_name = identifier.split("@", 1)
    if module_name not in _modules():
        raise ValueError(f"unknown {kind} module {module_name!r}; valid modules: {_modules()}")
    from torch import nn  # noqa: PLC0415 (models.config is imported to compose configs, without torch)

    module = importlib.import_module(f"{__name__}.{module_name}")
    classes = sorted(
        n for n, c in vars(module).items()
        if inspect.isclass(c) and issubclass(c, nn.Module) and c.__module__ == module.__name__
    )
    if class_name not in classes:
        raise ValueError(f"unknown {kind} class {class_name!r} in {module_name}; valid classes: {classes}")
    return getattr(module, class_name)


def load_model_class(identifier: str) -> type:
    return _load(identifier, "model")


def load_loss_class(identifier: str) -> type:
    return _load(identifier, "loss")
