"""The command line: help, exit codes, one-line errors, report written atomically."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def sdparity(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sdparity", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=600)


def test_help_lists_commands():
    r = sdparity("--help")
    assert r.returncode == 0
    for word in ("check", "stages", "make-model", "cache"):
        assert word in r.stdout
    r = sdparity("check", "--help")
    assert r.returncode == 0 and "--backends" in r.stdout and "--model" in r.stdout


def _last_line_error(r):
    assert r.returncode == 2, r.stderr[-2000:]
    err = [l for l in r.stderr.strip().splitlines() if l.startswith("sdparity: error:")]
    assert len(err) == 1, r.stderr[-2000:]
    return err[0]


def test_missing_model_folder(tmp_path):
    assert "does not exist" in _last_line_error(sdparity("check", "--model", str(tmp_path / "nope")))


def test_unknown_stage_and_backend():
    assert "unknown stage" in _last_line_error(sdparity("check", "--stages", "nope"))
    assert "unknown backend" in _last_line_error(sdparity("check", "--backends", "metal"))


def test_check_passes_writes_report_and_second_run_is_cached(tmp_path):
    report = tmp_path / "r.json"
    args = ("check", "--stages", "image_to_rgba,concat_embeddings,clip", "--report", str(report))
    r = sdparity(*args)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    data = json.loads(report.read_text())
    assert data["schema"] == "sdparity.report/1" and data["summary"]["fail"] == 0
    assert data["versions"]["apache-tvm"] == "0.27.0.post1" and data["versions"]["torch"].startswith("2.13.0")
    assert {r["stage"] for r in data["results"]} == {"image_to_rgba", "concat_embeddings", "clip"}
    assert "PASS" in r.stdout
    r2 = sdparity(*args)
    assert r2.returncode == 0 and "cached build reused" in r2.stderr


def test_injected_fault_exits_1(tmp_path):
    r = sdparity("check", "--stages", "concat_embeddings", "--inject-fault", "concat_embeddings:positive_first",
                 "--report", str(tmp_path / "r.json"))
    assert r.returncode == 1 and "FAIL" in r.stdout


def test_corrupt_cache_is_a_clear_error(tmp_path):
    import os

    env_cache = tmp_path / "cache"
    env = {**os.environ, "SDPARITY_CACHE": str(env_cache)}
    base = [sys.executable, "-m", "sdparity", "check", "--stages", "image_to_rgba", "--model", "tiny",
            "--report", str(tmp_path / "r.json")]
    # share the already-created tiny model; only the builds folder is private
    (env_cache / "models").mkdir(parents=True)
    from reference.models import builtin_model_path
    (env_cache / "models" / builtin_model_path("tiny").name).symlink_to(builtin_model_path("tiny"))
    assert subprocess.run(base, env=env, capture_output=True, cwd=ROOT).returncode == 0
    (tmp_path / "r.json").unlink()
    lib = next((env_cache / "builds").glob("*/lib.so"))
    lib.write_bytes(lib.read_bytes()[:100])
    r = subprocess.run(base, env=env, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "corrupt" in r.stderr
    assert not (tmp_path / "r.json").exists()  # nothing half-written
