"""The GPU-machine tools (sdparity.gpu.cuda, gpu_web, gpu_webstages, gpu_tune) refuse bad input with one
line and exit status 2. Their real runs need the lent GPU (docs/performance.md); the WebGPU
path runs here on SwiftShader in tests/e2e/test_node_dawn.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["sdparity.gpu.cuda", "sdparity.gpu.web", "sdparity.gpu.webstages",
                                    "sdparity.gpu.tune"])
def test_missing_folder_is_one_line_error(module, tmp_path):
    args = ["device", "--dir", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines and lines[-1].startswith(f"python -m {module}: error:"), p.stderr
    assert "Traceback" not in p.stderr


def test_gpu_web_unknown_model_is_one_line_error(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sdparity.gpu.web", "prepare", "--model", str(tmp_path / "nope"),
                        "--dir", str(tmp_path / "d")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "d").exists()  # nothing half-written


def test_gpu_webstages_unknown_stage_is_refused_before_anything_is_written(tmp_path):
    p = subprocess.run([sys.executable, "-m", "sdparity.gpu.webstages", "prepare", "--stages", "unet,nope",
                        "--dir", str(tmp_path / "d")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "unknown: nope" in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "d").exists()


def test_gpu_tune_apply_refuses_bad_results_and_keeps_the_database(tmp_path):
    bad = tmp_path / "tune-results.json"
    bad.write_text('{"card": "x"}')
    db = tmp_path / "db.json"
    p = subprocess.run([sys.executable, "-m", "sdparity.gpu.tune", "apply", str(bad), "--database", str(db)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "not a tune-results.json" in p.stderr.strip().splitlines()[-1]
    assert not db.exists()  # nothing half-written


def test_cuda_graphs_are_refused_for_float32_builds(tmp_path):
    """Refused before any model is loaded or created: the default model is the full-size
    sd15-random (4 GB written on first use), so a late refusal would cost a clean machine
    its disk (it did: CI ran out of space here). SDPARITY_CACHE points at an empty folder
    to see that nothing was made."""
    env = dict(os.environ, SDPARITY_CACHE=str(tmp_path / "cache"))
    p = subprocess.run([sys.executable, "-m", "sdparity.gpu.cuda", "prepare", "--stages", "unet",
                        "--dir", str(tmp_path / "d"), "--cuda-graphs"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env=env)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "--cuda-graphs is for --precision f16" in p.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "d").exists() and not (tmp_path / "cache").exists()


def test_generation_sums_the_stage_medians_on_both_sides():
    """The report's generation estimate (gpu_cuda.generation): each pipeline function's median
    times its calls per image (pipeline.json: the UNet and the scheduler once per step), the same
    sum on both sides; absent until every stage with weights was timed; weightless stages not
    timed are listed, not guessed."""
    from sdparity.gpu.cuda import STEPS, generation

    rows = [{"stage": "clip", "function": "clip", "run_s": 0.004, "ref_s": 0.002, "ref_graph_s": 0.001},
            {"stage": "unet", "function": "unet", "run_s": 0.030, "ref_s": 0.025, "ref_graph_s": 0.012},
            {"stage": "vae", "function": "vae", "run_s": 0.028, "ref_s": 0.022, "ref_graph_s": "capture failed: x"}]
    assert generation(rows[:2]) is None
    g = generation(rows)
    assert STEPS == 20 and g["tvm_s"] == round(0.004 + 20 * 0.030 + 0.028, 4)
    assert g["torch_s"] == round(0.002 + 20 * 0.025 + 0.022, 4) and g["ratio"] == round(g["tvm_s"] / g["torch_s"], 3)
    assert "torch_graph_s" not in g  # one stage's graph capture failed: no graph-replayed sum
    assert g["left_out"] == ["concat_embeddings", "dpm_convert_model_output", "dpm_step", "image_to_rgba"]
    step = {"stage": "scheduler_dpm", "function": "dpm_step", "run_s": 0.001, "ref_s": 0.002}
    assert generation(rows + [step])["tvm_s"] == round(g["tvm_s"] + 20 * 0.001, 4)
