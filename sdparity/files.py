"""Files sdparity writes, and where: atomic writes (every report, cached artifact and PNG goes
through these, so a reader never sees half a file: temp file in the same folder, fsync,
rename), the checks an output path or a cache folder must pass before any work, the umask,
and ``cache_root()``, the one place the cache folder is decided.

An output path may only be *nothing* or a *regular file* (a symlink to a regular file is
replaced by the new file; the file it pointed to is left alone): a device node, a folder, a
FIFO, a socket or a dangling symlink is refused with an ``SdparityError`` (one line, exit 2).
A new file gets ``0o666 & ~umask``; a replaced file keeps its permission bits.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from sdparity.errors import SdparityError

#: a cache folder with less free space than this is refused before any work ("full"): the
#: tiny model (~2 MB) and a check's builds (~0.1-30 MB each) fit; the full-size model (4 GB)
#: still needs its own room, and a write that runs out of space is a one-line error
CACHE_MIN_FREE = 32 << 20
#: an output folder (report, page, gate JSON) with less free space than this is refused
OUTPUT_MIN_FREE = 1 << 20

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISSOCK, "a socket"))


def umask() -> int:
    """The process's umask, read without changing it (Linux: /proc/self/status)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(old)
    return old


def file_mode() -> int:
    """Permission bits for a new file: what ``open()`` would give (mkstemp gives 0600)."""
    return 0o666 & ~umask()


def folder_mode() -> int:
    """Permission bits for a new folder: what ``mkdir`` would give (mkdtemp gives 0700)."""
    return 0o777 & ~umask()


def kind_of(st_mode: int) -> str:
    for test, name in _KINDS:
        if test(st_mode):
            return name
    return "not a regular file"


def output_problem(path: Path) -> str | None:
    """Why ``path`` cannot be replaced by a file sdparity writes (None: it can): it exists and
    is not a regular file (a symlink counts as what it points to; a dangling one is refused)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.lexists(path):
            return f"{path} is a symbolic link to nothing ({os.readlink(path)})"
        return None
    except NotADirectoryError:
        return None  # a parent is a file: the folder check says so
    except OSError as e:
        return f"cannot inspect {path} ({e.strerror or e})"
    if stat.S_ISREG(st.st_mode):
        return None
    link = " (through a symbolic link)" if os.path.islink(path) else ""
    return f"{path} is {kind_of(st.st_mode)}{link}, not a regular file: sdparity replaces only a regular file"


def folder_problem(folder: Path, min_free: int = 0, create: bool = True) -> str | None:
    """Why files cannot be created in ``folder`` (None: they can): it, or the nearest part of
    it that exists, is not a folder, is read-only (a real test file: as root, permission bits
    do not stop writes, a read-only mount does) or has less than ``min_free`` bytes free."""
    folder = Path(folder).absolute()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        if os.path.lexists(existing):
            return f"{existing} is a symbolic link to nothing"
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a folder"
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as e:
        return f"cannot create a file in {existing} ({e.strerror or e})"
    if min_free:
        try:
            st = os.statvfs(existing)
        except OSError:
            return None
        free = st.f_bavail * st.f_frsize
        if free < min_free:
            return (f"{existing} is (nearly) full: {_size(free)} free, sdparity needs at least "
                    f"{_size(min_free)} there")
    return None


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def check_output(path: Path, min_free: int = OUTPUT_MIN_FREE) -> None:
    """Raise SdparityError (one line) unless sdparity may write ``path``: nothing there or a
    regular file, in a folder where a file can be created, with some room."""
    path = Path(path)
    if not str(path) or path.name in ("", ".", ".."):
        raise SdparityError(f"{str(path)!r} is a folder, not a file path")
    problem = output_problem(path) or folder_problem(path.parent, min_free)
    if problem:
        raise SdparityError(f"cannot write {path}: {problem}")


def write_atomic(path: Path, text: str) -> None:
    write_atomic_bytes(path, text.encode())


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically. Only a regular file (or nothing) is replaced;
    anything else, and any failure to write (full, read-only), is one SdparityError line."""
    path = Path(path)
    problem = output_problem(path)
    if problem:
        raise SdparityError(f"cannot write {path}: {problem}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise SdparityError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)  # a replaced file keeps its mode
        except OSError:
            mode = file_mode()
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        problem = output_problem(path)  # made meanwhile (a narrow window, but free to look)
        if problem:
            raise SdparityError(f"cannot write {path}: {problem}")
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise SdparityError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_root() -> Path:
    """Where sdparity keeps builds, models, the toolchain and hash memos: $SDPARITY_CACHE, or
    ~/.cache/sdparity. The one place this is decided (the nox sessions and the tests set
    SDPARITY_CACHE to the checkout's .cache/sdparity). An empty (or blank) SDPARITY_CACHE counts
    as unset: it never means the current folder. ``~`` is expanded; a relative path is taken
    from the current folder, as given."""
    value = os.environ.get("SDPARITY_CACHE", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "sdparity"


def check_cache_root(root: Path | None = None) -> Path:
    """The cache folder, refused (SdparityError, one line) when sdparity could not use it: it or
    a part of it is a regular file, it is read-only, or its disk is (nearly) full
    (``CACHE_MIN_FREE``). Checked before any work by the commands that build."""
    root = Path(root) if root is not None else cache_root()
    for sub in (root, root / "builds", root / "models"):
        if os.path.lexists(sub) and not sub.is_dir():
            raise SdparityError(f"cache folder {root} is unusable: {sub} is not a folder "
                                f"(set SDPARITY_CACHE to a folder)")
    problem = folder_problem(root, CACHE_MIN_FREE)
    if problem:
        raise SdparityError(f"cache folder {root} is unusable: {problem} (set SDPARITY_CACHE to "
                            f"a writable folder with room)")
    return root
