"""The GPU-machine tools (sdparity.tiers.gpu_cuda, gpu_web, gpu_tune) refuse bad input with one
line and exit status 2. Their real runs need the lent GPU (docs/performance.md); the WebGPU
path runs here on SwiftShader in tests/e2e/test_node_dawn.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["sdparity.tiers.gpu_cuda", "sdparity.tiers.gpu_web", "sdparity.tiers.gpu_tune"])
def test_missing_folder_is_one_line_error(module, tmp_path):
    args = ["device", "--dir", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(f"python -m {module}: error:"), p.stderr
    assert "Traceback" not in p.stderr


def test_gpu_web_unknown_model_is_one_line_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sdparity.tiers.gpu_web", "prepare", "--model", str(tmp_path / "nope"),
                        "--dir", str(tmp_path / "d")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "d").exists()  # nothing half-written


def test_gpu_tune_apply_refuses_bad_results_and_keeps_the_database(tmp_path):
    bad = tmp_path / "tune-results.json"
    bad.write_text('{"card": "x"}')
    db = tmp_path / "db.json"
    p = subprocess.run([sys.executable, "-m", "sdparity.tiers.gpu_tune", "apply", str(bad), "--database", str(db)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "not a tune-results.json" in p.stderr.strip().splitlines()[-1]
    assert not db.exists()  # nothing half-written
