"""The JSON report: schema, environment facts, atomic writing.

Schema "sdparity.report/1" (documented in README.md):
  schema, created, argv, model{name,digest,path}, versions{...}, machine{...},
  backends{name: facts}, results[ {stage, backend, device_class, case, function, output,
  shapes, verdict: pass|fail|known|skip|error, message, metrics{...}|null, tolerance{...}|null,
  timings{build_s, build_cached, run_s, ref_s}} ], summary{pass, fail, known, skip, error}

Verdict ``known``: a failing or erroring check explained by entries of sdparity.known_issues,
*proven*: the same check built with those issues' neutralizers passes (``known_issue`` = the
first id, ``known_issues`` = all, ``known_was`` = "fail" | "error", ``neutralized`` = what the
neutralized build gave). Never a pass; not a failure for ``ok`` (exit status 0), counted and
shown on its own. A failing check whose neutralized build still fails stays ``fail`` and
carries ``neutralized`` too.

Optional fields, added without a version bump (readers ignore what they do not know;
docs/gate.md is the full reference):
  result.integer       true when the output is compared as integers (mismatch budget)
  result.model_scope   "tiny" | "full": the tolerance scope the check was judged in
  result.failed_bound  which bound failed: abs | floor | abs+floor | nonfinite | shape | int
                       (metrics.floor_budget / tolerance.floor_budget: the err/floor budget)
  result.known_issue   id of the known upstream issue that explains a failing check
  result.images        {reference, candidate, diff: PNG names in images_dir, diff_max, shape}
  result.localization  first kernel that diverges from a trusted build (sdparity.check.localize)
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
        """Append a record and return it (the stored dict). Verdict ``known`` is never given
        here: only the runner's proof gives it (sdparity.runner._prove_known)."""
        record.setdefault("model_scope", self.data.get("model_scope"))
        self.results.append(record)
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


def load(path: Path, max_bytes: int = 64 * 2**20) -> dict:
    """Read and validate a report: a regular file of at most ``max_bytes`` (checked before
    reading), UTF-8 JSON, no integer beyond 64 bits, nesting at most 64 deep, no lone
    surrogates, and valid against sdparity/reports/report.schema.json (schema
    ``sdparity.report/1``). Anything else is one line, as SdparityError (exit 2)."""
    import re
    import stat

    import jsonschema

    from sdparity.errors import SdparityError

    path = Path(path)
    limit = f"{max_bytes / 2**20:g} MiB" if max_bytes >= 2**20 else f"{max_bytes} bytes"
    try:  # non-blocking: a FIFO must not hang the open; it is refused below
        with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise SdparityError(f"report {path} is not a regular file")
            if st.st_size > max_bytes:
                raise SdparityError(f"report {path} is {st.st_size / 2**20:.1f} MiB, over the {limit} limit "
                                    f"for reports")
            raw = f.read(max_bytes + 1)
    except OSError as e:
        raise SdparityError(f"cannot read report {path}: {e.strerror or e}") from None
    if len(raw) > max_bytes:  # it grew while being read
        raise SdparityError(f"report {path} is over the {limit} limit for reports")

    def bounded_int(text: str) -> int:
        v = int(text)
        if not -(2**63) <= v < 2**63:
            raise ValueError(f"integer {text[:20]}{'...' if len(text) > 20 else ''} ({len(text)} digits) "
                             f"is out of the 64-bit range")
        return v

    try:
        data = json.loads(raw.decode("utf-8"), parse_int=bounded_int)
    except UnicodeDecodeError as e:
        raise SdparityError(f"report {path} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    except RecursionError:
        raise SdparityError(f"report {path} is nested too deeply") from None
    except ValueError as e:
        raise SdparityError(f"report {path} is not valid JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else None
        raise SdparityError(f"report {path} is not a {SCHEMA} report (schema={str(got)[:60]!r})")

    # depth and text: what every reader (and the page) can take, checked without recursion
    surrogate = re.compile("[\ud800-\udfff]")
    stack = [(data, 1, "$")]
    while stack:
        v, depth, where = stack.pop()
        if depth > 64:
            raise SdparityError(f"report {path}: {where[:120]} is nested more than 64 levels deep")
        if isinstance(v, dict):
            for k, x in v.items():
                if surrogate.search(k):
                    raise SdparityError(f"report {path}: a key in {where[:120]} is not valid Unicode "
                                        f"(lone surrogate)")
                stack.append((x, depth + 1, f"{where}.{k}"))
        elif isinstance(v, list):
            stack.extend((x, depth + 1, f"{where}[{i}]") for i, x in enumerate(v))
        elif isinstance(v, str) and surrogate.search(v):
            raise SdparityError(f"report {path}: {where[:120]} is not valid Unicode (lone surrogate)")

    validator = getattr(load, "_validator", None)
    if validator is None:
        schema = json.loads((Path(__file__).with_name("report.schema.json")).read_text())
        validator = load._validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        why = " ".join(error.message.split())
        why = why if len(why) <= 160 else why[:157] + "..."
        where = error.json_path if len(error.json_path) <= 120 else error.json_path[:117] + "..."
        raise SdparityError(f"report {path} does not follow the {SCHEMA} schema "
                            f"(sdparity/reports/report.schema.json): {where}: {why}")
    return data
