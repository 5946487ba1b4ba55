"""The local server: mounts (longest prefix wins), no escaping a mount, blobs both ways."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from sdparity.backends.webgpu.server import LocalServer


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def test_mounts_blobs_and_containment(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text("A")
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "model.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("no")
    srv = LocalServer({"app": tmp_path / "a", "art": tmp_path, "art/k1": tmp_path / "k"}).start()
    try:
        assert srv.url.startswith("http://127.0.0.1:")
        assert _get(srv.url + "/app/") == (200, b"A")
        assert _get(srv.url + "/art/k1/model.wasm") == (200, b"\0asm")  # longest prefix
        assert _get(srv.url + "/art/k/model.wasm") == (200, b"\0asm")  # shorter mount
        for bad in ("/app/../secret.txt", "/nothing/x", "/art/k1/missing"):
            with pytest.raises(urllib.error.HTTPError) as e:
                _get(srv.url + bad)
            assert e.value.code == 404
        bid = srv.put(b"tensor bytes")
        assert _get(srv.url + "/blob/" + bid) == (200, b"tensor bytes")
        req = urllib.request.Request(srv.url + "/upload/xyz", data=b"result", method="POST")
        assert urllib.request.urlopen(req, timeout=10).status == 200
        assert srv.take("xyz") == b"result"
    finally:
        srv.stop()
