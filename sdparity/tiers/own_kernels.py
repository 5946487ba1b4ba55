"""The own-kernel check: every kernel the suite writes itself, against the chain it replaces.

sdparity's builds replace some of TVM's lowerings with kernels of their own (today: each
unmasked float32 attention on llvm, ``compile/attention.fuse_attention``). A stage's parity
check does not see every fault of such a kernel: an error of the softmax's exp partly cancels
in its quotient, and one attention is a small part of a UNet's residual stream (NOTES.md: TVM's
floor lowering perturbed to trunc put the attention kernel at 5.8x the unfused chain's error
while the tiny UNet stayed inside its budget). So each build records which own kernels it
holds, with their shapes (``found``, in the build's meta), and ``sdparity check`` judges each
alone at those shapes:

* **candidate**: the kernel, built as the backend builds it (rewrite on);
* **twin**: the same computation with the rewrite off, TVM's own chain (``disabled``);
* **reference**: PyTorch in float64 on the same seeded inputs.

It passes when the kernel's root-mean-square error against float64 is at most
``OWN_KERNELS[name].factor`` x the twin's (``sdparity.tolerances``, with its reason), every
element within a coarse absolute bound: ``compare`` runs with the twin's output as its
"float32 reference" and the rms statistic, so its err/floor *is* that ratio. A record per
kernel shape, stage and backend, case ``own kernel <name> <shapes>``; the gate compares them
like any other check.

To add an own kernel: one ``OwnKernel`` entry (how to find it in a built module, the torch
computation at its shapes, how to build without it) and its budget in ``tolerances.OWN_KERNELS``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from sdparity.errors import SdparityError, one_line

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
    OwnKernel("attention", ("llvm",), _attention_found, _attention_module, _llvm_rewrites_off),
]}


def found(mod, kind: str) -> list[dict]:
    """[{"kernel": name, "shapes": {...}}] for every own kernel a build for target ``kind``
    holds (recorded in the build's meta by the backend)."""
    return [{"kernel": k.name, "shapes": shapes}
            for k in OWN_KERNELS.values() if kind in k.kinds for shapes in k.found(mod)]


def _inputs(shapes: list[tuple], seed: int) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [(np.round(INPUT_SCALE * g.standard_normal(s) / QUANTUM) * QUANTUM).astype(np.float32) for s in shapes]


def _build(kernel: OwnKernel, module, inputs, backend, cache, rewrite: bool):
    """(artifact, meta) of ``module`` built by ``backend`` through the cache, with the rewrite
    on (the candidate) or off (the twin)."""
    import torch

    from sdparity.compile.frontend import export_to_relax
    from sdparity.identity import source_digest

    key = {"own_kernel": kernel.name, "rewrite": rewrite, "inputs": [list(a.shape) for a in inputs],
           "source": source_digest([__name__])}  # this module makes the modules it builds

    def factory():
        return export_to_relax(module, tuple(torch.from_numpy(a) for a in inputs), FUNCTION)

    with contextlib.nullcontext() if rewrite else kernel.disabled():
        art, meta, _ = backend.build_cached(factory, key, cache, log=lambda *a: None,
                                           label=f"own-kernel/{kernel.name}/{'kernel' if rewrite else 'chain'}")
    return art, meta


def check(stage, backend, runner, found_kernel: dict, report, cache, seed: int = 0, log=print) -> dict:
    """Judge one own kernel of ``stage``'s build on ``backend`` (module docstring); returns the
    record added to ``report``."""
    import torch

    from sdparity.compare import compare
    from sdparity.tolerances import own_kernel_tolerance

    kernel = OWN_KERNELS[found_kernel["kernel"]]
    shapes = found_kernel["shapes"]
    label = kernel.label(shapes)
    base = dict(stage=stage.name, backend=backend.name, device_class=backend.device_class, case=label,
                function=FUNCTION, output="out", shapes=shapes, own_kernel=kernel.name)
    t0 = time.perf_counter()
    try:
        tol = own_kernel_tolerance(kernel.name)
        module, input_shapes = kernel.torch_module(shapes)
        inputs = _inputs(input_shapes, seed)
        art, meta = _build(kernel, module, inputs, backend, cache, True)
        if shapes not in [f["shapes"] for f in meta.get("own_kernels", []) if f["kernel"] == kernel.name]:
            raise SdparityError(f"the rewrite did not produce the {kernel.name} kernel at these shapes "
                                f"when built alone (found {meta.get('own_kernels')})")
        twin_art, twin_meta = _build(kernel, module, inputs, backend, cache, False)
        if twin_meta.get("own_kernels"):
            raise SdparityError(f"the twin build still holds {twin_meta['own_kernels']}: the rewrite was not off")
        (cand,) = runner.run(art, FUNCTION, inputs)
        (twin,) = runner.run(twin_art, FUNCTION, inputs)
        with torch.no_grad():
            ref64 = module(*(torch.from_numpy(a).double() for a in inputs)).numpy()
    except Exception as e:
        message = str(e) if isinstance(e, SdparityError) else f"own-kernel check failed: {one_line(e)}"
        log(f"[{backend.name}] {stage.name} {label}: ERROR {message}")
        return report.add(**base, verdict="error", message=message, metrics=None, tolerance=None, timings=None)
    # compare's "reference" is float64, its "float32 reference" the twin: err/floor is
    # rms(kernel - float64) / rms(twin - float64)
    m = compare(cand, ref64, tol, reference64=twin)
    why = m.why.replace("err/floor", "rms err/twin's")
    rec = report.add(**base, verdict="pass" if m.passed else "fail", message=why, metrics=m.to_json(),
                     tolerance=tol.to_json(), timings={"run_s": round(time.perf_counter() - t0, 3)},
                     failed_bound=m.failed_bound)
    ratio = "n/a" if m.floor_ratio is None else f"{m.floor_ratio:.3g}x"
    log(f"[{backend.name}] {stage.name} {label}: {rec['verdict'].upper()} max_abs={m.max_abs:.3g} "
        f"twin's={m.noise_floor:.3g} rms ratio={ratio} (budget {tol.floor_budget:g}x)")
    return rec
