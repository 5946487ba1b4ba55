"""The command line: help, exit codes, one-line errors, report written atomically."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    from sdparity.identity import tvm_identity  # the TVM used, by content (sdparity.identity)

    tvm = data["versions"]["tvm"]
    assert tvm["version"] == "0.27.0.post1" and tvm["libs_sha256"] == tvm_identity()["libs_sha256"]
    assert tvm["path"] == tvm_identity()["path"] and tvm["commit"]
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


# ---- bad input fails before any work: one line, exit 2, well under a second (issue 10 item 7) ----

def _timed_sdparity(*args):
    """(result, child CPU seconds). CPU time, not wall: the machine is shared, and what matters
    is that nothing was built or imported (torch alone takes over 1 s of CPU)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = sdparity(*args)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _tiny_with_pickled_unet(tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    from reference.models import builtin_model_path, ensure_builtin

    ensure_builtin("tiny", log=lambda *a: None)
    folder = tmp_path / "pickled"
    shutil.copytree(builtin_model_path("tiny"), folder)
    st = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(st), st.with_suffix(".bin"))
    st.unlink()
    return folder


BAD_INPUT = [
    (("check", "--seed", "-1"), "argument --seed: -1 is outside 0..4294967295"),
    (("check", "--seed", "4294967296"), "is outside 0..4294967295"),
    (("check", "--latent", "0x16"), "latent sizes must be positive"),
    (("check", "--latent", "16"), "expected HxW"),
    (("check", "--latent", "axb"), "expected HxW"),
    (("check", "--stages", "nope"), "unknown stage(s) nope"),
    (("check", "--stages", ","), "no stage given"),
    (("check", "--backends", "metal"), "unknown backend(s) metal"),
    (("check", "--report", "/proc/sdparity-test/r.json"), "cannot write /proc/sdparity-test/r.json"),
    (("check", "--report", "{file}/r.json"), "is not a folder"),
    (("check", "--report", "{tmp}"), "is a folder, not a file path"),
    (("check", "--stages", "clip", "--inject-fault", "unet:x"), "stage 'unet' is not selected"),
    (("check", "--stages", "unet", "--inject-fault", "unet:nope"), "has no fault 'nope'"),
    (("check", "--model", "{tmp}/nope"), "does not exist"),
    (("check", "--model", "{pickled}"), "has only pickle weights"),
    (("bench", "--repeat", "0"), "argument --repeat/-n: 0 is outside 1.."),
    (("bench", "--seed", "-5"), "argument --seed"),
    (("bench", "--stages", "nope"), "unknown stage(s) nope"),
    (("bench", "--json", "{file}/b.json"), "is not a folder"),
    (("bench", "--merge", "{tmp}/none.json"), "is not an existing file"),
    (("bench", "--model", "{pickled}"), "has only pickle weights"),
    (("serve", "--port", "70000"), "argument --port: 70000 is outside 1..65535"),
    (("serve", "--latent", "8y8"), "expected HxW"),
    (("serve", "--model", "{pickled}"), "has only pickle weights"),
]


@pytest.fixture(scope="module")
def bad_input_paths(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("badinput")
    (tmp / "file").write_text("x")
    return {"tmp": str(tmp), "file": str(tmp / "file"), "pickled": str(_tiny_with_pickled_unet(tmp))}


@pytest.mark.parametrize("args,needle", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_fails_fast_with_one_line(args, needle, bad_input_paths, tmp_path):
    args = [a.format(**bad_input_paths) for a in args]
    if "--report" not in args and args[0] == "check":
        args += ["--report", str(tmp_path / "r.json")]
    r, cpu = _timed_sdparity(*args)
    line = _last_line_error(r)
    assert needle in line and r.stderr.strip() == line, r.stderr
    assert cpu < 1.0, f"{cpu:.2f} s of CPU before failing: something was built or imported"
    assert not (tmp_path / "r.json").exists()


def test_undeclared_tolerance_is_an_error_record(monkeypatch, run_check, llvm):
    from sdparity import tolerances
    from sdparity.registry import get_stage

    key = ("concat_embeddings", "embeddings", "*", "*")
    monkeypatch.delitem(tolerances.TABLE, key)
    recs = run_check(get_stage("concat_embeddings"), llvm)
    assert recs and all(r["verdict"] == "error" for r in recs)
    assert all("no tolerance declared for stage 'concat_embeddings' output 'embeddings'" in r["message"]
               for r in recs)
    assert all(r["output"] == "embeddings" and r["case"] for r in recs)
