"""The WebGPU backend as one package: ``backend`` (build, and run in Chromium; registers
"webgpu"), ``toolchain`` (the tvmjs wasm runtime), ``server`` (the local web server),
``wgsl`` (Relax rewrites for WGSL) and ``support/`` (C++ headers the wheels lack).

Names are resolved lazily so that ``python -m sdparity.backends.webgpu.toolchain`` does not
import the backend first."""

_EXPORTS = ("WebGPUBackend", "WebGPURunner", "launch_chromium", "shared_playwright")


def __getattr__(name):
    if name in _EXPORTS:
        from sdparity.backends.webgpu import backend

        return getattr(backend, name)
    raise AttributeError(name)
