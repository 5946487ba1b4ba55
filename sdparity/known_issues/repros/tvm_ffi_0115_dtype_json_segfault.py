"""Known issue tvm_ffi_0115_dtype_json_segfault: apache-tvm 0.27.0.post1 asks for
apache-tvm-ffi>=0.1.14.post0, and with 0.1.15.post1 or 0.1.15.post2 (what pip picks for that
requirement) serializing any IR node that holds a data type crashes the process: a
segmentation fault in tvm::ffi::ToJSONGraph, for tvm.ir.save_json(tvm.ir.PrimType("float32"))
as for every TIR expression. Schedule.tensorize deep-copies the tensor intrinsic through that
serializer, so every tensorize crashes too (dlight's tensor-core matmul rule, MetaSchedule's
RewriteTensorize, any hand-written tensor-core schedule). With apache-tvm-ffi 0.1.14.post1
the same calls work; sdparity pins it (pyproject.toml).

Standalone (TVM only; no GPU). It installs apache-tvm-ffi 0.1.15.post2 beside the installed
TVM into a temporary folder (pip, no dependencies) and serializes a PrimType with it in a
child process. Exit status 1 while that crashes, 0 once it works; 2 when pip cannot install it.
Run: python sdparity/known_issues/repros/tvm_ffi_0115_dtype_json_segfault.py
"""

import os
import subprocess
import sys
import tempfile

BROKEN = "apache-tvm-ffi==0.1.15.post2"
SERIALIZE = """
import tvm, tvm_ffi
print("apache-tvm-ffi", tvm_ffi.__version__, "apache-tvm", tvm.__version__, flush=True)
text = tvm.ir.save_json(tvm.ir.PrimType("float32"))
print("serialized:", len(text), "characters")
"""

with tempfile.TemporaryDirectory() as tmp:
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", tmp, BROKEN],
                         capture_output=True, text=True, timeout=600)
    if pip.returncode:
        print(f"could not install {BROKEN}: {(pip.stderr or pip.stdout).strip().splitlines()[-1:]}")
        sys.exit(2)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tmp, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    p = subprocess.run([sys.executable, "-c", SERIALIZE], capture_output=True, text=True, timeout=300, env=env)
crashed = p.returncode < 0 or p.returncode == 139 or "Segfault" in p.stderr
print(p.stdout.strip())
print(f"tvm.ir.save_json(PrimType) with {BROKEN}: exit status {p.returncode}"
      + (" (segmentation fault)" if crashed else ""))
sys.exit(1 if crashed else 0)
