"""Images for reports and test artifacts: a dependency-free PNG writer and a difference map."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def png_bytes(img: np.ndarray) -> bytes:
    """(H,W,3|4) uint8 -> PNG file bytes (8-bit RGB/RGBA, no filtering)."""
    a = np.ascontiguousarray(img, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected (H,W,3|4) uint8, got {a.shape}")
    h, w, c = a.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), a.reshape(h, w * c)], axis=1).tobytes()

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 6 if c == 4 else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


def write_png(path: Path, img: np.ndarray) -> None:
    from sdparity.reports.report import write_atomic_bytes

    write_atomic_bytes(Path(path), png_bytes(img))


def diff_heatmap(a: np.ndarray, b: np.ndarray, full_scale: float | None = None) -> np.ndarray:
    """|a-b| (max over channels) as a black→red→yellow→white heat map, (H,W,3) uint8.
    full_scale: the difference shown as white (default: the largest difference, at least 1)."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64))
    if d.ndim == 3:
        d = d.max(axis=2)
    scale = full_scale or max(float(d.max()), 1.0)
    t = np.clip(d / scale, 0, 1)
    r = np.clip(3 * t, 0, 1)
    g = np.clip(3 * t - 1, 0, 1)
    bl = np.clip(3 * t - 2, 0, 1)
    return (np.stack([r, g, bl], -1) * 255).round().astype(np.uint8)
