"""Sessions (run `nox -l` to list):

  unit         tests/unit: every stage on LLVM and WebGPU vs PyTorch, fuzzing, CLI, cache, faults
  check        the main job: `sdparity check` on the default tiny model (llvm + webgpu)
  browser_e2e  tests/e2e: the web app generates an image in Chromium; compared with diffusers
  full         full-size SD 1.5 (random weights) parity on LLVM (slow; see README for times)
  bench        `sdparity bench`: build/run time, memory, ratio to PyTorch (tiny, llvm)
  full_bench   the same on full-size SD 1.5, merged into the `full` report
  gate         `nox -s gate -- A B`: llvm checks under TVM A and TVM B (releases or folders), gate B vs A
  gpu_prepare  build what the lent GPU machine runs (CUDA tier, WebGPU on Dawn): docs/performance.md

Extra arguments after `--` go to pytest (unit, browser_e2e) or to `sdparity check` (check, full).
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

ROOT = Path(__file__).parent
nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["unit"]

ENV = {
    "SDPARITY_CACHE": os.environ.get("SDPARITY_CACHE", str(ROOT / ".cache" / "sdparity")),
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
}


# pytest-playwright: keep a trace and a screenshot of every browser test that fails
PLAYWRIGHT_ARGS = ["--tracing", "retain-on-failure", "--screenshot", "only-on-failure", "--output", "out/playwright"]


def _install(session, web: bool = True) -> None:
    session.install("-e", ".[test,web]" if web else ".[test]")
    # Only the CLIP BPE vocabulary file inside this wheel is used; its dependencies are not.
    session.install("--no-deps", "open_clip_torch==3.3.0")


def _setup_webgpu(session) -> None:
    """System packages (chromium, emscripten), npm packages, and the tvmjs runtime build."""
    session.run("bash", "scripts/setup_webgpu.sh", env=ENV, external=True)


@nox.session
def unit(session):
    _install(session)
    _setup_webgpu(session)
    session.run("python", "-m", "pytest", "tests/unit", "-ra", *PLAYWRIGHT_ARGS, *session.posargs, env=ENV)


@nox.session
def check(session):
    _install(session)
    _setup_webgpu(session)
    args = session.posargs or ["--backends", "llvm,webgpu"]
    session.run("sdparity", "check", *args, env=ENV)


@nox.session
def browser_e2e(session):
    _install(session)
    _setup_webgpu(session)
    session.run("python", "-m", "pytest", "tests/e2e", "-ra", *PLAYWRIGHT_ARGS, *session.posargs, env=ENV)


@nox.session
def full(session):
    _install(session, web=False)
    args = session.posargs or ["--model", "sd15-random", "--backends", "llvm",
                               "--report", "sdparity-report-sd15.json"]
    session.run("sdparity", "check", *args, env=ENV)


@nox.session(venv_backend="none")
def gate(session):
    """TVM upgrade gate: `nox -s gate -- <tvm-A> <tvm-B> [sdparity check args]` (docs/gate.md).

    Each side is a release number (.cache/venvs/tvm-<version>, cached) or a folder holding a TVM
    you built (its tvm package and libraries; run in the pinned release's venv with that tvm
    first on PYTHONPATH). Runs `sdparity check --backends llvm` for each, then `sdparity gate`
    B against A. Exit 1 on a regression."""
    import sys

    if len(session.posargs) < 2:
        session.error("usage: nox -s gate -- <tvm-A> <tvm-B> [sdparity check args]; "
                      "each a release number (0.26.0) or a TVM folder")
    a, b, *rest = session.posargs
    session.run(sys.executable, "-m", "sdparity", "gate-versions", a, b, *(["--", *rest] if rest else []),
                env={**ENV, "PYTHONPATH": str(ROOT)}, external=True)


@nox.session
def bench(session):
    """`sdparity bench`: build/run time, memory and ratio to PyTorch (default: tiny, llvm)."""
    _install(session, web=False)
    args = session.posargs or ["--backends", "llvm", "--json", "sdparity-bench.json"]
    session.run("sdparity", "bench", *args, env=ENV)


@nox.session
def full_bench(session):
    """`sdparity bench` on full-size SD 1.5 (random weights), merged into the `full` report."""
    _install(session, web=False)
    args = session.posargs or ["--model", "sd15-random", "--backends", "llvm",
                               "--json", "sdparity-bench-sd15.json"]
    if Path("sdparity-report-sd15.json").is_file() and not session.posargs:
        args += ["--merge", "sdparity-report-sd15.json"]
    session.run("sdparity", "bench", *args, env=ENV)


@nox.session
def gpu_prepare(session):
    """Everything the lent GPU machine needs, built here (no GPU): out/gpu (CUDA tier:
    every stage built for sm_90, kernels compiled with nvcc) and out/webgpu-gpu (the web
    app for WebGPU on Dawn). docs/performance.md has the commands to run there."""
    _install(session)
    _setup_webgpu(session)
    model = session.posargs[0] if session.posargs else "sd15-random"
    session.run("python", "-m", "sdparity.tiers.gpu_cuda", "prepare", "--model", model, "--dir", "out/gpu", env=ENV)
    session.run("python", "-m", "sdparity.tiers.gpu_web", "prepare", "--model", model, "--dir", "out/webgpu-gpu", env=ENV)
