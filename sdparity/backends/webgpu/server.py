"""The one local HTTP server: static folders mounted under URL prefixes, plus a blob store
for moving tensors between Python and a page (GET /blob/<id>, POST /upload/<id>).
Binds 127.0.0.1 only (a secure context for WebGPU, never reachable from outside)."""

from __future__ import annotations

import shutil
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
         ".json": "application/json", ".wasm": "application/wasm", ".wgsl": "text/plain",
         ".png": "image/png", ".txt": "text/plain"}


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mounts: dict[str, Path] | None = None, port: int = 0):
        super().__init__(("127.0.0.1", port), _Handler)
        # URL prefix (one or more path segments, e.g. "app" or "art/<key>") -> folder
        self.mounts: dict[str, Path] = dict(mounts or {})
        self.blobs: dict[str, bytes | bytearray] = {}
        self.lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def start(self) -> "LocalServer":
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def put(self, data: bytes) -> str:
        bid = uuid.uuid4().hex
        with self.lock:
            self.blobs[bid] = data
        return bid

    def take(self, bid: str):
        with self.lock:
            return self.blobs.pop(bid)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LocalServer

    def log_message(self, *args):  # quiet
        pass

    def _send(self, code: int, body: bytes = b"", ctype: str = "application/octet-stream"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _file(self, base: Path, rel: str):
        path = (base / rel).resolve()
        if not path.is_relative_to(base.resolve()) or not path.is_file():
            return self._send(404, b"not found", "text/plain")
        self.send_response(200)
        self.send_header("Content-Type", TYPES.get(path.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        with open(path, "rb") as f:
            shutil.copyfileobj(f, self.wfile, 1 << 20)

    def do_GET(self):
        path = self.path.split("?")[0].lstrip("/")
        head, _, rest = path.partition("/")
        if head == "blob":
            try:
                return self._send(200, bytes(self.server.take(rest)))
            except KeyError:
                return self._send(404, b"no such blob", "text/plain")
        parts = path.split("/")
        for i in range(len(parts) - 1, 0, -1):  # the longest mounted prefix wins
            base = self.server.mounts.get("/".join(parts[:i]))
            if base is not None:
                return self._file(base, "/".join(parts[i:]) or "index.html")
        self._send(404, b"not found", "text/plain")

    def do_POST(self):
        head, _, bid = self.path.lstrip("/").partition("/")
        if head != "upload" or not bid or "/" in bid:
            return self._send(404, b"not found", "text/plain")
        n = int(self.headers.get("Content-Length", "0"))
        body = bytearray(n)
        view, got = memoryview(body), 0
        while got < n:
            k = self.rfile.readinto(view[got:])
            if not k:
                return self._send(400, b"short body", "text/plain")
            got += k
        with self.server.lock:
            self.server.blobs[bid] = body
        self._send(200, b"ok", "text/plain")
