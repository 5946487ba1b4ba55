"""The one conftest: paths, the hypothesis profile, and the fixtures every test folder shares
(the tiny model, the build cache, backends, a one-stage check runner, the web app, and
pytest-playwright's browser fixtures on the system Chromium)."""

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
    """run_check(stage, backend, variant=None, model=None, seed=0, only_cases=None) -> list of result
    records (one stage, one backend; only_cases: these case labels alone)."""
    from sdparity.reports.report import Report
    from sdparity.runner import Progress, run_checks

    def go(stage, backend, variant=None, model=None, seed=0, only_cases=None):
        model = model or tiny
        report = Report(model)
        run_checks([stage], [backend], model, report, cache, seed=seed, log=Progress(quiet=True),
                   variants={stage.name: variant} if variant else None, only_cases=only_cases)
        return report.results

    return go


@pytest.fixture(scope="session")
def app(tiny, cache):
    """The web app's data folder and a server for it (built once per session)."""
    from sdparity.app.serve import app_server, build_app
    from tests.e2e.apphelpers import LATENT

    data = build_app(tiny, LATENT, cache, log=print)
    server = app_server(data, cache).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def app_page_problems(browser, app):
    """(page, console errors): one page of the SD 1.x app for the tests that drive it in turn (the
    tokenizer, the other schedulers, a replaced constants table). Opening it compiles every WGSL
    kernel of the app (~70 s on SwiftShader): once, instead of once per test. The generations
    clear the error list first; it keeps no Playwright trace of its own (pytest-playwright's ``page``
    fixture, which does, is one per test)."""
    from tests.e2e.apphelpers import open_app

    context = browser.new_context()
    page, problems = open_app(context.new_page(), app)
    assert page.evaluate("() => window.sdparityApp.state.ready"), problems
    yield page, problems
    context.close()


@pytest.fixture(scope="session")
def app_page(app_page_problems):
    """The shared app page alone (``app_page_problems``): session-scoped, so Hypothesis examples
    reuse it."""
    return app_page_problems[0]


# -- pytest-playwright: its browser/context/page fixtures (tracing and screenshots on failure,
#    see noxfile.py), driving the system Chromium through the process's one sync Playwright.
@pytest.fixture(scope="session")
def playwright():
    """Replaces pytest-playwright's: a second sync Playwright in this thread would fail, and the
    WebGPU backend's sessions (unit tests) take the shared one too."""
    from sdparity.backends.webgpu import shared_playwright

    with shared_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    from sdparity.backends.webgpu.backend import chromium_args, default_chromium

    return {**browser_type_launch_args, "executable_path": default_chromium(), "args": chromium_args(),
            "timeout": 60_000}


@pytest.fixture(scope="session")
def artifacts():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# The test sessions never create a full-size model: sd15-random is 4 GB of weights, sd21-random
# 5.2 GB, sdxl-random 13.9 GB, and a test that made one on a clean CI machine (a CLI run with its
# default --model) filled the disk there.
def _full_size_models() -> set[str]:
    from reference.models import FULL_SIZE_MODELS, builtin_model_path

    return {k for k in FULL_SIZE_MODELS if (builtin_model_path(k) / "model_index.json").is_file()}


def pytest_sessionstart(session):
    session.config._full_size_before = _full_size_models()


def pytest_sessionfinish(session, exitstatus):
    made = sorted(_full_size_models() - session.config._full_size_before)
    if made:
        session.config.get_terminal_writer().line(
            f"conftest: error: a test created the full-size model(s) {', '.join(made)}; tests must use "
            "the tiny models or refuse before loading one", red=True)
        session.exitstatus = 1


# The unit files that take longest, longest first (cold, 2 xdist workers, 2026-12-07): xdist's
# --dist loadfile hands files to the workers in collection order, and a long file handed out
# last leaves the other core idle while it runs. Only the order changes; a file not listed
# keeps its place after these.
LONGEST_FIRST = ("test_parity.py", "test_model_family.py", "test_floor_verdicts.py", "test_opstats.py",
                 "test_fuzz.py", "test_opreplay.py", "test_own_kernels.py", "test_f16.py", "test_repros.py",
                 "test_reliability.py", "test_cli.py", "test_known_issues.py", "test_pipeline.py",
                 "test_extending.py", "test_gpu_rules.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).name, len(rank)))  # stable: files stay whole


# -- pytest-xdist: test files that share a worker -------------------------------------------
#: Files run by the same worker under ``--dist loadfile`` (noxfile's ``unit``); every other file
#: is its own unit, as loadfile makes it. A worker's WebGPU sessions share one browser
#: (``WebGPUBackend.session``), which compiles each distinct kernel once: test_floor_verdicts'
#: WebGPU perturbations are test_parity's CLIP and UNet builds with one op's kernels changed, so
#: beside them they compile only those (the GELU-as-tanh UNet: ~50 s of SwiftShader less).
SHARED_WORKER = {"test_floor_verdicts.py": "test_parity.py"}


def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadfile":
        return None  # xdist's own for every other mode
    from xdist.scheduler import LoadFileScheduling

    class SharedFiles(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            folder, _, name = file.rpartition("/")
            return f"{folder}/{SHARED_WORKER[name]}" if name in SHARED_WORKER else file

    return SharedFiles(config, log)
