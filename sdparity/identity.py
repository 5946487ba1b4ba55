"""What a build is made with, by content: the TVM installation and sdparity's own sources.

Both go into every build cache key (README "Build cache key"), so a cached build is reused
only by the same TVM bytes and the same build code, whatever the version strings say.

* ``tvm_identity(folder=None)``: the TVM that ``import tvm`` would load here (found without
  importing it), or the one in ``folder`` (a folder holding ``tvm/``, or the ``tvm`` package
  folder itself): version, path, a sha256 over its shared libraries and Python files and
  those of the ``tvm_ffi`` beside it, and the git commit when one is known. Hashing ~280 MB
  takes 0.4-0.9 s here, so the hash is remembered on disk under ``$SDPARITY_CACHE/identity``,
  keyed by every file's (path, size, mtime_ns): a changed file changes the key.
* ``source_digest(modules)``: sha256 over the source files of sdparity/reference modules
  (a package stands for all its ``.py`` files).
* ``package_digest(name)``: an installed Python distribution (torch, diffusers, transformers:
  what shapes the exported graph) by version and a sha256 of its RECORD file (every installed
  file's name, hash and size, as the installer wrote it): cheap, and another build of one
  version (or a file reinstalled differently) changes it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from sdparity.errors import SdparityError

ROOT = Path(__file__).resolve().parents[1]
LIB_SUFFIXES = (".so", ".dylib", ".dll", ".py")


def _spec_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def tvm_dirs(folder: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """(tvm package folder, tvm_ffi package folder or None) of this environment or of ``folder``."""
    if folder is None:
        tvm_dir = _spec_dir("tvm")
        if tvm_dir is None:
            raise SdparityError("TVM is not installed in this environment (no 'tvm' package)")
        return tvm_dir, _spec_dir("tvm_ffi")
    folder = Path(folder).expanduser().resolve()
    if not folder.is_dir():
        raise SdparityError(f"TVM folder {folder} does not exist or is not a folder")
    for cand in (folder / "tvm", folder):
        if (cand / "__init__.py").is_file() and (cand / "libinfo.py").is_file():
            ffi = cand.parent / "tvm_ffi"
            return cand, ffi if (ffi / "__init__.py").is_file() else None
    raise SdparityError(f"{folder} holds no TVM Python package (expected {folder}/tvm/__init__.py "
                        "and libinfo.py, e.g. a 'pip install --target' folder or TVM's python/ folder)")


def tvm_files(tvm_dir: Path, ffi_dir: Path | None) -> list[Path]:
    """Every file that makes this TVM what it is: its and tvm_ffi's shared libraries and Python
    sources, plus libtvm* in the library folders a source build loads from (tvm.libinfo)."""
    files = []
    for d in (tvm_dir, ffi_dir):
        for top, dirs, names in os.walk(d) if d is not None else ():
            dirs[:] = [n for n in dirs if n != "__pycache__"]
            files += [Path(top, n) for n in names if n.endswith(LIB_SUFFIXES)]
    lib_dirs = [tvm_dir.parent.parent / "build" / "lib", tvm_dir.parent.parent / "build", tvm_dir.parent.parent / "lib"]
    if os.environ.get("TVM_LIBRARY_PATH"):
        lib_dirs.insert(0, Path(os.environ["TVM_LIBRARY_PATH"]))
    for d in lib_dirs:
        files += d.glob("libtvm*") if d.is_dir() else []
    return sorted({p for p in files if p.is_file()})


def _memo_dir() -> Path:
    from sdparity.files import cache_root  # the one place the cache folder is decided

    return cache_root() / "identity"


def files_digest(files: list[Path], base: Path, memo: bool = True) -> str:
    """sha256 over (name, bytes) of every file, names relative to ``base`` (else the bare file
    name), so the same TVM in two folders hashes alike; remembered on disk by (path, size,
    mtime_ns) of every file."""
    stats = [(str(p), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()]]
    key = hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:32]
    memo_file = _memo_dir() / f"{key}.txt"
    if memo and memo_file.is_file():
        return memo_file.read_text().strip()
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(base) if p.is_relative_to(base) else p.name).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    out = h.hexdigest()[:20]
    # A file changed again within the file system's timestamp granularity keeps its (size,
    # mtime_ns): only remember hashes of files that were last written over 2 s ago.
    if memo and all(time.time_ns() - m > 2_000_000_000 for _, _, m in stats):
        memo_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(out)
        os.replace(tmp, memo_file)
    return out


def _read_version(tvm_dir: Path) -> tuple[str | None, str | None]:
    """(version, commit) from tvm/_version.py (setuptools_scm writes both) without importing."""
    try:
        text = (tvm_dir / "_version.py").read_text()
    except OSError:
        return None, None
    ver = re.search(r"^(?:__version__ = )?version = ['\"]([^'\"]+)['\"]", text, re.M)
    com = re.search(r"commit_id = ['\"]g?([0-9a-f]+)['\"]", text)
    return (ver.group(1) if ver else None), (com.group(1) if com else None)


def _git_commit(tvm_dir: Path) -> str | None:
    """HEAD of a source checkout holding this package (python/tvm), '-dirty' when it has edits."""
    top = tvm_dir.parent.parent
    if not (top / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(top), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(top), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("-dirty" if dirty else "")) if head else None


@functools.cache
def _identity(tvm_dir: Path, ffi_dir: Path | None) -> dict:
    t0 = time.perf_counter()
    files = tvm_files(tvm_dir, ffi_dir)
    libs = files_digest(files, tvm_dir.parent)
    version, commit = _read_version(tvm_dir)
    ffi_version, _ = _read_version(ffi_dir) if ffi_dir else (None, None)
    return {"version": version, "path": str(tvm_dir), "libs_sha256": libs, "files": len(files),
            "commit": _git_commit(tvm_dir) or commit, "ffi_path": str(ffi_dir) if ffi_dir else None,
            "ffi_version": ffi_version, "identity_s": round(time.perf_counter() - t0, 3)}


def tvm_identity(folder: str | os.PathLike | None = None) -> dict:
    """Version, path, library hash and commit of this environment's TVM or of ``folder``'s.
    Read from files only (the same whether or not TVM is imported yet): a cache key."""
    return dict(_identity(*tvm_dirs(folder)))


def loaded_tvm_identity() -> dict:
    """tvm_identity() of the TVM this process imports, with what the imported TVM itself says
    (``tvm.__version__``; ``libinfo()``'s GIT_COMMIT_HASH where the build recorded one): for
    reports."""
    import tvm
    import tvm_ffi

    out = dict(_identity(Path(tvm.__file__).resolve().parent, Path(tvm_ffi.__file__).resolve().parent))
    out["version"] = tvm.__version__
    commit = str(tvm.support.libinfo().get("GIT_COMMIT_HASH", "") or "")
    if commit and commit != "NOT-FOUND":
        out["commit"] = commit
    return out


def module_files(module: str) -> list[Path]:
    """The source files of a module of this project (or, failing that, of any imported module);
    a package stands for all its .py files and the .json data beside them (e.g. the GPU tuning
    database in sdparity/compile/tuned/)."""
    base = ROOT.joinpath(*module.split("."))
    if not base.is_dir() and not base.with_suffix(".py").is_file():
        mod = sys.modules.get(module)
        if mod is None or not getattr(mod, "__file__", None):
            raise ValueError(f"cannot find the source of {module} ({base}.py)")
        f = Path(mod.__file__)
        base = f.parent if f.name == "__init__.py" else f.with_suffix("")
    if base.is_dir():
        return sorted(p for p in base.rglob("*") if p.suffix in (".py", ".json") and "__pycache__" not in p.parts)
    return [base.with_suffix(".py")]


def source_digest(modules) -> str:
    """sha256 over the relative names and bytes of these modules' source files."""
    h = hashlib.sha256()
    for p in sorted({f for m in modules for f in module_files(m)}):
        h.update(str(p.relative_to(ROOT)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:20]


@functools.cache
def package_digest(name: str) -> dict:
    """{"version", "record_sha256"} of the installed distribution ``name`` (importlib.metadata),
    without importing it: the sha256 of its RECORD text (names, hashes and sizes of every
    installed file; None for an installation without one, e.g. some system packages), or
    {"version": None, ...} when it is not installed. Remembered per process."""
    from importlib import metadata

    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return {"version": None, "record_sha256": None}
    record = dist.read_text("RECORD")
    digest = hashlib.sha256(record.encode()).hexdigest()[:20] if record is not None else None
    return {"version": dist.version, "record_sha256": digest}
