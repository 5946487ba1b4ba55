"""The JSON report: schema, environment facts, atomic writing.

Schema "sdparity.report/1" (documented in README.md):
  schema, created, argv, model{name,digest,path}, versions{...}, machine{...},
  backends{name: facts}, results[ {stage, backend, device_class, case, function, output,
  shapes, verdict: pass|fail|known|skip|error, message, metrics{...}|null, tolerance{...}|null,
  timings{build_s, build_cached, run_s, ref_s}} ], summary{pass, fail, known, skip, error}

Verdict ``known``: a failing or erroring check explained by an entry of
sdparity.known_issues (``known_issue`` = its id, ``known_was`` = "fail" | "error"). Never a
pass; not a failure for ``ok`` (exit status 0), counted and shown on its own.

Optional fields, added without a version bump (readers ignore what they do not know;
docs/gate.md is the full reference):
  result.integer       true when the output is compared as integers (mismatch budget)
  result.model_scope   "tiny" | "full": the tolerance scope the check was judged in
  result.failed_bound  which bound failed: abs | floor | abs+floor | nonfinite | shape | int
                       (metrics.floor_budget / tolerance.floor_budget: the err/floor budget)
  result.known_issue   id of the known upstream issue that explains a failing check
  result.images        {reference, candidate, diff: PNG names in images_dir, diff_max, shape}
  result.localization  first kernel that diverges from a trusted build (sdparity.tiers.localize)
  images_dir           folder beside the report holding the PNGs (written with the report)
  error                the check run could not happen at all (results then empty)
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from sdparity.files import write_atomic, write_atomic_bytes  # noqa: F401  (re-exported)

SCHEMA = "sdparity.report/1"
PINNED = ("apache-tvm", "apache-tvm-ffi", "torch", "diffusers", "transformers", "numpy",
          "safetensors", "hypothesis", "playwright")


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in PINNED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    # the TVM actually used, by content: version, path, library hash, commit (sdparity.identity)
    from sdparity.errors import SdparityError
    from sdparity.identity import loaded_tvm_identity, tvm_identity

    try:
        out["tvm"] = loaded_tvm_identity() if "tvm" in sys.modules else tvm_identity()
    except SdparityError:
        out["tvm"] = None  # no TVM here (the GPU machine of the WebGPU tier)
    return out


def machine() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        mem = Path("/proc/meminfo").read_text().split()
        info["mem_gib"] = round(int(mem[1]) / 2**20, 1)
    except OSError:
        pass
    return info




class Report:
    def __init__(self, model=None):
        self.data = {
            "schema": SCHEMA,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": sys.argv,
            "model": None if model is None else
            {"name": model.name, "digest": model.digest, "path": str(model.path)},
            "versions": versions(),
            "machine": machine(),
            "backends": {},
            "results": [],
        }
        self.images: dict[str, bytes] = {}  # PNG name -> bytes, written beside the report

    @property
    def results(self) -> list[dict]:
        return self.data["results"]

    def add(self, **record) -> dict:
        """Append a record; a failing/erroring one covered by a known issue becomes ``known``."""
        from sdparity.known_issues import apply

        record.setdefault("model_scope", self.data.get("model_scope"))
        self.results.append(apply(record))
        return record

    def summary(self) -> dict:
        s = {"pass": 0, "fail": 0, "known": 0, "skip": 0, "error": 0}
        for r in self.results:
            s[r["verdict"]] += 1
        return s

    @property
    def ok(self) -> bool:
        """Nothing failed or errored (known issues are not failures) and something passed."""
        s = self.summary()
        return s["fail"] == 0 and s["error"] == 0 and s["pass"] > 0

    def to_json(self) -> str:
        self.data["summary"] = self.summary()
        return json.dumps(self.data, indent=1, default=_json_default)

    def write(self, path: Path) -> None:
        if self.images:
            from sdparity.reports.images import write_images

            self.data["images_dir"] = write_images(self.images, path)
        write_atomic(path, self.to_json())


def _json_default(o):
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:
        pass
    return str(o)


def load(path: Path) -> dict:
    from sdparity.errors import SdparityError

    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise SdparityError(f"cannot read report {path}: {e.strerror}") from None
    except ValueError as e:
        raise SdparityError(f"report {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise SdparityError(f"report {path} is not a {SCHEMA} report (schema={data.get('schema') if isinstance(data, dict) else None!r})")
    return data
