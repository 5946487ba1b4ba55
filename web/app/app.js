// Stable Diffusion in the browser: the Web Stable Diffusion pipeline on TVM-compiled WebGPU
// kernels. Sequence (same as sdparity/pipeline.py, which checks it natively):
//   tokenize(prompt), tokenize(negative) -> clip x2 -> concat_embeddings [negative; positive]
//   -> 20x { unet (CFG) -> dpm_convert_model_output -> dpm_step (history starts at zeros) }
//   -> vae -> image_to_rgba -> canvas.
// Test hooks on window.sdparityApp: inject initial latents, read the trace and the RGBA tensor.

import { describeAdapter, fetchOk, loadArtifact, requestAdapter } from "../common/gpu.js";

const $ = (id) => document.getElementById(id);
const state = { scheduleOverride: null, config: null, model: null, tokenizer: null, schedules: null, busy: false,
                injected: null, trace: null, rgba: null, errors: [], ready: false, adapter: null };

function fail(message) {
  state.errors.push(message);
  console.error(`[sdparity-app] ${message}`);
  const s = $("status");
  s.textContent = message;
  s.className = "error";
}

function status(message) {
  $("status").textContent = message;
  $("status").className = "";
}

// ---- tokenizer: HF tokenizers (wasm) + CLIPTokenizer's specials, padding, truncation ------
function tokenize(text) {
  // CLIPTokenizer: [bos] + first (max_length - 2) content tokens + [eos], padded with pad id.
  // web-tokenizers' encode() adds no special tokens; strip them anyway if a tokenizer.json does.
  const c = state.config.tokenizer;
  let body = Array.from(state.tokenizer.encode(text));
  if (body[0] === c.bos_token_id) body = body.slice(1);
  if (body[body.length - 1] === c.eos_token_id) body = body.slice(0, -1);
  const ids = [c.bos_token_id, ...body.slice(0, c.max_length - 2), c.eos_token_id];
  while (ids.length < c.max_length) ids.push(c.pad_token_id);
  return Int32Array.from(ids);
}

// ---- noise: seeded Box-Muller (NOT torch.randn; tests inject latents instead) -----------
function seededNormal(n, seed) {
  let s = (seed >>> 0) || 0x9e3779b9;
  const next = () => { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; return (s + 0.5) / 4294967296; };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const r = Math.sqrt(-2 * Math.log(next())), th = 2 * Math.PI * next();
    out[i] = r * Math.cos(th);
    if (i + 1 < n) out[i + 1] = r * Math.sin(th);
  }
  return out;
}

// GPU -> CPU copy, then wait for the GPU, then the bytes (tvmjs toArray has no uint32).
async function rawBytes(tensor) {
  const { inst } = state.model;
  const host = inst.empty(tensor.shape, tensor.dtype, inst.cpu());
  host.copyFrom(tensor);
  await inst.webgpu().sync();
  return host.toRawBytes();
}

async function generate(opts) {
  const { inst, vm, meta } = state.model;
  const gpu = inst.webgpu();
  const cfg = state.config;
  const table = state.scheduleOverride ?? state.schedules[String(opts.steps)];
  if (!table) throw new Error(`no scheduler constants for ${opts.steps} steps (1..${cfg.max_steps})`);
  const shape = [1, ...cfg.latent_shape];
  const n = shape.reduce((a, b) => a * b, 1);
  const params = (fn) => (meta.params[fn] || []).map((name) => inst.tensorCacheGet(name));
  const fns = {};
  for (const f of ["clip", "concat_embeddings", "unet", "dpm_convert_model_output", "dpm_step", "vae", "image_to_rgba"]) {
    fns[f] = vm.getFunction(f);
  }
  // Every function's outputs as a flat list (exported model functions return tuples).
  const flatten = (v, out = []) => {
    if (v instanceof globalThis.tvmjs.TVMArray) { for (let i = 0; i < v.size(); ++i) flatten(v.get(i), out); }
    else out.push(v);
    return out;
  };
  const callAll = (f, ...args) => flatten(fns[f](...args, ...params(f)));
  const call = (f, ...args) => callAll(f, ...args)[0];
  const tensor = (arr, shp, dtype) => inst.empty(shp, dtype, gpu).copyFrom(arr);
  const scalar = (v, dtype) => tensor(dtype === "int32" ? Int32Array.of(v) : Float32Array.of(v), [], dtype);
  const trace = { positive: null, negative: null, latents: [], timesteps: table.timesteps.slice(0, opts.steps) };
  const read = async (t) => new Float32Array((await rawBytes(t)).buffer.slice(0));

  inst.beginScope();
  try {
    const pos = call("clip", tensor(tokenize(opts.prompt), [1, cfg.tokenizer.max_length], "int32"));
    const neg = call("clip", tensor(tokenize(opts.negative), [1, cfg.tokenizer.max_length], "int32"));
    if (opts.trace) { trace.positive = await read(pos); trace.negative = await read(neg); }
    const emb = call("concat_embeddings", neg, pos);
    const init = state.injected ?? seededNormal(n, opts.seed);
    if (init.length !== n) throw new Error(`injected latents have ${init.length} values, expected ${n}`);
    let x = tensor(init, shape, "float32");
    let hist = tensor(new Float32Array(n), shape, "float32"); // zeros: never uninitialized memory
    const g = scalar(opts.guidance, "float32");
    const stepMs = [];
    for (let k = 0; k < opts.steps; ++k) {
      const t0 = performance.now();
      const eps = call("unet", x, scalar(table.timesteps[k], "int32"), emb, g);
      const x0 = call("dpm_convert_model_output", x, eps, scalar(table.alpha[k], "float32"),
                      scalar(table.sigma[k], "float32"));
      x = call("dpm_step", x, x0, hist, ...["c0", "c1", "half_c1", "inv_r0"].map((c) => scalar(table[c][k], "float32")));
      hist = x0;
      await gpu.sync();
      stepMs.push(performance.now() - t0);
      if (opts.trace) trace.latents.push(await read(x));
      $("progress").value = (k + 1) / (opts.steps + 1);
      status(`step ${k + 1}/${opts.steps}`);
    }
    const image = callAll("vae", x)[1]; // (float image, rounded image)
    const rgba = call("image_to_rgba", image);
    const bytes = new Uint8Array((await rawBytes(rgba)).buffer.slice(0));
    const [h, w] = rgba.shape;
    draw(bytes, w, h);
    $("progress").value = 1;
    trace.stepMs = stepMs;
    return { trace, rgba: bytes, width: w, height: h };
  } finally {
    inst.endScope();
  }
}

function draw(bytes, w, h) {
  // u32 = r | g<<8 | b<<16 | a<<24, little-endian: exactly RGBA bytes for ImageData
  const canvas = $("canvas");
  canvas.width = w;
  canvas.height = h;
  canvas.getContext("2d").putImageData(new ImageData(new Uint8ClampedArray(bytes), w, h), 0, 0);
}

async function onGenerate(ev) {
  ev.preventDefault();
  if (state.busy || !state.ready) return;
  state.busy = true;
  $("generate").disabled = true;
  const t0 = performance.now();
  try {
    const opts = { prompt: $("prompt").value, negative: $("negative").value, steps: Number($("steps").value),
                   guidance: Number($("guidance").value), seed: Number($("seed").value), trace: true };
    const r = await generate(opts);
    state.trace = r.trace;
    state.rgba = r.rgba;
    state.lastMs = performance.now() - t0;
    status(`done in ${(state.lastMs / 1000).toFixed(1)} s (${opts.steps} steps)`);
    state.done = true;
  } catch (e) {
    console.log(e.stack);
    fail(`generation failed: ${e.message}`);
  } finally {
    state.busy = false;
    $("generate").disabled = false;
  }
}

async function main() {
  window.addEventListener("unhandledrejection", (ev) => fail(`unhandled error: ${ev.reason}`));
  const configUrl = new URLSearchParams(location.search).get("config") || "/data/config.json";
  try {
    state.config = await (await fetchOk(configUrl)).json();
  } catch (e) {
    return fail(`cannot load the app configuration ${configUrl}: ${e.message}`);
  }
  const cfg = state.config;
  $("model").textContent = `model: ${cfg.model.name} (${cfg.model.digest}), image ${cfg.image_size.join("x")}`;
  try {
    state.adapter = await requestAdapter();
    $("adapter").textContent = JSON.stringify(describeAdapter(state.adapter), null, 1);
    status("loading tokenizer, scheduler constants and model…");
    const [tok, sched] = await Promise.all([
      fetchOk(cfg.tokenizer.url).then((r) => r.arrayBuffer()),
      fetchOk(cfg.scheduler_url).then((r) => r.json()),
    ]);
    state.tokenizer = await globalThis.tokenizers.Tokenizer.fromJSON(tok);
    state.schedules = sched.tables;
    state.model = await loadArtifact(cfg.artifact, state.adapter, "app", fail);
  } catch (e) {
    return fail(e.message);
  }
  if (state.errors.length) return;
  state.ready = true;
  $("generate").disabled = false;
  status("ready");
}

window.sdparityApp = {
  state,
  injectLatents: (arr) => { state.injected = arr === null ? null : Float32Array.from(arr); },
  // negative tests: run with another constants table (e.g. the tutorial-era one)
  overrideSchedule: (table) => { state.scheduleOverride = table; },
  tokenize: (text) => Array.from(tokenize(text)),
  result: () => ({ done: !!state.done, errors: state.errors, trace: state.trace, lastMs: state.lastMs,
                   rgba: state.rgba ? Array.from(state.rgba) : null }),
};
$("form").addEventListener("submit", onGenerate);
main();
