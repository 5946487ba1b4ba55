"""Known issue tvm_webgpu_ldexp_printed_as_ldexpf: TVM's WebGPU code generation prints tirx.ldexp
as `ldexpf(...)`, a C library name; WGSL's builtin is `ldexp`, so the shader does not compile.

Found by sdparity's negative tests (issue 22): the TVM perturbations that replace a Relax op's
legalization by a fast-math exp (a polynomial scaled by 2^k = ldexp(1, k)) build and run on llvm,
and on WebGPU (Chromium 156, SwiftShader) every kernel holding ldexp failed to load:
"GPUPipelineError: [Invalid ShaderModule (unlabeled)] is ... 'ldexpf'". No stage of the suite uses
ldexp (the perturbations now build 2^k from its bits), so no check meets it; any TVM lowering
that uses ldexp on WebGPU (e.g. a fast exp) would fail to load in the browser.

This repro needs only TVM (no browser): it builds one elementwise ldexp for WebGPU with TVM's
default GPU schedule and reads the generated WGSL. Exit status (sdparity's repro protocol): 1
while the WGSL calls `ldexpf` (the bug), 0 once it calls the WGSL builtin `ldexp`, 3 for anything
else (no WebGPU module, neither name found, any exception: an error of this script).
Run: python sdparity/known_issues/repros/tvm_webgpu_ldexp_printed_as_ldexpf.py
"""

import re
import sys


def wgsl() -> str:
    import tvm
    from tvm import s_tir, te, tirx

    x = te.placeholder((64,), "float32", name="x")
    k = te.placeholder((64,), "int32", name="k")
    y = te.compute((64,), lambda i: tirx.ldexp(x[i], k[i]), name="y")
    mod = tvm.IRModule({"main": te.create_prim_func([x, k, y])})
    target = tvm.target.Target("webgpu", host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"})
    with target:
        mod = s_tir.transform.DefaultGPUSchedule()(mod)
    ex = tvm.compile(mod, target=target)
    stack = [ex.mod if hasattr(ex, "mod") else ex]
    while stack:
        m = stack.pop()
        if m.kind == "webgpu":
            return m.inspect_source()
        stack.extend(m.imports)
    raise RuntimeError("no WebGPU module in the build")


def main() -> int:
    import tvm

    print(f"tvm {tvm.__version__}")
    src = wgsl()
    line = next((ln.strip() for ln in src.splitlines() if "y_ptr[" in ln and "=" in ln), "")
    print(f"WGSL: {line}")
    if re.search(r"\bldexpf\(", src):
        print("REPRODUCES: `ldexpf` is not a WGSL builtin (WGSL has `ldexp`)")
        return 1
    if re.search(r"\bldexp\(", src):
        print("fixed: the WGSL builtin ldexp")
        return 0
    raise RuntimeError("neither ldexpf( nor ldexp( in the WGSL: the repro cannot tell")


if __name__ == "__main__":
    # sdparity's repro protocol: 1 reproduces, 0 fixed, 3 an error of this script, 4 cannot run here
    try:
        code = main()
    except Exception as e:  # noqa: BLE001 - an error of the repro, never evidence
        print(f"repro error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", flush=True)
        sys.exit(3)
    sys.exit(code)
