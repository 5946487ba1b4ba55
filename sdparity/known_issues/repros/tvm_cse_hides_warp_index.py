"""Known issue tvm_cse_hides_warp_index: TVM's default TIR pipeline runs CommonSubexprElim
before LowerWarpMemory (which is in the device finalization). LowerWarpMemory needs each
store index of a warp buffer as a linear expression in threadIdx.x; when the index repeats a
subexpression of the stored value (``w[tx * 4 + i] = A[tx * 4 + i]``, or the offsets of an
ldmatrix call), CSE binds it to a let variable and the pass fails: "require positive constant
coefficient on warp index threadIdx_x but get 0". Every tensor-core (ldmatrix + mma) kernel hits
it. With CSE off (PassContext config tirx.disable_cse_tir) the same kernel builds.

Standalone (TVM only; no GPU: it builds to CUDA source). Exit status (sdparity's repro
protocol): 1 while the default pipeline fails on the kernel with that message and the one
without CSE builds it; 0 once the default builds it; 3 for anything else (another error, the
build without CSE failing, any exception: an error of this script, not evidence).
Run: python sdparity/known_issues/repros/tvm_cse_hides_warp_index.py
"""

import sys

EVIDENCE = "require positive constant coefficient on warp index"


def kernel():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def shift_by_one_lane(A: T.Buffer((128,), "float32"), B: T.Buffer((128,), "float32")):
        w = T.sblock_alloc_buffer((128,), scope="warp")
        for bx in T.thread_binding(1, thread="blockIdx.x"):
            for tx in T.thread_binding(32, thread="threadIdx.x"):
                for i in range(4):
                    with T.sblock("store"):
                        w[tx * 4 + i] = A[tx * 4 + i]
            for tx in T.thread_binding(32, thread="threadIdx.x"):
                for i in range(4):
                    with T.sblock("load"):
                        B[tx * 4 + i] = w[(tx * 4 + i + 4) % 128]

    return shift_by_one_lane


def main() -> int:
    import tvm

    print(f"tvm {tvm.__version__}")
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    func = kernel()
    result = {}
    for cse in (True, False):
        try:
            with tvm.transform.PassContext(config={"tirx.disable_cse_tir": not cse}):
                tvm.compile(tvm.IRModule({"main": func}), target=target)
            result[cse] = None
        except Exception as e:  # noqa: BLE001 - judged below: only EVIDENCE counts
            result[cse] = " ".join(str(e).split())
        print(f"CSE {'on (default)' if cse else 'off'}: " + ("built" if result[cse] is None else
                                                           "failed: " + result[cse][-240:]))
    if result[False] is not None:
        raise RuntimeError("the kernel does not build without CSE either: the repro's control failed")
    if result[True] is None:
        print("fixed: the default pipeline builds the kernel")
        return 0
    if EVIDENCE not in result[True]:
        raise RuntimeError(f"the default pipeline failed otherwise than the bug: {result[True][-200:]}")
    print("reproduces: CSE hides the warp index from LowerWarpMemory")
    return 1


if __name__ == "__main__":
    # sdparity's repro protocol: 1 reproduces, 0 fixed, 3 an error of this script, 4 cannot run here
    try:
        code = main()
    except Exception as e:  # noqa: BLE001 - an error of the repro, never evidence
        print(f"repro error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", flush=True)
        sys.exit(3)
    sys.exit(code)
