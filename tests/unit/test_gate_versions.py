"""The gate's sides: a release number or a TVM you built, given by path (issue 10 item 6).

The default run uses a real installed TVM placed in a folder of its own (the venv's apache-tvm
package, hard-linked: no copy of 300 MB); the ``slow`` test installs apache-tvm 0.26.0 with
``pip install --target`` (cached under .cache/tvm-builds) and runs a check with it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sdparity.errors import SdparityError
from sdparity.identity import tvm_dirs, tvm_identity
from sdparity.commands.versions_env import parse_side, run_check, shim_dir

ROOT = Path(__file__).resolve().parents[2]
BUILDS = ROOT / ".cache" / "tvm-builds"


def _link_tree(src: Path, dst: Path) -> None:
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:  # another file system: copy
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link, ignore=shutil.ignore_patterns("__pycache__"), symlinks=True)


@pytest.fixture(scope="module")
def tvm_folder(tmp_path_factory) -> Path:
    """A folder holding this venv's real TVM (tvm, tvm_ffi, their dist-info) and nothing else:
    what 'pip install --target DIR --no-deps apache-tvm apache-tvm-ffi' makes."""
    tvm_dir, ffi_dir = tvm_dirs()
    folder = tmp_path_factory.mktemp("built") / "site"
    folder.mkdir()
    for pkg in (tvm_dir, ffi_dir):
        _link_tree(pkg, folder / pkg.name)
        for info in pkg.parent.glob(f"apache_{pkg.name}-*.dist-info"):
            _link_tree(info, folder / info.name)
    return folder


def test_release_numbers_and_bad_specs():
    side = parse_side("0.26.0")
    assert (side.kind, side.version, side.path, side.label) == ("release", "0.26.0", None, "0.26.0")
    assert parse_side("0.27.0.post1").kind == "release"
    with pytest.raises(SdparityError, match="neither a TVM release number"):
        parse_side("latest")
    with pytest.raises(SdparityError, match="does not exist"):
        parse_side("/nonexistent/tvm-build")


def test_folder_without_tvm_is_refused(tmp_path):
    (tmp_path / "numpy").mkdir()
    with pytest.raises(SdparityError, match="holds no TVM Python package") as e:
        parse_side(str(tmp_path))
    assert "\n" not in str(e.value)


def test_folder_spec_and_its_identity(tvm_folder):
    side = parse_side(str(tvm_folder))
    assert side.kind == "path" and side.path == tvm_folder / "tvm" and side.ffi == tvm_folder / "tvm_ffi"
    assert parse_side(str(tvm_folder / "tvm")).path == side.path  # the package folder itself works too
    ident, here = tvm_identity(tvm_folder), tvm_identity()
    assert ident["path"] == str(tvm_folder / "tvm") and ident["ffi_path"] == str(tvm_folder / "tvm_ffi")
    assert ident["version"] == "0.27.0.post1" and ident["ffi_version"] == here["ffi_version"]
    assert ident["commit"] == here["commit"] == "7b5acb32b"  # setuptools_scm's record in tvm/_version.py
    # the same bytes in another place: the same library hash (the build cache is shared)
    assert ident["libs_sha256"] == here["libs_sha256"] and ident["files"] == here["files"]
    assert side.label.startswith("0.27.0.post1-path-")
    shim = shim_dir(side)
    names = sorted(p.name for p in shim.iterdir())
    from importlib.metadata import version

    ffi = version("apache-tvm-ffi")  # pyproject's pin (0.1.14.post1: known issue tvm_ffi_0115_dtype_json_segfault)
    assert names[:2] == ["apache_tvm-0.27.0.post1.dist-info", f"apache_tvm_ffi-{ffi}.dist-info"]
    assert names[2:] == ["tvm", "tvm_ffi"] and (shim / "tvm").resolve() == side.path


def test_gate_versions_parser_takes_a_folder(tvm_folder):
    from sdparity.cli import build_parser

    args = build_parser().parse_args(["gate-versions", "0.26.0", str(tvm_folder), "--", "--stages", "clip"])
    assert args.version_a.kind == "release" and args.version_b.path == tvm_folder / "tvm"
    assert args.check_args == ["--stages", "clip"]


def test_check_runs_with_the_folders_tvm_and_records_it(tvm_folder, tmp_path):
    side = parse_side(str(tvm_folder))
    report = run_check(side, tmp_path / "out", ["--stages", "concat_embeddings,image_to_rgba"],
                       log=lambda *a: None, python=Path(sys.executable))
    data = json.loads(report.read_text())
    assert "error" not in data and data["summary"]["pass"] == len(data["results"]) > 0
    tvm = data["versions"]["tvm"]
    assert tvm["path"] == str(tvm_folder / "tvm")  # imported from the folder, not from the venv
    assert tvm["ffi_path"] == str(tvm_folder / "tvm_ffi")
    assert tvm["libs_sha256"] == tvm_identity(tvm_folder)["libs_sha256"] and tvm["commit"] == "7b5acb32b"
    assert data["versions"]["apache-tvm"] == "0.27.0.post1"


def _install_release(version: str, ffi: str) -> Path:
    """``pip install --target`` a TVM release into a folder of its own (once; cached)."""
    folder = BUILDS / f"apache-tvm-{version}"
    if not (folder / "tvm" / "libinfo.py").is_file():
        tmp = BUILDS / f".apache-tvm-{version}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp),
                            f"apache-tvm=={version}", f"apache-tvm-ffi=={ffi}"], capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot install apache-tvm {version} (no package index?): {r.stderr.strip()[-300:]}")
        tmp.rename(folder)
    return folder


@pytest.mark.slow
def test_a_second_tvm_in_a_folder_of_its_own(tmp_path):
    """apache-tvm 0.26.0 from its own folder, in this venv (0.27.0.post1): the check imports it,
    records it, and gates clean against this venv's TVM on the weight-free stages."""
    from sdparity.reports.gate import gate_files

    folder = _install_release("0.26.0", "0.1.15.post2")
    side = parse_side(str(folder))
    stages = ["--stages", "concat_embeddings,image_to_rgba,scheduler_dpm"]
    cand = run_check(side, tmp_path / "b", stages, log=lambda *a: None, python=Path(sys.executable))
    data = json.loads(cand.read_text())
    tvm = data["versions"]["tvm"]
    assert tvm["version"] == "0.26.0" and tvm["path"] == str(folder / "tvm")
    assert tvm["libs_sha256"] != tvm_identity()["libs_sha256"] and data["versions"]["apache-tvm"] == "0.26.0"
    base = run_check(parse_side(str(tvm_dirs()[0])), tmp_path / "a", stages, log=lambda *a: None,
                     python=Path(sys.executable))
    result = gate_files(base, cand)
    assert not result["regressions"], result["regressions"][:3]
