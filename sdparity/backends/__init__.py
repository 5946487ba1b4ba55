"""Backends by name. Every module ``X.py`` in this folder, or package ``X/`` with a
``backend.py``, registers its backend class(es) with ``@register("name", ...)`` from ``base``;
``names()``/``get_backend()`` import them all, so a new backend is one new module (or package)
here and nothing else (docs/extending.md)."""

from __future__ import annotations

import importlib
import pkgutil

from sdparity.backends.base import Backend, registered
from sdparity.errors import SdparityError

_LOAD_ERRORS: dict[str, str] = {}


def _discover() -> None:
    for m in pkgutil.iter_modules(__path__):
        if m.name in ("base",) or m.name.startswith("_") or m.name in _LOAD_ERRORS:
            continue
        try:
            importlib.import_module(f"{__name__}.{m.name}" + (".backend" if m.ispkg else ""))
        except ImportError as e:  # a backend whose dependencies are missing: say so when asked
            _LOAD_ERRORS[m.name] = str(e)


def names() -> list[str]:
    _discover()
    return list(registered())


def get_backend(name: str) -> Backend:
    _discover()
    table = registered()
    if name not in table:
        if name in _LOAD_ERRORS:
            raise SdparityError(f"the {name} backend cannot be loaded: {_LOAD_ERRORS[name]}")
        raise SdparityError(f"unknown backend {name!r}; backends are: {', '.join(table)}")
    return table[name](name)
