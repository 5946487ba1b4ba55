"""Known upstream issues (sdparity.known_issues): the verdict ``known`` on real TVM checks, its
place in the summary, the exit status, the table and the gate; and every registered entry's
standalone repro script, which must still reproduce on the pinned TVM."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sdparity import known_issues
from sdparity.known_issues import KnownIssue, all_issues, register, unregister

ROOT = Path(__file__).resolve().parents[2]
FAULT = "concat_embeddings:positive_first"  # a real, cheap, wrong TVM build: both cases fail


def _local_issue(case: str | None) -> KnownIssue:
    """A test-local entry, registered through the public API like a real one."""
    return KnownIssue(
        id="test-local-concat-order", title="concat order swapped (test-local entry)",
        description="Stands in for an upstream bug: the positive_first fault builds "
        "[positive; negative] instead of [negative; positive].",
        covers=lambda r: r["stage"] == "concat_embeddings" and r["backend"] == "llvm"
        and (case is None or r["case"] == case),
        tvm_versions=("0.27.0.post1",))


@pytest.fixture
def local_issue():
    issues = []

    def add(case=None):
        issues.append(register(_local_issue(case)))
        return issues[-1]
    yield add
    for i in issues:
        unregister(i.id)


def test_covered_failures_become_known_uncovered_stay_failures(local_issue, tiny, llvm, cache):
    from sdparity.registry import all_stages
    from sdparity.reports.report import Report
    from sdparity.runner import Progress, run_checks

    local_issue(case="b2_s5_d3")
    report = Report(tiny)
    run_checks([all_stages()["concat_embeddings"].with_fault("positive_first")], [llvm], tiny, report, cache,
               log=Progress(quiet=True))
    by_case = {r["case"]: r for r in report.results}
    k = by_case["b2_s5_d3"]
    assert k["verdict"] == "known" and k["known_issue"] == "test-local-concat-order" and k["known_was"] == "fail"
    assert k["message"].startswith("known issue test-local-concat-order (concat order swapped")
    assert k["metrics"]["max_abs"] > 0 and k["model_scope"] == "tiny"
    assert by_case["b1_s77_d32"]["verdict"] == "fail"  # not covered
    assert report.summary() == {"pass": 0, "fail": 1, "known": 1, "skip": 0, "error": 0}
    assert not report.ok


def test_check_exits_0_with_only_known_failures_and_gate_sees_the_fix(local_issue, tmp_path, capsys):
    from sdparity.cli import main
    from sdparity.reports import gate

    args = ["check", "--stages", "concat_embeddings,image_to_rgba", "-q", "--no-localize"]
    local_issue()
    assert main([*args, "--inject-fault", FAULT, "--report", str(tmp_path / "known.json")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"concat_embeddings\s+llvm\s+0/2\s+2\s+.*KNOWN: known issue test-local-concat-order", out)
    assert "3 passed, 0 failed, 2 known issues" in out
    data = json.loads((tmp_path / "known.json").read_text())
    assert data["summary"]["known"] == 2 and data["summary"]["pass"] == 3
    assert "Known upstream issues" in (tmp_path / "known.html").read_text()

    unregister("test-local-concat-order")  # without the entry the same fault fails the run
    assert main([*args, "--inject-fault", FAULT, "--report", str(tmp_path / "fail.json")]) == 1
    assert main([*args, "--report", str(tmp_path / "clean.json")]) == 0
    capsys.readouterr()
    result = gate.gate_files(tmp_path / "known.json", tmp_path / "clean.json")
    assert result["regressions"] == 0
    assert result["known_issues"]["test-local-concat-order"] == {"checks": 2, "now_pass": 2,
                                                                 "status": "fixed upstream?"}
    gate.print_gate(result)
    assert "known issue test-local-concat-order: 2 of its 2 baseline checks pass now: fixed upstream?" in \
        capsys.readouterr().out


def test_registry_rules(local_issue):
    issue = local_issue()
    with pytest.raises(ValueError):
        register(_local_issue(None))  # the same id twice
    rec = {"stage": "concat_embeddings", "backend": "llvm", "case": "x", "verdict": "pass", "message": ""}
    assert known_issues.apply(dict(rec))["verdict"] == "pass"  # a pass is never turned into known
    assert known_issues.apply({**rec, "verdict": "error"})["verdict"] == "known"
    assert known_issues.match({"stage": "clip"}) is None  # a predicate that raises (no backend) does not match
    assert issue.repro == ROOT / "sdparity" / "known_issues" / "repros" / "test-local-concat-order.py"


REGISTERED = sorted(all_issues())


@pytest.mark.parametrize("issue_id", REGISTERED)
def test_registered_entry_is_complete_and_its_repro_reproduces(issue_id):
    """The repro runs standalone (torch + TVM only) and exits non-zero on the pinned TVM."""
    issue = all_issues()[issue_id]
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]+", issue.id) and issue.title and issue.tvm_versions
    assert len(issue.description) > 100, "one paragraph, with the root cause"
    src = issue.repro.read_text()
    assert not re.search(r"^\s*(import|from)\s+sdparity", src, re.M), "a repro must not import sdparity"
    proc = subprocess.run([sys.executable, str(issue.repro)], capture_output=True, text=True, timeout=600,
                          cwd=issue.repro.parent)
    assert proc.returncode != 0, f"{issue.id} no longer reproduces (fixed upstream?):\n{proc.stdout[-2000:]}"


def test_an_entry_may_cover_a_check_by_its_localization(tiny, llvm, cache):
    """Localization is attached after the record was made: the registry is applied again then."""
    from sdparity.registry import all_stages
    from sdparity.reports.report import Report
    from sdparity.runner import Progress, run_checks

    issue = register(KnownIssue(
        id="test-local-localized", title="covers localized checks only (test-local entry)",
        description="Matches a record only once localization found something for it.",
        covers=lambda r: r["stage"] == "concat_embeddings" and bool(r.get("localization")),
        tvm_versions=("0.27.0.post1",)))
    try:
        report = Report(tiny)
        run_checks([all_stages()["concat_embeddings"].with_fault("positive_first")], [llvm], tiny, report, cache,
                   log=Progress(quiet=True), localize=True)
    finally:
        unregister(issue.id)
    localized = [r for r in report.results if r.get("localization")]
    assert localized and all(r["verdict"] == "known" and r["known_issue"] == issue.id for r in localized)
