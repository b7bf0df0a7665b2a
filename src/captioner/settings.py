"""Settings as dataclasses read from TOML tables, with a one-sentence error for every mistake in them."""
from __future__ import annotations

from dataclasses import MISSING, fields

from .errors import CaptionerError


def section(cls, values: dict, where: str):
    """`cls` made from the TOML table `values` (found at `where`): unknown or missing settings are refused."""
    if not isinstance(values, dict):
        raise CaptionerError(f"{where}: expected a table of settings, not {values!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise CaptionerError(f"{where}: unknown setting {unknown[0]!r}; known: {', '.join(known)}")
    missing = [name for name, f in known.items() if name not in values
               and f.default is MISSING and f.default_factory is MISSING]
    if missing:
        raise CaptionerError(f"{where}: the setting {missing[0]!r} is missing")
    return cls(**values)
