"""Atomic file writes: every report, cached artifact and PNG goes through these, so a reader
never sees half a file (temp file in the same folder, fsync, rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    write_atomic_bytes(path, text.encode())


def write_atomic_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_root() -> Path:
    """Where sdparity keeps builds, models, the toolchain and hash memos: $SDPARITY_CACHE, or
    ~/.cache/sdparity. The one place this default is computed (the nox sessions and the tests
    set SDPARITY_CACHE to the checkout's .cache/sdparity)."""
    return Path(os.environ.get("SDPARITY_CACHE") or Path.home() / ".cache" / "sdparity")
