"""The upgrade gate on synthetic report pairs, the HTML page, and the per-version env recipe."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest

from sdparity.reports import gate
from sdparity.cli import main
from sdparity.errors import SdparityError


def rec(stage="unet", case="t999", output="noise_pred", verdict="pass", max_abs=1e-5, floor=1e-5,
        integer=False, frac=0.0, atol=1e-4, message="", backend="llvm"):
    metrics = None if verdict in ("error", "skip") else {
        "shape": [1, 4, 8, 8], "dtype": "float32", "n": 256, "max_abs": max_abs, "max_rel": 0.0,
        "mismatches": int(frac * 256), "mismatch_frac": frac, "noise_floor": floor,
        "floor_ratio": (max_abs / floor) if floor else None, "nonfinite": 0, "worst_index": [0, 0, 0, 0],
        "passed": verdict == "pass", "why": message}
    return {"stage": stage, "backend": backend, "device_class": "cpu", "case": case, "function": stage,
            "output": output, "shapes": {"latents": [1, 4, 8, 8]} if case else None, "verdict": verdict,
            "message": message, "metrics": metrics, "integer": integer,
            "tolerance": None if metrics is None else {"atol": atol, "rtol": 0.0, "mismatch_frac": 0.0, "reason": ""},
            "timings": None}


def report(*records, tvm="0.26.0"):
    return {"schema": "sdparity.report/1", "model": {"name": "tiny", "digest": "abc", "path": "/x"},
            "versions": {"apache-tvm": tvm}, "backends": {}, "results": list(records)}


def statuses(base, cand):
    return {(r["stage"], r["case"], r["output"]): r["status"] for r in gate.gate(base, cand)["rows"]}


def one(base_rec, cand_rec):
    result = gate.gate(report(base_rec), report(cand_rec, tvm="0.27.0"))
    assert len(result["rows"]) == 1
    return result["rows"][0]["status"], result["regressions"]


def test_error_growth_beyond_budget_is_a_regression_even_while_passing():
    status, n = one(rec(max_abs=1e-5), rec(max_abs=5e-5))  # still under atol 1e-4
    assert (status, n) == ("regressed", 1)


def test_improvement_and_noise_within_budget_pass():
    assert one(rec(max_abs=4e-5), rec(max_abs=1e-5)) == ("improved", 0)
    assert one(rec(max_abs=1e-5), rec(max_abs=1.9e-5)) == ("same", 0)  # < 2x
    assert one(rec(max_abs=1e-5), rec(max_abs=1.2e-5, floor=None)) == ("same", 0)


def test_bit_exact_baseline_may_move_one_noise_floor_not_more():
    assert one(rec(max_abs=0.0, floor=1e-7), rec(max_abs=9e-8, floor=1e-7)) == ("same", 0)
    assert one(rec(max_abs=0.0, floor=1e-7), rec(max_abs=3e-7, floor=1e-7))[0] == "regressed"
    assert one(rec(max_abs=0.0, floor=None), rec(max_abs=1e-9, floor=None))[0] == "regressed"


def test_nan_in_candidate_is_a_regression():
    c = rec(max_abs=float("nan"))
    assert one(rec(), c)[0] == "regressed"
    c = rec()
    c["metrics"]["nonfinite"] = 3
    assert one(rec(), c)[0] == "regressed"


def test_pass_to_fail_error_skip_and_missing_are_regressions():
    assert one(rec(), rec(verdict="fail", max_abs=1e-5))[0] == "now-fails"
    assert one(rec(), rec(verdict="error", message="run failed: boom"))[0] == "error"
    assert one(rec(), rec(verdict="skip", message="no GPU"))[0] == "now-skipped"
    result = gate.gate(report(rec(case="a"), rec(case="b")), report(rec(case="a")))
    assert {r["case"]: r["status"] for r in result["rows"]} == {"a": "same", "b": "missing"}
    assert result["regressions"] == 1


def test_build_error_takes_every_check_of_the_stage():
    base = report(rec(case="a"), rec(case="b"), rec(stage="clip", case="cat", output="hidden"))
    cand = report(rec(case=None, output=None, verdict="error", message="build failed: cannot build"),
                  rec(stage="clip", case="cat", output="hidden"))
    result = gate.gate(base, cand)
    rows = {(r["stage"], r["case"]): r for r in result["rows"]}
    assert [rows[("unet", c)]["status"] for c in "ab"] == ["error", "error"]
    assert "cannot build" in rows[("unet", "a")]["why"]
    assert rows[("clip", "cat")]["status"] == "same" and result["regressions"] == 2
    # and the other way round: a stage that builds again is fixed, its checks are new
    back = statuses(cand, base)
    assert back[("unet", None, None)] == "fixed" and back[("unet", "a", "noise_pred")] == "new"
    assert gate.gate(cand, base)["regressions"] == 0
    # a backend skipped as a whole takes its checks too
    skipped = report(rec(case=None, output=None, verdict="skip", message="no GPU"),
                     rec(stage="clip", case="cat", output="hidden"))
    assert statuses(base, skipped)[("unet", "a", "noise_pred")] == "now-skipped"


def test_known_failure_and_known_error_are_not_regressions_unless_worse():
    assert one(rec(verdict="fail", max_abs=1e-3), rec(verdict="fail", max_abs=1e-3))[0] == "still-fails"
    assert one(rec(verdict="fail", max_abs=1e-3), rec(verdict="fail", max_abs=1e-2))[0] == "regressed"
    assert one(rec(verdict="error"), rec(verdict="error"))[0] == "still-errors"
    assert one(rec(verdict="fail", max_abs=1e-3), rec(max_abs=1e-6))[0] == "fixed"
    assert one(rec(verdict="skip"), rec(verdict="error"))[0] == "skipped"


def test_changed_inputs_are_not_compared():
    c = rec()
    c["shapes"] = {"latents": [1, 4, 16, 16]}
    assert one(rec(), c)[0] == "changed"


def test_integer_outputs_budget():
    img = dict(stage="vae", case="l0", output="image", integer=True, atol=1.0, floor=1.0)
    assert one(rec(**img, max_abs=1, frac=0.002), rec(**img, max_abs=1, frac=0.003))[0] == "same"
    assert one(rec(**img, max_abs=1, frac=0.002), rec(**img, max_abs=1, frac=0.01))[0] == "regressed"
    assert one(rec(**img, max_abs=1, frac=0.002), rec(**img, max_abs=2, frac=0.002))[0] == "regressed"
    assert one(rec(**img, max_abs=0, frac=0.0), rec(**img, max_abs=1, frac=0.0005))[0] == "same"
    exact = dict(stage="image_to_rgba", case="edges", output="rgba", integer=True, atol=0.0, floor=0.0)
    assert one(rec(**exact, max_abs=0), rec(**exact, max_abs=1, frac=1 / 256))[0] == "regressed"


def test_integer_is_inferred_for_reports_without_the_field():
    r = rec(stage="image_to_rgba", output="rgba")
    del r["integer"]
    r["metrics"]["dtype"] = "uint32"
    assert gate.is_integer(r)
    r = rec()
    del r["integer"]
    assert not gate.is_integer(r)


def test_crashed_candidate_run_loses_every_check():
    cand = {"schema": "sdparity.report/1", "versions": {"apache-tvm": "9.9"}, "model": None, "backends": {},
            "results": [], "error": "sdparity check could not run (exit 1): ImportError: libtvm"}
    result = gate.gate(report(rec(case="a"), rec(case="b")), cand)
    assert result["regressions"] == 2 and all("ImportError" in r["why"] for r in result["rows"])


def test_different_models_are_refused():
    other = report(rec())
    other["model"]["digest"] = "zzz"
    with pytest.raises(SdparityError, match="different models"):
        gate.gate(report(rec()), other)


def test_cli_exit_codes_table_and_json(tmp_path, capsys):
    base, good, bad = (tmp_path / f"{n}.json" for n in ("base", "good", "bad"))
    base.write_text(json.dumps(report(rec(case="a"), rec(case="b", max_abs=0.0, floor=1e-7))))
    good.write_text(json.dumps(report(rec(case="a", max_abs=1.1e-5), rec(case="b", max_abs=0.0, floor=1e-7))))
    bad.write_text(json.dumps(report(rec(case="a", max_abs=1e-3, verdict="fail", message="over"))))
    assert main(["gate", str(base), str(good)]) == 0
    assert "PASS: no regression" in capsys.readouterr().out
    assert main(["gate", str(base), str(bad), "--json", str(tmp_path / "g.json")]) == 1
    out = capsys.readouterr().out
    assert "now-fails" in out and "missing" in out and "FAIL: 2 regression(s)" in out
    assert json.loads((tmp_path / "g.json").read_text())["schema"] == "sdparity.gate/1"
    assert main(["gate", str(base), str(tmp_path / "nope.json")]) == 2
    assert capsys.readouterr().err.count("sdparity: error:") == 1


def test_png_writer_round_trip():
    """The PNG bytes decode (with an independent decoder call) to exactly the pixels written."""
    import io

    from PIL import Image

    from sdparity.reports.images import png_bytes

    img = (np.arange(5 * 7 * 3) % 256).astype(np.uint8).reshape(5, 7, 3)
    data = png_bytes(img)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = np.asarray(Image.open(io.BytesIO(data)))
    assert back.shape == (5, 7, 3) and np.array_equal(back, img)


def test_html_has_matrix_images_and_localization(tmp_path):
    from sdparity.reports.html import write_html
    from sdparity.reports.images import attach
    from sdparity.reports.report import Report

    r = Report(None)
    ref = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
    cand = ref.copy()
    cand[0, 2, 3, 1] += 40
    img = rec(stage="vae", case="l0", output="image_float", verdict="fail", max_abs=40.0)
    attach(r, r.add(**img), cand, ref)
    loc = {"status": "diverged", "summary": "first diverging kernel fused_conv2d_add3", "method": "kernel replay",
           "calls": 9, "first": {"call": 4, "kernel": "fused_conv2d_add3", "op": "conv2d_add", "shape": [1, 8],
                                  "max_abs": 1.0, "rel": 0.1, "bound": 1e-5}, "diverged": []}
    r.add(**{**rec(stage="unet", verdict="fail", max_abs=1.0), "localization": loc})
    r.add(**rec(stage="clip", backend="webgpu", verdict="skip", message="no WebGPU adapter"))
    r.write(tmp_path / "r.json")
    assert (tmp_path / "r_images" / "vae.llvm.l0.image_float.diff.png").exists()
    html = write_html(tmp_path / "r.json").read_text()
    assert (tmp_path / "r.html").exists()
    assert "Stage &times; backend" in html and "<th>webgpu</th>" in html and "<th>vae</th>" in html
    assert html.count("data:image/png;base64,") == 3
    assert "fused_conv2d_add3" in html and "no WebGPU adapter" in html and "FAIL" in html


def test_check_writes_images_and_html_beside_the_report(tmp_path):
    out = tmp_path / "rep.json"
    assert main(["check", "--stages", "image_to_rgba", "--report", str(out), "-q"]) == 0
    data = json.loads(out.read_text())
    rgba = [r for r in data["results"] if r.get("images")]
    assert rgba and all(r["integer"] for r in rgba)
    assert (tmp_path / data["images_dir"] / rgba[0]["images"]["diff"]).exists()
    html = (tmp_path / "rep.html").read_text()
    assert html.count("data:image/png;base64,") == 3 * len(rgba)
    # gating a report against itself is clean
    assert main(["gate", str(out), str(out)]) == 0


def test_version_env_recipe_replaces_the_tvm_pin():
    from sdparity.commands import versions_env

    reqs = versions_env.requirements("0.26.0")
    assert reqs[0] == "apache-tvm==0.26.0" and not any(re.match(r"apache-tvm==0\.27", r) for r in reqs)
    assert any(r.startswith("torch==") for r in reqs)
    assert "apache-tvm-ffi==0.1.12" in versions_env.requirements("0.25.0")
    assert versions_env.env_dir("0.27.0.post1").name == "tvm-0.27.0.post1"
    with pytest.raises(SdparityError):
        versions_env.env_dir("../evil")


def test_gate_result_is_json_serializable():
    result = gate.gate(report(rec()), report(copy.deepcopy(rec())))
    json.dumps(result)


def test_a_version_whose_check_cannot_run_still_gives_a_report(tmp_path):
    from sdparity.commands import versions_env

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ImportError: libtvm_runtime.so: undefined symbol'\nexit 1\n")
    fake.chmod(0o755)
    path = versions_env.run_check(versions_env.parse_side("9.9.9"), tmp_path / "out", [], log=lambda *a: None,
                                  python=fake)
    data = json.loads(path.read_text())
    assert data["results"] == [] and "undefined symbol" in data["error"]
    result = gate.gate(report(rec()), data)
    assert result["regressions"] == 1 and "undefined symbol" in result["rows"][0]["why"]


def test_gate_versions_passes_check_arguments_after_double_dash():
    from sdparity.cli import build_parser

    args = build_parser().parse_args(["gate-versions", "0.26.0", "0.27.0.post1", "--", "--stages", "clip"])
    assert (args.version_a.version, args.version_b.version, args.check_args) == ("0.26.0", "0.27.0.post1",
                                                                               ["--stages", "clip"])


def known(r, issue="tvm-xyz", neutral=1e-5):
    """A failing record as the runner's proof turns it into verdict known: its check rebuilt
    with the issue neutralized passed with max abs ``neutral``."""
    n = rec(case=r["case"], output=r["output"], stage=r["stage"], max_abs=neutral)
    return {**r, "verdict": "known", "known_issue": issue, "known_issues": [issue], "known_was": r["verdict"],
            "neutralized": {"issues": [issue], "verdict": "pass", "why": "",
                            "checks": [{"output": r["output"], "case": r["case"], "verdict": "pass",
                                        "metrics": n["metrics"], "message": ""}]}}


def test_known_issues_in_the_gate():
    failing = rec(verdict="fail", max_abs=1e-3)
    # known -> pass: an improvement, and the issue is reported as possibly fixed upstream
    result = gate.gate(report(known(failing)), report(rec(max_abs=1e-6), tvm="0.28.0"))
    assert [r["status"] for r in result["rows"]] == ["fixed-upstream?"] and result["regressions"] == 0
    assert result["known_issues"] == {"tvm-xyz": {"checks": 1, "now_pass": 1, "status": "fixed upstream?"}}
    # pass -> known: a lost check even when explained
    assert one(rec(), known(failing)) == ("now-known", 1)
    assert one(known(failing), known(failing)) == ("still-known", 0)
    assert one(failing, known(failing)) == ("still-known", 0)
    assert one(known(rec(verdict="error")), known(rec(verdict="error"))) == ("still-known", 0)
    # known checks are compared too: the known bug's error as built grew ...
    assert one(known(failing), known(rec(verdict="fail", max_abs=5e-3))) == ("known-worse", 1)
    assert one(failing, known(rec(verdict="fail", max_abs=5e-3))) == ("known-worse", 1)
    # ... or what is left with the issue neutralized grew (still inside its budget: known)
    assert one(known(failing, neutral=1e-5), known(failing, neutral=9e-5)) == ("known-worse", 1)
    assert one(known(failing, neutral=1e-5), known(failing, neutral=1.5e-5)) == ("still-known", 0)
    # known -> fail: the neutralized build fails now, the issue no longer explains the check
    assert one(known(failing), failing) == ("now-fails", 1)
    # an issue only some of whose checks pass now is not "fixed"
    base = report(known(failing), known({**failing, "case": "t1"}))
    cand = report(rec(max_abs=1e-6), known({**failing, "case": "t1"}), tvm="0.28.0")
    assert gate.gate(base, cand)["known_issues"]["tvm-xyz"]["status"] == "partly passes"


def test_table_and_html_show_known_and_ratio_against_budget(tmp_path, capsys):
    from sdparity.reports.html import render
    from sdparity.reports.table import print_table

    budgeted = rec(max_abs=2e-5, floor=1e-5)
    budgeted["metrics"]["floor_budget"] = 7.9
    data = report(budgeted, rec(case="t1"), known(rec(stage="vae", case="l0", output="image_float", verdict="fail")))
    data["summary"] = {"pass": 2, "known": 1}
    print_table(data)
    out = capsys.readouterr().out
    assert re.search(r"unet\s+llvm\s+2/2\s+-\s+2e-05\s+2\.0x/7\.9x", out)
    assert re.search(r"vae\s+llvm\s+0/1\s+1\s+.*KNOWN", out)
    assert "2 passed, 0 failed, 1 known issues" in out
    html = render(data, tmp_path)
    assert "<td class='known'><span class='v'>KNOWN</span>" in html and "2.0x/7.9x" in html
    assert "tvm-xyz: 1 checks" in html and ".known{" in html
