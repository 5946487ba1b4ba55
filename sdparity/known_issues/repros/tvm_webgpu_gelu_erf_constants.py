"""Known issue tvm_webgpu_gelu_erf_constants: on WebGPU, GELU of large negative inputs is not ~0
but +6e-8 * |x|, because TVM prints the float constants of its erf approximation into WGSL with 7
significant digits.

WGSL has no erf builtin; TVM 0.27 lowers erf for WebGPU to its rational approximation
(topi fast_erf) of the argument clamped to [-4, 4]. With the float32 constants (as the llvm
build uses them) the approximation gives exactly -1 at the clamp; with the constants as TVM's
WGSL printer writes them (7 significant digits, float32 needs 9 to round-trip) it gives
-1.0000001, so GELU's 0.5 * x * (1 + erf(x / sqrt 2)) is +5.96e-8 * |x| for every x < -5.66
where the exact value (and torch, and TVM on llvm) is -0: +6e-5 at x = -1000, +6e-7 at x = -10.
Found by sdparity's op-statistics fuzzing (issue 11) on WebGPU (Chromium, SwiftShader):
aten.gelu of the tiny UNet's feed-forward, inputs at mean -1000: max |err| 6.2e-5 where torch
float32 is exact (floor 0).

Standalone (torch, numpy and TVM; no browser): builds aten.gelu for WebGPU as TVM's frontend and
default GPU pipeline do, takes the WGSL expression TVM generated and evaluates it with WGSL's
f32 semantics (fma with one rounding, IEEE division) in numpy. Exit status (sdparity's repro
protocol): 1 while GELU(-1000) and GELU(-10) are not ~0 (the bug), 0 once they are, 3 for
anything else (no WebGPU module, an expression it cannot read, GELU wrong where the bug does not
reach, any exception: an error of this script).
Run: python sdparity/known_issues/repros/tvm_webgpu_gelu_erf_constants.py
"""

import re
import sys


def wgsl_expression() -> str:
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    class Gelu(torch.nn.Module):
        def forward(self, x):
            return torch.ops.aten.gelu.default(x)

    ep = torch.export.export(Gelu(), (torch.zeros(32),))
    mod, _ = relax.frontend.detach_params(from_exported_program(ep, keep_params_as_input=True))
    target = tvm.target.Target("webgpu", host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"})
    ex = relax.build(mod, target=target)
    stack = [ex.mod if hasattr(ex, "mod") else ex]
    while stack:
        m = stack.pop()
        if m.kind == "webgpu":
            found = re.search(r"T_multiply_ptr\[[^\]]*\] = (.*);", m.inspect_source())
            if found is None:
                raise RuntimeError("no T_multiply_ptr[...] = ...; statement in the WGSL: the repro cannot read it")
            return found.group(1)
        stack.extend(m.imports)
    raise RuntimeError("no WebGPU module in the build")


def fma(a, b, c):  # f32 fma: the float64 product of two f32 values is exact, one rounding after
    import numpy as np

    return np.float32(np.float64(a) * np.float64(b) + np.float64(c))


def evaluate(expr: str, x: float) -> float:
    import numpy as np

    py = re.sub(r"x_ptr\[i32\(threadIdx\.x\)\]", "X", expr)
    py = re.sub(r"(\d\.\d+e[-+]\d+)f", r"F(\1)", py)
    return float(eval(py, {"X": np.float32(x), "F": np.float32, "fma": fma, "max": np.maximum, "min": np.minimum}))


def main() -> int:
    import torch
    import tvm

    print(f"tvm {tvm.__version__}, torch {torch.__version__}")
    expr = wgsl_expression()
    off = {}
    for x in (-1000.0, -10.0, -6.0, 1.0):
        got = evaluate(expr, x)
        ref = torch.ops.aten.gelu.default(torch.tensor([x], dtype=torch.float64)).item()
        print(f"gelu({x:g}): WGSL as generated {got:.4g}, torch float64 {ref:.4g}")
        off[x] = abs(got - ref) > (1e-7 if x <= -10 else 1e-5)  # at 1: the approximation's own error
    if off[1.0]:
        raise RuntimeError("GELU(1) is wrong too: not this bug (or the repro misreads the WGSL)")
    if off[-1000.0] != off[-10.0]:
        raise RuntimeError("GELU is ~0 at one of -1000 and -10 but not the other: not this bug")
    bad = off[-1000.0]
    print("REPRODUCES" if bad else "fixed")
    return 1 if bad else 0


if __name__ == "__main__":
    # sdparity's repro protocol: 1 reproduces, 0 fixed, 3 an error of this script, 4 cannot run here
    try:
        code = main()
    except Exception as e:  # noqa: BLE001 - an error of the repro, never evidence
        print(f"repro error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", flush=True)
        sys.exit(3)
    sys.exit(code)
