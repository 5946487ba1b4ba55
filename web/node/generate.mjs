#!/usr/bin/env node
// Run the web app's generation loop (../common/pipeline.js) in Node on Dawn (npm `webgpu`):
// the same wasm, tvmjs runtime and JavaScript as the browser, on whatever GPU Dawn finds
// through Vulkan (a real GPU, or SwiftShader with VK_ICD_FILENAMES). Used by
// sdparity.gpu.web to time and check WebGPU on the lent GPU machine, where no browser runs.
//
//   node web/node/generate.mjs --data DIR --art DIR --out DIR [--latents FILE.f32]
//        [--prompt P] [--negative N] [--steps 20] [--guidance 7.5] [--seed 0] [--trace] [--runs 1]
//        [--profile] [--submitEvery N (passes per submit; 0: tvmjs's own batching; default gpu.js's)]
//        [--dawn DIR (the `webgpu` package)] [--tvmjs DIR] [--tokenizers DIR]
//
// --data holds the app's config.json, tokenizer.json and dpm_consts.json (sdparity serve's
// build_app); --art is the folder the config's "/art/..." artifact path points into. Both are
// served on 127.0.0.1 so tvmjs loads weights exactly as in the browser. Writes to --out:
// result.json (adapter, timings, errors), rgba.bin (H*W*4 bytes), and with --trace
// latents.f32 (every step's latents), embeddings.f32 (positive then negative).
// --profile: after the timed runs, one more run with a timestamp query around every compute
// pass (./profile.mjs); result.json gets "profile": GPU time per VM function and kernel, per
// call. The timed runs stay uninstrumented.
// Exit status: 0 done, 1 generation failed, 2 bad arguments / no adapter.

import { readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { exitWith, finisher, installGlobals, parsedArgs, serve, writeAtomic } from "./dawn.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const WEB = resolve(HERE, "..");

function parseArgs(argv) {
  const o = { runs: 1, steps: 20, guidance: 7.5, seed: 0, prompt: "a photo of a cat", negative: "", trace: false,
              profile: false, submitEvery: null,
              dawn: join(WEB, "node_modules", "webgpu"), tvmjs: join(WEB, "node_modules", "@mlc-ai", "web-runtime", "lib"),
              tokenizers: join(WEB, "node_modules", "@mlc-ai", "web-tokenizers", "lib") };
  for (let i = 0; i < argv.length; ++i) {
    const k = argv[i].replace(/^--/, "");
    if (k === "trace" || k === "profile") { o[k] = true; continue; }
    if (!(k in o) && !["data", "art", "out", "latents"].includes(k)) throw new Error(`unknown option --${k}`);
    const v = argv[++i];
    if (v === undefined) throw new Error(`--${k} needs a value`);
    o[k] = ["runs", "steps", "guidance", "seed", "submitEvery"].includes(k) ? Number(v) : v;
  }
  for (const k of ["data", "art", "out"]) if (!o[k]) throw new Error(`--${k} is required`);
  for (const k of ["data", "art", "out", "latents", "dawn", "tvmjs", "tokenizers"]) if (o[k]) o[k] = resolve(o[k]);
  return o;
}

async function main() {
  const o = parsedArgs("generate.mjs", parseArgs);
  if (!o) return 2;
  const result = { errors: [], options: { ...o, latents: o.latents || null } };
  const finish = finisher(o.out, result);

  // WebGPU from Dawn, tvmjs and the tokenizer as browser globals, as the page has them.
  // profile: exact timestamps (Dawn rounds them unless this toggle is off)
  const flags = o.profile ? ["disable-dawn-features=timestamp_quantization"] : [];
  try {
    await installGlobals({ dawn: o.dawn, tvmjs: o.tvmjs, tokenizers: o.tokenizers, flags });
  } catch (e) {
    result.errors.push(e.message);
    return finish(2);
  }
  const server = await serve({ "/data/": resolve(o.data), "/art/": resolve(o.art) });
  const base = `http://127.0.0.1:${server.address().port}`;
  // no global `location`: its emscripten part would take it for its own file's URL
  const { describeAdapter, fetchOk, loadArtifact, requestAdapter, SUBMIT_EVERY } = await import("../common/gpu.js");
  const pipeline = await import("../common/pipeline.js");
  const { instrument, summarize } = await import("./profile.mjs");

  const onError = (msg) => { result.errors.push(msg); console.error(msg); };
  try {
    const t0 = performance.now();
    const config = await (await fetchOk(`${base}/data/config.json`)).json();
    let adapter;
    try {
      adapter = await requestAdapter();
    } catch (e) {
      result.errors.push(e.message);
      return finish(2);
    }
    result.adapter = describeAdapter(adapter);
    result.submitEvery = o.submitEvery ?? SUBMIT_EVERY;
    const tokenizers = await pipeline.loadTokenizers(config, async (url) => (await fetchOk(base + url)).arrayBuffer());
    const tables = (await (await fetchOk(base + config.schedulers.dpm.url)).json()).tables; // DPM-Solver++
    let profiler = null;
    const model = await loadArtifact(base + config.artifact, adapter, "node", onError, {
      submitEvery: o.submitEvery ?? undefined,
      ...(o.profile && {
        features: ["timestamp-query"],
        sharePipelines: false, // each kernel's own pipeline, so its time is told by its own name
        onDevice: (device) => { if (device.features.has("timestamp-query")) profiler = instrument(device); },
      }),
    });
    if (o.profile && !profiler) onError("--profile: the adapter has no timestamp-query feature");
    result.loadMs = performance.now() - t0;
    let latents = null;
    if (o.latents) {
      const buf = readFileSync(o.latents);
      latents = new Float32Array(buf.buffer, buf.byteOffset, buf.byteLength / 4);
    }
    const opts = { prompt: o.prompt, negative: o.negative, steps: o.steps, guidance: o.guidance, seed: o.seed,
                   latents, trace: o.trace };
    // --runs N: the first run pays for first-use costs (allocations, driver caches); the
    // timings of every run are kept, the outputs of the last
    let r;
    result.runs = [];
    for (let i = 0; i < o.runs; ++i) {
      r = await pipeline.generate(model, config, tokenizers, tables[String(o.steps)], opts,
                                  (k, n) => console.log(`run ${i + 1}/${o.runs} step ${k + 1}/${n}`));
      result.runs.push(r.timings);
    }
    result.timings = r.timings;
    if (profiler) {
      profiler.start();
      const p = await pipeline.generate(model, config, tokenizers, tables[String(o.steps)],
                                        { ...opts, trace: false, onCall: profiler.setTag },
                                        (k, n) => console.log(`profiled run step ${k + 1}/${n}`));
      const { passes, untimed } = await profiler.collect();
      result.profile = { untimed_passes: untimed, timed_passes: passes.length, timings: p.timings,
                         functions: summarize(passes, p.calls),
                         flags, note: "GPU time per compute pass from timestamp queries; one run after the timed runs" };
    }
    result.width = r.width;
    result.height = r.height;
    result.timesteps = r.trace.timesteps;
    writeAtomic(join(o.out, "rgba.bin"), r.rgba);
    if (o.trace) {
      const cat = (arrs) => Buffer.concat(arrs.map((a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength)));
      writeAtomic(join(o.out, "latents.f32"), cat(r.trace.latents));
      writeAtomic(join(o.out, "embeddings.f32"), cat([r.trace.positive, r.trace.negative]));
    }
    if (result.errors.length) return finish(1);
    return finish(0);
  } catch (e) {
    result.errors.push(`generation failed: ${e.message}`);
    console.error(e.stack);
    return finish(1);
  } finally {
    server.close();
  }
}

exitWith(await main());
