"""Hostile reports: a report travels between machines and people, so `sdparity html` and
`sdparity gate` treat it as untrusted input (issue 23, docs/reliability.md).

* Every report read is validated against sdparity/reports/report.schema.json, within a size
  limit: anything else is one line, exit 2.
* The HTML page escapes every value; markup planted in a report never reaches it as markup.
* Images are embedded only as regular PNG files inside the report's own folder: a crafted
  ``images_dir`` or image name never makes the page embed a file from elsewhere.
* A Hypothesis test mutates a valid report (wrong types, huge numbers, NaN-like strings,
  path-like strings, markup, missing fields) and runs both commands in-process: exit 0/1 (valid)
  or 2 with one line (invalid), never a traceback, never unescaped markup, never a file from
  outside the report's folder.
"""

from __future__ import annotations

import base64
import copy
import glob
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sdparity.cli import main
from sdparity.errors import SdparityError
from sdparity.reports.report import load

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = "<script>alert('sdparity')</script>"
IMG = "<img src=x onerror=alert(1)>"
SVG = "'\"><svg onload=alert(2)>"
MARKUP = (SCRIPT, IMG, SVG)
#: the only <img> the page may hold: an embedded PNG
PAGE_IMG = re.compile(r"<img class='px' alt='(reference|candidate|diff)' src='data:image/png;base64,[A-Za-z0-9+/=]*'>")
PNG = b"\x89PNG\r\n\x1a\n"


def _png(tag: bytes) -> bytes:
    from sdparity.reports.images import png_bytes
    import numpy as np

    return png_bytes(np.full((2, 2, 3), tag[0], np.uint8))


class World:
    """tmp/rep/r.json (+ r_images/) and, outside the report's folder, secret files."""

    def __init__(self, root: Path):
        self.root = root
        self.rep = root / "rep"
        self.images = self.rep / "r_images"
        self.images.mkdir(parents=True)
        self.outside = root / "outside"
        self.outside.mkdir()
        # a real PNG outside the report's folder: it must never be embedded
        self.secret = self.outside / "secret.png"
        self.secret.write_bytes(PNG + b"TOPSECRET-outside-" + os.urandom(8).hex().encode())
        (self.root / "secret.png").write_bytes(self.secret.read_bytes())
        for kind in ("reference", "candidate", "diff"):
            (self.images / f"s.llvm.c.rgba.{kind}.png").write_bytes(_png(kind.encode()))
        # inside the folder but not to be embedded: a link out, a non-PNG, a FIFO, a folder
        (self.images / "link.png").symlink_to(self.secret)
        (self.images / "notes.png").write_bytes(b"TOPSECRET-inside-not-a-png")
        os.mkfifo(self.images / "fifo.png")
        (self.images / "dir.png").mkdir()
        self.report = self.rep / "r.json"
        self.page = self.rep / "r.html"
        self.good = self.rep / "good.json"
        self.good.write_text(json.dumps(base_report()))

    def secrets(self) -> list[str]:
        b = self.secret.read_bytes()
        return ["TOPSECRET", base64.b64encode(b).decode(), base64.b64encode(b[8:]).decode()[:16],
                base64.b64encode(b"TOPSECRET-inside-not-a-png").decode()]


def record(**kw) -> dict:
    r = {"stage": "s", "backend": "llvm", "device_class": "cpu", "case": "c", "function": "main", "output": "o",
         "shapes": {"x": [1, 4]}, "verdict": "pass", "message": "ok",
         "metrics": {"shape": [1, 4], "dtype": "float32", "n": 4, "max_abs": 1e-6, "max_rel": 1e-6,
                     "mismatches": 0, "mismatch_frac": 0.0, "noise_floor": 5e-7, "floor_ratio": 2.0,
                     "ref_scale": 1.0, "floor_rel": 5e-7, "floor_budget": 8.0, "failed_bound": None,
                     "nonfinite": 0, "worst_index": [0, 1], "passed": True, "why": "ok", "floor_stat": "max"},
         "tolerance": {"atol": 1e-4, "rtol": 1e-4, "mismatch_frac": 0.0, "reason": "r", "floor_budget": 8.0,
                       "floor_note": "n", "floor_reason": "fr"},
         "model_scope": "tiny", "failed_bound": None,
         "timings": {"build_s": 1.0, "build_cached": False, "original_build_s": None, "run_s": 0.01,
                     "ref_s": 0.02}}
    r.update(kw)
    return r


def base_report() -> dict:
    loc = {"status": "diverged", "summary": "first diverging kernel k", "method": "kernel replay", "calls": 9,
           "kernels": 3, "seconds": 0.5, "n_diverged": 1, "unchecked": {},
           "first": {"call": 4, "kernel": "k", "op": "add", "arg": 0, "shape": [1, 4], "max_abs": 1.0,
                     "rel": 0.1, "bound": 1e-5, "worst_index": [0, 0]},
           "diverged": [{"call": 5, "kernel": "k2", "op": "mul", "shape": [4], "max_abs": 2.0}],
           "op": {"status": "diverged", "summary": "op", "calls": 10,
                  "first": {"op": "aten.add", "position": 3, "node": "add", "module": "m", "shapes": [[4]],
                            "max_abs": 1.0, "floor": 1e-7, "ratio": 1e7, "kernels": ["k"], "repro": "r.py",
                            "repro_reproduces": True}}}
    fail = record(case="f", verdict="fail", message="over", failed_bound="abs", localization=loc)
    fail["metrics"] = {**fail["metrics"], "max_abs": 1.0, "floor_ratio": 2e6, "failed_bound": "abs"}
    img = record(stage="s", case="c", output="rgba", integer=True,
                 images={"reference": "s.llvm.c.rgba.reference.png", "candidate": "s.llvm.c.rgba.candidate.png",
                         "diff": "s.llvm.c.rgba.diff.png", "diff_max": 3.0, "shape": [2, 2, 3]})
    img["tolerance"] = {**img["tolerance"], "atol": 0.0, "rtol": 0.0, "mismatch_frac": 0.001}
    known = record(case="k", verdict="known", known_issue="tvm-xyz", known_issues=["tvm-xyz"], known_was="fail",
                   neutralized={"issues": ["tvm-xyz"], "verdict": "pass", "why": "", "checks": [
                       {"output": "o", "case": "k", "verdict": "pass", "metrics": record()["metrics"],
                        "message": "ok"}]})
    skip = record(stage="t", backend="webgpu", case=None, function=None, output=None, shapes=None,
                  verdict="skip", message="no adapter", metrics=None, tolerance=None, timings=None)
    err = record(stage="u", case=None, function=None, output=None, shapes=None, verdict="error",
                 message="build failed", metrics=None, tolerance=None, timings=None)
    return {"schema": "sdparity.report/1", "created": "2026-01-01T00:00:00+0000", "argv": ["sdparity", "check"],
            "model": {"name": "tiny", "digest": "abc", "path": "/m"}, "model_scope": "tiny",
            "versions": {"python": "3.11", "apache-tvm": "0.27.0.post1", "tvm": {"version": "0.27"}},
            "machine": {"platform": "linux", "cpus": 2}, "backends": {"llvm": {"target": "llvm"}},
            "faults": [], "results": [record(), fail, img, known, skip, err],
            "summary": {"pass": 2, "fail": 1, "known": 1, "skip": 1, "error": 1}, "images_dir": "r_images",
            "performance": {"cpu": {"threads": {"tvm_runtime": 2, "torch": 2}, "results": [
                {"stage": "s", "backend": "llvm", "function": "main", "ratio": 1.5, "run_s": 0.01, "ref_s": 0.02,
                 "run_s_all": [0.01, 0.011], "ref_s_all": [0.02, 0.021], "shapes": {"x": [1, 4]}}]}}}


def run(argv, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


def assert_one_line(rc: int, err: str, allowed=(0, 1)) -> None:
    assert "Traceback" not in err, err
    assert rc in (*allowed, 2), (rc, err)
    if rc == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sdparity: error: "), err


def assert_safe_page(page: str, world: World) -> None:
    for m in MARKUP:
        assert m not in page, m
    low = page.lower()
    assert "<script" not in low and "<svg" not in low and "<iframe" not in low
    for tag in re.findall(r"<img\b[^>]*>", page):
        assert PAGE_IMG.fullmatch(tag), tag
    for s in world.secrets():
        assert s not in page, s


@pytest.fixture
def world(tmp_path) -> World:
    return World(tmp_path)


# ---- the reported trials, one by one -------------------------------------------------------


def test_html_escapes_every_value(world, capsys):
    """Before: localization.calls / seconds (and the matrix's verdict class, the caption of an
    image) went into the page unescaped: stored XSS."""
    data = base_report()
    # localization.calls is typed (a number): markup there is refused by the schema ...
    data["results"][1]["localization"]["calls"] = SCRIPT
    world.report.write_text(json.dumps(data))
    rc, err = run(["html", world.report], capsys)
    assert rc == 2 and "$.results[1].localization.calls" in err and err.count("\n") == 1, err
    # ... and where strings are allowed, every one is escaped
    loc = data["results"][1]["localization"]
    data["results"][1]["localization"] = {**loc, "calls": 9, "method": SVG, "status": SCRIPT, "summary": IMG,
                                          "first": {**loc["first"], "call": IMG, "kernel": SCRIPT, "shape": SVG}}
    data["results"][0].update(message=IMG, case=SVG, own_kernel=SCRIPT, known_was=SCRIPT)
    data["results"][3].update(known_issue=SCRIPT)
    data["results"][2]["images"]["candidate"] = IMG
    data["backends"] = {SCRIPT: {IMG: SVG}}
    data["versions"]["apache-tvm"] = SVG
    data["argv"] = [SCRIPT]
    data["model"]["name"] = IMG
    data["faults"] = [SVG]
    world.report.write_text(json.dumps(data))
    rc, err = run(["html", world.report], capsys)
    assert rc == 0, err
    page = world.page.read_text()
    assert_safe_page(page, world)
    assert escape_text(SCRIPT) in page and escape_text(IMG) in page and escape_text(SVG) in page
    assert page.count("data:image/png;base64,") == 2  # the two real images are still there


def escape_text(s: str) -> str:
    from html import escape

    return escape(s, quote=True)


@pytest.mark.parametrize("images_dir, name", [
    ("../outside", "secret.png"), ("..", "secret.png"), ("r_images/../../outside", "secret.png"),
    ("ABS_OUTSIDE", "secret.png"), ("/", "ABS_SECRET_NAME"), ("r_images", "../../outside/secret.png"),
    ("r_images", "ABS_SECRET"), ("r_images", "link.png"), ("r_images", "notes.png"), ("r_images", "fifo.png"),
    ("r_images", "dir.png"), ("r_images", "nul\0.png"), ("r_images", ".."), (".", "../secret.png"),
    ("r_images", "missing.png")])
def test_html_embeds_images_only_from_inside_the_report_folder(world, capsys, images_dir, name):
    """Before: images_dir "../../etc" embedded /etc/passwd and /etc/shadow as data URIs. Now only a
    regular PNG file inside the report's own folder is embedded; anything else: no image, a note."""
    subst = {"ABS_OUTSIDE": str(world.outside), "ABS_SECRET": str(world.secret),
             "ABS_SECRET_NAME": str(world.secret).lstrip("/")}
    data = base_report()
    data["images_dir"] = subst.get(images_dir, images_dir)
    data["results"][2]["images"]["candidate"] = subst.get(name, name)
    world.report.write_text(json.dumps(data))
    rc, err = run(["html", world.report], capsys)
    assert rc == 0, err
    page = world.page.read_text()
    assert_safe_page(page, world)
    assert "(no image: " in page
    inside = data["images_dir"] == "r_images"
    assert page.count("data:image/png;base64,") == (2 if inside else 0)


def test_reports_are_validated_with_one_line_errors(world, capsys):
    """Before: a missing field gave a traceback and exit 1 (a "regression" for the gate)."""
    cases = {
        "no results": lambda d: d.pop("results"),
        "no stage": lambda d: d["results"][0].pop("stage"),
        "bad verdict": lambda d: d["results"][0].update(verdict="passed"),
        "metrics a list": lambda d: d["results"][0].update(metrics=[1, 2]),
        "pass without numbers": lambda d: d["results"][0].update(metrics=None),
        "max_abs a string": lambda d: d["results"][0]["metrics"].update(max_abs="NaN"),
        "a zero budget": lambda d: d["results"][0]["metrics"].update(floor_budget=0),
        "model a string": lambda d: d.update(model="tiny"),
        "results an object": lambda d: d.update(results={}),
        "perf run_s missing": lambda d: d["performance"]["cpu"]["results"][0].pop("run_s"),
    }
    for what, change in cases.items():
        d = base_report()
        change(d)
        world.report.write_text(json.dumps(d))
        for argv in (["html", world.report], ["gate", world.good, world.report], ["gate", world.report, world.good]):
            rc, err = run(argv, capsys)
            assert rc == 2 and err.startswith("sdparity: error: report ") and err.count("\n") == 1, (what, err)
            assert "does not follow the sdparity.report/1 schema" in err, (what, err)
    # not JSON, not UTF-8, not this schema, a huge integer, too deep, lone surrogates
    raw = {"garbage": b"{not json", "latin-1": b'{"schema": "\xe9"}', "other schema": b'{"schema": "x/1"}',
           "huge int": json.dumps({**base_report(), "x": 0}).replace('"x": 0', '"x": ' + "9" * 400).encode(),
           "deep": b'{"schema": "sdparity.report/1", "results": [], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
           "deep but parsable": json.dumps({**base_report(), "x": json.loads("[" * 80 + "]" * 80)}).encode(),
           "surrogate": b'{"schema": "sdparity.report/1", "results": [], "x": "\\ud800"}'}
    for what, b in raw.items():
        world.report.write_bytes(b)
        rc, err = run(["html", world.report], capsys)
        assert rc == 2 and err.startswith("sdparity: error: report ") and err.count("\n") == 1, (what, err)


def test_report_size_limit_before_reading(world, capsys):
    """Before: a 1 GB file was read whole. Now a report over 64 MiB is refused from its size."""
    big = world.rep / "big.json"
    with open(big, "wb") as f:  # sparse: no disk space used
        f.truncate(64 * 2**20 + 1)
    rc, err = run(["gate", big, world.good], capsys)
    assert rc == 2 and "over the 64 MiB limit" in err and err.count("\n") == 1, err
    with pytest.raises(SdparityError, match="not a regular file"):
        load(world.images / "fifo.png")
    with pytest.raises(SdparityError, match="over the 100 bytes limit"):
        load(world.good, max_bytes=100)


def committed_reports() -> list[Path]:
    out = []
    for f in sorted(glob.glob(str(ROOT / "docs" / "results" / "**" / "*.json"), recursive=True)):
        try:
            d = json.loads(Path(f).read_text())
        except ValueError:
            continue
        if isinstance(d, dict) and d.get("schema") == "sdparity.report/1":
            out.append(Path(f))
    return out


def test_schema_accepts_every_committed_report():
    reports = committed_reports()
    assert len(reports) >= 10
    for f in reports:
        load(f)


def test_schema_accepts_fresh_reports_of_the_suite(tmp_path, capsys):
    """A real run (weight-free stages, llvm), clean and with an injected fault (fail records,
    localization, images): both valid, both rendered and gated."""
    clean, faulty = tmp_path / "clean.json", tmp_path / "faulty.json"
    assert main(["check", "--stages", "concat_embeddings,image_to_rgba", "--backends", "llvm", "-q",
                 "--report", str(clean)]) == 0
    assert main(["check", "--stages", "concat_embeddings,image_to_rgba", "--backends", "llvm", "-q",
                 "--inject-fault", "image_to_rgba:no_clamp", "--report", str(faulty)]) == 1
    for f in (clean, faulty):
        data = load(f)
        assert data["results"]
    assert any(r.get("localization") for r in load(faulty)["results"])
    capsys.readouterr()
    assert main(["html", str(faulty)]) == 0
    assert (tmp_path / "faulty.html").read_text().count("data:image/png;base64,") == 9
    assert main(["gate", str(clean), str(faulty)]) == 1
    assert main(["gate", str(clean), str(clean)]) == 0


# ---- Hypothesis: hostile reports -----------------------------------------------------------

HOSTILE_TEXT = [*MARKUP, "NaN", "nan", "Infinity", "-Infinity", "1e999", "-0", "", " ", "null", "true",
                "../../outside/secret.png", "../outside", "/etc/passwd", "..", ".", "/", "r_images/../..",
                "link.png", "notes.png", "fifo.png", "dir.png", "C:\\Windows\\win.ini", "a\nb\rc", "\u202e\u0000x",
                "&amp;", "%3Cscript%3E", "{{7*7}}", "x" * 5000, "pass", "fail", "known", "skip", "error"]
HOSTILE_NUM = [0, -1, 1, 2**63 - 1, -(2**63), 2**63, 10**30, 10**400 // 10**300, 1e308, -1e308, 5e-324,
               float("inf"), float("-inf"), float("nan"), 0.0, -0.0, 1.5]

scalars = st.one_of(st.none(), st.booleans(), st.sampled_from(HOSTILE_NUM), st.sampled_from(HOSTILE_TEXT),
                    st.integers(), st.floats(), st.text(max_size=30))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                        st.dictionaries(st.sampled_from(
                                                            [*HOSTILE_TEXT[:8], "max_abs", "first", "calls"]),
                                                            inner, max_size=4)), max_leaves=10)

# where a mutation lands (a path into the base report, "*" = any record) and what fits there:
# "n" a number, "s" a string, "o" an object, "a" an array, "b" a boolean
TARGETS = {
    ("results", "*"): "o", ("results", "*", "stage"): "s", ("results", "*", "backend"): "s",
    ("results", "*", "case"): "s", ("results", "*", "output"): "s", ("results", "*", "verdict"): "v",
    ("results", "*", "message"): "s", ("results", "*", "metrics"): "o", ("results", "*", "metrics", "max_abs"): "n",
    ("results", "*", "metrics", "floor_ratio"): "n", ("results", "*", "metrics", "floor_budget"): "n",
    ("results", "*", "metrics", "mismatch_frac"): "n", ("results", "*", "metrics", "noise_floor"): "n",
    ("results", "*", "metrics", "nonfinite"): "n", ("results", "*", "metrics", "dtype"): "s",
    ("results", "*", "tolerance"): "o", ("results", "*", "tolerance", "atol"): "n",
    ("results", "*", "tolerance", "factor"): "n", ("results", "*", "tolerance", "mismatch_frac"): "n",
    ("results", "*", "tolerance", "reason"): "s", ("results", "*", "timings"): "o",
    ("results", "*", "timings", "build_cached"): "b", ("results", "*", "timings", "build_s"): "n",
    ("results", "*", "timings", "run_s"): "n", ("results", "*", "shapes"): "o", ("results", "*", "integer"): "b",
    ("results", "*", "known_issue"): "s", ("results", "*", "known_was"): "s", ("results", "*", "own_kernel"): "s",
    ("results", "*", "images"): "o", ("results", "*", "images", "candidate"): "s",
    ("results", "*", "images", "diff"): "s", ("results", "*", "images", "diff_max"): "n",
    ("results", "*", "images", "error"): "s", ("results", "*", "localization"): "o",
    ("results", "*", "localization", "calls"): "n", ("results", "*", "localization", "seconds"): "n",
    ("results", "*", "localization", "summary"): "s", ("results", "*", "localization", "first"): "o",
    ("results", "*", "localization", "first", "call"): "n", ("results", "*", "localization", "first", "kernel"): "s",
    ("results", "*", "localization", "diverged"): "a", ("results", "*", "localization", "op"): "o",
    ("results", "*", "localization", "op", "first", "kernels"): "a", ("results", "*", "neutralized"): "o",
    ("results", "*", "neutralized", "checks"): "a", ("results", "*", "neutralized", "checks", 0, "metrics"): "o",
    ("results", "*", "neutralized", "checks", 0, "verdict"): "v", ("results", "*", "known_issues"): "a",
    ("images_dir",): "s", ("model",): "o", ("model", "digest"): "s", ("model", "name"): "s", ("versions",): "o",
    ("versions", "apache-tvm"): "s", ("machine",): "o", ("backends",): "o", ("backends", "llvm"): "o",
    ("faults",): "a", ("argv",): "a", ("summary",): "o", ("summary", "pass"): "n", ("error",): "s",
    ("created",): "s", ("schema",): "s", ("performance",): "o", ("performance", "cpu"): "o",
    ("performance", "cpu", "threads"): "o", ("performance", "cpu", "results", 0, "ratio"): "n",
    ("performance", "cpu", "results", 0, "run_s"): "n", ("performance", "cpu", "results", 0, "ref_s"): "n",
    ("performance", "cpu", "results", 0, "ref_s_all"): "a", ("performance", "cpu", "results", 0, "card"): "s",
}
numbers = st.one_of(st.sampled_from(HOSTILE_NUM), st.floats(), st.integers(-(2**63), 2**63 - 1))
texts = st.one_of(st.sampled_from(HOSTILE_TEXT), st.text(max_size=40))
FITTING = {
    "n": st.one_of(st.none(), numbers), "s": st.one_of(st.none(), texts), "b": st.one_of(st.none(), st.booleans()),
    "v": st.sampled_from(["pass", "fail", "known", "skip", "error"]),
    "a": st.one_of(st.none(), st.lists(st.one_of(texts, numbers), max_size=3)),
    # an object of this report's own field names with odd but well-typed values
    "o": st.one_of(st.none(), st.dictionaries(
        st.sampled_from(["max_abs", "floor_ratio", "noise_floor", "mismatch_frac", "nonfinite", "calls", "seconds",
                         "atol", "rtol", "run_s", "diff_max", "ratio", "ref_s", "pass"]), numbers, max_size=4),
        st.dictionaries(st.sampled_from(["summary", "status", "message", "reason", "digest", "name", "candidate",
                                         "reference", "kernel", "apache-tvm", *HOSTILE_TEXT[:3]]), texts,
                        max_size=4)),
}


@st.composite
def hostile_reports(draw) -> dict:
    """The base report with 1-4 mutations: mostly odd values of the right type (valid or not,
    as the schema says), sometimes anything at all, a deletion, or a copied record."""
    data = base_report()
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(sorted(TARGETS, key=str)))
        path = list(target)
        if "*" in path:
            path[path.index("*")] = draw(st.integers(0, len(data["results"]) - 1))
        node = data
        for key in path[:-1]:
            nxt = node.get(key) if isinstance(node, dict) else (node[key] if isinstance(node, list)
                                                                 and isinstance(key, int) and key < len(node) else None)
            if not isinstance(nxt, (dict, list)):
                nxt = {}
                if isinstance(node, dict):
                    node[key] = nxt
                else:
                    break
            node = nxt
        else:
            key = path[-1]
            action = draw(st.sampled_from(["fit"] * 6 + ["any", "delete", "copy"]))
            if action == "copy" and data["results"]:  # a well-formed record, with odd neighbours
                value = copy.deepcopy(draw(st.sampled_from(data["results"])))
            else:
                value = draw(FITTING[TARGETS[target]] if action == "fit" else values)
            if isinstance(node, dict):
                if action == "delete":
                    node.pop(key, None)
                else:
                    node[key] = value
            elif isinstance(node, list) and isinstance(key, int) and key < len(node):
                node[key] = value
    return data


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=hostile_reports(), as_candidate=st.booleans(), gate_json=st.booleans())
def test_hostile_reports_never_traceback_leak_or_inject(world, capsys, data, as_candidate, gate_json):
    world.report.write_text(json.dumps(data))  # NaN/Infinity written as JSON's extension, as the suite does
    world.page.unlink(missing_ok=True)
    rc, err = run(["html", world.report], capsys)
    assert_one_line(rc, err, allowed=(0,))
    if rc == 0:
        assert_safe_page(world.page.read_text(), world)
    pair = [world.good, world.report] if as_candidate else [world.report, world.good]
    extra = ["--json", world.root / "gate.json"] if gate_json else []
    rc_gate, err = run(["gate", *pair, *extra], capsys)
    assert_one_line(rc_gate, err)
    if rc == 2:  # an invalid report is invalid for both commands
        assert rc_gate == 2
