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


# ---- a hostile page in the same browser, DNS rebinding, big uploads (issue 23) --------------


def _req(srv, method, path, body=None, headers=None):
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


@pytest.fixture
def srv(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "index.html").write_text("A")
    (tmp_path / "a" / ".env").write_text("secret")
    (tmp_path / "a" / "notes.md").write_text("not served")
    s = LocalServer({"app": tmp_path / "a"}, max_upload=1000, max_held=1500).start()
    yield s
    s.stop()


def test_only_this_servers_host_is_served(srv):
    """Before: any Host was served, so a DNS-rebinding page (evil.example -> 127.0.0.1) could read
    /art/ (the whole build cache). Now only 127.0.0.1 / localhost / [::1] on this port."""
    p = srv.port
    for host in (f"127.0.0.1:{p}", f"localhost:{p}", f"LOCALHOST:{p}", f"[::1]:{p}"):
        assert _req(srv, "GET", "/app/", headers={"Host": host}) == (200, b"A"), host
    for host in ("evil.example", f"evil.example:{p}", "127.0.0.1", f"127.0.0.1:{p + 1}", f"localhost.evil:{p}", ""):
        assert _req(srv, "GET", "/app/", headers={"Host": host})[0] == 421, host
        assert _req(srv, "POST", "/upload/x1", body=b"x", headers={"Host": host})[0] == 421, host
    assert "x1" not in srv.blobs


def test_foreign_origins_are_refused(srv):
    """Before: a page of any site could POST uploads into the blob store. Now a request whose
    Origin is not this server is 403 (read or write); the harness's own origin is served."""
    own = f"http://127.0.0.1:{srv.port}"
    assert _req(srv, "POST", "/upload/ok1", body=b"abc", headers={"Origin": own}) == (200, b"ok")
    assert srv.take("ok1") == b"abc"
    for origin in ("http://evil.example", "null", f"http://evil.example:{srv.port}", f"https://127.0.0.1:{srv.port}"):
        assert _req(srv, "POST", "/upload/bad1", body=b"abc", headers={"Origin": origin})[0] == 403, origin
        assert _req(srv, "GET", "/app/", headers={"Origin": origin})[0] == 403, origin
    assert "bad1" not in srv.blobs


def test_uploads_are_capped_before_reading(srv):
    """Before: Content-Length was trusted and the body held in memory (three 50 MB uploads: 36 ->
    183 MB). Now an upload over the limit is 413 before a byte is read, one without a length
    is 411, and all uploads held at once stay within max_held."""
    import socket

    assert _req(srv, "POST", "/upload/a1", body=b"x" * 1000)[0] == 200  # at the limit
    assert _req(srv, "POST", "/upload/a2", body=b"x" * 1001)[0] == 413
    # a huge declared length, no body sent: refused at once, nothing allocated
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(f"POST /upload/a3 HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n"
                  f"Content-Length: {10**15}\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 413")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        s.sendall(f"POST /upload/a4 HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
        assert s.recv(100).startswith(b"HTTP/1.1 411")
    assert _req(srv, "POST", "/upload/a5", body=b"x" * 600)[0] == 507  # 1000 + 600 > 1500 held
    assert srv.held == 1000
    srv.take("a1")
    assert srv.held == 0
    assert _req(srv, "POST", "/upload/a5", body=b"x" * 600)[0] == 200
    for bad in ("/upload/", "/upload/../x", "/upload/a/b", "/upload/" + "x" * 65):
        assert _req(srv, "POST", bad, body=b"x")[0] == 404, bad
    assert set(srv.blobs) == {"a5"}


def test_serves_only_files_the_app_loads(srv):
    assert _req(srv, "GET", "/app/index.html") == (200, b"A")
    for path in ("/app/.env", "/app/notes.md", "/app/%2e%2e/a/index.html"):
        assert _req(srv, "GET", path)[0] == 404, path


def test_the_app_server_mounts_one_build_not_the_cache(tmp_path):
    """`sdparity serve` mounted the whole build cache under /art/; now only the app's own build."""
    import json

    from sdparity.app import serve

    class Cache:
        root = tmp_path / "builds"

    for name in ("appbuild", "otherbuild"):
        (Cache.root / name).mkdir(parents=True)
        (Cache.root / name / "sdparity.json").write_text("{}")
    data = tmp_path / "data"
    data.mkdir()
    (data / "config.json").write_text(json.dumps({"artifact": "/art/appbuild/"}))
    mounts = serve.app_mounts(data, Cache)
    assert mounts["art/appbuild"] == Cache.root / "appbuild" and "art" not in mounts
    s = LocalServer(mounts).start()
    try:
        assert _req(s, "GET", "/art/appbuild/sdparity.json") == (200, b"{}")
        assert _req(s, "GET", "/art/otherbuild/sdparity.json")[0] == 404
    finally:
        s.stop()


def test_the_app_serves_several_models_each_with_its_own_build(tmp_path):
    """`sdparity serve --model tiny,tiny-sd2`: each model's data at /m/NAME/, its one build, and
    the picker's list at /models/models.json (read by web/app/app.js)."""
    import json

    from sdparity.app import serve

    class Cache:
        root = tmp_path / "cache" / "builds"

    datas = {}
    for name, arch in (("tiny", "sd1"), ("tiny-sd2", "sd2")):
        (Cache.root / f"b-{name}").mkdir(parents=True)
        datas[name] = tmp_path / name
        datas[name].mkdir()
        (datas[name] / "config.json").write_text(json.dumps(
            {"artifact": f"/art/b-{name}/", "model": {"name": name, "architecture": arch}}))
    mounts = serve.app_mounts(datas, Cache)
    assert "data" not in mounts and mounts["m/tiny-sd2"] == datas["tiny-sd2"]
    assert {k for k in mounts if k.startswith("art/")} == {"art/b-tiny", "art/b-tiny-sd2"}
    s = LocalServer(mounts).start()
    try:
        status, body = _req(s, "GET", "/models/models.json")
        assert status == 200 and json.loads(body) == [
            {"name": "tiny", "architecture": "sd1", "config": "/m/tiny/config.json"},
            {"name": "tiny-sd2", "architecture": "sd2", "config": "/m/tiny-sd2/config.json"}]
        assert _req(s, "GET", "/m/tiny-sd2/config.json")[0] == 200
    finally:
        s.stop()


def test_what_the_app_must_neutralize_is_a_proven_kind_of_known_issue():
    """The app builds SDXL for WebGPU with tvm_webgpu_int64_argmax neutralized (as built, its
    CLIP does not build). Each such declaration names a registered known issue that has a
    neutralizer and pre-selects the very failure it stands for: the build error of that
    architecture's CLIP on that backend (the proof itself: test_model_family.py)."""
    from sdparity import known_issues
    from sdparity.app.pipeline import BUILD_NEUTRALIZE

    assert BUILD_NEUTRALIZE
    for (arch, backend), ids in BUILD_NEUTRALIZE.items():
        assert known_issues.no_neutralizer(ids) == ""
        error = {"stage": "clip", "backend": backend, "verdict": "error", "model_scope": f"{arch}-tiny",
                 "message": "build failed: The buffer B has dtype T.int64, which WebGPU does not support"}
        assert {i.id for i in known_issues.candidates(error)} >= set(ids)
        assert not known_issues.candidates({**error, "model_scope": "tiny"})  # SD 1.x needs nothing


def test_dropped_keep_alive_connections_print_no_traceback(tmp_path, capfd):
    """Before: a passing `nox -s check` printed a ConnectionResetError traceback from the server
    thread when Chromium dropped a keep-alive connection."""
    import socket
    import struct
    import time

    (tmp_path / "big.bin").write_bytes(b"\0" * (8 << 20))
    s = LocalServer({"f": tmp_path}).start()
    try:
        def reset(sock):  # close with RST, as a browser killing a connection does
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

        head = f"Host: 127.0.0.1:{s.port}\r\n"
        for _ in range(3):
            c = socket.create_connection(("127.0.0.1", s.port))  # idle keep-alive, then reset
            c.sendall(f"GET /f/none.txt HTTP/1.1\r\n{head}\r\n".encode())
            c.recv(1000)
            reset(c)
            c = socket.create_connection(("127.0.0.1", s.port))  # reset in the middle of a download
            c.sendall(f"GET /f/big.bin HTTP/1.1\r\n{head}\r\n".encode())
            c.recv(1000)
            reset(c)
            c = socket.create_connection(("127.0.0.1", s.port))  # reset in the middle of an upload
            c.sendall(f"POST /upload/u1 HTTP/1.1\r\n{head}Content-Length: 100\r\n\r\nabc".encode())
            reset(c)
        time.sleep(0.5)
        assert _req(s, "GET", "/f/none.txt")[0] == 404  # still serving
        assert s.held == 0 and "u1" not in s.blobs
    finally:
        s.stop()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ConnectionResetError" not in err and "BrokenPipe" not in err, err


def test_serve_binds_its_port_before_building(monkeypatch, capsys):
    """Before: a port in use was found only after building the whole app. Now: one line, exit 2,
    at once."""
    import socket
    import time

    from sdparity.cli import main
    from sdparity.app import serve

    monkeypatch.setattr(serve, "build_app", lambda *a, **k: pytest.fail("built before binding"))
    monkeypatch.setattr(serve, "check_web_runtime", lambda: None)
    import reference.models

    monkeypatch.setattr(reference.models, "load_model", lambda *a, **k: pytest.fail("loaded before binding"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        t0 = time.perf_counter()
        assert main(["serve", "--port", str(port)]) == 2
        assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err, err
