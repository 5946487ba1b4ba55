"""The device toolchain both GPU drivers share (``sdparity.gpu.cuda``, ``sdparity.gpu.web``) and
the tuner uses (``sdparity.gpu.tune``): building for CUDA here (the backend with the GPU
schedules, nvcc, the runtime-only TVM package), loading TVM runtime-only there, and the
carried Node/Dawn/wasm files.
"""

from __future__ import annotations

import lzma
import os
import shutil
import sys
import tarfile
from pathlib import Path

ARCH = "sm_90"  # H100 and H200
KERNEL_DIRS: list[Path] = []  # where the device looks for precompiled kernels
#: parts of the TVM package a runtime-only import does not need
_SLIM_SKIP = ("lib/libtvm_compiler.so", "3rdparty", "web", "include", "src", "contrib/cutlass")
ROOT = Path(__file__).resolve().parents[2]
WEB = ROOT / "web"


# ---- CUDA: built here, run there ----------------------------------------------------------
def cuda_backend(lift: bool = False, graphs: bool | None = None):
    """``lift``: the build moves the weights' own work (casts, transposes, the Winograd weight
    transform) into ``<function>_transform_params`` (f16 mode: ``schedule.fused_for_gpu``).
    ``graphs``: replay static regions as CUDA graphs (``schedule.build_context``; default: per
    target kind, i.e. off)."""
    import tvm

    from sdparity.backends.native import NativeBackend

    class CudaForArch(NativeBackend):
        """The cuda backend with an explicit arch: builds on a machine without a GPU."""

        def __init__(self):
            super().__init__("cuda")

        def target(self):
            return tvm.target.Target({"kind": "cuda", "arch": ARCH}, host={"kind": "llvm"})

        def build(self, ir, out_dir, log=print):
            from sdparity.backends.native import LIB
            from sdparity.compile.schedule import build_module, schedule_for

            target = self.target()
            # schedule_for applies sdparity.compile.legalize (GroupNorm with float64 statistics)
            ex = build_module(schedule_for(ir.mod, target, lift=lift), target, cuda_graphs=graphs)
            ex.export_library(str(out_dir / LIB))  # weights are not carried
            # TVM 0.27 stores CUDA kernels as source and compiles them when the library is
            # loaded, through the Python callback tvm_callback_cuda_compile, which needs the
            # compiler half of TVM. Compile them here with nvcc; the device looks them up.
            for src in cuda_sources(ex.mod):
                nvcc(src, out_dir / f"kernels-{sha(src)}.fatbin")
            return {}

    return CudaForArch()


def sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cuda_sources(mod) -> list[str]:
    """CUDA C++ of every CUDA module imported (at any depth) by a built module."""
    out, seen, todo = [], set(), list(mod.imports)
    while todo:
        m = todo.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if m.kind == "cuda":
            out.append(m.inspect_source("cuda"))
        todo.extend(m.imports)
    return out


def nvcc(code: str, dest: Path, arch: str = ARCH) -> bytes:
    """nvcc -fatbin for arch; returns the bytes and writes them to dest (if given)."""
    import subprocess
    import tempfile

    nvcc = shutil.which("nvcc") or next((str(p) for p in Path("/usr/local").glob("cuda*/bin/nvcc")), None)
    if nvcc is None:
        raise RuntimeError("nvcc not found: the CUDA kernels are compiled here (install the CUDA toolkit)")
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "k.cu", Path(tmp) / "k.fatbin"
        src.write_text(code)
        r = subprocess.run([nvcc, "-fatbin", "-O3", f"-arch={arch}", "-o", str(out), str(src)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"nvcc failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        data = out.read_bytes()
    if dest is not None:
        dest.write_bytes(data)
    return data


def slim_tvm_package(dest: Path) -> Path:
    """tar.gz of the installed TVM package without the compiler library and sources."""
    import tvm

    root = Path(tvm.__file__).parent
    out = dest / "tvm.tgz"

    def keep(info: tarfile.TarInfo):
        rel = info.name.split("/", 1)[1] if "/" in info.name else ""
        if "__pycache__" in info.name or any(rel == s or rel.startswith(s + "/") for s in _SLIM_SKIP):
            return None
        return info

    with tarfile.open(out, "w:gz") as tf:
        tf.add(root, arcname="tvm", filter=keep)
    return out


def load_tvm_runtime():
    """Import TVM runtime-only and register its CUDA runtime (not autoloaded in that mode)."""
    import ctypes
    import glob

    os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    for pattern in ("/usr/local/cuda/lib64/libcudart.so.13*", "/usr/local/cuda*/lib*/libcudart.so.13*",
                    f"{sys.prefix}/lib/python3*/site-packages/nvidia/cu13/lib/libcudart.so.13*",
                    f"{sys.prefix}/lib/python3*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.13*"):
        found = sorted(glob.glob(pattern))
        if found:
            ctypes.CDLL(found[0], mode=ctypes.RTLD_GLOBAL)
            break
    import tvm
    import tvm_ffi

    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)

    @tvm_ffi.register_global_func("tvm_callback_cuda_compile", override=True)
    def _compile(code, *_):  # kernels precompiled by prepare; nvcc here only as a fallback
        name = f"kernels-{sha(code)}.fatbin"
        found = [p for p in KERNEL_DIRS if (p / name).is_file()]
        if found:
            return (found[0] / name).read_bytes()
        print(f"cuda kernels {name} not precompiled: nvcc on this machine", flush=True)
        return nvcc(code, None)

    return tvm


# ---- Node and Dawn (WebGPU on the GPU machine), carried as xz ------------------------------
def unxz(src: Path, dest: Path, mode: int = 0o644) -> None:
    if dest.is_file():
        return
    tmp = dest.with_name(dest.name + ".part")
    with lzma.open(src) as fi, open(tmp, "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
    tmp.chmod(mode)
    tmp.replace(dest)


def unpack_dawn(folder: Path) -> Path:
    """The prepared folder's Dawn for Node package (dawn/) with its native module unpacked."""
    lib = folder / "dawn" / "dist" / "linux-x64"
    unxz(lib / "dawn.node.xz", lib / "dawn.node", 0o755)
    return folder / "dawn"


def unpack_art(folder: Path) -> Path:
    """The prepared folder's art/ with its wasm unpacked (prepare carries it as xz)."""
    for packed in (folder / "art").rglob("*.wasm.xz"):
        unxz(packed, packed.with_suffix(""))
    return folder / "art"


def node_binary(folder: Path) -> str:
    found = shutil.which("node")
    if found and (os.environ.get("SDPARITY_CARRIED_NODE") != "1" or not (folder / "node.xz").is_file()):
        return found
    if not (folder / "node.xz").is_file():
        raise RuntimeError(f"no node on PATH and no {folder / 'node.xz'} (prepare carries one)")
    dest = Path("/tmp/sdparity-node/node")
    dest.parent.mkdir(parents=True, exist_ok=True)
    unxz(folder / "node.xz", dest, 0o755)
    return str(dest)
