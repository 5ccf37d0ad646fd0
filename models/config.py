"""Build config dataclasses from plain dicts with clear errors (one helper for every config)."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], d: dict[str, Any]) -> T:
    """cls(**d), but unknown or missing keys raise a ValueError that names them and lists
    the valid fields."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; valid keys: {sorted(fields)}")
    missing = sorted(
        n for n, f in fields.items()
        if n not in d and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"{cls.__name__}: missing required key(s) {missing}")
    return cls(**d)
