"""WebGPU backend: TVM's webgpu target, run by tvmjs in headless Chromium.

Build: relax.build for webgpu (host: wasm32), export ``model.wasm`` through the prebuilt
wasm runtime (sdparity.webgpu_toolchain), weights as a tvmjs tensor cache in exact float32
(``encode_format="raw"``), the generated WGSL saved as ``kernels.wgsl``.

Run: one Chromium (Playwright, /usr/bin/chromium, --enable-unsafe-webgpu) and one page for
the whole session. The page (web/harness/) is served with a small threaded HTTP server on
127.0.0.1 (a secure context, so navigator.gpu exists), which also serves the artifact
folders and carries tensors both ways as raw bytes. Calling convention as native: the
Relax function F is called as F(*inputs, *params[F]).

Any console error, page error, uncaught promise rejection, uncaptured WebGPU error or
device loss fails the run with an SdparityError.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from .. import webgpu_toolchain as toolchain
from ..errors import SdparityError
from ..registry import StageIR
from .base import Backend, Runner

WASM = "model.wasm"
WGSL = "kernels.wgsl"
PARAMS_DIR = "params"
META = "sdparity.json"

ROOT = Path(__file__).resolve().parents[2]
WEB_DIR = ROOT / "web"
HARNESS_DIR = WEB_DIR / "harness"
TVMJS_JS = WEB_DIR / "node_modules" / "@mlc-ai" / "web-runtime" / "lib" / "index.js"
DTYPES = ("float32", "int32", "uint32")

CHROMIUM_FLAGS = [
    "--enable-unsafe-webgpu",
    # closed network: no background requests for Chromium to retry
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else "(no message)"


def _find_module(mod, kind: str):
    """The imported module of a kind (the webgpu device module hangs below the host module)."""
    if mod.kind == kind:
        return mod
    for sub in mod.imports:
        found = _find_module(sub, kind)
        if found is not None:
            return found
    return None


class WebGPUBackend(Backend):
    name = "webgpu"
    device_class = "webgpu"

    def __init__(self, chromium: str | None = None, weights: str = "raw", headless: bool = True,
                 max_loaded: int = 3, run_timeout_s: float = 1800.0):
        if weights not in ("raw", "bf16"):
            raise ValueError("weights must be 'raw' (exact float32) or 'bf16'")
        self.chromium = chromium or os.environ.get("SDPARITY_CHROMIUM", "/usr/bin/chromium")
        self.weights = weights
        self.headless = headless
        self.max_loaded = max_loaded
        self.run_timeout_s = run_timeout_s
        self._adapter: dict | None = None

    # -- availability -----------------------------------------------------------------
    def unavailable_reason(self) -> str | None:
        if toolchain.emcc() is None:
            return "emcc (emscripten) is not installed: run scripts/setup_webgpu.sh"
        if not (os.path.isfile(self.chromium) and os.access(self.chromium, os.X_OK)):
            return f"no Chromium at {self.chromium}: install chromium or set SDPARITY_CHROMIUM"
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            return "the playwright python package is not installed"
        if not TVMJS_JS.is_file():
            return f"tvmjs is not installed ({TVMJS_JS.relative_to(ROOT)} missing): run npm ci in web/"
        missing = toolchain.missing_sources()
        if missing:
            return f"the TVM wheel lacks the web runtime sources ({missing[0]})"
        return None

    def target(self):
        import tvm

        return tvm.target.Target("webgpu", host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"})

    def target_key(self) -> dict:
        return {"target": str(self.target()), "runtime": _recipe_digest(),
                "link": list(toolchain.LINK_FLAGS), "weights": self.weights}

    # -- build ------------------------------------------------------------------------
    def build(self, ir: StageIR, out_dir: Path, log=print) -> dict:
        from tvm import relax
        from tvm.contrib import tvmjs

        from ..schedule import schedule_for

        out_dir = Path(out_dir)
        toolchain.ensure_toolchain(log)
        target = self.target()
        t0 = time.perf_counter()
        try:
            ex = relax.build(schedule_for(ir.mod, target), target=target)
        except Exception as e:
            raise SdparityError(f"relax.build for webgpu failed: {_first_line(str(e).splitlines()[-1])}") from e
        t1 = time.perf_counter()
        device_mod = _find_module(ex.mod, "webgpu")
        (out_dir / WGSL).write_text(device_mod.inspect_source() if device_mod is not None else "")
        ex.export_library(str(out_dir / WASM), fcompile=toolchain.link_wasm)
        t2 = time.perf_counter()

        names = {fn: [f"{fn}/{i:05d}" for i in range(len(ps))] for fn, ps in ir.params.items()}
        arrays = {n: np.asarray(a) for fn, ps in ir.params.items() for n, a in zip(names[fn], ps)}
        for n, a in arrays.items():
            if a.dtype.name not in DTYPES:
                raise SdparityError(f"weight {n} has dtype {a.dtype}; the webgpu backend takes {DTYPES}")
        if arrays:
            fmt = "raw" if self.weights == "raw" else {
                n: "f32-to-bf16" if a.dtype == np.float32 else "raw" for n, a in arrays.items()}
            tvmjs.dump_tensor_cache(arrays, str(out_dir / PARAMS_DIR), encode_format=fmt, show_progress=False)
        (out_dir / META).write_text(json.dumps({
            "wasm": WASM, "params_dir": PARAMS_DIR, "num_params": len(arrays), "params": names,
            "weights": self.weights}, indent=1))
        return {"relax_build_s": round(t1 - t0, 3), "export_s": round(t2 - t1, 3)}

    # -- run --------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self):
        runner = WebGPURunner(self)
        try:
            runner.start()
            yield runner
        finally:
            runner.close()

    def describe(self) -> dict:
        d = {"name": self.name, "device_class": self.device_class, "target": str(self.target()),
             "chromium": self.chromium, "weights": self.weights}
        if self._adapter is None and self.unavailable_reason() is None:
            with self.session():
                pass  # starting a session probes the adapter
        if self._adapter is not None:
            d["adapter"] = self._adapter
        return d


@functools.lru_cache(maxsize=None)
def _recipe_digest() -> str:
    return toolchain.recipe_digest()


# -- the harness server -----------------------------------------------------------------
class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.artifacts: dict[str, Path] = {}  # key -> artifact folder
        self.blobs: dict[str, bytes | bytearray] = {}  # tensors in flight, both directions
        self.lock = threading.Lock()

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
    server: _Server
    TYPES = {".html": "text/html", ".js": "text/javascript", ".json": "application/json",
             ".wasm": "application/wasm", ".wgsl": "text/plain"}

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
        self.send_header("Content-Type", self.TYPES.get(path.suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(path.stat().st_size))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        with open(path, "rb") as f:
            shutil.copyfileobj(f, self.wfile, 1 << 20)

    def do_GET(self):
        parts = self.path.split("?")[0].lstrip("/").split("/", 2)
        if parts[0] == "harness" and len(parts) >= 2:
            return self._file(HARNESS_DIR, "/".join(parts[1:]))
        if parts[0] == "tvmjs" and parts[1:] == ["index.js"]:
            return self._file(TVMJS_JS.parent, "index.js")
        if parts[0] == "art" and len(parts) == 3 and parts[1] in self.server.artifacts:
            return self._file(self.server.artifacts[parts[1]], parts[2])
        if parts[0] == "blob" and len(parts) == 2:
            try:
                return self._send(200, bytes(self.server.take(parts[1])))
            except KeyError:
                pass
        self._send(404, b"not found", "text/plain")

    def do_POST(self):
        parts = self.path.lstrip("/").split("/")
        if parts[0] != "upload" or len(parts) != 2:
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
            self.server.blobs[parts[1]] = body
        self._send(200, b"ok", "text/plain")


# -- the runner -------------------------------------------------------------------------
class WebGPURunner(Runner):
    def __init__(self, backend: WebGPUBackend):
        self.backend = backend
        self.errors: list[str] = []
        self.log: list[str] = []  # the page's console, for diagnostics
        self.loaded: OrderedDict[str, Path] = OrderedDict()
        self.timings: dict[str, float] = {}
        self.server = self._pw = self.browser = self.page = None

    # lifecycle
    def start(self) -> None:
        reason = self.backend.unavailable_reason()
        if reason:
            raise SdparityError(f"webgpu backend unavailable: {reason}")
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright

        t0 = time.perf_counter()
        self.server = _Server()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self._pw = sync_playwright().start()
        args = CHROMIUM_FLAGS + (["--no-sandbox"] if os.geteuid() == 0 else [])
        try:
            self.browser = self._pw.chromium.launch(executable_path=self.backend.chromium,
                                                    headless=self.backend.headless, args=args, timeout=60_000)
        except PlaywrightError as e:
            raise SdparityError(f"could not launch Chromium at {self.backend.chromium}: {_first_line(e.message)}") from None
        self.browser.on("disconnected", lambda _: self.errors.append("the browser disconnected"))
        self.page = self.browser.new_page()
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda err: self.errors.append(f"page error: {_first_line(str(err))}"))
        self.page.on("crash", lambda _: self.errors.append("the page crashed"))
        port = self.server.server_address[1]
        try:
            self.page.goto(f"http://127.0.0.1:{port}/harness/index.html", wait_until="load", timeout=30_000)
            self.page.wait_for_function("window.sdparityReady === true", timeout=30_000)
        except PlaywrightError as e:
            raise SdparityError(f"the WebGPU harness page did not load: {_first_line(e.message)}") from None
        self.timings["browser_start_s"] = round(time.perf_counter() - t0, 3)
        self.backend._adapter = self._call("() => window.sdparity.describe()", None, "WebGPU adapter probe")
        self.timings["adapter_probe_s"] = round(time.perf_counter() - t0 - self.timings["browser_start_s"], 3)
        self._check()

    def close(self) -> None:
        for closer in (lambda: self.browser.close(), lambda: self._pw.stop(), lambda: self.server.shutdown(),
                       lambda: self.server.server_close()):
            with contextlib.suppress(Exception):
                closer()

    # events and errors
    def _on_console(self, msg) -> None:
        line = f"console.{msg.type}: {msg.text}"
        self.log.append(line)
        del self.log[:-200]
        if msg.type == "error":
            self.errors.append(_first_line(line))

    def _check(self) -> None:
        if self.page is not None and not self.errors:
            with contextlib.suppress(Exception):
                self.page.evaluate("0")  # deliver events the page emitted before now
        if self.errors:
            first, n = self.errors[0], len(self.errors)
            self.errors.clear()
            more = f" (+{n - 1} more)" if n > 1 else ""
            raise SdparityError(f"webgpu: the browser reported an error: {first}{more}")

    def _call(self, js: str, arg, what: str):
        from playwright.sync_api import Error as PlaywrightError

        try:
            return self.page.evaluate(js, arg)
        except PlaywrightError as e:
            self.errors.clear()  # the exception is the report; its console echo is not news
            raise SdparityError(f"webgpu: {what} failed in the browser: {_first_line(e.message)}") from None

    # artifacts
    def _key(self, artifact: Path) -> str:
        st = (artifact / WASM).stat()
        return hashlib.sha1(f"{artifact.resolve()}:{st.st_mtime_ns}:{st.st_size}".encode()).hexdigest()[:16]

    def _ensure_loaded(self, artifact: Path) -> str:
        artifact = Path(artifact)
        if not (artifact / META).is_file():
            raise SdparityError(f"{artifact} is not a webgpu build (no {META})")
        key = self._key(artifact)
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return key
        while len(self.loaded) >= self.backend.max_loaded:
            old, _ = self.loaded.popitem(last=False)
            self._call("(k) => window.sdparity.unload(k)", old, "unloading a model")
            self.server.artifacts.pop(old, None)
        self.server.artifacts[key] = artifact
        ms = self._call("([k, base]) => window.sdparity.load(k, base)", [key, f"/art/{key}/"],
                        f"loading {artifact.name}")
        self.loaded[key] = artifact
        self.timings["last_load_s"] = round(ms / 1000, 3)
        self._check()
        return key

    def run(self, artifact: Path, function: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self._check()
        key = self._ensure_loaded(artifact)
        specs = []
        for i, a in enumerate(inputs):
            a = np.asarray(a)
            if a.dtype.name not in DTYPES:
                raise SdparityError(f"input {i} of {function} has dtype {a.dtype}; webgpu takes {DTYPES}")
            specs.append({"id": self.server.put(a.tobytes(order="C")), "shape": list(a.shape),
                          "dtype": a.dtype.name})
        timeout_ms = int(self.backend.run_timeout_s * 1000)
        try:
            res = self._call("([k, f, s, t]) => window.sdparity.run(k, f, s, t)",
                             [key, function, specs, timeout_ms], f"running {function}")
        finally:
            with self.server.lock:
                for s in specs:
                    self.server.blobs.pop(s["id"], None)
        self.timings["last_run_s"] = round(res["ms"] / 1000, 4)
        outs = []
        for o in res["outputs"]:
            data = self.server.take(o["id"])
            outs.append(np.frombuffer(data, dtype=o["dtype"]).reshape([int(d) for d in o["shape"]]))
        self._check()
        return outs

    def describe(self) -> dict:
        return {**self.backend.describe(), "timings": dict(self.timings)}
