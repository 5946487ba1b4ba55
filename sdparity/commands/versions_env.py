"""One virtual environment per TVM version, for the upgrade gate (docs/gate.md).

``ensure(version)`` makes ``.cache/venvs/tvm-<version>``: the project's pinned dependencies
with the apache-tvm pin replaced by ``version`` (plus the companion pins a release needs),
and this working tree installed editable, so every version runs the very same sdparity code.
A finished environment carries ``sdparity-env.json`` (what was installed); an environment
without it, or with different contents, is rebuilt from scratch. The stamp is written last,
so an interrupted install is never reused.

A side of the gate is either a release number or **a TVM you built**, given by path
(``Side``/``parse_side``): a folder holding the ``tvm`` Python package with its libraries (a
``pip install --target DIR`` folder, TVM's ``python/`` folder of a source build) or the
``tvm`` package folder itself. That side runs in the environment of the project's pinned
release with the folder's ``tvm`` (and its ``tvm_ffi``, when the folder has one) first on
``PYTHONPATH`` (through a folder of links to just those packages, so the folder's other
packages, e.g. its numpy, do not replace the environment's), the way TVM's own docs run a
source build. Its report records the TVM it imported (``versions.tvm``: path, version, commit,
library hash) and the gate checks that it is the folder's.

``gate_versions(a, b)`` runs ``sdparity check --backends llvm`` for both sides and gates b
against a (sdparity.reports.gate). A candidate whose check cannot run at all still gives a
report (``error`` field, no results), so the gate lists every check as lost instead of
crashing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sdparity.errors import SdparityError

ROOT = Path(__file__).resolve().parents[2]
VENVS = ROOT / ".cache" / "venvs"
OUT = ROOT / "out" / "gate"

# Pins a TVM release needs beyond what its own metadata says, each measured here.
COMPANIONS: dict[str, dict[str, str]] = {
    "0.25.0": {"apache-tvm-ffi==0.1.12": "0.25.0 asks for apache-tvm-ffi>=0.1.12, but its "
               "libtvm_runtime.so does not load with 0.1.13.post2 or later (undefined symbol "
               "tvm::ffi::json::Stringify(Any const&, Optional<int>)); 0.1.12 loads"},
}
# Installed without dependencies: only the CLIP BPE vocabulary file inside it is used (noxfile).
NO_DEPS = ["open_clip_torch==3.3.0"]
_VERSION = re.compile(r"^\d+\.\d+\.\d+([.-]?(post|rc|a|b|dev)\d+)?$")


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0].strip().lower().replace("_", "-")


def requirements(version: str) -> list[str]:
    """pyproject's dependencies with apache-tvm pinned to ``version``."""
    try:
        import tomllib
    except ImportError:
        raise SdparityError("the gate needs Python 3.11+ (tomllib) to read pyproject.toml") from None
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    companions = COMPANIONS.get(version, {})
    replaced = {"apache-tvm", *(_name(c) for c in companions)}  # a companion pin replaces pyproject's
    return [f"apache-tvm=={version}", *(d for d in deps if _name(d) not in replaced), *companions]


def pinned_version() -> str:
    """The apache-tvm release pyproject.toml pins: the environment a TVM folder runs in."""
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d.split("==", 1)[1].strip() for d in deps if _name(d) == "apache-tvm")


@dataclass(frozen=True)
class Side:
    """One side of the gate: a release (``version``) or a TVM folder (``path``: the tvm package)."""

    spec: str
    kind: str  # "release" | "path"
    version: str | None = None
    path: Path | None = None
    ffi: Path | None = None  # the folder's own tvm_ffi package, when it has one

    @property
    def label(self) -> str:
        """Names the side's output folder: the release, or the folder's version and a hash of its path."""
        if self.kind == "release":
            return self.version
        from sdparity.identity import tvm_identity
        from sdparity.ir import digest

        return f"{tvm_identity(self.path)['version'] or 'unknown'}-path-{digest(str(self.path))[:8]}"

    def describe(self) -> dict:
        return {"spec": self.spec, "kind": self.kind, "version": self.version,
                "path": str(self.path) if self.path else None}


def parse_side(spec: str) -> Side:
    """A release number (``0.26.0``) or a folder holding a TVM build; anything else is an error."""
    from sdparity.identity import tvm_dirs

    looks_like_path = os.sep in spec or spec.startswith((".", "~")) or Path(spec).exists()
    if _VERSION.match(spec) and not looks_like_path:
        return Side(spec, "release", version=spec)
    if not looks_like_path:
        raise SdparityError(f"{spec!r} is neither a TVM release number (e.g. 0.27.0.post1) nor a "
                            "folder holding a TVM build")
    tvm_dir, ffi_dir = tvm_dirs(spec)  # raises a one-line error when the folder holds no TVM
    return Side(spec, "path", path=tvm_dir, ffi=ffi_dir)


def shim_dir(side: Side) -> Path:
    """A folder of links to the side's tvm (and tvm_ffi) packages and their dist-info, for PYTHONPATH."""
    shim = VENVS / f"path-{side.label}"
    shutil.rmtree(shim, ignore_errors=True)
    shim.mkdir(parents=True)
    links = [side.path] + ([side.ffi] if side.ffi else [])
    for pkg in list(links):
        links += sorted(pkg.parent.glob(f"apache_{pkg.name}-*.dist-info"))  # the versions it reports
    for target in links:
        (shim / target.name).symlink_to(target, target_is_directory=True)
    return shim


def env_dir(version: str) -> Path:
    if not _VERSION.match(version):
        raise SdparityError(f"{version!r} does not look like a TVM version (e.g. 0.27.0.post1)")
    return VENVS / f"tvm-{version}"


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


def _run(cmd: list, log_path: Path, what: str) -> None:
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(map(str, cmd))}\n")
        log.flush()
        rc = subprocess.run([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT).returncode
    if rc != 0:
        tail = [l for l in log_path.read_text().splitlines() if l.strip()][-1:] or [""]
        raise SdparityError(f"{what} failed (exit {rc}; log {log_path}): {tail[0].strip()}")


def ensure(version: str, log=print) -> Path:
    """The python of a ready environment for this TVM version (built on first use)."""
    env = env_dir(version)
    want = {"requirements": requirements(version), "no_deps": NO_DEPS, "editable": str(ROOT),
            "python": sys.version.split()[0]}
    stamp = env / "sdparity-env.json"
    try:
        if json.loads(stamp.read_text()) == want and python_of(env).exists():
            return python_of(env)
    except (OSError, ValueError):
        pass
    log(f"[gate] creating {env} (TVM {version}); log: {env}.log")
    shutil.rmtree(env, ignore_errors=True)
    env.parent.mkdir(parents=True, exist_ok=True)
    logfile = Path(f"{env}.log")
    logfile.write_text("")
    _run([sys.executable, "-m", "venv", env], logfile, f"creating a venv for TVM {version}")
    pip = [python_of(env), "-m", "pip", "install", "-q"]
    torch = [r for r in want["requirements"] if _name(r) == "torch"]
    # torch first, from local wheels only (pip's find-links): on PyPI the same pin is a CUDA build
    if torch:
        _run([*pip, "--no-index", "--no-deps", *torch], logfile,
             f"installing {' '.join(torch)} (CPU) from pip's find-links without an index")
    _run([*pip, *want["requirements"]], logfile, f"installing TVM {version} and the pinned dependencies")
    _run([*pip, "--no-deps", *NO_DEPS, "-e", ROOT], logfile, "installing sdparity (editable)")
    (env / "sdparity-env.json").write_text(json.dumps(want, indent=1))
    return python_of(env)


def run_check(side: Side, out_dir: Path, check_args: list[str], log=print, python: Path | None = None) -> Path:
    """``sdparity check`` with this side's TVM; always returns a report path. ``python``: the
    interpreter to use instead of the side's environment (tests)."""
    from sdparity.files import cache_root, write_atomic
    from sdparity.reports.report import SCHEMA

    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "report.json"
    report.unlink(missing_ok=True)
    logfile = out_dir / "check.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "SDPARITY_CACHE": str(cache_root().absolute())}  # sdparity.files: the one place it is decided
    env.pop("PYTHONPATH", None)  # the environment's own editable install, not the caller's path
    env.pop("TVM_LIBRARY_PATH", None)
    if side.kind == "path":
        env["PYTHONPATH"] = str(shim_dir(side))
    py = python or ensure(side.version if side.kind == "release" else pinned_version(), log)
    cmd = [str(py), "-m", "sdparity", "check", "--backends", "llvm", "--report", str(report), *check_args]
    log(f"[gate] TVM {side.spec}: {' '.join(cmd[1:])} (log: {logfile})")
    with open(logfile, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    if rc in (0, 1) and report.exists():
        used = (json.loads(report.read_text()).get("versions") or {}).get("tvm") or {}
        if side.kind == "path" and used.get("path") != str(side.path):
            raise SdparityError(f"the check for {side.spec} imported TVM from {used.get('path')}, not "
                                f"from {side.path} (log: {logfile})")
        return report
    lines = [l for l in logfile.read_text().splitlines() if l.strip()]
    why = lines[-1].strip() if lines else f"exit {rc}"
    log(f"[gate] TVM {side.spec}: sdparity check did not produce a report: {why}")
    write_atomic(report, json.dumps({"schema": SCHEMA, "versions": {"apache-tvm": side.version,
                                                                    "tvm": side.describe()},
                                     "model": None, "backends": {}, "results": [],
                                     "error": f"sdparity check could not run (exit {rc}): {why}"}, indent=1))
    return report


def gate_versions(a: str | Side, b: str | Side, out: Path = OUT, check_args: list[str] | None = None,
                  show_all: bool = False, log=print) -> int:
    """Gate b against a; each a release number or a TVM folder (``parse_side``)."""
    from sdparity.reports import gate

    sides = [s if isinstance(s, Side) else parse_side(s) for s in (a, b)]
    check_args = list(check_args or [])
    reports = [run_check(s, out / f"tvm-{s.label}", check_args, log) for s in sides]
    result = gate.gate_files(*reports)
    # which TVM each side was: the spec, and what its check imported (path, version, commit, libs)
    result["sides"] = {k: {**s.describe(), "tvm": (json.loads(r.read_text()).get("versions") or {}).get("tvm")}
                       for k, s, r in zip(("baseline", "candidate"), sides, reports)}
    path = out / f"gate-{sides[0].label}-vs-{sides[1].label}.json"
    gate.write_json(result, path)
    gate.print_gate(result, show_all=show_all)
    for k, side in result["sides"].items():
        t = side["tvm"] or {}
        log(f"[gate] {k}: {side['spec']} -> TVM {t.get('version')} at {t.get('path')} "
            f"(commit {t.get('commit')}, libs sha256 {t.get('libs_sha256')})")
    log(f"[gate] reports: {reports[0]}, {reports[1]} (HTML beside each); gate: {path}")
    return 1 if result["regressions"] else 0


# -- command line (sdparity gate-versions) ----------------------------------------------

def cmd_gate_versions(args) -> int:
    return gate_versions(args.version_a, args.version_b, out=args.out or OUT, check_args=args.check_args,
                         show_all=args.all)


def _side_arg(spec: str):
    """A release number or a TVM folder (versions_env.parse_side), checked while parsing."""
    import argparse

    try:
        return parse_side(spec)
    except SdparityError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_parser(sub) -> None:
    v = sub.add_parser("gate-versions", help="run the llvm checks under two TVMs (releases or folders) and "
                       "gate B against A",
                       description="Each of A and B is a release number (0.26.0: .cache/venvs/tvm-0.26.0, the "
                       "project's pins with apache-tvm replaced) or a folder holding a TVM you built (its tvm "
                       "Python package with its libraries, e.g. a 'pip install --target' folder or TVM's python/ "
                       "folder; run in the pinned release's environment with that tvm first on PYTHONPATH). Runs "
                       "'sdparity check --backends llvm' for each, gates B against A (docs/gate.md).")
    v.add_argument("version_a", type=_side_arg, metavar="A", help="baseline: release number or TVM folder")
    v.add_argument("version_b", type=_side_arg, metavar="B", help="candidate: release number or TVM folder")
    v.add_argument("--out", type=Path, default=None, help="reports folder (default out/gate)")
    v.add_argument("--all", action="store_true", help="list unchanged checks too")
    v.add_argument("check_args", nargs="*", help="extra 'sdparity check' arguments, after --")
    v.set_defaults(handler=cmd_gate_versions)
