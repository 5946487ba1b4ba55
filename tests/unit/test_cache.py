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
    assert list(tmp_path.iterdir()) == []


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
