"""The WebGPU backend on small hand-written Relax modules, against numpy and the LLVM backend.

Real parts only: a real emcc link, real Chromium WebGPU (SwiftShader here) via Playwright.
One browser for the whole module (session fixture). These tests fail, not skip, when the
backend is unavailable: deselect them with ``-m "not webgpu"`` where WebGPU is not set up.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from tvm.script import relax as R

from sdparity.backends.native import NativeBackend
from sdparity.backends.webgpu.backend import WebGPUBackend
from sdparity.errors import SdparityError
from sdparity.ir import StageIR

pytestmark = pytest.mark.webgpu

M, K, N = 33, 64, 40  # odd sizes: partial tiles in the matmul schedule


@tvm.script.ir_module
class Small:
    @R.function
    def elementwise(x: R.Tensor((2, 3, 50), "float32")):
        with R.dataflow():
            y = R.add(R.multiply(R.tanh(x), R.sigmoid(x)), R.multiply(x, x))
            R.output(y)
        return y

    @R.function
    def matmul(x: R.Tensor((M, K), "float32"), w: R.Tensor((K, N), "float32"), b: R.Tensor((N,), "float32")):
        with R.dataflow():
            y = R.add(R.matmul(x, w), b)
            R.output(y)
        return y

    @R.function
    def mixed(x: R.Tensor((7,), "float32"), t: R.Tensor((), "int32"), g: R.Tensor((), "float32")):
        with R.dataflow():
            a = R.add(R.multiply(x, g), R.astype(t, "float32"))
            b = R.astype(R.clip(R.floor(x), 0, 255), "uint32")
            c = R.add(t, R.const(1, "int32"))
            R.output(a, b, c)
        return ((a, b), c)


    @R.function
    def masked(x: R.Tensor((4, 10), "float32")):
        # torch's export of a masked softmax: -inf mask values, any(row) as int8 cast + max.
        # WGSL can express neither as such (sdparity.compile.schedule.legalize_for_webgpu).
        with R.dataflow():
            m = R.where(R.greater(x, R.const(0.0, "float32")), x, R.const(float("-inf"), "float32"))
            keep = R.logical_not(R.equal(m, R.const(float("-inf"), "float32")))
            row_any = R.astype(R.max(R.astype(keep, "int8"), axis=[-1], keepdims=True), "bool")
            y = R.where(row_any, R.nn.softmax(m, axis=-1), R.const(0.0, "float32"))
            R.output(y)
        return y


def numpy_reference(function: str, inputs, params):
    if function == "elementwise":
        (x,) = (a.astype(np.float64) for a in inputs)
        return [np.tanh(x) * (1 / (1 + np.exp(-x))) + x * x]
    if function == "matmul":
        x, w, b = (a.astype(np.float64) for a in [*inputs, *params])
        return [x @ w + b]
    if function == "mixed":
        x, t, g = inputs
        return [x.astype(np.float64) * float(g) + int(t),
                np.clip(np.floor(x), 0, 255).astype(np.uint32), np.array(int(t) + 1, np.int32)]
    if function == "masked":
        x = inputs[0].astype(np.float64)
        e = np.where(x > 0, np.exp(x - x.max(-1, keepdims=True)), 0.0)
        with np.errstate(invalid="ignore"):
            return [np.where((x > 0).any(-1, keepdims=True), e / e.sum(-1, keepdims=True), 0.0)]
    raise KeyError(function)


def make_ir(seed: int = 0) -> StageIR:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, N)).astype(np.float32)
    b = rng.standard_normal(N).astype(np.float32)
    return StageIR(Small, {"matmul": [w, b]})


def make_inputs(function: str, seed: int = 1):
    rng = np.random.default_rng(seed)
    if function == "elementwise":
        return [(rng.standard_normal((2, 3, 50)) * 3).astype(np.float32)]
    if function == "matmul":
        return [rng.standard_normal((M, K)).astype(np.float32)]
    if function == "masked":
        x = rng.standard_normal((4, 10)).astype(np.float32)
        x[2] = -np.abs(x[2])  # a row with nothing kept
        return [x]
    return [(rng.standard_normal(7) * 200).astype(np.float32), np.array(-3, np.int32), np.array(0.75, np.float32)]


@pytest.fixture(scope="session")
def webgpu():
    backend = WebGPUBackend()
    reason = backend.unavailable_reason()
    if reason:
        pytest.fail(f"webgpu backend unavailable: {reason} (deselect with -m 'not webgpu')")
    return backend


@pytest.fixture(scope="session")
def runner(webgpu):
    with webgpu.session() as r:
        yield r


@pytest.fixture(scope="session")
def artifacts(webgpu, tmp_path_factory):
    """The same IR built for webgpu and for llvm."""
    ir = make_ir()
    out = {}
    for name, backend in (("webgpu", webgpu), ("llvm", NativeBackend("llvm"))):
        d = tmp_path_factory.mktemp(name)
        backend.build(ir, d, log=lambda *a: None)
        out[name] = d
    return ir, out


@pytest.fixture(scope="session")
def llvm_runner():
    with NativeBackend("llvm").session() as r:
        yield r


@pytest.mark.parametrize("function", ["elementwise", "matmul", "mixed", "masked"])
def test_matches_numpy_and_llvm(function, artifacts, runner, llvm_runner):
    ir, dirs = artifacts
    inputs = make_inputs(function)
    got = runner.run(dirs["webgpu"], function, inputs)
    native = llvm_runner.run(dirs["llvm"], function, inputs)
    ref = numpy_reference(function, inputs, ir.params.get(function, []))
    assert len(got) == len(native) == len(ref)
    for g, n, r in zip(got, native, ref):
        assert g.shape == r.shape and g.dtype == n.dtype, (g.shape, r.shape, g.dtype, n.dtype)
        if g.dtype == np.float32:
            # WGSL: tanh 1e-5 abs, exp 3+2|x| ulp, reassociation allowed; |values| here < 100
            np.testing.assert_allclose(g, r, rtol=2e-6, atol=2e-5)
            np.testing.assert_allclose(g, n, rtol=2e-6, atol=2e-5)
        else:
            np.testing.assert_array_equal(g, r)
            np.testing.assert_array_equal(g, n)


def test_uint32_and_scalars_exact(artifacts, runner):
    _, dirs = artifacts
    x = np.array([-1.5, 0.2, 3.9, 254.99, 255.0, 300.0, 1e6], np.float32)
    a, b, c = runner.run(dirs["webgpu"], "mixed", [x, np.array(7, np.int32), np.array(2.0, np.float32)])
    assert (a.dtype, b.dtype, c.dtype, c.shape) == (np.float32, np.uint32, np.int32, ())
    np.testing.assert_array_equal(b, [0, 0, 3, 254, 255, 255, 255])
    np.testing.assert_array_equal(a, x * 2 + 7)
    assert int(c) == 8


def test_build_writes_wgsl_and_raw_weights(artifacts):
    ir, dirs = artifacts
    d = dirs["webgpu"]
    wgsl = (d / "kernels.wgsl").read_text()
    assert "@compute" in wgsl and "fn " in wgsl
    cache = json.loads((d / "params" / "tensor-cache.json").read_text())
    records = [(shard, r) for shard in cache["records"] for r in shard["records"]]
    assert [r["name"] for _, r in records] == ["matmul/00000", "matmul/00001"]
    for (shard, r), weight in zip(records, ir.params["matmul"]):  # exact float32 bytes
        data = (d / "params" / shard["dataPath"]).read_bytes()[r["byteOffset"]:r["byteOffset"] + r["nbytes"]]
        assert (r["format"], r["dtype"]) == ("raw", "float32") and data == weight.tobytes()
    meta = json.loads((d / "sdparity.json").read_text())
    assert meta["params"] == {"matmul": ["matmul/00000", "matmul/00001"]}


def test_bf16_weights_option_is_visibly_less_exact(webgpu, runner, tmp_path):
    ir = make_ir()
    WebGPUBackend(weights="bf16").build(ir, tmp_path, log=lambda *a: None)
    x = make_inputs("matmul")
    ref = numpy_reference("matmul", x, ir.params["matmul"])[0]
    err = np.abs(runner.run(tmp_path, "matmul", x)[0] - ref).max()
    assert err > 1e-3, err  # bf16 keeps 8 significand bits: this is why raw is the default


def test_many_artifacts_in_one_session(artifacts, runner, tmp_path):
    """Models are swapped in and out of the page (LRU) and still give the same answers."""
    _, dirs = artifacts
    other = make_ir(seed=5)
    WebGPUBackend().build(other, tmp_path, log=lambda *a: None)
    x = make_inputs("matmul")
    saved = runner.backend.max_loaded
    runner.backend.max_loaded = 1
    try:
        for _ in range(2):
            for d, ir in ((dirs["webgpu"], make_ir()), (tmp_path, other)):
                want = numpy_reference("matmul", x, ir.params["matmul"])[0]
                np.testing.assert_allclose(runner.run(d, "matmul", x)[0], want, rtol=2e-6, atol=2e-5)
                assert len(runner.loaded) == 1
                # one device for the page: the other build's kernels (the same program, other
                # weights) are pipelines compiled for the first
                made, reused = (runner.timings[f"last_load_pipelines_{k}"] for k in ("made", "reused"))
                assert made + reused > 0 and (d != tmp_path or made == 0), (made, reused)
    finally:
        runner.backend.max_loaded = saved


KERNEL = """@group(0) @binding(0) var<storage, read_write> T_add_ptr : array<f32>;
@group(0) @binding(1) var<storage, read> lv7_ptr : array<f32>;
struct PODArgs {
  n: i32
}
@group(0) @binding(2) var<uniform> podArgs : PODArgs;
@compute @workgroup_size(64, 1, 1)
fn fused_add3_kernel(@builtin(global_invocation_id) i : vec3<u32>) {
  if (i32(i.x) < podArgs.n) { T_add_ptr[i.x] = lv7_ptr[i.x] + 1.0f; }
}"""


def test_pipelines_are_shared_only_between_the_same_program(runner):
    """Kernels that differ only in names (entry point, binding variables) share one compiled
    pipeline in the page (web/common/gpu.js sharePipelines); any other difference does not."""
    def key(code, entry="fused_add3_kernel", layout="L"):
        return runner.page.evaluate("([c, e, l]) => window.sdparity.pipelineKey(c, e, l)", [code, entry, layout])

    base = key(KERNEL)
    renamed = KERNEL.replace("fused_add3_kernel", "fused_add9_kernel").replace("lv7_ptr", "lv123_ptr") \
        .replace("T_add_ptr", "T_add_ptr_1").replace("podArgs", "pod")
    assert base and key(renamed, "fused_add9_kernel") == base
    assert key(KERNEL.replace("+ 1.0f", "+ 1.5f")) != base  # a constant
    assert key(KERNEL.replace("+ 1.0f", "- 1.0f")) != base  # an operator
    swapped = KERNEL.replace("binding(0) var<storage, read_write> T_add_ptr", "binding(1) var<storage, read_write> T_add_ptr") \
        .replace("binding(1) var<storage, read> lv7_ptr", "binding(0) var<storage, read> lv7_ptr")
    assert key(swapped) != base  # the same names bound to other slots
    assert key(KERNEL, layout="other") != base  # another pipeline layout
    assert key(KERNEL.replace("lv7_ptr", "sdparity_g0b1")) is None  # never renamed onto a name in use


def test_console_error_fails_the_run(artifacts, runner):
    _, dirs = artifacts
    runner.page.evaluate("console.error('boom from the test')")
    with pytest.raises(SdparityError, match="boom from the test"):
        runner.run(dirs["webgpu"], "elementwise", make_inputs("elementwise"))
    runner.run(dirs["webgpu"], "elementwise", make_inputs("elementwise"))  # reported once, then clean


UNCAPTURED = """async () => {
  const adapter = await navigator.gpu.requestAdapter();
  const device = await adapter.requestDevice();
  window.sdparity.watchDevice(device, "test device");
  const seen = new Promise((resolve) => device.addEventListener("uncapturederror", resolve, {once: true}));
  device.createBuffer({size: 4, usage: 0});  // usage 0 is a validation error
  await device.queue.onSubmittedWorkDone();  // Dawn delivers errors when the device is ticked
  await seen;
  device.sdparityExpectLoss = true;
  device.destroy();
}"""

LOST = """async () => {
  const adapter = await navigator.gpu.requestAdapter();
  const device = await adapter.requestDevice();
  window.sdparity.watchDevice(device, "test device");
  device.destroy();
  await device.lost;
}"""


def test_uncaptured_webgpu_error_fails_the_run(artifacts, runner):
    _, dirs = artifacts
    runner.page.evaluate(UNCAPTURED)
    with pytest.raises(SdparityError, match="uncaptured WebGPU error.*GPUValidationError"):
        runner.run(dirs["webgpu"], "elementwise", make_inputs("elementwise"))


def test_device_loss_fails_the_run(artifacts, runner):
    _, dirs = artifacts
    runner.page.evaluate(LOST)
    with pytest.raises(SdparityError, match="device lost"):
        runner.run(dirs["webgpu"], "elementwise", make_inputs("elementwise"))


def test_js_exception_is_one_line_error(artifacts, runner):
    _, dirs = artifacts
    with pytest.raises(SdparityError, match="running no_such_function failed in the browser") as e:
        runner.run(dirs["webgpu"], "no_such_function", [])
    assert "\n" not in str(e.value)


def test_describe_reports_the_adapter(webgpu, runner):
    d = webgpu.describe()
    adapter = d["adapter"]
    assert adapter["vendor"] and "architecture" in adapter
    assert adapter["limits"]["maxStorageBufferBindingSize"] > 0 and isinstance(adapter["features"], list)
    assert runner.timings["browser_start_s"] > 0


def test_a_clean_session_leaves_its_browser_and_pipelines_to_the_next(webgpu, artifacts):
    """Sessions in turn share one browser: the next starts none and its load of a build loaded
    before compiles no pipeline. A session that fails, or whose page reported an error, closes
    its browser instead of leaving it to the next."""
    _, dirs = artifacts
    x = make_inputs("elementwise")
    with webgpu.session() as first:
        want = first.run(dirs["webgpu"], "elementwise", x)
    with webgpu.session() as second:
        got = second.run(dirs["webgpu"], "elementwise", x)
        assert second is first and second.timings["browser_sessions"] >= 2
        made, reused = (second.timings[f"last_load_pipelines_{k}"] for k in ("made", "reused"))
        assert made == 0 and reused > 0, (made, reused)
    np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(RuntimeError, match="the work failed"), webgpu.session() as failing:
        raise RuntimeError("the work failed")
    assert failing is first and not failing.browser.is_connected()
    with webgpu.session() as noisy:
        assert noisy is not failing and "browser_sessions" not in noisy.timings  # a fresh browser
        noisy.page.evaluate("console.error('left behind by a session')")
    assert not noisy.browser.is_connected()


def test_missing_chromium_is_a_clear_error():
    backend = WebGPUBackend(chromium="/nonexistent/chromium")
    assert "no Chromium at /nonexistent/chromium" in backend.unavailable_reason()
    with pytest.raises(SdparityError, match="no Chromium at /nonexistent/chromium"), backend.session():
        pass


def test_null_adapter_is_a_clear_error():
    """Without --enable-unsafe-webgpu headless Chromium has no adapter: say so, do not hang."""
    flags = [f for f in WebGPUBackend().flags if f != "--enable-unsafe-webgpu"]
    with pytest.raises(SdparityError, match="WebGPU is not available|returned null"), WebGPUBackend(flags=flags).session():
        pass
