// Shared browser-side runtime helpers for the harness (tests) and the app (users):
// adapter/device acquisition with clear errors, error watching, and loading an sdparity
// WebGPU artifact (sdparity.json + wasm + tvmjs tensor cache) with tvmjs.

const tvmjs = globalThis.tvmjs;

export function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export async function fetchOk(url, init) {
  const r = await fetch(url, init);
  if (!r.ok) throw new Error(`${(init && init.method) || "GET"} ${url}: HTTP ${r.status}`);
  return r;
}

export async function requestAdapter() {
  if (!navigator.gpu) {
    throw new Error("WebGPU is not available: navigator.gpu is missing (WebGPU disabled, or the page " +
                    "is not a secure context)");
  }
  const adapter = await withTimeout(navigator.gpu.requestAdapter(), 30000, "navigator.gpu.requestAdapter()");
  if (!adapter) {
    throw new Error("WebGPU is not available: requestAdapter() returned no adapter " +
                    "(headless Chromium needs --enable-unsafe-webgpu)");
  }
  return adapter;
}

export function describeAdapter(adapter) {
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

// Every uncaptured error and unexpected device loss goes to onError (and the console).
export function watchDevice(device, label, onError) {
  device.addEventListener("uncapturederror", (ev) => {
    onError(`uncaptured WebGPU error (${label}): ${ev.error.constructor.name}: ${ev.error.message}`);
  });
  device.lost.then((info) => {
    if (!device.sdparityExpectLoss) onError(`WebGPU device lost (${label}): ${info.reason}: ${info.message}`);
  });
}

const LIMITS = [
  "maxBufferSize", "maxStorageBufferBindingSize", "maxComputeWorkgroupStorageSize",
  "maxStorageBuffersPerShaderStage", "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupSizeX", "maxComputeWorkgroupSizeY", "maxComputeWorkgroupSizeZ",
  "maxComputeWorkgroupsPerDimension",
];

// features: optional features to request besides shader-f16 (each only if the adapter has it)
export async function requestDevice(adapter, label, onError, features = []) {
  const requiredLimits = {};
  for (const k of LIMITS) requiredLimits[k] = adapter.limits[k];
  const requiredFeatures = ["shader-f16", ...features].filter((f) => adapter.features.has(f));
  const device = await withTimeout(adapter.requestDevice({ requiredLimits, requiredFeatures }), 30000,
                                   "GPUAdapter.requestDevice()");
  watchDevice(device, label, onError);
  return device;
}

// tvmjs records every kernel launch into one command encoder and submits it only at its next
// sync, readback or free, so the GPU waits while JavaScript records a whole UNet call (59-85 ms
// of 1352 passes on the H200 in Dawn: docs/performance.md, "WebGPU profile"). This makes the
// device's command encoders submit what they hold every `passes` compute passes and go on in a
// fresh encoder, so the GPU starts while the rest is recorded. Same commands, same queue
// order; tvmjs's uniform buffers stay one per launch until its own flush, so no launch sees
// another's arguments. passes = 0: leave tvmjs's batching alone.
export const SUBMIT_EVERY = 64;

export function submitEvery(device, passes = SUBMIT_EVERY) {
  if (!passes) return;
  const create = device.createCommandEncoder.bind(device);
  device.createCommandEncoder = (desc) => {
    let enc = create(desc);
    let n = 0;
    const beginComputePass = (pd) => {
      if (n >= passes) {
        device.queue.submit([enc.finish()]);
        enc = create(desc);
        n = 0;
      }
      n += 1;
      return enc.beginComputePass(pd);
    };
    return new Proxy({}, {
      get(_, key) {
        if (key === "beginComputePass") return beginComputePass;
        const v = enc[key];
        return typeof v === "function" ? v.bind(enc) : v;
      },
    });
  };
}

// One pipeline for kernels that are the same program. TVM writes one WGSL module per kernel, and
// kernels often differ only in names: the tiny UNet's 182 kernels are 159 programs, and its
// build with two known issues neutralized shares 127 of them with the build as is (the rest
// of the text is the same; Relax numbers its variables differently). SwiftShader spends most
// of a load compiling pipelines (34-55 s for the tiny UNet), so each program is compiled once.
//
// The key is the kernel's WGSL with its entry point and each binding's variable renamed after
// its (group, binding), plus its pipeline layout's entries: a consistent one-to-one renaming
// into names TVM never writes, so kernels with equal keys compute the same thing with the same
// bindings, and one whose text differs anywhere else (a constant, an operator) gets its own.
// Bind groups made with another kernel's layout of the same entries are valid with the shared
// pipeline (WebGPU's group-equivalence of explicit layouts).
export function pipelineKey(code, entryPoint, layout = "") {
  if (typeof code !== "string" || code.includes("sdparity_")) return null;
  const word = (name) => new RegExp(`\\b${name}\\b`, "g");
  let out = code.replace(word(entryPoint), "sdparity_entry");
  for (const [, group, binding, name] of code.matchAll(/@group\((\d+)\)\s*@binding\((\d+)\)\s*var(?:<[^>]*>)?\s+(\w+)/g)) {
    out = out.replace(word(name), `sdparity_g${group}b${binding}`);
  }
  return `${layout}\n${out}`;
}

// Make device create each distinct pipeline once (pipelineKey) through createComputePipelineAsync,
// which tvmjs's load uses for every kernel; device.sdparityPipelines counts {made, reused}.
// Pipelines made before this was called, or synchronously, are not shared.
export function sharePipelines(device) {
  const code = new WeakMap(); // GPUShaderModule -> WGSL
  const entries = new WeakMap(); // GPUBindGroupLayout / GPUPipelineLayout -> its entries as JSON
  const made = new Map(); // key -> Promise<GPUComputePipeline>
  const stats = { made: 0, reused: 0 };
  device.sdparityPipelines = stats;
  const wrap = (name, after) => {
    const orig = device[name].bind(device);
    device[name] = (desc) => after(desc, orig(desc));
  };
  wrap("createShaderModule", (desc, m) => { code.set(m, desc.code); return m; });
  wrap("createBindGroupLayout", (desc, l) => { entries.set(l, JSON.stringify(desc.entries)); return l; });
  wrap("createPipelineLayout", (desc, l) => {
    const parts = desc.bindGroupLayouts.map((b) => entries.get(b));
    if (!parts.includes(undefined)) entries.set(l, JSON.stringify(parts));
    return l;
  });
  const keyOf = (desc) => {
    const layout = desc.layout === "auto" ? "auto" : entries.get(desc.layout);
    return layout === undefined ? null : pipelineKey(code.get(desc.compute.module), desc.compute.entryPoint, layout);
  };
  const createAsync = device.createComputePipelineAsync.bind(device);
  device.createComputePipelineAsync = (desc) => {
    const key = keyOf(desc);
    if (key === null) return createAsync(desc);
    let p = made.get(key);
    if (p) {
      stats.reused += 1;
      made.delete(key); // most recently used last
    } else {
      stats.made += 1;
      p = createAsync(desc);
      p.catch(() => made.delete(key)); // a failed compile is reported to its caller, not reused
    }
    made.set(key, p);
    if (made.size > MAX_SHARED_PIPELINES) made.delete(made.keys().next().value);
    return p;
  };
  return device;
}

// pipelines a device keeps for reuse (least recently used dropped first; those in use stay
// alive with their artifacts): a unit-test worker's page loads a few thousand distinct kernels
const MAX_SHARED_PIPELINES = 1024;

// Let several artifacts use one device in turn (the harness: its builds share pipelines). Each
// call of the returned function gives a lease: the device itself, except that destroy() ends
// the lease and that its `lost` promise and "uncapturederror" listeners are its own. tvmjs's
// Instance listens on its device and destroys it when disposed; through a lease it leaves no
// listener (and so no reference to itself) behind on the shared device.
export function shareDevice(device) {
  const leases = new Set();
  device.addEventListener("uncapturederror", (ev) => {
    for (const lease of leases) for (const fn of lease.listeners) fn(ev);
  });
  device.lost.then((info) => { for (const lease of leases) lease.lose(info); });
  return () => {
    const lease = { listeners: new Set() };
    lease.lost = new Promise((resolve) => { lease.lose = resolve; });
    leases.add(lease);
    const own = {
      destroy: () => { leases.delete(lease); lease.listeners.clear(); },
      lost: lease.lost,
      addEventListener: (type, fn, o) => (type === "uncapturederror" ? lease.listeners.add(fn)
                                                                      : device.addEventListener(type, fn, o)),
      removeEventListener: (type, fn, o) => (type === "uncapturederror" ? lease.listeners.delete(fn)
                                                                         : device.removeEventListener(type, fn, o)),
    };
    return new Proxy(device, {
      get(target, key) {
        if (Object.hasOwn(own, key)) return own[key];
        const v = Reflect.get(target, key, target);
        return typeof v === "function" ? v.bind(target) : v;
      },
    });
  };
}

// A device as an artifact runs on: requested (requestDevice), instrumented first (opts.onDevice),
// submitting every opts.submitEvery passes (submitEvery) and sharing pipelines (sharePipelines,
// unless opts.sharePipelines is false).
export async function openDevice(adapter, label, onError, opts = {}) {
  const device = await requestDevice(adapter, label, onError, opts.features);
  opts.onDevice?.(device);
  submitEvery(device, opts.submitEvery ?? SUBMIT_EVERY);
  if (opts.sharePipelines ?? true) sharePipelines(device);
  return device;
}

// tvmjs artifact cache that reads straight from the server.
const directFetch = {
  fetchWithCache: async (url, type) => {
    const r = await fetchOk(url);
    return type === "json" ? r.json() : r.arrayBuffer();
  },
  addToCache: async () => {},
  hasAllKeys: async () => true,
};

// Load an sdparity WebGPU artifact folder. Returns {inst, device, vm, meta, ms, pipelines}; ms:
// how long each part took; pipelines: {made, reused} by sharePipelines (null without it). A
// device of its own unless opts.device is given (a lease of shareDevice: tvmjs's
// Instance.dispose() destroys the device it was given). Checks the largest weight against the
// adapter's binding limit first, so a model that cannot fit fails with a clear message instead
// of silently computing garbage. opts: {device, or for a device of its own (openDevice):
// features (see requestDevice), onDevice(device): called before the pipelines are made (the
// Node profiler instruments the device there), submitEvery (see submitEvery; default
// SUBMIT_EVERY), sharePipelines (default true)}.
export async function loadArtifact(base, adapter, label, onError, opts = {}) {
  const t0 = performance.now();
  const ms = {};
  const meta = await (await fetchOk(base + "sdparity.json")).json();
  if (meta.num_params > 0) {
    const cache = await (await fetchOk(base + meta.params_dir + "/tensor-cache.json")).json();
    const limit = adapter.limits.maxStorageBufferBindingSize;
    const tensors = (cache.records || []).flatMap((shard) => shard.records || [shard]);
    for (const rec of tensors) {
      if (rec.nbytes > limit) {
        throw new Error(`this GPU's maxStorageBufferBindingSize (${limit} bytes) is smaller than a ` +
                        `weight of ${rec.nbytes} bytes (${rec.name}): the model does not fit`);
      }
    }
  }
  const wasm = await (await fetchOk(base + meta.wasm)).arrayBuffer();
  const inst = await tvmjs.instantiate(wasm, tvmjs.createPolyfillWASI(), (msg) => console.log(msg));
  const device = opts.device ?? await openDevice(adapter, label, onError, opts);
  const before = { ...device.sdparityPipelines };
  inst.initWebGPU(device);
  inst.beginScope(); // lives as long as the artifact
  ms.wasm = performance.now() - t0;
  try {
    const vm = inst.detachFromCurrentScope(inst.createVirtualMachine(inst.webgpu()));
    await inst.asyncLoadWebGPUPipelines(vm.getInternalModule());
    ms.pipelines = performance.now() - t0 - ms.wasm;
    const after = device.sdparityPipelines;
    const pipelines = after ? { made: after.made - before.made, reused: after.reused - before.reused } : null;
    if (meta.num_params > 0) {
      const url = new URL(base + meta.params_dir + "/", globalThis.location?.href).href; // Node: base is absolute
      await inst.fetchTensorCache(url, inst.webgpu(), { artifactCache: directFetch });
    }
    ms.weights = performance.now() - t0 - ms.wasm - ms.pipelines;
    ms.total = performance.now() - t0;
    return { inst, device, vm, meta, ms, pipelines };
  } catch (err) {
    // let the device report what went wrong first (e.g. the WGSL compile error), then free it
    await device.queue.onSubmittedWorkDone();
    await new Promise((resolve) => setTimeout(resolve, 0));
    if (!opts.device) device.sdparityExpectLoss = true; // a shared device lives on
    inst.dispose();
    throw err;
  }
}
