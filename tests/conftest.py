"""The one conftest: paths, the hypothesis profile, and the fixtures every test folder shares
(the tiny model, the build cache, backends, a one-stage check runner, the web app, Chromium)."""

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("SDPARITY_CACHE", str(ROOT / ".cache" / "sdparity"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests import strategies  # noqa: E402,F401  (loads the hypothesis profile)

ARTIFACTS = Path(os.environ.get("SDPARITY_E2E_OUT", ROOT / "out" / "e2e"))


@pytest.fixture(scope="session")
def tiny():
    from reference.models import load_model

    return load_model("tiny", log=lambda *a: None)


@pytest.fixture(scope="session")
def cache():
    from sdparity.cache import BuildCache

    return BuildCache()


@pytest.fixture(scope="session")
def llvm():
    from sdparity.backends import get_backend

    return get_backend("llvm")


@pytest.fixture(scope="session")
def run_check(tiny, cache):
    """run_check(stage, backend, variant=None) -> list of result records (one stage, one backend)."""
    from sdparity.reports.report import Report
    from sdparity.runner import Progress, run_checks

    def go(stage, backend, variant=None, model=None, seed=0):
        model = model or tiny
        report = Report(model)
        run_checks([stage], [backend], model, report, cache, seed=seed, log=Progress(quiet=True),
                   variants={stage.name: variant} if variant else None)
        return report.results

    return go


@pytest.fixture(scope="session")
def app(tiny, cache):
    """The web app's data folder and a server for it (built once per session)."""
    from sdparity.tiers.serve import app_server, build_app
    from tests.e2e.apphelpers import LATENT

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
