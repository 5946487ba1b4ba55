"""Known issue tvm_ffi_0115_dtype_json_segfault: apache-tvm 0.27.0.post1 asks for
apache-tvm-ffi>=0.1.14.post0, and with 0.1.15.post1 or 0.1.15.post2 (what pip picks for that
requirement) serializing any IR node that holds a data type crashes the process: a
segmentation fault in tvm::ffi::ToJSONGraph, for tvm.ir.save_json(tvm.ir.PrimType("float32"))
as for every TIR expression. Schedule.tensorize deep-copies the tensor intrinsic through that
serializer, so every tensorize crashes too (dlight's tensor-core matmul rule, MetaSchedule's
RewriteTensorize, any hand-written tensor-core schedule). With apache-tvm-ffi 0.1.14.post1
the same calls work; sdparity pins it (pyproject.toml).

Standalone (TVM only; no GPU). The crash is the evidence, so it happens in a child process:
the installed TVM with apache-tvm-ffi 0.1.15.post2 put first on its path, serializing a
PrimType. That apache-tvm-ffi comes from a wheel (or an unpacked copy) already on this machine,
in $SDPARITY_CACHE/repro-wheels/ (default ~/.cache/sdparity/repro-wheels/): nothing is
downloaded unless SDPARITY_REPRO_DOWNLOAD=1, which lets this script fetch the wheel there once
with pip (``pip download --no-deps --only-binary=:all: apache-tvm-ffi==0.1.15.post2``).

Exit status (sdparity's repro protocol): 1 while the child dies of SIGSEGV (having loaded
apache-tvm-ffi 0.1.15.post2), 0 once it serializes the PrimType, 4 when the wheel is not here
and downloads are not allowed (or the download fails), 3 for anything else (the child failing
otherwise, another apache-tvm-ffi loaded, any exception: an error of this script).
Run: python sdparity/known_issues/repros/tvm_ffi_0115_dtype_json_segfault.py
"""

import os
import platform
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

BROKEN = "0.1.15.post2"
REQUIREMENT = f"apache-tvm-ffi=={BROKEN}"
FIXED, REPRODUCES, CANNOT_RUN = 0, 1, 4
SERIALIZE = """
import tvm_ffi
print("apache-tvm-ffi", tvm_ffi.__version__, "from", tvm_ffi.__file__, flush=True)
import tvm
print("apache-tvm", tvm.__version__, flush=True)
text = tvm.ir.save_json(tvm.ir.PrimType("float32"))
print("serialized:", len(text), "characters", flush=True)
"""


def wheel_dir() -> Path:
    cache = os.environ.get("SDPARITY_CACHE") or Path.home() / ".cache" / "sdparity"
    return Path(cache) / "repro-wheels"


def usable_wheels(folder: Path) -> list:
    """apache-tvm-ffi wheels of the broken version in ``folder`` that may load here (this
    machine's architecture and CPython, or the stable ABI)."""
    py = f"cp{sys.version_info.major}{sys.version_info.minor}"
    found = []
    for whl in sorted(folder.glob(f"apache_tvm_ffi-{BROKEN}-*.whl")):
        tags = whl.name[:-4].split("-")[2:]  # python tag, abi tag, platform tag
        if len(tags) == 3 and platform.machine() in tags[2] and sys.platform in tags[2] \
                and (py in tags[0] or "abi3" in tags[1]):
            found.append(whl)
    return found


def installed_copy(folder: Path, tmp: Path):
    """A folder that holds tvm_ffi/ of the broken version: an unpacked copy under ``folder``
    (folder/apache-tvm-ffi-<version>/tvm_ffi), else a wheel from ``folder`` unpacked into
    ``tmp``; None when neither is here."""
    unpacked = folder / f"apache-tvm-ffi-{BROKEN}"
    if (unpacked / "tvm_ffi" / "__init__.py").is_file():
        return unpacked
    wheels = usable_wheels(folder)
    if not wheels:
        return None
    with zipfile.ZipFile(wheels[-1]) as z:
        z.extractall(tmp)
    return tmp


def download(folder: Path) -> str | None:
    """Fetch the wheel into ``folder`` with pip; None on success, else why not."""
    folder.mkdir(parents=True, exist_ok=True)
    pip = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                          "-d", str(folder), REQUIREMENT], capture_output=True, text=True, timeout=600)
    if pip.returncode:
        return " ".join((pip.stderr or pip.stdout).split())[-240:] or f"pip exit {pip.returncode}"
    return None


def main() -> int:
    import tvm

    print(f"installed: apache-tvm {tvm.__version__}")
    folder = wheel_dir()
    with tempfile.TemporaryDirectory() as tmp:
        site = installed_copy(folder, Path(tmp))
        if site is None:
            if os.environ.get("SDPARITY_REPRO_DOWNLOAD") != "1":
                print(f"cannot run here: no apache-tvm-ffi {BROKEN} wheel for this machine in {folder} "
                      "(SDPARITY_REPRO_DOWNLOAD=1 lets this script fetch it with pip)")
                return CANNOT_RUN
            why = download(folder)
            site = None if why else installed_copy(folder, Path(tmp))
            if site is None:
                print(f"cannot run here: downloading {REQUIREMENT} into {folder} failed: {why or 'no usable wheel'}")
                return CANNOT_RUN
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        p = subprocess.run([sys.executable, "-c", SERIALIZE], capture_output=True, text=True, timeout=300, env=env)
    print(p.stdout.strip())
    loaded = next((ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("apache-tvm-ffi ")), None)
    if loaded != BROKEN:
        raise RuntimeError(f"the child loaded apache-tvm-ffi {loaded}, not {BROKEN} (exit {p.returncode}): "
                           + " ".join(p.stderr.split())[-240:])
    if p.returncode == -signal.SIGSEGV:
        print(f"reproduces: tvm.ir.save_json(PrimType) with apache-tvm-ffi {BROKEN}: segmentation fault")
        return REPRODUCES
    if p.returncode == 0 and "serialized:" in p.stdout:
        print(f"fixed: tvm.ir.save_json(PrimType) works with apache-tvm-ffi {BROKEN}")
        return FIXED
    raise RuntimeError(f"the child failed otherwise than by SIGSEGV (exit {p.returncode}): "
                       + " ".join(p.stderr.split())[-240:])


if __name__ == "__main__":
    # sdparity's repro protocol: 1 reproduces, 0 fixed, 3 an error of this script, 4 cannot run here
    try:
        code = main()
    except Exception as e:  # noqa: BLE001 - an error of the repro, never evidence
        print(f"repro error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", flush=True)
        sys.exit(3)
    sys.exit(code)
