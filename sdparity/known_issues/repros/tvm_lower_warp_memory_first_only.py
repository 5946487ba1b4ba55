"""Known issue tvm_lower_warp_memory_first_only: TVM's LowerWarpMemory lowers only the FIRST
warp-scope buffer of a statement sequence. Its SeqStmt visitor hands the siblings after the
first warp AllocBuffer to the rewriter of that one buffer and stops, so a second warp buffer
keeps its full per-warp size as a per-thread local array: each thread then reads elements of
its own array that only other lanes would have written. No error: the kernel computes garbage.
(Tensor-core kernels hold three warp buffers, for A, B and the accumulator; there CUDA codegen
fails later with "tirx.BufferType ... does not have a corresponding C Type".)

Standalone (TVM only; no GPU: it reads the generated CUDA source). Two warp buffers wa and wb,
written by lane tx at [tx], read at [(tx + 1) % 32] and [(tx + 2) % 32]. Lowered, each is one
register a thread and the reads are __shfl_sync; the bug leaves wb as float[32] read directly.
Exit status (sdparity's repro protocol): 1 while wa is lowered and wb is not; 0 once both are;
3 for anything else (another source than either, any exception: an error of this script).
Run: python sdparity/known_issues/repros/tvm_lower_warp_memory_first_only.py
"""

import re
import sys


def kernel():
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def two_warp_buffers(A: T.Buffer((32,), "float32"), B: T.Buffer((32,), "float32")):
        wa = T.sblock_alloc_buffer((32,), scope="warp")
        wb = T.sblock_alloc_buffer((32,), scope="warp")
        for bx in T.thread_binding(1, thread="blockIdx.x"):
            for tx in T.thread_binding(32, thread="threadIdx.x"):
                with T.sblock("store"):
                    wa[tx] = A[tx]
                    wb[tx] = A[tx] * T.float32(2)
            for tx in T.thread_binding(32, thread="threadIdx.x"):
                with T.sblock("load"):
                    B[tx] = wa[(tx + 1) % 32] + wb[(tx + 2) % 32]

    return two_warp_buffers


def cuda_sources(mod) -> list:
    found = [mod.inspect_source("cuda")] if mod.kind == "cuda" else []
    for m in mod.imports:
        found += cuda_sources(m)
    return found


def main() -> int:
    import tvm

    print(f"tvm {tvm.__version__}")
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
    src = "\n".join(cuda_sources(tvm.compile(tvm.IRModule({"main": kernel()}), target=target).mod))
    sizes = dict(re.findall(r"float (w[ab])_ptr\[(\d+)\]", src))
    print(f"per-thread arrays: {sizes}")
    for line in src.splitlines():
        if "B_ptr[" in line and "=" in line:
            print("the read:", line.strip())
    if sizes == {"wa": "1", "wb": "1"}:
        print("fixed: both warp buffers lowered")
        return 0
    if sizes == {"wa": "1", "wb": "32"}:
        print("reproduces: the second warp buffer is NOT lowered (read from a per-thread array)")
        return 1
    raise RuntimeError(f"unexpected per-thread arrays {sizes} in the CUDA source: the repro cannot tell")


if __name__ == "__main__":
    # sdparity's repro protocol: 1 reproduces, 0 fixed, 3 an error of this script, 4 cannot run here
    try:
        code = main()
    except Exception as e:  # noqa: BLE001 - an error of the repro, never evidence
        print(f"repro error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", flush=True)
        sys.exit(3)
    sys.exit(code)
