from __future__ import annotations

import os
from pathlib import Path

import pytest

from sdparity import strategies  # noqa: F401  (hypothesis profile)

ARTIFACTS = Path(os.environ.get("SDPARITY_E2E_OUT", Path(__file__).resolve().parents[2] / "out" / "e2e"))


@pytest.fixture(scope="session")
def tiny():
    from reference.models import load_model

    return load_model("tiny", log=lambda *a: None)


@pytest.fixture(scope="session")
def cache():
    from sdparity.cache import BuildCache

    return BuildCache()


@pytest.fixture(scope="session")
def app(tiny, cache):
    """The app's data folder and a server for it (built once per session)."""
    from sdparity.serve import app_server, build_app

    from apphelpers import LATENT

    data = build_app(tiny, LATENT, cache, log=print)
    server = app_server(data, cache).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    from sdparity.backends.webgpu import launch_chromium, shared_playwright

    with shared_playwright() as p:
        b = launch_chromium(p)
        yield b
        b.close()


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
