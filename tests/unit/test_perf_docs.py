"""docs/performance.md's generated tables agree with the committed reports they name
(sdparity/reports/perfdoc.py), and the check is not vacuous: an edited cell, an edited report
or a row without its report is caught."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from sdparity.reports import perfdoc


@pytest.fixture(scope="module")
def doc() -> str:
    return perfdoc.DOC.read_text()


def test_the_generated_tables_match_their_reports(doc):
    problems = perfdoc.check(doc)
    assert problems == [], (
        "docs/performance.md differs from docs/results/ (run `python -m sdparity.reports.perfdoc`):\n"
        + problems[0]
    )


def test_every_table_of_the_generator_is_in_the_document(doc):
    names = [s.name for s in perfdoc.sections(doc)]
    assert sorted(names) == sorted(perfdoc.TABLES)
    assert len(names) == len(set(names))


def test_every_row_names_its_report_and_its_machine_or_card(doc):
    reports = perfdoc.Reports()
    for s in perfdoc.sections(doc):
        rows = [r for r in s.body.split("\n") if r.startswith("|")][2:]
        assert rows, s.name
        for row in rows:
            last = row.rstrip(" |").rsplit(" | ", 1)[-1]
            rels = re.findall(r"\]\(results/([^)]+)\)", last)
            assert rels, (s.name, row)
            for rel in rels:
                assert (perfdoc.RESULTS / rel).is_file(), (s.name, rel)
                assert reports.machine(rel) in last, (s.name, rel, last)
            # the marker names every report its rows read
            assert all(f"docs/results/{rel}" in s.sources for rel in rels), (s.name, s.sources)


def test_the_cpu_rows_name_the_machine_their_reports_record(doc):
    """The drift that started this: 2026-11-29 CPU runs labelled with the Intel machine."""
    quiet = "cpu-sd15/bench_sd15_2threads_2026-11-29-quiet.json"
    summary = next(s for s in perfdoc.sections(doc) if s.name == "summary")
    row = next(r for r in summary.body.split("\n") if quiet in r)
    cpu = json.loads((perfdoc.RESULTS / quiet).read_text())["machine"]["cpu"]
    assert cpu in row and "Intel" not in row


def test_editing_one_cell_of_a_copy_fails_the_check(doc, tmp_path, capsys):
    """The tuned-tiles concat cell (0.638x in its report) edited to the old hand-written 0.58x."""
    summary = next(s for s in perfdoc.sections(doc) if s.name == "summary")
    assert "= 0.638x" in summary.body
    lines = doc.split("\n")
    i = next(i for i in range(summary.start, summary.end) if "= 0.638x" in lines[i])
    lines[i] = lines[i].replace("= 0.638x", "= 0.58x", 1)
    edited = "\n".join(lines)
    problems = perfdoc.check(edited)
    assert len(problems) == 1 and problems[0].startswith("summary")
    assert "-" + lines[i] in problems[0] and "0.638x" in problems[0]

    copy = tmp_path / "performance.md"
    copy.write_text(edited)
    assert perfdoc.main(["--check", "--doc", str(copy)]) == 1
    assert "summary" in capsys.readouterr().out.split("\n")[0]
    # rewriting puts the report's number back, and then the check passes
    assert perfdoc.main(["--doc", str(copy)]) == 0
    assert copy.read_text() == doc
    assert perfdoc.main(["--check", "--doc", str(copy)]) == 0


def test_editing_a_report_fails_the_check(doc, tmp_path):
    """A report whose number moves makes the table that quotes it differ (and only that one)."""
    results = tmp_path / "results"
    shutil.copytree(perfdoc.RESULTS, results, ignore=shutil.ignore_patterns("*.png"))
    report = results / "cuda-h100" / "gpu-report.json"
    data = json.loads(report.read_text())
    first = data["performance"]["gpu"]["results"][0]
    first["run_s"] *= 1.5
    report.write_text(json.dumps(data))
    problems = perfdoc.check(doc, perfdoc.Reports(results))
    assert [p.split(" ", 1)[0] for p in problems] == ["cuda-h100"]


def test_a_section_that_names_other_reports_or_is_missing_is_caught(doc):
    s = next(s for s in perfdoc.sections(doc) if s.name == "cuda-h100")
    wrong = doc.replace(f"<!-- generated: cuda-h100 from {s.sources} -->",
                        "<!-- generated: cuda-h100 from docs/results/cuda-h200/gpu-report.json -->")
    assert any("its marker names" in p for p in perfdoc.check(wrong))
    lines = doc.split("\n")
    dropped = "\n".join(lines[: s.start] + lines[s.end + 1 :])
    assert any(p.startswith("cuda-h100: missing") for p in perfdoc.check(dropped))
    with pytest.raises(perfdoc.PerfDocError):
        perfdoc.sections(doc.replace("\n" + perfdoc.END + "\n", "\n", 1))  # a section left open


def test_the_check_needs_no_tvm():
    code = ("import sys; from sdparity.reports import perfdoc; rc = perfdoc.main(['--check']); "
            "assert 'tvm' not in sys.modules and 'torch' not in sys.modules, 'imported tvm/torch'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], cwd=perfdoc.ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
