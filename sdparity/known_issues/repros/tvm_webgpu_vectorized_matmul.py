"""Known issue tvm_webgpu_vectorized_matmul: dlight's GPU Matmul rule with vector loads
(Config.vector_size > 1, the setting it uses for CUDA) cannot be built for WebGPU.

The same scheduled kernel builds for CUDA; for WebGPU the lowering stops with
"Check failed: (me->coeff == 0 || info.factor() % me->coeff == 0)" for every matrix size
tried (64x64x64, and sizes that need padding). dlight's own WebGPU config uses
vector_size 1, so its default never hits this; a tuned or hand-picked tile with vector loads
does: sdparity's CUDA-tuned tiles all have vector loads, so WebGPU builds keep dlight's
default tile (sdparity/compile/gpu_rules.py, TUNED_KINDS).

Standalone (TVM only). Exit status (sdparity's repro protocol): 1 while the WebGPU build fails
with that check and the CUDA build succeeds, 0 once the WebGPU build succeeds, 3 for anything
else (the CUDA control failing, another WebGPU error, any exception: an error of this script).
Run: python sdparity/known_issues/repros/tvm_webgpu_vectorized_matmul.py
"""

import dataclasses
import sys

EVIDENCE = "info.factor() % me->coeff == 0"


def build_error(target) -> str | None:
    """None when the vector_size=4 matmul builds for ``target``, else the error's text."""
    import tvm
    from tvm import te

    try:
        from tvm.s_tir.dlight.gpu import Matmul
    except ImportError:  # TVM before 0.27
        from tvm.dlight.gpu import Matmul

    class VectorizedMatmul(Matmul):
        def get_configs(self, target):
            return dataclasses.replace(Matmul().get_configs(target), vector_size=4)

    a = te.placeholder((64, 64), name="a")
    b = te.placeholder((64, 64), name="b")
    r = te.reduce_axis((0, 64), name="r")
    c = te.compute((64, 64), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="c")
    sch = VectorizedMatmul().apply(te.create_prim_func([a, b, c]), target, False)
    try:
        tvm.compile(tvm.IRModule({"main": sch.mod["main"]}), target=target)
        return None
    except Exception as e:  # noqa: BLE001  (the failure is what this script reports)
        print(f"{target.kind.name}: build failed: {str(e).strip().splitlines()[-1][:200]}")
        return " ".join(str(e).split())


def main() -> int:
    import tvm

    print(f"tvm {tvm.__version__}")
    cuda = build_error(tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm"))
    webgpu = build_error(tvm.target.Target("webgpu", host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"}))
    print(f"vector_size=4 matmul builds: cuda {cuda is None}, webgpu {webgpu is None}")
    if cuda is not None:
        raise RuntimeError("the CUDA control does not build: the repro cannot tell")
    if webgpu is None:
        return 0
    if EVIDENCE not in webgpu:
        raise RuntimeError(f"the WebGPU build failed otherwise than the bug: {webgpu[-200:]}")
    return 1


if __name__ == "__main__":
    # sdparity's repro protocol: 1 reproduces, 0 fixed, 3 an error of this script, 4 cannot run here
    try:
        code = main()
    except Exception as e:  # noqa: BLE001 - an error of the repro, never evidence
        print(f"repro error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", flush=True)
        sys.exit(3)
    sys.exit(code)
