#!/usr/bin/env node
// Run one WebGPU build's functions on given inputs in Node on Dawn: a stage checked and timed
// alone on the lent GPU machine (sdparity.gpu.web, stage mode), where no browser runs. The
// build (model.wasm, sdparity.json, params/ as a tvmjs tensor cache) loads as in the browser
// (../common/gpu.js loadArtifact); each function is called as F(*inputs, *params[F]), as the
// Chromium harness (../harness/harness.js) calls it.
//
//   node web/node/stages.mjs --art DIR --job FILE --out DIR [--dawn DIR] [--tvmjs DIR]
//
// FILE (JSON): {"runs": [{"function": F, "inputs": [{"file", "shape", "dtype"}], "repeat": N}]}
// (input files: raw little-endian bytes, paths relative to FILE's folder). Each run calls F
// N times (default 1), each call timed to the GPU's completion, and writes the last call's
// outputs to OUT/run<K>-out<J>.bin. OUT/result.json: adapter, load times, per run the
// outputs ({file, shape, dtype}) and the milliseconds of every call, errors.
// Exit status: 0 done, 1 a run failed, 2 bad arguments / no Dawn / no adapter.

import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { exitWith, finisher, installGlobals, parsedArgs, serve, writeAtomic } from "./dawn.mjs";

const WEB = resolve(dirname(fileURLToPath(import.meta.url)), "..");

function parseArgs(argv) {
  const o = { dawn: join(WEB, "node_modules", "webgpu"), tvmjs: join(WEB, "node_modules", "@mlc-ai", "web-runtime", "lib") };
  for (let i = 0; i < argv.length; ++i) {
    const k = argv[i].replace(/^--/, "");
    if (!["art", "job", "out", "dawn", "tvmjs"].includes(k)) throw new Error(`unknown option --${k}`);
    const v = argv[++i];
    if (v === undefined) throw new Error(`--${k} needs a value`);
    o[k] = resolve(v);
  }
  for (const k of ["art", "job", "out"]) if (!o[k]) throw new Error(`--${k} is required`);
  return o;
}

// a function's return value as a flat list of tensors (a tuple's items in order)
function flatten(value, out) {
  if (value instanceof tvmjs.Tensor) out.push(value);
  else if (value instanceof tvmjs.TVMArray) for (let i = 0; i < value.size(); ++i) flatten(value.get(i), out);
  else throw new Error(`unsupported return value: ${value}`);
  return out;
}

async function main() {
  const o = parsedArgs("stages.mjs", parseArgs);
  if (!o) return 2;
  const result = { errors: [], runs: [] };
  const finish = finisher(o.out, result);
  try {
    await installGlobals({ dawn: o.dawn, tvmjs: o.tvmjs });
  } catch (e) {
    result.errors.push(e.message);
    return finish(2);
  }
  let job;
  try {
    job = JSON.parse(readFileSync(o.job, "utf8"));
  } catch (e) {
    result.errors.push(`--job: ${e.message}`);
    return finish(2);
  }
  const server = await serve({ "/art/": o.art });
  const { describeAdapter, loadArtifact, requestAdapter } = await import("../common/gpu.js");
  const onError = (msg) => { result.errors.push(msg); console.error(msg); };
  let adapter;
  try {
    adapter = await requestAdapter();
  } catch (e) {
    result.errors.push(e.message);
    server.close();
    return finish(2);
  }
  result.adapter = describeAdapter(adapter);
  try {
    const m = await loadArtifact(`http://127.0.0.1:${server.address().port}/art/`, adapter, "stages", onError);
    result.loadMs = m.ms;
    const { inst, vm, meta } = m;
    for (const [k, run] of job.runs.entries()) {
      inst.beginScope();
      try {
        const f = vm.getFunction(run.function);
        const args = run.inputs.map((spec) => {
          const buf = readFileSync(join(dirname(o.job), spec.file));
          return inst.empty(spec.shape, spec.dtype, inst.webgpu()).copyFromRawBytes(new Uint8Array(buf));
        });
        const params = (meta.params[run.function] || []).map((n) => inst.tensorCacheGet(n));
        const ms = [];
        let out;
        for (let r = 0; r < (run.repeat || 1); ++r) {
          const t0 = performance.now();
          out = flatten(f(...args, ...params), []);
          await inst.webgpu().sync();
          ms.push(performance.now() - t0);
        }
        const host = out.map((t) => inst.empty(t.shape, t.dtype, inst.cpu()).copyFrom(t));
        await inst.webgpu().sync();
        const outputs = host.map((t, j) => {
          const file = `run${k}-out${j}.bin`;
          writeAtomic(join(o.out, file), t.toRawBytes());
          return { file, shape: t.shape, dtype: t.dtype };
        });
        result.runs.push({ function: run.function, outputs, ms });
        console.log(`${run.function} (run ${k + 1}/${job.runs.length}): ${ms.map((x) => x.toFixed(1)).join(", ")} ms`);
      } finally {
        inst.endScope();
      }
      if (result.errors.length) return finish(1); // a device error: later runs would not be trusted
    }
    return finish(result.errors.length ? 1 : 0);
  } catch (e) {
    result.errors.push(`stage run failed: ${e.message}`);
    console.error(e.stack);
    return finish(1);
  } finally {
    server.close();
  }
}

exitWith(await main());
