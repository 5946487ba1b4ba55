"""Images for reports and test artifacts: PNG encoding (Pillow), a difference heat map, and
the reference/candidate/difference PNGs attached to image outputs in a report.

A stage output declared ``Output(..., image=True)`` is one of
  * a float image (1,H,W,3) or (H,W,3) in 0..255 (VAE), shown clipped and rounded;
  * a packed RGBA image (H,W) uint32 = r | g<<8 | b<<16 | a<<24 (image_to_rgba).
Only the first image of a batch is kept. The heat map shows max over channels of
|candidate - reference| in 0..255 units, scaled to its own finite maximum (``diff_max`` in the
record) on a black-red-yellow-white ramp; NaN/Inf differences are white.

The runner attaches the PNGs to the Report; Report.write puts them in ``<report>_images/``
beside the JSON, replacing the old folder as a whole, but only a folder sdparity made: it
carries a marker file (``MARKER``); any other folder or file of that name is refused with one
line (the CLI checks it before any work, ``images_dir_problem``).
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from sdparity.files import write_atomic_bytes


def png_bytes(img: np.ndarray) -> bytes:
    """(H,W,3|4) uint8 -> PNG file bytes."""
    from PIL import Image

    a = np.ascontiguousarray(img, dtype=np.uint8)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ValueError(f"expected (H,W,3|4) uint8, got {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(a, "RGBA" if a.shape[2] == 4 else "RGB").save(buf, format="PNG")
    return buf.getvalue()


def write_png(path: Path, img: np.ndarray) -> None:
    write_atomic_bytes(Path(path), png_bytes(img))


def as_channels(a: np.ndarray) -> np.ndarray:
    """(H,W,C) float64 in 0..255 units from any declared image layout."""
    a = np.asarray(a)
    if a.ndim == 2 and a.dtype.kind in "ui":
        u = a.astype(np.uint32)
        return np.stack([(u >> s) & 0xFF for s in (0, 8, 16, 24)], axis=-1).astype(np.float64)
    if a.ndim == 4:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        return a.astype(np.float64)
    raise ValueError(f"not an image layout: shape {a.shape} dtype {a.dtype}")


def to_uint8(x: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(x, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def heat(diff: np.ndarray) -> tuple[np.ndarray, float]:
    """(H,W) non-negative differences -> (H,W,3) uint8 heat map and the finite max it is scaled to."""
    finite = diff[np.isfinite(diff)]
    top = float(finite.max()) if finite.size else 0.0
    t = np.where(np.isfinite(diff), diff / top if top > 0 else 0.0, 1.0)
    rgb = np.stack([np.clip(3 * t, 0, 1), np.clip(3 * t - 1, 0, 1), np.clip(3 * t - 2, 0, 1)], axis=-1)
    return (rgb * 255).round().astype(np.uint8), top


def channel_diff(candidate: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(H,W) max over channels of |candidate - reference|; NaN differences become +inf."""
    cand, ref = as_channels(candidate), as_channels(reference)
    if cand.shape != ref.shape:
        raise ValueError(f"candidate {cand.shape} and reference {ref.shape} differ in shape")
    with np.errstate(invalid="ignore"):
        diff = np.abs(cand - ref)
    return np.where(np.isnan(diff), np.inf, diff).max(axis=-1)


def diff_heatmap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Heat map of two images of the same layout, (H,W,3) uint8."""
    return heat(channel_diff(a, b))[0]


def _safe(s) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(s))


def attach(report, record: dict, candidate: np.ndarray, reference: np.ndarray) -> None:
    """Encode the three PNGs of one image output into ``report.images``; name them in the record."""
    try:
        hm, top = heat(channel_diff(candidate, reference))
        cand, ref = as_channels(candidate), as_channels(reference)
        stem = ".".join(_safe(x) for x in (record["stage"], record["backend"], record["case"], record["output"]))
        names = {}
        for kind, img in (("reference", to_uint8(ref)), ("candidate", to_uint8(cand)), ("diff", hm)):
            names[kind] = f"{stem}.{kind}.png"
            report.images[names[kind]] = png_bytes(img)
        record["images"] = {**names, "diff_max": top, "shape": list(cand.shape)}
    except Exception as e:  # an image is an extra: never lose the check over it
        record["images"] = {"error": f"{type(e).__name__}: {e}"}


def images_dir_name(report_path: Path) -> str:
    return f"{Path(report_path).stem}_images"


#: the file that marks a ``<report>_images/`` folder as sdparity's own: only such a folder is
#: ever replaced (and so deleted); a folder without it is the user's and is refused
MARKER = ".sdparity-images"
_LEGACY_PNG = re.compile(r"[A-Za-z0-9_.-]+\.(reference|candidate|diff)\.png")


def _ours(folder: Path) -> bool:
    """Whether ``folder`` is an images folder sdparity made: it holds the marker file, or (made
    before the marker existed) nothing but sdparity's PNG names (``*.reference.png``,
    ``*.candidate.png``, ``*.diff.png``; empty counts too), no subfolders."""
    if (folder / MARKER).is_file() and not (folder / MARKER).is_symlink():
        return True
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return False
    return all(e.is_file(follow_symlinks=False) and _LEGACY_PNG.fullmatch(e.name) for e in entries)


def images_dir_problem(report_path: Path) -> str | None:
    """Why the images folder beside ``report_path`` cannot be (re)written (None: it can): it
    exists and is not a folder, is a symbolic link, or is a folder sdparity did not make."""
    folder = Path(report_path).parent / images_dir_name(report_path)
    if not os.path.lexists(folder):
        return None
    if folder.is_symlink():
        return f"{folder} is a symbolic link; sdparity writes the report's images there and replaces only its own folder"
    if not folder.is_dir():
        return f"{folder} exists and is not a folder; sdparity writes the report's images there: move it or choose another --report"
    if not _ours(folder):
        return (f"{folder} exists and was not made by sdparity (no {MARKER} file); it would be replaced "
                f"by the report's images: move it or choose another --report")
    return None


def write_images(images: dict[str, bytes], report_path: Path) -> str | None:
    """Write all PNGs into the folder beside the report (with the MARKER file), replacing the old
    folder as a whole: only a folder sdparity made is replaced (``images_dir_problem``)."""
    from sdparity.errors import SdparityError
    from sdparity.files import check_output, file_mode, folder_mode

    if not images:
        return None
    report_path = Path(report_path)
    check_output(report_path)  # a report that cannot be written: no images either
    problem = images_dir_problem(report_path)
    if problem:
        raise SdparityError(problem)
    final = report_path.parent / images_dir_name(report_path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    except OSError as e:
        raise SdparityError(f"cannot write the report's images into {final}: {e.strerror or e}") from None
    try:
        mode = file_mode()
        for name, data in {MARKER: b"made by sdparity: replaced with each report of this name\n",
                           **images}.items():
            (tmp / name).write_bytes(data)
            os.chmod(tmp / name, mode)
        os.chmod(tmp, folder_mode())  # mkdtemp makes 0700
        old = None
        if os.path.lexists(final):
            problem = images_dir_problem(report_path)  # made meanwhile?
            if problem:
                raise SdparityError(problem)
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, old / "x")
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise SdparityError(f"cannot write the report's images into {final}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final.name
