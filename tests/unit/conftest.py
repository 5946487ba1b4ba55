from __future__ import annotations

import pytest

from sdparity import strategies  # noqa: F401  (loads the hypothesis profile)


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
    from sdparity.report import Report
    from sdparity.runner import Progress, run_checks

    def go(stage, backend, variant=None, model=None, seed=0):
        model = model or tiny
        report = Report(model)
        run_checks([stage], [backend], model, report, cache, seed=seed, log=Progress(quiet=True),
                   variants={stage.name: variant} if variant else None)
        return report.results

    return go
