"""The WebGPU backend as one package: the backend (build + run in Chromium), the wasm
toolchain, the local web server, the WGSL legalization and the C++ support headers."""

from sdparity.backends.webgpu.backend import (  # noqa: F401
    WebGPUBackend, WebGPURunner, launch_chromium, shared_playwright,
)
