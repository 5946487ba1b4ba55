"""On-disk build cache: one folder per build, keyed by everything that changes it.

An entry is written into a temporary folder and renamed into place only after its
``meta.json`` (which lists every file with its size and sha256) is complete, so a crash
never leaves a half-written entry that looks valid. Reading an entry checks that list; a
mismatch is a corrupt cache and a clear error, never a silent rebuild over bad files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from sdparity.errors import SdparityError
from sdparity.ir import digest

META = "meta.json"


def default_root() -> Path:
    return Path(os.environ.get("SDPARITY_CACHE", Path.home() / ".cache" / "sdparity")) / "builds"


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


class BuildCache:
    def __init__(self, root: Path | None = None, rebuild: bool = False, deep_verify: bool = True):
        self.root = Path(root) if root else default_root()
        self.rebuild = rebuild
        self.deep_verify = deep_verify

    def entry(self, key: dict) -> Path:
        return self.root / digest(key)

    def get_or_build(self, key: dict, builder: Callable[[Path], dict | None], log=print,
                     label: str = "") -> tuple[Path, dict, bool]:
        """Return (folder, meta, was_cached). builder(tmpdir) fills tmpdir, returns extra meta."""
        final = self.entry(key)
        if final.exists() and not self.rebuild:
            meta = _verify(final, self.deep_verify)
            return final, meta, True
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=self.root))
        try:
            t0 = time.perf_counter()
            extra = builder(tmp) or {}
            elapsed = time.perf_counter() - t0
            files = {
                str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p)}
                for p in sorted(tmp.rglob("*")) if p.is_file()
            }
            meta = {"key": key, "label": label, "build_s": round(elapsed, 3), "files": files,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra}
            (tmp / META).write_text(json.dumps(meta, indent=1, default=str))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final, meta, False

    def clear(self) -> int:
        n = 0
        if self.root.exists():
            for p in self.root.iterdir():
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()
                n += 1
        return n
