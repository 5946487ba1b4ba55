"""On-disk build cache: one folder per build, keyed by everything that changes it.

An entry is written into a temporary folder and renamed into place only after its
``meta.json`` (which lists every file with its size and sha256) is complete, so a crash
never leaves a half-written entry that looks valid. Reading an entry checks that list; a
mismatch is a corrupt cache and a clear error, never a silent rebuild over bad files.

Several processes may share one cache (CI jobs on one machine; docs/reliability.md):

* **One lock per entry**: ``builds/.locks/<entry>.lock``, an ``fcntl.flock`` lock: shared while
  an entry is read and verified, exclusive while it is built and put in place. So an entry is
  built once however many processes ask for it at the same time: the others wait (a line says
  so) and reuse it. Lock files are never deleted (deleting one that another process holds would
  let two processes in).
* **--rebuild** (``rebuild=True``) rebuilds an entry that was made *before this cache object
  was created* (this run started) and reuses one made after (by this run or by a concurrent
  one, under the lock): N concurrent ``--rebuild`` runs build each entry once. An entry is
  replaced by exchanging the two folders in one ``renameat2(RENAME_EXCHANGE)`` where the
  system has it, so a reader never finds it missing.
* **Killed builds** leave ``.build-<entry>-*`` temp folders; one whose entry lock nobody holds
  is stale (a builder holds the lock for the whole life of its temp folder) and is removed by
  the next build and by ``clear``. Temp folders of older versions (``.build-*`` without the
  entry's name) are removed when older than ``STALE_S``.
* **Ctrl-C during a build**: TVM's C++ may swallow the KeyboardInterrupt. A SIGINT handler
  installed around the builder records it; after the builder returns (or fails) a recorded
  interrupt is raised as KeyboardInterrupt and the build is never cached.
* Entry folders get ``0o777 & ~umask`` (mkdtemp makes 0700).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from sdparity.errors import SdparityError
from sdparity.files import cache_root, folder_mode
from sdparity.ir import digest

META = "meta.json"
LOCKS = ".locks"
TMP_PREFIX = ".build-"
#: a temp folder without an entry name (made by an older sdparity) older than this is stale
STALE_S = 6 * 3600


def default_root() -> Path:
    return cache_root() / "builds"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(entry: Path, deep: bool) -> dict:
    try:
        meta = json.loads((entry / META).read_text())
        files = meta["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SdparityError(f"build cache entry {entry} is corrupt ({META}: {e}); "
                            f"remove it or run with --rebuild") from None
    for name, info in files.items():
        f = entry / name
        if not f.is_file() or f.stat().st_size != info["size"]:
            raise SdparityError(f"build cache entry {entry} is corrupt ({name} missing or truncated); "
                                f"remove it or run with --rebuild")
        if deep and _sha256(f) != info["sha256"]:
            raise SdparityError(f"build cache entry {entry} is corrupt ({name} checksum differs); "
                                f"remove it or run with --rebuild")
    return meta


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    if fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


class _Interrupts:
    """Records SIGINT while a builder runs (main thread only); the default handling (raise
    KeyboardInterrupt at once) is kept, in case Python code gets to see it."""

    def __init__(self):
        self.seen = False
        self.old = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            old = signal.getsignal(signal.SIGINT)
            if old is signal.default_int_handler:  # not SIG_IGN, not someone else's handler
                self.old = old
                signal.signal(signal.SIGINT, self._handler)
        return self

    def _handler(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)
        return False


class BuildCache:
    def __init__(self, root: Path | None = None, rebuild: bool = False, deep_verify: bool = True):
        self._swept = False
        self.root = Path(root) if root else default_root()
        self.rebuild = rebuild
        self.deep_verify = deep_verify
        self.started_ns = time.time_ns()  # --rebuild: entries made before this are rebuilt

    def entry(self, key: dict) -> Path:
        return self.root / digest(key)

    # ---- locks -----------------------------------------------------------------------------

    def _lock_path(self, entry: Path) -> Path:
        return self.root / LOCKS / f"{entry.name}.lock"

    @contextlib.contextmanager
    def _locked(self, entry: Path, exclusive: bool, log=None, label: str = ""):
        path = self._lock_path(entry)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            if exclusive or e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise SdparityError(f"build cache {self.root} is not writable: {e.strerror or e}") from None
            yield  # a read-only cache can still be read: nobody can be changing it
            return
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                if log:
                    log(f"{label or entry.name}: waiting for another sdparity process using this "
                        f"cache entry ({entry})")
                fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _try_lock(self, name: str):
        """An fd holding entry ``name``'s lock exclusively; None when another process holds it;
        False when there is no lock file (nobody ever locked it) or it cannot be opened."""
        try:
            fd = os.open(self.root / LOCKS / f"{name}.lock", os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            os.close(fd)
            return None

    def _is_locked(self, name: str) -> bool:
        """Whether some process holds the lock of entry ``name`` (tried without waiting)."""
        fd = self._try_lock(name)
        if fd is not None and fd is not False:
            os.close(fd)
        return fd is None

    # ---- reading and building ----------------------------------------------------------------

    def _reusable(self, final: Path) -> dict | None:
        if not final.is_dir():
            return None
        if not self.rebuild:
            return _verify(final, self.deep_verify)
        try:
            meta = _verify(final, self.deep_verify)
        except SdparityError:
            return None  # --rebuild replaces a corrupt entry
        built = meta.get("built_ns")
        return meta if isinstance(built, int) and built >= self.started_ns else None

    def get_or_build(self, key: dict, builder: Callable[[Path], dict | None], log=print,
                     label: str = "") -> tuple[Path, dict, bool]:
        """Return (folder, meta, was_cached). builder(tmpdir) fills tmpdir, returns extra meta."""
        final = self.entry(key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if not final.is_dir():
                raise SdparityError(f"build cache {self.root} is not usable: {e.strerror or e}") from None
        if not self._swept:  # once per cache object: what killed builds left, even if all is cached
            self._swept = True
            self.collect_stale()
        with self._locked(final, exclusive=False, log=log, label=label):
            meta = self._reusable(final)
            if meta is not None:
                return final, meta, True
        with self._locked(final, exclusive=True, log=log, label=label):
            meta = self._reusable(final)  # built by another process while this one waited
            if meta is not None:
                return final, meta, True
            self.collect_stale(holding=final.name)
            return final, self._build(final, key, builder, label), False

    def _build(self, final: Path, key: dict, builder, label: str) -> dict:
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=self.root))
            os.chmod(tmp, folder_mode())
        except OSError as e:
            raise SdparityError(f"build cache {self.root} is not writable: {e.strerror or e}") from None
        try:
            t0 = time.perf_counter()
            with _Interrupts() as intr:
                try:
                    extra = builder(tmp) or {}
                except BaseException as e:
                    if intr.seen and not isinstance(e, KeyboardInterrupt):
                        raise KeyboardInterrupt from e  # the interrupt came back as another error
                    raise
            if intr.seen:  # swallowed by the C++ side: never cache an interrupted build
                raise KeyboardInterrupt
            elapsed = time.perf_counter() - t0
            files = {
                str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p)}
                for p in sorted(tmp.rglob("*")) if p.is_file()
            }
            meta = {"key": key, "label": label, "build_s": round(elapsed, 3), "files": files,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "built_ns": time.time_ns(), **extra}
            (tmp / META).write_text(json.dumps(meta, indent=1, default=str))
            if final.exists():
                if not _exchange(tmp, final):  # no atomic swap here: move the old one aside
                    old = tmp.with_name(tmp.name + "-old")  # a stale temp folder if killed now
                    os.replace(final, old)
                    os.replace(tmp, final)
                    tmp = old
                # tmp now holds the replaced entry: removed below
            else:
                os.replace(tmp, final)
        except OSError as e:
            raise SdparityError(f"could not write build cache entry {final}: {e.strerror or e}") from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return meta

    # ---- housekeeping --------------------------------------------------------------------------

    def collect_stale(self, holding: str | None = None) -> list[Path]:
        """Remove temp folders left by killed builds: ``.build-<entry>-*`` whose entry lock is
        free (or is ``holding``, the entry whose lock this process holds and has no temp folder
        of yet), and older-style ``.build-*`` older than STALE_S. Returns what was removed."""
        removed = []
        try:
            names = os.listdir(self.root)
        except OSError:
            return removed
        for name in names:
            if not name.startswith(TMP_PREFIX):
                continue
            path = self.root / name
            entry = name[len(TMP_PREFIX):].split("-", 1)[0]
            if len(entry) >= 16 and "-" in name[len(TMP_PREFIX):]:
                stale = entry == holding or not self._is_locked(entry)
            else:
                try:
                    stale = time.time() - path.lstat().st_mtime > STALE_S
                except OSError:
                    continue
            if stale:
                shutil.rmtree(path, ignore_errors=True)
                if not os.path.lexists(path):
                    removed.append(path)
        return removed

    def clear(self) -> int:
        """Remove every entry (and stale temp folders); entries in use by another process are
        left (``self.in_use``). Returns the number removed; raises SdparityError when something
        could not be removed (a read-only cache): never claims a removal it did not make."""
        self.in_use = 0
        if not self.root.exists():
            return 0
        if not self.root.is_dir():
            raise SdparityError(f"build cache {self.root} is not a folder")
        n, failed, why = 0, 0, ""
        self.collect_stale()
        for p in sorted(self.root.iterdir()):
            if p.name == LOCKS:
                continue  # a lock file may be held: deleting it would let two processes in
            if p.name.startswith(TMP_PREFIX):
                continue  # a live build's (the stale ones went above)
            errors = []
            fd = self._try_lock(p.name) if p.is_dir() and not p.is_symlink() else False
            if fd is None:
                self.in_use += 1  # being read or built right now: left alone
                continue
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, onerror=lambda func, path, exc: errors.append(exc[1]))
                else:
                    p.unlink()
            except OSError as e:
                errors.append(e)
            finally:
                if fd is not None and fd is not False:
                    os.close(fd)
            if os.path.lexists(p):
                failed += 1
                if not why:
                    why = (getattr(errors[0], "strerror", None) or str(errors[0])) if errors else "still there"
            else:
                n += 1
        if failed:
            raise SdparityError(f"cache clear: could not remove {failed} of {n + failed} entries of "
                                f"{self.root} ({why or 'unknown reason'}); removed {n}")
        return n
