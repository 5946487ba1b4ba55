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
    # default: leave out `slow` tests (a second TVM release installed with pip --target, full-size
    # models); `nox -s unit -- -m slow` runs them, any other arguments replace these. Two
    # pytest-xdist workers, a test file each at a time (module fixtures stay in one process; the
    # build cache is shared under per-entry locks): CI's 2 cores
    args = session.posargs or ["-m", "not slow", "-n", "2", "--dist", "loadfile", "--durations", "25"]
    # `nox -s unit -- tests/unit/test_x.py` runs that file, not the whole folder besides it
    where = [] if any(a.startswith("tests") for a in args) else ["tests/unit"]
    session.run("python", "-m", "pytest", *where, "-ra", *PLAYWRIGHT_ARGS, *args, env={**ENV, **UNIT_THREADS})


#: Two workers share CI's two cores with Chromium: PyTorch's OpenMP pool of one thread a core
#: per worker, and TVM's pool spinning after each parallel kernel, kept cores busy waiting
#: (cold suite on 2 cores, 2026-12-08: 757 s with them, 710 s with these; the native pipeline
#: test 17.9 -> 2.1 s). TVM keeps its thread a core (configure_threads), so its parallel
#: kernels still run on two threads. The e2e session runs one process: left as users run it.
UNIT_THREADS = {"OMP_NUM_THREADS": "1", "TVM_THREAD_POOL_SPIN_COUNT": "0"}


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
    where = [] if any(a.startswith("tests") for a in session.posargs) else ["tests/e2e"]
    session.run("python", "-m", "pytest", *where, "-ra", *PLAYWRIGHT_ARGS, *session.posargs, env=ENV)


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


#: Python packages the GPU machine lacks (or holds at another version) that the device runs
#: need: carried as wheels at this venv's exact versions (docs/performance.md, "GPU machine")
DEVICE_WHEELS = ("apache-tvm-ffi", "diffusers", "transformers")
#: the device's Python and the manylinux tags its pip accepts (/work/.library/device/README.md)
DEVICE_PYTHON = ["--python-version", "3.12", "--implementation", "cp"] + [
    f"--platform={p}" for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
                                "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")]
#: Debian packages Dawn needs there: the Vulkan loader, and libglvnd for the NVIDIA ICD
DEVICE_DEBS = ("libvulkan1", "libegl1", "libglvnd0", "libopengl0", "libgl1", "libglx0", "libgles2")


@nox.session
def gpu_prepare(session):
    """Everything the lent GPU machine needs, built here (no GPU): out/gpu (CUDA tier: every
    stage built for sm_90, kernels compiled with nvcc, the runtime-only TVM), out/gpu-f16 (the
    f16 mode's CLIP, UNet and VAE for CUDA, with CUDA graphs), out/webgpu-gpu
    (the web app for WebGPU on Dawn), .whl (DEVICE_WHEELS at this venv's versions, for the
    device's Python 3.12) and .gl (the Vulkan loader .debs). docs/performance.md has the
    `run` calls: what each one carries and runs. `nox -s gpu_prepare -- tiny` for the tiny model."""
    import shutil

    _install(session)
    _setup_webgpu(session)
    model = session.posargs[0] if session.posargs else "sd15-random"
    session.run("python", "-m", "sdparity.gpu.cuda", "prepare", "--model", model, "--dir", "out/gpu", env=ENV)
    session.run("python", "-m", "sdparity.gpu.cuda", "prepare", "--model", model, "--dir", "out/gpu-f16",
                "--stages", "clip,unet,vae", "--precision", "f16", "--cuda-graphs", env=ENV)
    session.run("python", "-m", "sdparity.gpu.web", "prepare", "--model", model, "--dir", "out/webgpu-gpu", env=ENV)

    pins = session.run("python", "-c", "from importlib.metadata import version as v; "
                       f"print(' '.join(p + '==' + v(p) for p in {DEVICE_WHEELS!r}))", silent=True).split()
    shutil.rmtree(ROOT / ".whl", ignore_errors=True)
    session.run("python", "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", *DEVICE_PYTHON,
                "-d", str(ROOT / ".whl"), *pins)
    (ROOT / ".whl" / "versions.txt").write_text("\n".join(pins) + "\n")

    shutil.rmtree(ROOT / ".gl", ignore_errors=True)
    (ROOT / ".gl").mkdir()
    apt = "apt-get -qq -oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/sdparity-apt"
    session.run("bash", "-c", f"mkdir -p /tmp/sdparity-apt/partial && {apt} update && cd .gl && "
                f"{apt} download {' '.join(DEVICE_DEBS)}", external=True)
    for folder in ("out/gpu", "out/gpu-f16", "out/webgpu-gpu", ".whl", ".gl"):
        mib = sum(f.stat().st_size for f in (ROOT / folder).rglob("*") if f.is_file()) / 2**20
        session.log(f"{folder}: {mib:.1f} MiB")
