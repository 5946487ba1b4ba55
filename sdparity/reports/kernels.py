"""Kernels summed by kind, for the GPU profiles (CUDA: ``scripts/gpu_kernel_profile.py`` and
``gpu_cuda --profile``; WebGPU: ``gpu_web device --profile``): one grouping, so a CUDA and a
WebGPU profile of the same build can be read side by side (docs/performance.md)."""

from __future__ import annotations

import re

KINDS = [  # (kind, pattern on the kernel's name); the first match wins
    ("vm builtins (alloc, reshape, null)", r"^vm\.builtin"),
    ("Winograd GEMMs (3x3 convolutions)", r"winograd_gemm"),
    ("Winograd transforms (input, output + epilogue, weights)", r"winograd_(input|output|weight)"),
    ("conv2d, direct (+ fused epilogue)", r"conv2d"),
    ("matmul (+ fused epilogue)", r"matmul"),
    ("attention mask (fused_equal_..._max)", r"equal.*max"),
    ("softmax", r"softmax"),
    ("group norm", r"group_norm|mean|variance"),
    ("layer norm", r"layer_norm"),
    ("transpose / reshape copies", r"transpose|reshape"),
    ("other", r""),
]


def kind(kernel: str) -> str:
    """The kind of a kernel, from its TVM name (a PrimFunc's, or a VM builtin's)."""
    return next(k for k, pattern in KINDS if re.search(pattern, kernel))


def by_kind(kernels: list[dict]) -> list[dict]:
    """kernels: [{"kernel", "calls", "s"}] -> [{"kind", "calls", "ms", "share"}], largest first."""
    total = sum(k["s"] for k in kernels) or 1.0
    acc: dict[str, list] = {}
    for k in kernels:
        row = acc.setdefault(kind(k["kernel"]), [0, 0.0])
        row[0] += k["calls"]
        row[1] += k["s"]
    return [{"kind": name, "calls": n, "ms": round(s * 1e3, 2), "share": round(s / total, 3)}
            for name, (n, s) in sorted(acc.items(), key=lambda kv: -kv[1][1])]
