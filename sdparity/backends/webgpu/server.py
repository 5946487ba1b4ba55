"""The one local HTTP server: static folders mounted under URL prefixes, plus a blob store
for moving tensors between Python and a page (GET /blob/<id>, POST /upload/<id>).
Binds 127.0.0.1 only (a secure context for WebGPU, never reachable from outside).

Another page in the same browser, or a DNS-rebinding host name that resolves to 127.0.0.1, can
still reach the port, so (docs/reliability.md, "Hostile reports and the local server"):

* only requests whose ``Host`` is this server (``127.0.0.1:PORT``, ``localhost:PORT``,
  ``[::1]:PORT``) are served; anything else is 421;
* a request carrying an ``Origin`` that is not this server is 403 (uploads included);
* an upload must declare its ``Content-Length``, at most ``max_upload`` bytes (413 before
  reading a byte), and all uploads held at once stay within ``max_held``;
* only plain files of the types the app and harness load are served (no dotfiles);
* a browser dropping a keep-alive connection ends that connection quietly (no traceback).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css",
         ".json": "application/json", ".wasm": "application/wasm", ".wgsl": "text/plain",
         ".png": "image/png", ".txt": "text/plain",
         ".bin": "application/octet-stream"}  # tvmjs tensor-cache shards (params_shard_*.bin)
#: one upload (a tensor the page sends back): the largest real one is a full-size VAE image,
#: 512x512x3 float32 = 3 MiB; 64 MiB leaves room for a 2048x2048 image
MAX_UPLOAD = 64 * 2**20
#: all uploads held at once, until Python takes them (one run's outputs)
MAX_HELD = 256 * 2**20
BLOB_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
#: the peer went away (a browser dropping a keep-alive connection, a closed tab): not an error
DISCONNECTS = (ConnectionError, TimeoutError)


class LocalServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, mounts: dict[str, Path] | None = None, port: int = 0, max_upload: int = MAX_UPLOAD,
                 max_held: int = MAX_HELD):
        super().__init__(("127.0.0.1", port), _Handler)
        # URL prefix (one or more path segments, e.g. "app" or "art/<key>") -> folder
        self.mounts: dict[str, Path] = dict(mounts or {})
        self.blobs: dict[str, bytes | bytearray] = {}
        self.lock = threading.Lock()
        self.max_upload, self.max_held = max_upload, max_held
        self.held = 0  # bytes of uploads in self.blobs (and being read), under self.lock
        self.uploaded: set[str] = set()
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def hosts(self) -> set[str]:
        return {f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"[::1]:{self.port}"}

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
            data = self.blobs.pop(bid)
            if bid in self.uploaded:
                self.uploaded.discard(bid)
                self.held -= len(data)
            return data

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], DISCONNECTS):
            return  # the peer went away: nothing to report
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LocalServer
    # TCP_NODELAY: a response goes out as headers, then body, in two writes; with Nagle the body
    # waited for the browser's delayed ACK of the headers (~40 ms). A run's tensors are one GET
    # and one POST each: 56 -> 17 ms a call of a small kernel (the DPM stage's 192 cases).
    disable_nagle_algorithm = True
    timeout = 300  # an idle keep-alive connection is closed after this long

    def log_message(self, *args):  # quiet
        pass

    def handle(self):
        try:
            super().handle()
        except DISCONNECTS:
            self.close_connection = True  # the browser dropped the connection: end it quietly

    def _send(self, code: int, body: bytes = b"", ctype: str = "application/octet-stream", close: bool = False):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        if close:  # e.g. a refused upload whose body was never read
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _refused(self, close: bool = False) -> bool:
        """421 unless Host is this server (DNS rebinding); 403 for a foreign Origin."""
        host = (self.headers.get("Host") or "").strip().lower()
        if host not in self.server.hosts():
            self._send(421, b"this server answers only to " + " / ".join(sorted(self.server.hosts())).encode(),
                       "text/plain", close=close)
            return True
        origin = self.headers.get("Origin")
        if origin is not None and origin.strip().lower() not in {f"http://{h}" for h in self.server.hosts()}:
            self._send(403, b"cross-origin requests are refused", "text/plain", close=close)
            return True
        return False

    def _file(self, base: Path, rel: str):
        path = (base / rel).resolve()
        if (not path.is_relative_to(base.resolve()) or not path.is_file() or path.suffix not in TYPES
                or any(p.startswith(".") for p in Path(rel).parts)):
            return self._send(404, b"not found", "text/plain")
        try:
            f = open(path, "rb")
        except OSError:
            return self._send(404, b"not found", "text/plain")
        with f:
            self.send_response(200)
            self.send_header("Content-Type", TYPES[path.suffix])
            self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            shutil.copyfileobj(f, self.wfile, 1 << 20)

    def do_GET(self):
        if self._refused():
            return
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
        if self._refused(close=True):
            return
        head, _, bid = self.path.lstrip("/").partition("/")
        if head != "upload" or not BLOB_ID.fullmatch(bid):
            return self._send(404, b"not found", "text/plain", close=True)
        try:
            n = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self._send(411, b"an upload needs a Content-Length", "text/plain", close=True)
        srv = self.server
        if n < 0 or n > srv.max_upload:
            return self._send(413, f"an upload is at most {srv.max_upload} bytes".encode(), "text/plain", close=True)
        with srv.lock:  # reserve the room before reading a byte
            if srv.held + n > srv.max_held or bid in srv.blobs:
                full = srv.held + n > srv.max_held
                reserved = False
            else:
                srv.held += n
                reserved = True
        if not reserved:
            return self._send(507 if full else 409, b"upload refused: too much held, or the id is taken",
                              "text/plain", close=True)
        body = bytearray(n)
        view, got = memoryview(body), 0
        try:
            while got < n:
                k = self.rfile.readinto(view[got:])
                if not k:
                    break
                got += k
        finally:
            view.release()
            if got < n:
                with srv.lock:
                    srv.held -= n
        if got < n:
            return self._send(400, b"short body", "text/plain", close=True)
        with srv.lock:
            srv.blobs[bid] = body
            srv.uploaded.add(bid)
        self._send(200, b"ok", "text/plain")

