// sdparity WebGPU harness, driven by sdparity/backends/webgpu.py through Playwright.
//
// Loads tvmjs models (model.wasm + a tvmjs tensor cache of weights), runs their Relax
// functions on WebGPU and moves tensors to and from Python as raw bytes over HTTP:
// inputs are fetched from /blob/<id>, outputs are POSTed to /upload/<id>.
// Anything that goes wrong is reported with console.error, which fails the Python run.

const tvmjs = globalThis.tvmjs;
const models = new Map(); // key -> {inst, device, vm, meta, funcs}

function report(msg) {
  console.error(`[sdparity] ${msg}`);
}

window.addEventListener("unhandledrejection", (ev) => report(`unhandled promise rejection: ${ev.reason}`));

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function fetchOk(url, init) {
  const r = await fetch(url, init);
  if (!r.ok) throw new Error(`${(init && init.method) || "GET"} ${url}: HTTP ${r.status}`);
  return r;
}

async function requestAdapter() {
  if (!navigator.gpu) {
    throw new Error("navigator.gpu is missing: WebGPU is disabled or the page is not a secure context");
  }
  const adapter = await withTimeout(navigator.gpu.requestAdapter(), 30000, "navigator.gpu.requestAdapter()");
  if (!adapter) {
    throw new Error("navigator.gpu.requestAdapter() returned null: this browser has no WebGPU adapter " +
                    "(headless Chromium needs --enable-unsafe-webgpu)");
  }
  return adapter;
}

// Report every uncaptured error and every unexpected loss of a device we use.
function watchDevice(device, label) {
  device.addEventListener("uncapturederror", (ev) => {
    report(`uncaptured WebGPU error (${label}): ${ev.error.constructor.name}: ${ev.error.message}`);
  });
  device.lost.then((info) => {
    if (!device.sdparityExpectLoss) report(`WebGPU device lost (${label}): ${info.reason}: ${info.message}`);
  });
}

// Limits a model may need; we ask for the adapter's maximum of each.
const LIMITS = [
  "maxBufferSize", "maxStorageBufferBindingSize", "maxComputeWorkgroupStorageSize",
  "maxStorageBuffersPerShaderStage", "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX", "maxComputeWorkgroupSizeY", "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
];

// One device per loaded model: tvmjs's Instance.dispose() destroys the device it was given.
async function requestDevice(label) {
  const adapter = await requestAdapter();
  const requiredLimits = {};
  for (const k of LIMITS) requiredLimits[k] = adapter.limits[k];
  const requiredFeatures = ["shader-f16"].filter((f) => adapter.features.has(f));
  const device = await withTimeout(adapter.requestDevice({ requiredLimits, requiredFeatures }), 30000,
                                   "GPUAdapter.requestDevice()");
  watchDevice(device, label);
  return device;
}

async function describe() {
  const adapter = await requestAdapter();
  const info = adapter.info || {};
  const limits = {};
  for (const k in adapter.limits) limits[k] = adapter.limits[k];
  return {
    vendor: info.vendor, architecture: info.architecture, device: info.device,
    description: info.description,
    isFallbackAdapter: info.isFallbackAdapter ?? adapter.isFallbackAdapter ?? null,
    features: [...adapter.features].sort(), limits, userAgent: navigator.userAgent,
  };
}

// A tvmjs artifact cache that reads straight from our server (no browser-side caching).
const directFetch = {
  fetchWithCache: async (url, type) => {
    const r = await fetchOk(url);
    return type === "json" ? r.json() : r.arrayBuffer();
  },
  addToCache: async () => {},
  hasAllKeys: async () => true,
};

async function load(key, base) {
  if (models.has(key)) return 0;
  const t0 = performance.now();
  const meta = await (await fetchOk(base + "sdparity.json")).json();
  const wasm = await (await fetchOk(base + meta.wasm)).arrayBuffer();
  const inst = await tvmjs.instantiate(wasm, tvmjs.createPolyfillWASI(), (msg) => console.log(msg));
  const device = await requestDevice(key);
  inst.initWebGPU(device);
  inst.beginScope(); // lives as long as the model
  const vm = inst.detachFromCurrentScope(inst.createVirtualMachine(inst.webgpu()));
  await inst.asyncLoadWebGPUPipelines(vm.getInternalModule());
  if (meta.num_params > 0) {
    const url = new URL(base + meta.params_dir + "/", location.href).href;
    await inst.fetchTensorCache(url, inst.webgpu(), { artifactCache: directFetch });
  }
  models.set(key, { inst, device, vm, meta, funcs: new Map() });
  return performance.now() - t0;
}

function unload(key) {
  const m = models.get(key);
  if (!m) return;
  models.delete(key);
  m.device.sdparityExpectLoss = true;
  for (const f of m.funcs.values()) f.dispose();
  m.vm.dispose();
  m.inst.endScope();
  m.inst.dispose(); // also destroys m.device
}

function flatten(value, out) {
  if (value instanceof tvmjs.Tensor) {
    out.push(value);
  } else if (value instanceof tvmjs.TVMArray) {
    for (let i = 0; i < value.size(); ++i) flatten(value.get(i), out);
  } else {
    throw new Error(`unsupported return value: ${value}`);
  }
}

// inputs: [{id, shape, dtype}]; returns {outputs: [{id, shape, dtype}], ms}
async function run(key, fn, inputs, timeoutMs) {
  const m = models.get(key);
  if (!m) throw new Error(`model ${key} is not loaded`);
  const inst = m.inst;
  const names = m.meta.params[fn] || [];
  const data = await Promise.all(inputs.map((i) => fetchOk("/blob/" + i.id).then((r) => r.arrayBuffer())));
  const t0 = performance.now();
  inst.beginScope();
  try {
    let f = m.funcs.get(fn);
    if (!f) {
      f = inst.detachFromCurrentScope(m.vm.getFunction(fn));
      m.funcs.set(fn, f);
    }
    const args = inputs.map((spec, k) =>
      inst.empty(spec.shape, spec.dtype, inst.webgpu()).copyFromRawBytes(new Uint8Array(data[k])));
    const params = names.map((n) => inst.tensorCacheGet(n));
    const flat = [];
    flatten(f(...args, ...params), flat);
    const host = flat.map((t) => inst.empty(t.shape, t.dtype, inst.cpu()).copyFrom(t));
    await withTimeout(inst.webgpu().sync(), timeoutMs, `${fn} on WebGPU`);
    const ms = performance.now() - t0;
    await new Promise((resolve) => setTimeout(resolve, 0)); // let pending error events fire first
    const outputs = [];
    for (const t of host) {
      const id = crypto.randomUUID();
      await fetchOk("/upload/" + id, { method: "POST", body: t.toRawBytes() });
      outputs.push({ id, shape: t.shape, dtype: t.dtype });
    }
    return { outputs, ms };
  } finally {
    inst.endScope();
  }
}

window.sdparity = { describe, load, unload, run, loaded: () => [...models.keys()], models, watchDevice };
window.sdparityReady = true;
