"""The registry of the suite's own kernels: the kernels sdparity's builds write themselves in place
of TVM's lowering (today: each unmasked float32 attention on llvm, ``compile/attention.py``), how
to find them in a built module (``found``: the backend records them in the build's meta), the
PyTorch computation at their shapes, how to build without them (TVM's own chain), and the
transcendental functions they compute with. It lives in ``compile/`` because it shapes builds:
its source is part of every build key (Backend.source_modules). The check that judges each
kernel alone is ``sdparity.check.own_kernels``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

FUNCTION = "kernel"  # the Relax function of an own-kernel build
#: the seeded inputs: standard deviation 3, rounded to multiples of 1/4 (QUANTUM)
INPUT_SCALE = 3.0
QUANTUM = 0.25


@dataclass(frozen=True)
class OwnKernel:
    name: str
    kinds: tuple[str, ...]  # target kinds whose builds apply the rewrite
    found: Callable  # found(scheduled module) -> [shapes dict, ...]
    torch_module: Callable  # torch_module(shapes) -> (nn.Module, [input shapes])
    disabled: Callable  # disabled() -> context manager: builds inside keep TVM's own chain
    transcendentals: tuple[str, ...] = ()  # names in TRANSCENDENTALS the kernel computes with

    def label(self, shapes: dict) -> str:
        return f"own kernel {self.name} " + " ".join(f"{k}={'x'.join(map(str, v))}" for k, v in shapes.items())


def _attention_module(shapes: dict):
    """PyTorch's scaled_dot_product_attention at a kernel's shapes ((BH, T, D) queries, keys
    transposed (BH, D, S), (BH, S, Dv) values) as one batch of BH heads: torch exports it as the
    chain ``fuse_attention`` matches (the kernel takes q and k already scaled; torch scales each
    by sqrt(scale)).

    The scores are made exact in float32, so that what is judged is the kernel's own arithmetic
    (exp, row sum, quotient, output sum), not the rounding of q.k that kernel and chain share:
    inputs are multiples of QUANTUM (``_inputs``) and the scale is the power of 4 nearest
    1/sqrt(D) (its square root, a power of 2, scales exactly), so every product and partial sum
    of q.k fits float32's 24 bits. The scores keep a standard deviation of ~9 x sqrt(D) x scale
    (4.5-18), so the softmax's exp sees arguments from 0 down to several tens below. With the diffusers scale and
    unrounded inputs, the chain's own error at D = 512 (the VAE's attention) grew until an exp
    off by a median 7-15 ulp moved the rms ratio only 1.25-1.3x (NOTES.md 'Own-kernel check')."""
    import math

    import torch

    (bh, t, d), (_, _, s), (_, _, dv) = shapes["q"], shapes["kt"], shapes["v"]
    scale = 4.0 ** -round(math.log(math.sqrt(d), 4))

    class Attention(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)

    return Attention(), [(1, bh, t, d), (1, bh, s, d), (1, bh, s, dv)]


def _llvm_rewrites_off():
    from sdparity.compile.schedule_cpu import without_rewrites

    return without_rewrites()


def _attention_found(mod):
    from sdparity.compile.attention import attention_instances

    return attention_instances(mod)


OWN_KERNELS: dict[str, OwnKernel] = {k.name: k for k in [
    OwnKernel("attention", ("llvm",), _attention_found, _attention_module, _llvm_rewrites_off,
              transcendentals=("exp_f32",)),
]}


# ---- an own kernel's transcendental, alone, in ulp against float64 ---------------------------
@dataclass(frozen=True)
class Transcendental:
    name: str
    expr: Callable  # expr() -> the function x -> TIR expression, as the kernel calls it
    reference: Callable  # float64 numpy function
    points: Callable  # points() -> float32 arguments where the ulp bound applies
    exact: Callable  # exact() -> [(argument, value it must give exactly)] (NaN: must be NaN)
    shaped_by: Callable  # shaped_by() -> the values it is built from (in its build key)


def _exp_f32():
    from sdparity.compile import attention

    return attention.exp_f32


def _exp_points() -> np.ndarray:
    """The softmax's exp arguments (scores minus the row max, (-inf, 0]) where exp_f32 promises
    its bound: a grid of 2^19 + 1 points over [EXP_F32_LOW, 0]; both sides of every edge of the
    range reduction's intervals, x = (k - 1/2) ln 2 where n = floor(x log2(e) + 1/2) steps and
    |r| is largest (there a polynomial coefficient's error weighs most), each with its 16 float32
    neighbours either side; the 64 float32 values below 0 and the lowest ones of the range."""
    from sdparity.compile.attention import EXP_F32_LOW

    low = np.float32(EXP_F32_LOW)
    grid = np.linspace(low, 0, (1 << 19) + 1, dtype=np.float32)
    ks = np.arange(np.ceil(float(low) / np.log(2) + 0.5), 1)  # the edges inside [low, 0]
    edges = ((ks - 0.5) * np.log(2)).astype(np.float32)
    pts = [grid, edges, np.array([0.0], np.float32)]
    up, down = edges, edges
    zero, bottom = np.float32(0), low
    for _ in range(16):
        up, down = np.nextafter(up, np.float32(np.inf)), np.nextafter(down, np.float32(-np.inf))
        pts += [up, down]
    for _ in range(64):
        zero, bottom = np.nextafter(zero, np.float32(-np.inf)), np.nextafter(bottom, np.float32(np.inf))
        pts.append(np.array([zero, bottom], np.float32))
    pts = np.concatenate(pts)
    return np.unique(pts[(pts >= low) & (pts <= 0)])


def _exp_exact() -> list[tuple[float, float]]:
    from sdparity.compile.attention import EXP_F32_LOW

    below = float(np.nextafter(np.float32(EXP_F32_LOW), np.float32(-np.inf)))
    return [(-np.inf, 0.0), (-1e30, 0.0), (-100.0, 0.0), (below, 0.0), (np.nan, np.nan), (0.0, 1.0), (-0.0, 1.0)]


def _exp_shaped_by() -> dict:
    from sdparity.compile import attention

    return {"coeffs": [float(c) for c in attention.EXP_F32_COEFFS], "low": float(attention.EXP_F32_LOW),
            "ln2": [float(c) for c in attention.EXP_F32_LN2]}


TRANSCENDENTALS: dict[str, Transcendental] = {t.name: t for t in [
    Transcendental("exp_f32", _exp_f32, np.exp, _exp_points, _exp_exact, _exp_shaped_by),
]}
#: lanes of the vector loop the transcendental is built in (the attention kernel's softmax_exp:
#: schedule_cpu.schedule_attention vectorizes its rows by 16 where they divide)
#: lanes of the vector loop the transcendental is built in (the attention kernel's softmax_exp:
#: schedule_cpu.schedule_attention vectorizes its rows by 16 where they divide)
LANES = 16


def found(mod, kind: str) -> list[dict]:
    """[{"kernel": name, "shapes": {...}}] for every own kernel a build for target ``kind``
    holds (recorded in the build's meta by the backend)."""
    return [{"kernel": k.name, "shapes": shapes}
            for k in OWN_KERNELS.values() if kind in k.kinds for shapes in k.found(mod)]
