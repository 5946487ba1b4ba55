"""The wasm side of the WebGPU backend: TVM's web runtime, built once, linked per export.

A tvmjs model (``model.wasm``) is the model's own wasm objects linked with TVM's web runtime
(``wasm_runtime.cc``, ``tvmjs_support.cc``, ``webgpu_runtime.cc`` from the apache-tvm wheel).
The wheel ships those sources, not the compiled runtime, and TVM's own exporter links LLVM
bitcode, which the installed emscripten (LLVM 14) cannot read from TVM (LLVM 22). So:

1. ``ensure_toolchain`` lays the wheel's sources out as the source tree the web Makefile
   expects (copies, not links: ``../`` includes must resolve inside the tree), adds the nine
   headers the wheels lack (``sdparity/backends/webgpu/support/``, written for this project), and
   compiles the three runtime units to wasm **object files** once (about two minutes),
   into ``$SDPARITY_CACHE/toolchain/<tvm version>/<recipe digest>/`` (temp dir, then rename).
2. ``link_wasm`` (an ``export_library`` fcompile) links those objects with the model's
   objects. Linking objects without link-time optimisation takes about a second, where
   TVM's default export (bitcode, -O3, wasm-opt) took 70-140 s. docs/webgpu.md has numbers.

``python -m sdparity.backends.webgpu.toolchain`` builds it (scripts/setup_webgpu.sh calls that).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sdparity.errors import SdparityError
from sdparity.files import cache_root

SUPPORT_DIR = Path(__file__).with_name("support")
RUNTIME_UNITS = ("wasm_runtime", "tvmjs_support", "webgpu_runtime")
# -O3 for the runtime objects (built once). The per-export link adds no optimisation:
# -O1 and below skip wasm-opt (measured: -O1 1 s per export, -O2 50 s; docs/webgpu.md).
COMPILE_FLAGS = ("-O3", "-std=c++17", "-Wno-ignored-attributes")
LINK_FLAGS = (
    "-O1", "--no-entry",
    "-sWASM_BIGINT=1", "-sSTANDALONE_WASM=1", "-sALLOW_MEMORY_GROWTH=1", "-sTOTAL_MEMORY=160MB",
    # TVMFFIWasmSafeCall / TVMFFIWasmFunctionDeleter are imports that tvmjs provides
    "-sERROR_ON_UNDEFINED_SYMBOLS=0",
)
RECIPE_VERSION = 1  # bump when the layout or build steps change


def emcc() -> str | None:
    return shutil.which(os.environ.get("EMCC", "emcc"))


def _wheel_dirs() -> dict[str, Path]:
    import tvm
    import tvm_ffi

    tvm_dir = Path(tvm.__file__).parent
    ffi_dir = Path(tvm_ffi.__file__).parent
    return {
        "include": tvm_dir / "include",
        "src": tvm_dir / "src",
        "web/emcc": tvm_dir / "web" / "emcc",
        "3rdparty/tvm-ffi/include": ffi_dir / "include",
        "3rdparty/tvm-ffi/src": ffi_dir / "src",
        "3rdparty/tvm-ffi/3rdparty/dlpack/include": ffi_dir / "3rdparty" / "dlpack" / "include",
    }


def missing_sources() -> list[str]:
    """Wheel source folders that the runtime build needs and this install lacks."""
    missing = [f"{p}" for p in _wheel_dirs().values() if not p.is_dir()]
    missing += [str(SUPPORT_DIR)] if not SUPPORT_DIR.is_dir() else []
    return missing


def _emcc_version() -> str:
    out = subprocess.run([emcc(), "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "unknown"


def recipe_digest() -> str:
    """Everything that changes the runtime objects: our headers, flags, emcc, the recipe."""
    h = hashlib.sha256()
    for p in sorted(SUPPORT_DIR.rglob("*.h")):
        h.update(str(p.relative_to(SUPPORT_DIR)).encode() + b"\0" + p.read_bytes())
    h.update(json.dumps([RECIPE_VERSION, COMPILE_FLAGS, _emcc_version()]).encode())
    return h.hexdigest()[:12]


def toolchain_dir() -> Path:
    import tvm

    root = cache_root()
    from sdparity.identity import tvm_identity  # the runtime sources are this TVM's: by content

    return root / "toolchain" / f"{tvm.__version__}-{tvm_identity()['libs_sha256'][:12]}" / f"rt-{recipe_digest()}"


def runtime_objects(tc: Path | None = None) -> list[Path]:
    tc = tc or toolchain_dir()
    return [tc / f"{u}.o" for u in RUNTIME_UNITS]


def _layout(tree: Path) -> None:
    """Copy the wheel's sources into the tree layout TVM's web Makefile expects."""
    ignore = shutil.ignore_patterns("__pycache__", "*.py", "*.pyc")
    for rel, src in _wheel_dirs().items():
        shutil.copytree(src, tree / rel, ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(SUPPORT_DIR, tree, ignore=ignore, dirs_exist_ok=True)


def _run(cmd: list[str], cwd: Path, what: str) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        errors = [ln for ln in (proc.stderr + proc.stdout).splitlines() if "error" in ln]
        raise SdparityError(f"{what} failed: {(errors or proc.stderr.splitlines() or ['?'])[0].strip()}")


def ensure_toolchain(log=print) -> Path:
    """Build the runtime objects once into the cache; return their folder."""
    if emcc() is None:
        raise SdparityError("emcc not found: install emscripten (scripts/setup_webgpu.sh)")
    missing = missing_sources()
    if missing:
        raise SdparityError(f"the TVM wheel lacks the web runtime sources: {missing[0]}")
    final = toolchain_dir()
    if all(p.is_file() for p in runtime_objects(final)):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        tree = tmp / "tree"
        _layout(tree)
        includes = [f"-I{tree / d}" for d in ("", "include", "3rdparty/tvm-ffi/include",
                                               "3rdparty/tvm-ffi/3rdparty/dlpack/include",
                                               "3rdparty/compiler-rt")]
        timings = {}
        for unit in RUNTIME_UNITS:
            note = " (the big one: 2-4 min, once)" if unit == "wasm_runtime" else ""
            log(f"webgpu toolchain: emcc {unit}.cc{note}")
            t0 = time.perf_counter()
            _run([emcc(), *COMPILE_FLAGS, *includes, "-c", f"emcc/{unit}.cc", "-o", str(tmp / f"{unit}.o")],
                 cwd=tree / "web", what=f"emcc {unit}.cc")
            timings[unit] = round(time.perf_counter() - t0, 1)
        shutil.rmtree(tree)
        tmp.chmod(0o755)  # mkdtemp makes it private
        (tmp / "toolchain.json").write_text(json.dumps({
            "emcc": _emcc_version(), "compile_flags": COMPILE_FLAGS, "link_flags": LINK_FLAGS,
            "compile_s": timings, "recipe": RECIPE_VERSION}, indent=1))
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished first: keep theirs
            if not all(p.is_file() for p in runtime_objects(final)):
                raise
        log(f"webgpu toolchain: built in {sum(timings.values()):.0f} s -> {final}")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def link_wasm(output: str, objects: list[str], options=None, **_kwargs) -> None:
    """export_library fcompile: link the model's wasm objects with the prebuilt runtime."""
    cmd = [emcc(), *LINK_FLAGS, "-o", output, *map(str, runtime_objects()), *objects, *(options or [])]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SdparityError(f"emcc link of {Path(output).name} failed: "
                            f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")


link_wasm.object_format = "o"  # export_library then writes wasm object files, not bitcode


def main() -> int:
    try:
        t0 = time.perf_counter()
        tc = ensure_toolchain()
        print(f"webgpu toolchain ready ({time.perf_counter() - t0:.1f} s): {tc}")
        return 0
    except SdparityError as e:
        print(f"sdparity: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
