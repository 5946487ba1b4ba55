"""Backends by name. Native ones share sdparity.backends.native; webgpu has its own module."""

from __future__ import annotations

from ..errors import SdparityError
from .base import Backend

NAMES = ("llvm", "cuda", "vulkan", "webgpu")


def get_backend(name: str) -> Backend:
    if name in ("llvm", "cuda", "vulkan"):
        from .native import NativeBackend

        return NativeBackend(name)
    if name == "webgpu":
        try:
            from .webgpu import WebGPUBackend
        except ImportError as e:
            raise SdparityError(f"the webgpu backend cannot be loaded: {e}") from None
        return WebGPUBackend()
    raise SdparityError(f"unknown backend {name!r}; backends are: {', '.join(NAMES)}")
