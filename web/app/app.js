// Stable Diffusion in the browser: the Web Stable Diffusion pipeline on TVM-compiled WebGPU
// kernels. The generation loop is ../common/pipeline.js (shared with the Node/Dawn runner);
// this file is the page: form, progress, canvas.
// Test hooks on window.sdparityApp: inject initial latents (and LCM's step noise), read the trace
// and the RGBA tensor.

import { describeAdapter, fetchOk, loadArtifact, requestAdapter } from "../common/gpu.js";
import * as pipeline from "../common/pipeline.js";

const $ = (id) => document.getElementById(id);
const state = { scheduleOverride: null, config: null, model: null, tokenizers: null, schedules: null, busy: false,
                injected: null, injectedNoises: null, trace: null, rgba: null, errors: [], ready: false, adapter: null };

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

function tokenize(text) {
  return pipeline.tokenize(state.tokenizers[0], state.config.tokenizer, text);
}

async function generate(opts) {
  const sched = state.schedules[opts.scheduler];
  const table = state.scheduleOverride ?? sched.tables[String(opts.steps)];
  if (!table && sched.refused[String(opts.steps)]) throw new Error(sched.refused[String(opts.steps)]);
  const r = await pipeline.generate(state.model, state.config, state.tokenizers, table,
                                    { ...opts, latents: state.injected, noises: state.injectedNoises }, (k, steps) => {
    $("progress").value = (k + 1) / (steps + 1);
    status(`step ${k + 1}/${steps}`);
  });
  draw(r.rgba, r.width, r.height);
  $("progress").value = 1;
  r.trace.stepMs = r.timings.stepMs;
  return r;
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
  state.done = false;  // a second generation: the test hooks wait for this one, not the last
  $("generate").disabled = true;
  const t0 = performance.now();
  try {
    const opts = { prompt: $("prompt").value, negative: $("negative").value, steps: Number($("steps").value),
                   scheduler: $("scheduler").value,
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
  // the models served (sdparity serve --model a,b: /models/models.json); ?config= picks one
  let models = [];
  try {
    models = await (await fetchOk("/models/models.json")).json();
  } catch (e) {
    return fail(`cannot load the model list /models/models.json: ${e.message}`);
  }
  const configUrl = new URLSearchParams(location.search).get("config") || models[0]?.config || "/data/config.json";
  const picker = $("model-picker");
  for (const m of models) picker.add(new Option(`${m.name} (${m.architecture})`, m.config));
  picker.value = configUrl;
  picker.addEventListener("change", () => { location.search = `?config=${encodeURIComponent(picker.value)}`; });
  try {
    state.config = await (await fetchOk(configUrl)).json();
  } catch (e) {
    return fail(`cannot load the app configuration ${configUrl}: ${e.message}`);
  }
  const cfg = state.config;
  $("model").textContent = `model: ${cfg.model.name} (${cfg.model.digest}), image ${cfg.image_size.join("x")}` +
    (cfg.neutralized?.length ? `; built with known issue(s) ${cfg.neutralized.join(", ")} neutralized` : "");
  try {
    state.adapter = await requestAdapter();
    $("adapter").textContent = JSON.stringify(describeAdapter(state.adapter), null, 1);
    status("loading tokenizers, scheduler constants and model…");
    const kinds = Object.keys(cfg.schedulers);
    const [toks, ...tables] = await Promise.all([
      pipeline.loadTokenizers(cfg, (url) => fetchOk(url).then((r) => r.arrayBuffer())),
      ...kinds.map((k) => fetchOk(cfg.schedulers[k].url).then((r) => r.json())),
    ]);
    state.tokenizers = toks;
    state.schedules = Object.fromEntries(kinds.map((k, i) => [k, tables[i]]));
    // the scheduler picker: choosing one sets its usual step count
    const picker = $("scheduler");
    for (const k of kinds) picker.add(new Option(cfg.schedulers[k].label, k));
    picker.addEventListener("change", () => { $("steps").value = cfg.schedulers[picker.value].steps; });
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
  // LCM: the noise diffusers' steps draw after the latents (reference.pipeline.step_noises)
  injectNoises: (arrs) => { state.injectedNoises = arrs === null ? null : arrs.map((a) => Float32Array.from(a)); },
  // negative tests: run with another constants table (e.g. the tutorial-era one)
  overrideSchedule: (table) => { state.scheduleOverride = table; },
  tokenize: (text) => Array.from(tokenize(text)),
  result: () => ({ done: !!state.done, errors: state.errors, trace: state.trace, lastMs: state.lastMs,
                   rgba: state.rgba ? Array.from(state.rgba) : null }),
};
$("form").addEventListener("submit", onGenerate);
main();
