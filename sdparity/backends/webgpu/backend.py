"""WebGPU backend: TVM's webgpu target, run by tvmjs in headless Chromium.

Build: relax.build for webgpu (host: wasm32), export ``model.wasm`` through the prebuilt
wasm runtime (sdparity.backends.webgpu.toolchain), weights as a tvmjs tensor cache in exact float32
(``encode_format="raw"``), the generated WGSL saved as ``kernels.wgsl``.

Run: one Chromium (Playwright, /usr/bin/chromium, --enable-unsafe-webgpu) and one page for
the whole session, kept for the process's next session when it ends cleanly (``session``).
The page (web/harness/) is served with a small threaded HTTP server on 127.0.0.1 (a secure
context, so navigator.gpu exists), which also serves the artifact folders and carries tensors
both ways as raw bytes. Calling convention as native: the Relax function F is called as
F(*inputs, *params[F]).

Any console error, page error, uncaught promise rejection, uncaptured WebGPU error or
device loss fails the run with an SdparityError.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import io
import json
import os
import re
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from sdparity.backends.webgpu import toolchain as toolchain
from sdparity.errors import SdparityError
from sdparity.files import cache_root
from sdparity.ir import StageIR
from sdparity.backends.webgpu.server import LocalServer
from sdparity.backends.base import Backend, Runner, register

WASM = "model.wasm"
WGSL = "kernels.wgsl"
PARAMS_DIR = "params"
META = "sdparity.json"

ROOT = Path(__file__).resolve().parents[3]
WEB_DIR = ROOT / "web"
HARNESS_DIR = WEB_DIR / "harness"
TVMJS_JS = WEB_DIR / "node_modules" / "@mlc-ai" / "web-runtime" / "lib" / "index.js"
DTYPES = ("float32", "int32", "uint32")

CHROMIUM_FLAGS = [
    "--enable-unsafe-webgpu",
    # closed network: no background requests for Chromium to retry
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
]


def default_chromium() -> str:
    return os.environ.get("SDPARITY_CHROMIUM", "/usr/bin/chromium")


def chromium_args(flags: list[str] | None = None, webgpu: bool = True) -> list[str]:
    args = list(CHROMIUM_FLAGS if flags is None else flags)
    if not webgpu:
        args = [a for a in args if a != "--enable-unsafe-webgpu"]
    return args + (["--no-sandbox"] if os.geteuid() == 0 else [])  # Chromium refuses root otherwise


def launch_chromium(playwright, chromium: str | None = None, webgpu: bool = True, headless: bool = True,
                    flags: list[str] | None = None):
    """Launch the system Chromium as the backend does (never Playwright's own browser).

    ``playwright`` is a started sync Playwright; ``webgpu=False`` drops --enable-unsafe-webgpu
    (headless Chromium then has no adapter: for tests of that message).
    """
    from playwright.sync_api import Error as PlaywrightError

    path = chromium or default_chromium()
    try:
        return playwright.chromium.launch(executable_path=path, headless=headless,
                                          args=chromium_args(flags, webgpu), timeout=60_000)
    except PlaywrightError as e:
        raise SdparityError(f"could not launch Chromium at {path}: {_first_line(e.message)}") from None


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[0] if lines else "(no message)"


def _build_error_line(e: Exception) -> str:
    """The line of a TVM build error that says why: the last, unless the first is a message
    followed by the failing function's text (the WebGPU target's dtype checks), whose last line
    is a line of TIR."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()] or [type(e).__name__]
    if " The function is " in lines[0]:
        return lines[0].split(" The function is ")[0]
    return lines[-1]


def _find_module(mod, kind: str):
    """The imported module of a kind (the webgpu device module hangs below the host module)."""
    if mod.kind == kind:
        return mod
    for sub in mod.imports:
        found = _find_module(sub, kind)
        if found is not None:
            return found
    return None


# What TVM's WGSL printer can emit and WGSL rejects: storage of types WGSL lacks (it has
# 32-bit scalars, and f16 with shader-f16), infinity/NaN literals, INT32_MIN as a literal.
_BAD_WGSL = [
    (re.compile(r"var<storage[^>]*>\s*\w+\s*:\s*array<(i8|u8|i16|u16|bool|i64|u64|f64)>"), "stores {}"),
    (re.compile(r"\b(inff|nanf|inf|nan)\b"), "uses the literal {}"),
    (re.compile(r"(2147483648i)"), "uses the literal {}"),
]


def _check_wgsl(wgsl: str) -> None:
    """Fail at build time, naming the problem, where the browser would fail to compile."""
    found = next(((what, m) for rx, what in _BAD_WGSL for m in [rx.search(wgsl)] if m), None)
    if found:  # the build folder is discarded on failure: keep the WGSL where it can be read
        keep = cache_root() / "failed-wgsl"
        keep.mkdir(parents=True, exist_ok=True)
        path = keep / f"{hashlib.sha1(wgsl.encode()).hexdigest()[:16]}.wgsl"
        path.write_text(wgsl)
        what, m = found
        line = wgsl.count("\n", 0, m.start()) + 1
        raise SdparityError(f"the generated WGSL {what.format(m.group(1))} (line {line}), which WGSL "
                            f"cannot express; the WGSL is in {path}")


@register("webgpu")
class WebGPUBackend(Backend):
    name = "webgpu"
    device_class = "webgpu"
    float64 = False  # WGSL has no f64
    float16 = False  # needs the adapter's shader-f16 and an f16 web runtime: neither is built here
    # maxStorageBufferBindingSize of the smallest adapter the suite runs on (SwiftShader in
    # Chromium: 1 GiB; Dawn on the lent NVIDIA GPUs: 2 GiB - 4), so one wasm runs on both
    max_buffer = 1 << 30

    def __init__(self, name: str | None = None, chromium: str | None = None, weights: str = "raw", headless: bool = True,
                 max_loaded: int = 3, run_timeout_s: float = 1800.0, flags: list[str] | None = None):
        if weights not in ("raw", "bf16"):
            raise ValueError("weights must be 'raw' (exact float32) or 'bf16'")
        self.chromium = chromium or default_chromium()
        self.weights = weights
        self.headless = headless
        self.max_loaded = max_loaded
        self.run_timeout_s = run_timeout_s
        self.flags = list(CHROMIUM_FLAGS if flags is None else flags)
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
        # the sources of this package, compile/ and the TVM bytes are in env_key (Backend)
        return {"target": str(self.target()), "runtime": _recipe_digest(),
                "link": list(toolchain.LINK_FLAGS), "weights": self.weights}

    # -- build ------------------------------------------------------------------------
    def scheduled(self, mod):
        """``mod`` legalized and scheduled as this backend builds it (its capabilities passed),
        not yet compiled: the build's kernels (scripts/webgpu_buffer_sizes.py reads them too)."""
        from sdparity.backends.webgpu.wgsl import legalize_for_webgpu
        from sdparity.compile.schedule import schedule_for

        return schedule_for(legalize_for_webgpu(mod), self.target(), float64=self.float64, max_buffer=self.max_buffer)

    def build(self, ir: StageIR, out_dir: Path, log=print) -> dict:
        from tvm.contrib import tvmjs

        from sdparity.compile.schedule import build_module

        out_dir = Path(out_dir)
        for fn, ps in ir.params.items():
            for i, a in enumerate(ps):
                if np.asarray(a).dtype.name not in DTYPES:
                    raise SdparityError(f"weight {i} of {fn} has dtype {np.asarray(a).dtype}; "
                                        f"the webgpu backend takes {DTYPES}")
        toolchain.ensure_toolchain(log)
        target = self.target()
        t0 = time.perf_counter()
        try:
            ex = build_module(self.scheduled(ir.mod), target)
        except Exception as e:
            raise SdparityError(f"relax.build for webgpu failed: {_build_error_line(e)}") from e
        t1 = time.perf_counter()
        device_mod = _find_module(ex.mod, "webgpu")
        wgsl = device_mod.inspect_source() if device_mod is not None else ""
        (out_dir / WGSL).write_text(wgsl)
        _check_wgsl(wgsl)
        ex.export_library(str(out_dir / WASM), fcompile=toolchain.link_wasm)
        t2 = time.perf_counter()

        names = {fn: [f"{fn}/{i:05d}" for i in range(len(ps))] for fn, ps in ir.params.items()}
        arrays = {n: np.asarray(a) for fn, ps in ir.params.items() for n, a in zip(names[fn], ps)}
        if arrays:
            fmt = "raw" if self.weights == "raw" else {
                n: "f32-to-bf16" if a.dtype == np.float32 else "raw" for n, a in arrays.items()}
            with contextlib.redirect_stdout(io.StringIO()):  # it prints even without show_progress
                tvmjs.dump_tensor_cache(arrays, str(out_dir / PARAMS_DIR), encode_format=fmt,
                                        show_progress=False)
        (out_dir / META).write_text(json.dumps({
            "wasm": WASM, "params_dir": PARAMS_DIR, "num_params": len(arrays), "params": names,
            "weights": self.weights}, indent=1))
        return {"relax_build_s": round(t1 - t0, 3), "export_s": round(t2 - t1, 3)}

    # -- run --------------------------------------------------------------------------
    @contextlib.contextmanager
    def session(self):
        """A browser page for a run of builds. A session that ends cleanly leaves its browser
        open, its models unloaded, for the process's next session with the same settings
        (Chromium, flags, thread): that one starts without a browser start (~1.2 s) and reuses
        the pipelines earlier loads compiled, which the harness shares by program (a perturbed
        lowering or a known issue's neutralized rebuild of a stage loaded before compiles only
        the kernels that changed: the tiny UNet's 159 otherwise take ~30 s on SwiftShader). A
        session that fails closes its browser. One idle browser per settings, closed at exit."""
        key = (self.chromium, self.headless, tuple(self.flags), threading.get_ident())
        runner = _IDLE.pop(key, None)
        if runner is not None and not runner.reusable():
            runner.close()
            runner = None
        try:
            if runner is None:
                runner = WebGPURunner(self)
                runner.start()
            else:
                runner.resume(self)
            yield runner
        except BaseException:
            runner.close()
            raise
        if runner.reusable(unload=True):
            _keep_idle(key, runner)
        else:
            runner.close()

    def describe_session(self, runner: WebGPURunner) -> dict:
        return runner.describe()

    def describe(self) -> dict:
        d = {"name": self.name, "device_class": self.device_class, "target": str(self.target()),
             "chromium": self.chromium, "weights": self.weights, "tvmjs": _tvmjs_version(),
             "wasm_runtime": f"{toolchain.toolchain_dir().name} ({' '.join(toolchain.COMPILE_FLAGS)}), "
                             f"link {' '.join(toolchain.LINK_FLAGS)}"}
        if self._adapter is None and self.unavailable_reason() is None:
            with self.session():
                pass  # starting a session probes the adapter
        if self._adapter is not None:
            d["adapter"] = self._adapter
        return d


@functools.cache
def _recipe_digest() -> str:
    return toolchain.recipe_digest()


def _tvmjs_version() -> str | None:
    pkg = TVMJS_JS.parents[1] / "package.json"
    return json.loads(pkg.read_text()).get("version") if pkg.is_file() else None


_IDLE: dict[tuple, "WebGPURunner"] = {}  # settings -> a started browser no session holds


def _keep_idle(key: tuple, runner: "WebGPURunner") -> None:
    old = _IDLE.pop(key, None)
    _IDLE[key] = runner
    if old is not None:
        old.close()


@atexit.register
def _close_idle() -> None:
    while _IDLE:
        _IDLE.popitem()[1].close()


_PW = {"instance": None, "users": 0}  # one Playwright per thread-of-use; sessions may nest


def _playwright_acquire():
    from playwright.sync_api import sync_playwright

    if _PW["instance"] is None:
        _PW["instance"] = sync_playwright().start()
    _PW["users"] += 1
    return _PW["instance"]


def _playwright_release():
    _PW["users"] -= 1
    if _PW["users"] == 0 and _PW["instance"] is not None:
        inst, _PW["instance"] = _PW["instance"], None
        inst.stop()


@contextlib.contextmanager
def shared_playwright():
    """The process's sync Playwright. A second ``sync_playwright()`` in a thread that already
    has one fails ("Sync API inside the asyncio loop"): code that may run beside a backend
    session (tests) should take this one."""
    pw = _playwright_acquire()
    try:
        yield pw
    finally:
        _playwright_release()


class WebGPURunner(Runner):
    def __init__(self, backend: WebGPUBackend):
        self.backend = backend
        self.errors: list[str] = []
        self.log: list[str] = []  # the page's console, for diagnostics
        self.loaded: OrderedDict[str, Path] = OrderedDict()
        self.timings: dict[str, float] = {}
        self.server = self._pw = self.browser = self.page = self.adapter = None
        self.sessions = 1  # sessions this browser served (resume)

    # lifecycle
    def start(self) -> None:
        reason = self.backend.unavailable_reason()
        if reason:
            raise SdparityError(f"webgpu backend unavailable: {reason}")
        from playwright.sync_api import Error as PlaywrightError

        t0 = time.perf_counter()
        self.server = LocalServer({"harness": HARNESS_DIR, "common": WEB_DIR / "common",
                                   "tvmjs": TVMJS_JS.parent}).start()
        self._pw = _playwright_acquire()
        self.browser = launch_chromium(self._pw, self.backend.chromium, headless=self.backend.headless,
                                       flags=self.backend.flags)
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
        self.adapter = self._call("() => window.sdparity.describe()", None, "WebGPU adapter probe")
        self.backend._adapter = self.adapter
        self.timings["adapter_probe_s"] = round(time.perf_counter() - t0 - self.timings["browser_start_s"], 3)
        self._check()

    def reusable(self, unload: bool = False) -> bool:
        """Whether the browser is up with nothing reported and the harness ready; ``unload``:
        first unload every model (their weights go; the compiled pipelines stay)."""
        try:
            if self.page is None or self.page.is_closed() or not self.browser.is_connected():
                return False
            if unload:
                self._evict(0)
            ready = self.page.evaluate("window.sdparityReady === true")  # also delivers pending events
            return bool(ready) and not self.errors
        except Exception:
            return False

    def resume(self, backend: WebGPUBackend) -> None:
        """Start a session on this idle browser, for ``backend`` (of the same settings)."""
        self.backend = backend
        backend._adapter = self.adapter
        self.log.clear()
        self.timings = {k: self.timings[k] for k in ("browser_start_s", "adapter_probe_s") if k in self.timings}
        self.sessions += 1
        self.timings["browser_sessions"] = self.sessions

    def close(self) -> None:
        for closer in (lambda: self.browser.close(), lambda: self.server.shutdown(),
                       lambda: self.server.server_close()):
            with contextlib.suppress(Exception):
                closer()
        if self._pw is not None:
            self._pw = None
            _playwright_release()

    # events and errors
    def _on_console(self, msg) -> None:
        line = f"console.{msg.type}: {msg.text}"
        self.log.append(line)
        del self.log[:-200]
        if msg.type == "error":
            self.errors.append(_first_line(line))

    def _check(self, flush: bool = True) -> None:
        """Raise on anything the page reported; flush: first collect what it sent until now."""
        if flush and self.page is not None and not self.errors:
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
            msg = _first_line(e.message).removeprefix("Page.evaluate: ")
            with contextlib.suppress(Exception):
                self.page.evaluate("0")  # deliver the page's own reports of the failure
            # the browser's first report is often the cause (e.g. the WGSL compile error)
            cause = next((x.replace("console.error: [sdparity] ", "") for x in self.errors if msg not in x), None)
            self.errors.clear()
            raise SdparityError(f"webgpu: {what} failed in the browser: {msg}"
                                + (f"; first browser error: {cause}" if cause else "")) from None

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
            self._evict(self.backend.max_loaded)
            return key
        self._evict(max(self.backend.max_loaded - 1, 0))
        self.server.mounts[f"art/{key}"] = artifact
        try:
            loaded = self._call("([k, base]) => window.sdparity.load(k, base)", [key, f"/art/{key}/"],
                                f"loading {artifact.name}")
        except SdparityError as e:
            self.server.mounts.pop(f"art/{key}", None)
            raise SdparityError(f"{e} (WGSL: {artifact / WGSL})") from None
        self.loaded[key] = artifact
        for part, v in loaded["ms"].items():
            self.timings[f"last_load_{part}_s"] = round(v / 1000, 3)
        for what, n in (loaded["pipelines"] or {}).items():  # compiled / reused from an earlier load
            self.timings[f"last_load_pipelines_{what}"] = n
        self._check()
        return key

    def _evict(self, keep: int) -> None:
        """Unload the least recently used models until at most keep stay loaded."""
        while len(self.loaded) > keep:
            old, _ = self.loaded.popitem(last=False)
            self._call("(k) => window.sdparity.unload(k)", old, "unloading a model")
            self.server.mounts.pop(f"art/{old}", None)

    def run(self, artifact: Path, function: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
        self._check(flush=False)  # the previous call flushed
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
