"""`sdparity bench` on the tiny model: output structure and sane numbers (not timings)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
POSITIVE = ("run_s", "ref_s", "ratio", "first_run_s", "build_s", "rss_peak_mib")
NONNEGATIVE = ("rss_delta_mib", "run_rss_delta_mib", "ref_rss_delta_mib")


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_records(tiny, cache, llvm):
    from sdparity.tiers.bench import SCHEMA, run_bench
    from sdparity.registry import all_stages

    stages = [all_stages()[n] for n in ("clip", "scheduler_dpm", "image_to_rgba")]
    data = run_bench(tiny, stages, [llvm], cache, repeat=2, log=lambda *a: None)
    assert data["schema"] == SCHEMA
    assert data["model"]["name"] == "tiny" and data["repeat"] == 2
    json.loads(json.dumps(data, default=str))  # serializable
    got = {(r["stage"], r["function"]) for r in data["results"]}
    assert got == {("clip", "clip"), ("scheduler_dpm", "dpm_convert_model_output"),
                   ("scheduler_dpm", "dpm_step"), ("image_to_rgba", "image_to_rgba")}
    for r in data["results"]:
        assert r["error"] is None, r
        assert r["backend"] == "llvm" and r["device_class"] == "cpu"
        for k in POSITIVE:
            assert _finite_positive(r[k]), (k, r[k])
        for k in NONNEGATIVE:
            assert math.isfinite(r[k]) and r[k] >= 0, (k, r[k])
        assert len(r["run_s_all"]) == len(r["ref_s_all"]) == 2
        assert all(_finite_positive(x) for x in r["run_s_all"] + r["ref_s_all"])
        assert r["ratio"] == round(r["run_s"] / r["ref_s"], 3)
        assert r["device_mem_peak_mib"] is None  # no GPU memory on a CPU backend
        assert isinstance(r["build_cached"], bool)


def test_bench_cli_writes_json_and_merges(tmp_path):
    from sdparity.reports.report import SCHEMA as REPORT_SCHEMA

    out = tmp_path / "bench.json"
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"schema": REPORT_SCHEMA, "results": []}))
    r = subprocess.run([sys.executable, "-m", "sdparity", "bench", "--stages", "concat_embeddings",
                        "--repeat", "1", "--json", str(out), "--merge", str(report), "-q"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "ratio" in r.stdout and "concat_embeddings" in r.stdout
    data = json.loads(out.read_text())
    assert [x["stage"] for x in data["results"]] == ["concat_embeddings"]
    assert not list(tmp_path.glob(".bench.json.*"))  # atomic write left no temp file
    merged = json.loads(report.read_text())
    assert merged["performance"]["cpu"]["results"][0]["stage"] == "concat_embeddings"
    assert "gpu" not in merged["performance"]


def test_bench_rejects_bad_input():
    r = subprocess.run([sys.executable, "-m", "sdparity", "bench", "--stages", "nope"],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 2 and "unknown stage" in r.stderr


def test_bench_threads_are_set_before_tvm_starts_its_pool():
    """TVM's thread pool reads TVM_NUM_THREADS once, when first asked; the bench's record of
    the thread count must not be what pins it at TVM's default (1 on a 2-core machine)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    code = "import json; from sdparity.bench import _threads; print(json.dumps(_threads()))"
    p = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                       capture_output=True, text=True, timeout=300)
    threads = json.loads(p.stdout.strip().splitlines()[-1])
    assert threads["tvm_runtime"] == os.cpu_count() == int(threads["TVM_NUM_THREADS"]), threads
