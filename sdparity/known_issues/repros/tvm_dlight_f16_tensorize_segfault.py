"""Known issue tvm_dlight_f16_tensorize_segfault: dlight's GPU Matmul rule crashes the process
(segmentation fault in tvm::s_tir::Tensorize) on a float16 matmul for CUDA sm_70 and newer.

For float16 inputs (float32 or float16 accumulation) and all sides above 64, Matmul.apply
hands the kernel to MatmulTensorization (wmma tensor cores); on TVM 0.27.0.post1 that ends in
a segfault inside Tensorize, for a plain 256x256x256 matmul as for every float16 convolution
of the SD 1.5 UNet built through relax.transform.ToMixedPrecision. A Python exception would
let a caller fall back; a segfault takes the whole build down. sdparity's f16 CUDA builds
therefore schedule float16 kernels without tensor cores (sdparity/compile/gpu_rules.py,
tuned_matmul: the rule sees the target without its arch).

Standalone (TVM only; no GPU needed: it only schedules). Exit status 1 while the bug
reproduces, 0 once it is fixed.
Run: python sdparity/known_issues/repros/tvm_dlight_f16_tensorize_segfault.py
"""

import subprocess
import sys

SCHEDULE = """
import tvm
from tvm import te
try:
    from tvm.s_tir.dlight.gpu import Matmul
except ImportError:  # TVM before 0.27
    from tvm.dlight.gpu import Matmul
a = te.placeholder((256, 256), "float16", name="a")
b = te.placeholder((256, 256), "float16", name="b")
r = te.reduce_axis((0, 256), name="r")
c = te.compute((256, 256), lambda i, j: te.sum(a[i, r].astype("float32") * b[r, j].astype("float32"), axis=r))
target = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host="llvm")
print("scheduled:", Matmul().apply(te.create_prim_func([a, b, c]), target, False) is not None)
"""

p = subprocess.run([sys.executable, "-c", SCHEDULE], capture_output=True, text=True, timeout=300)
crashed = p.returncode < 0 or p.returncode == 139 or "Segfault" in p.stderr
print(f"dlight Matmul on a float16 256x256x256 matmul for sm_90: exit status {p.returncode}"
      + (" (segmentation fault)" if crashed else f"; {p.stdout.strip()}"))
sys.exit(1 if crashed else 0)
