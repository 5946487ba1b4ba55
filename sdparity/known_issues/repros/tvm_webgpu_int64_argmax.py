"""Known issue tvm_webgpu_int64_argmax: an argmax cannot be built for WebGPU: TVM 0.27 keeps its
int64 index (torch's argmax dtype) through the reduction, and the WebGPU target refuses a kernel
with a 64-bit integer buffer (WGSL has no 64-bit integers).

Met by sdparity's SDXL check (issue 25): transformers pools SDXL's second text encoder at
``input_ids.argmax(-1)`` (its path for ``eos_token_id == 2``, which SDXL's configs have), so the
tiny-sdxl ``clip`` stage fails to build on WebGPU with "The buffer in_thread_..._red_temp_v0_shared
allocated in the function has dtype T.int64". On llvm the same module builds and agrees with
torch. No neutralizer (the stage keeps transformers' own code path): the check stays an error.

Standalone (torch and TVM; no browser): exports ``x.argmax(-1)`` of a (1, 77) int32 tensor with
torch.export, imports it with TVM's torch frontend and builds it for WebGPU with TVM's default
pipeline. Exit status (sdparity's repro protocol): 1 while the WebGPU build fails on an int64
buffer (the bug), 0 once it builds, 3 for anything else (another error: an error of this script).
Run: python sdparity/known_issues/repros/tvm_webgpu_int64_argmax.py
"""

import sys


def build() -> str | None:
    """None when the WebGPU build succeeds, else its error message."""
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    class ArgMax(torch.nn.Module):
        def forward(self, ids):
            return ids.argmax(dim=-1)

    ep = torch.export.export(ArgMax(), (torch.zeros((1, 77), dtype=torch.int32),))
    mod = from_exported_program(ep)
    target = tvm.target.Target("webgpu", host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"})
    try:
        relax.build(mod, target=target)
    except Exception as e:  # noqa: BLE001 - TVM raises its InternalError (a RuntimeError) here
        return " ".join(str(e).split())
    return None


def main() -> int:
    import tvm

    print(f"tvm {tvm.__version__}")
    err = build()
    if err is None:
        print("fixed: argmax builds for WebGPU")
        return 0
    i = err.find("has dtype T.int64")
    if i >= 0:
        print(f"REPRODUCES: ...{err[max(0, i - 120):i + 17]}")
        return 1
    raise RuntimeError(f"the WebGPU build failed for another reason: {err[-300:]}")


if __name__ == "__main__":
    # sdparity's repro protocol: 1 reproduces, 0 fixed, 3 an error of this script, 4 cannot run here
    try:
        code = main()
    except Exception as e:  # noqa: BLE001 - an error of the repro, never evidence
        print(f"repro error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", flush=True)
        sys.exit(3)
    sys.exit(code)
