// sdparity WebGPU harness, driven by sdparity/backends/webgpu.py through Playwright.
//
// Loads tvmjs models (model.wasm + a tvmjs tensor cache of weights), runs their Relax
// functions on WebGPU and moves tensors to and from Python as raw bytes over HTTP:
// inputs are fetched from /blob/<id>, outputs are POSTed to /upload/<id>.
// Anything that goes wrong is reported with console.error, which fails the Python run.
// Adapter, device and error watching are shared with the app (../common/gpu.js).

import {
  describeAdapter, fetchOk, loadArtifact, openDevice, pipelineKey, requestAdapter, shareDevice, watchDevice,
  withTimeout,
} from "../common/gpu.js";

const tvmjs = globalThis.tvmjs;
const models = new Map(); // key -> {inst, device, vm, meta, funcs}

function report(msg) {
  console.error(`[sdparity] ${msg}`);
}

window.addEventListener("unhandledrejection", (ev) => report(`unhandled promise rejection: ${ev.reason}`));

async function describe() {
  return describeAdapter(await requestAdapter());
}

// Every build this page loads runs on one device, so a kernel that is the same program in
// another build (a rebuild with a known issue neutralized, a perturbed lowering, the same stage
// at another shape) reuses its compiled pipeline (../common/gpu.js sharePipelines). Each load
// gets a lease of it (shareDevice): tvmjs's dispose() ends the lease, not the device. A lost
// device is reported (openDevice) and replaced at the next load.
let lease = null;

async function sharedDevice(adapter) {
  if (!lease) {
    const device = await openDevice(adapter, "harness", report);
    const mine = shareDevice(device);
    device.lost.then(() => { if (lease === mine) lease = null; });
    lease = mine;
  }
  return lease();
}

// Load a build folder (../common/gpu.js loadArtifact, as the app does). Returns how long each
// part took (ms) and how many pipelines it compiled and reused, for the report.
async function load(key, base) {
  if (models.has(key)) return { ms: {}, pipelines: null };
  const adapter = await requestAdapter();
  const m = await loadArtifact(base, adapter, key, report, { device: await sharedDevice(adapter) });
  models.set(key, { ...m, funcs: new Map() });
  return { ms: m.ms, pipelines: m.pipelines };
}

function unload(key) {
  const m = models.get(key);
  if (!m) return;
  models.delete(key);
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
      // a Blob body: Chromium resolves a POST of a typed array ~1 s late for 16 MiB
      await fetchOk("/upload/" + id, { method: "POST", body: new Blob([t.toRawBytes()]) });
      outputs.push({ id, shape: t.shape, dtype: t.dtype });
    }
    return { outputs, ms };
  } finally {
    inst.endScope();
  }
}

window.sdparity = {
  describe, load, unload, run, loaded: () => [...models.keys()], models, pipelineKey,
  watchDevice: (device, label) => watchDevice(device, label, report),
};
window.sdparityReady = true;
