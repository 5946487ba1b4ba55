"""The build cache: keyed reuse, atomic entries, corruption is a clear error."""

from __future__ import annotations

import pytest

from sdparity.cache import BuildCache
from sdparity.errors import SdparityError


def _builder(calls):
    def build(tmp):
        calls.append(tmp)
        (tmp / "lib.so").write_bytes(b"x" * 100)
        return {"note": "built"}
    return build


def test_second_get_reuses(tmp_path):
    cache, calls = BuildCache(tmp_path), []
    p1, m1, hit1 = cache.get_or_build({"a": 1}, _builder(calls))
    p2, m2, hit2 = cache.get_or_build({"a": 1}, _builder(calls))
    assert (hit1, hit2) == (False, True) and p1 == p2 and len(calls) == 1
    assert m2["note"] == "built" and "lib.so" in m2["files"]
    _, _, hit3 = cache.get_or_build({"a": 2}, _builder(calls))
    assert not hit3 and len(calls) == 2


def test_failed_build_leaves_nothing(tmp_path):
    cache = BuildCache(tmp_path)

    def boom(tmp):
        (tmp / "half.so").write_bytes(b"half")
        raise RuntimeError("compiler crashed")

    with pytest.raises(RuntimeError):
        cache.get_or_build({"a": 1}, boom)
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]  # only the (empty) entry locks


@pytest.mark.parametrize("damage", ["truncate", "flip", "meta"])
def test_corrupt_entry_is_an_error(tmp_path, damage):
    cache = BuildCache(tmp_path)
    path, _, _ = cache.get_or_build({"a": 1}, _builder([]))
    if damage == "truncate":
        (path / "lib.so").write_bytes(b"x")
    elif damage == "flip":
        (path / "lib.so").write_bytes(b"y" * 100)
    else:
        (path / "meta.json").write_text("{")
    with pytest.raises(SdparityError, match="corrupt"):
        cache.get_or_build({"a": 1}, _builder([]))
    # --rebuild replaces it
    _, _, hit = BuildCache(tmp_path, rebuild=True).get_or_build({"a": 1}, _builder([]))
    assert not hit


# ---- the key is content: TVM's bytes and the build code's sources (sdparity.identity) ----------

import os
import shutil
from pathlib import Path

from sdparity import identity

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """A copy of the project's sources that sdparity.identity reads instead of the real tree,
    so a test can edit a legalization or a stage without touching the files other work uses."""
    copy = tmp_path / "tree"
    for pkg in ("sdparity", "reference"):
        shutil.copytree(ROOT / pkg, copy / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(identity, "ROOT", copy)
    return copy


@pytest.fixture
def fake_tvm(tmp_path, monkeypatch):
    """Point the identity at a TVM folder of our own: the real package's version/libinfo files
    and a copy of the real libtvm_runtime.so (3 MB), so a test can change one byte of it."""
    real, _ = identity.tvm_dirs()
    pkg = tmp_path / "site" / "tvm"
    (pkg / "lib").mkdir(parents=True)
    for f in ("__init__.py", "libinfo.py", "_version.py"):
        shutil.copy2(real / f, pkg / f)
    shutil.copy2(real / "lib" / "libtvm_runtime.so", pkg / "lib" / "libtvm_runtime.so")
    monkeypatch.setattr(identity, "_spec_dir", lambda name: pkg if name == "tvm" else None)
    monkeypatch.setenv("SDPARITY_CACHE", str(tmp_path / "sdcache"))  # its own hash memo
    identity._identity.cache_clear()
    yield pkg
    identity._identity.cache_clear()


def _build(stage, llvm, cache):
    calls = []

    def ir():
        calls.append(1)
        return stage.build_ir(None, {})

    path, _, hit = llvm.build_cached(ir, stage.build_key(None, {}), cache, log=lambda *a: None)
    assert hit == (not calls)
    assert (path / "lib.so").is_file()
    return path, hit


def _edit(path: Path) -> None:
    path.write_text(path.read_text() + "\n# edited by test_cache\n")


@pytest.mark.parametrize("edit,rebuilds", [
    (None, False),
    ("sdparity/compile/legalize.py", True),     # a legalization
    ("sdparity/compile/schedule_cpu.py", True),  # a schedule
    ("sdparity/stages/concat_embeddings.py", True),  # the stage's own code
    ("sdparity/backends/native.py", True),      # the backend
    ("sdparity/ir.py", True),
    ("sdparity/cli.py", False),                 # not build code: the build is reused
    ("sdparity/stages/clip.py", False),         # another stage
])
def test_source_edit_rebuilds(tree, tmp_path, llvm, edit, rebuilds):
    from sdparity.registry import get_stage

    stage, cache = get_stage("concat_embeddings"), BuildCache(tmp_path / "builds")
    first, hit = _build(stage, llvm, cache)
    assert not hit
    if edit:
        _edit(tree / edit)
    second, hit = _build(stage, llvm, cache)
    assert hit != rebuilds and (second != first) == rebuilds


def test_base_class_source_is_in_the_key_of_torch_stages(tree):
    from sdparity.registry import get_stage

    clip, vae = get_stage("clip"), get_stage("vae")
    assert "sdparity.stages._torch" in clip.source_modules()
    before = identity.source_digest(clip.source_modules()), identity.source_digest(vae.source_modules())
    _edit(tree / "sdparity" / "stages" / "_torch.py")
    after = identity.source_digest(clip.source_modules()), identity.source_digest(vae.source_modules())
    assert before[0] != after[0] and before[1] != after[1]


def test_tvm_library_change_rebuilds(fake_tvm, tmp_path, llvm):
    from sdparity.registry import get_stage

    stage, cache = get_stage("concat_embeddings"), BuildCache(tmp_path / "builds")
    ident = identity.tvm_identity()
    assert ident["path"] == str(fake_tvm) and ident["files"] == 4 and ident["version"] == "0.27.0.post1"
    first, hit = _build(stage, llvm, cache)
    assert not hit
    assert _build(stage, llvm, cache) == (first, True)  # same TVM bytes: reused
    lib = fake_tvm / "lib" / "libtvm_runtime.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 1  # one bit, same size: only the content tells
    lib.write_bytes(bytes(data))
    identity._identity.cache_clear()  # a new process would see the new library
    assert identity.tvm_identity()["libs_sha256"] != ident["libs_sha256"]
    second, hit = _build(stage, llvm, cache)
    assert not hit and second != first


def test_identity_hash_is_remembered_by_size_and_mtime(fake_tvm):
    files = identity.tvm_files(fake_tvm, None)
    old = 1_600_000_000 * 10**9
    for f in files:
        os.utime(f, ns=(old, old))  # long ago: the memo may be written
    memo_dir = identity._memo_dir()
    fresh = identity.files_digest(files, fake_tvm.parent)
    assert len(list(memo_dir.glob("*.txt"))) == 1
    assert identity.files_digest(files, fake_tvm.parent) == fresh
    lib = fake_tvm / "lib" / "libtvm_runtime.so"
    data = bytearray(lib.read_bytes())
    data[100] ^= 1
    lib.write_bytes(bytes(data))  # new mtime: a new memo key, a new hash
    assert identity.files_digest(files, fake_tvm.parent) != fresh
    # written just now: not remembered (a second change within the clock's granularity would
    # keep size and mtime)
    assert len(list(memo_dir.glob("*.txt"))) == 1


def test_graph_packages_are_in_the_key(tmp_path, monkeypatch, llvm):
    """torch, diffusers and transformers shape the exported graph: each is in the key by version
    and by its RECORD's sha256 (identity.package_digest); another diffusers rebuilds."""
    from sdparity.backends import base
    from sdparity.registry import get_stage

    key = llvm.env_key()["packages"]
    assert set(key) == {"torch", "diffusers", "transformers"}
    assert all(v["version"] and len(v["record_sha256"]) == 20 for v in key.values()), key
    assert key["torch"]["version"] == identity.package_digest("torch")["version"]

    stage, cache = get_stage("concat_embeddings"), BuildCache(tmp_path / "builds")
    first, hit = _build(stage, llvm, cache)
    assert not hit and _build(stage, llvm, cache) == (first, True)
    real = identity.package_digest

    def other_diffusers(name):
        return {**real(name), "version": "0.0.1"} if name == "diffusers" else real(name)

    monkeypatch.setattr(identity, "package_digest", other_diffusers)
    assert base.graph_packages()["diffusers"]["version"] == "0.0.1"
    second, hit = _build(stage, llvm, cache)
    assert not hit and second != first
    monkeypatch.setattr(identity, "package_digest",  # same version, other files (RECORD)
                        lambda name: {**real(name), "record_sha256": "0" * 20} if name == "torch" else real(name))
    third, hit = _build(stage, llvm, cache)
    assert not hit and third not in (first, second)
