"""The backends a test runs on, discovered from the registry as TVM's testing discovers targets.

``params()`` turns every registered backend (``sdparity.backends.names()``: each module or
package of ``sdparity/backends/``, and any a test registered) into one pytest parameter, so a
new backend is tested without editing a test file:

* runnable here: a plain parameter;
* unavailable here and **required** (``REQUIRED``, plus ``SDPARITY_REQUIRE_BACKENDS``): still a
  plain parameter, and ``get`` fails the test with the reason. The project's CI installs them
  (README: LLVM and WebGPU in headless Chromium), so a missing emcc or browser is a broken
  machine, not something to skip;
* unavailable and optional (cuda, vulkan: the PyPI wheel has no Vulkan, this machine no GPU):
  a skip mark with the backend's own ``unavailable_reason()``, listed by ``pytest -ra``.

A backend whose name is a marker declared in ``pyproject.toml`` carries that marker (``webgpu``:
``-m "not webgpu"`` deselects it). ``params(where=...)`` keeps the backends with a capability
(``Backend.float64``, ``native_vm``, ...) instead of naming them.
"""

from __future__ import annotations

import functools
import os
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: backends every machine that runs the tests must have: unavailable, their tests fail
REQUIRED = ("llvm", "webgpu")


def required() -> set[str]:
    """REQUIRED plus the comma-separated names in SDPARITY_REQUIRE_BACKENDS (e.g. ``cuda`` on a
    GPU machine, where a CUDA that went missing must fail too)."""
    extra = os.environ.get("SDPARITY_REQUIRE_BACKENDS", "")
    return set(REQUIRED) | {n.strip() for n in extra.split(",") if n.strip()}


@functools.lru_cache(maxsize=1)
def declared_markers() -> frozenset[str]:
    """The marker names declared in pyproject.toml ([tool.pytest.ini_options] markers)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        options = tomllib.load(f).get("tool", {}).get("pytest", {}).get("ini_options", {})
    return frozenset(m.split(":", 1)[0].strip() for m in options.get("markers", []))


@functools.lru_cache(maxsize=None)
def unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run here (its ``unavailable_reason()``), once per process."""
    from sdparity.backends import get_backend

    return get_backend(name).unavailable_reason()


def params(where=None) -> list:
    """One pytest.param per registered backend (module docstring), id = its name. ``where``: a
    predicate on the Backend instance, e.g. ``lambda b: b.native_vm``."""
    from sdparity.backends import get_backend, names

    out = []
    for name in names():
        if where is not None and not where(get_backend(name)):
            continue
        marks = [getattr(pytest.mark, name)] if name in declared_markers() else []
        if name not in required():
            reason = unavailable(name)
            if reason:
                marks.append(pytest.mark.skip(reason=f"backend {name} unavailable: {reason}"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def get(name: str):
    """The backend ``name`` for a test: fails the test where a required backend is unavailable
    (skips where an optional one is, for a test that bypassed ``params``' skip mark)."""
    from sdparity.backends import get_backend

    backend = get_backend(name)
    reason = backend.unavailable_reason()
    if reason:
        if name in required():
            pytest.fail(f"backend {name} is required here (tests/backends.py REQUIRED or "
                        f"SDPARITY_REQUIRE_BACKENDS) and unavailable: {reason}", pytrace=False)
        pytest.skip(f"backend {name} unavailable: {reason}")
    return backend
