"""Known issue tvm_cse_hides_warp_index: TVM's default TIR pipeline runs CommonSubexprElim
before LowerWarpMemory (which is in the device finalization). LowerWarpMemory needs each
store index of a warp buffer as a linear expression in threadIdx.x; when the index repeats a
subexpression of the stored value (``w[tx * 4 + i] = A[tx * 4 + i]``, or the offsets of an
ldmatrix call), CSE binds it to a let variable and the pass fails: "require positive constant
coefficient on warp index threadIdx_x but get 0". Every tensor-core (ldmatrix + mma) kernel hits
it. With CSE off (PassContext config tirx.disable_cse_tir) the same kernel builds.

Standalone (TVM only; no GPU: it builds to CUDA source). Exit status 1 while the default
pipeline fails on the kernel and the one without CSE builds it; 0 once the default builds it.
Run: python sdparity/known_issues/repros/tvm_cse_hides_warp_index.py
"""

import sys

import tvm
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


target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
result = {}
for cse in (True, False):
    try:
        with tvm.transform.PassContext(config={"tirx.disable_cse_tir": not cse}):
            tvm.compile(tvm.IRModule({"main": shift_by_one_lane}), target=target)
        result[cse] = "built"
    except Exception as e:  # noqa: BLE001 - the failure is what this repro shows
        result[cse] = "failed: " + str(e).strip().splitlines()[-1][:240]
    print(f"CSE {'on (default)' if cse else 'off'}: {result[cse]}")
sys.exit(1 if result[True] != "built" and result[False] == "built" else 0)
