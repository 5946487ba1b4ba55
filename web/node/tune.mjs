#!/usr/bin/env node
// Time the WebGPU tile candidates of sdparity's matmul/convolution kernels in Dawn (npm
// `webgpu`): the device half of `python -m sdparity.gpu.tune device --kind webgpu`.
//
//   node web/node/tune.mjs --manifest FILE.json.gz --out results.json [--dawn DIR] [--budget-s S]
//        [--only I (just the manifest's I-th kernel)] [--resume R (skip the tiles R's row timed)]
//
// The manifest (gpu_tune prepare --kind webgpu) lists per kernel its arguments and, per
// candidate tile, the WGSL TVM generated and the workgroup grid; the output is the last
// argument. Per kernel: inputs are filled once with seeded values in [-1, 1); per candidate: the
// output is zeroed, the kernel runs once and its output is compared with the first candidate's
// (dlight's default; the same sums in the same order, so they must agree to float32 rounding,
// else the candidate is recorded as disagreeing and not timed), then it runs REPEAT times, each
// pass between two timestamp queries, and the median pass time is kept. The comparison runs on
// the GPU (CHECK_WGSL: the largest |a - b| by atomicMax on the float's bits, 4 bytes read
// back): the VAE's outputs are 0.5-1 GiB, and reading them back and comparing them in
// JavaScript took more than the 120 s a kernel may take. Launches follow tvmjs's convention (a
// uniform with the grid's x size after the buffers; an x grid of 2^16 or more is spread over
// z). Pipelines are compiled one at a time, synchronously, just before their candidate runs.
// results.json is rewritten after every candidate, atomically, the kernel's row marked
// `complete` after its last: Dawn for Node crashes now and then (NOTES.md), and a crashed
// process keeps what it timed; `--resume` (the driver's retry) skips the tiles timed before.
// Exit status: 0 done (or out of budget), 2 bad arguments / no adapter.

import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { gunzipSync } from "node:zlib";

import { writeAtomic } from "./dawn.mjs";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPEAT = 10;
const AGREE_RTOL = 1e-5; // gpu_tune.AGREE_RTOL: relative to the default output's largest magnitude

function parseArgs(argv) {
  const o = { dawn: join(HERE, "..", "node_modules", "webgpu"), budgetS: 0, only: -1 };
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i].replace(/^--/, "").replace(/-(\w)/g, (_, c) => c.toUpperCase());
    if (!["manifest", "out", "dawn", "budgetS", "only", "resume"].includes(k) || argv[i + 1] === undefined) {
      throw new Error(`bad option ${argv[i]}`);
    }
    o[k] = ["budgetS", "only"].includes(k) ? Number(argv[i + 1]) : resolve(argv[i + 1]);
  }
  if (!o.manifest || !o.out) throw new Error("--manifest and --out are required");
  return o;
}

// tvmjs's launch: an x grid of 2^16 or more is halved (rounding up) into z until it fits
function grid(gx, gy) {
  let x = gx, z = 1;
  while (x >= 1 << 16) { x = Math.ceil(x / 2); z *= 2; }
  return [x, gy, z];
}

// The kernel's bindings: [{binding, type, name}]. TVM orders a kernel's buffers its own way
// (the output first, here), so each binding is matched to an argument by its variable's name
// (the buffer's name + "_ptr"); the uniform holding the grid's x size comes last.
function bindings(wgsl) {
  const out = [];
  for (const m of wgsl.matchAll(/@binding\((\d+)\)\s*var<(storage,\s*read_write|storage,\s*read|uniform)>\s*(\w+)/g)) {
    out.push({ binding: Number(m[1]), name: m[3],
               type: m[2].startsWith("uniform") ? "uniform" : m[2].endsWith("read_write") ? "storage" : "read-only-storage" });
  }
  return out;
}

// max |a[i] - b[i]| (mode 1) or max |a[i]| (mode 0) over p.x values, into r[0] as the float's
// bits: for non-negative floats the bits order like the values, and NaN's bits (exponent all
// ones, mantissa non-zero) exceed infinity's, so a NaN anywhere reads back as NaN
const CHECK_WGSL = `
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> r: array<atomic<u32>>;
@group(0) @binding(3) var<uniform> p: vec4<u32>;
@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
  var m = 0u;
  for (var i = g.x; i < p.x; i = i + n.x * 256u) {
    var v = a[i];
    if (p.y == 1u) { v = v - b[i]; }
    m = max(m, bitcast<u32>(v) & 0x7fffffffu);
  }
  atomicMax(&r[0], m);
}`;

function seeded(n, seed) {
  let s = seed >>> 0 || 1;
  const a = new Float32Array(n);
  for (let i = 0; i < n; ++i) { s ^= s << 13; s >>>= 0; s ^= s >>> 17; s ^= s << 5; s >>>= 0; a[i] = s / 2147483648 - 1; }
  return a;
}

async function main() {
  let o;
  try { o = parseArgs(process.argv.slice(2)); } catch (e) { console.error(`tune.mjs: ${e.message}`); return 2; }
  const raw = readFileSync(o.manifest);
  const manifest = JSON.parse((o.manifest.endsWith(".gz") ? gunzipSync(raw) : raw).toString());
  const resumed = o.resume && existsSync(o.resume) ? JSON.parse(readFileSync(o.resume)).workloads : [];
  const { create, globals } = await import(pathToFileURL(join(o.dawn, "index.js")).href);
  Object.assign(globalThis, globals);
  const gpu = create(["disable-dawn-features=timestamp_quantization"]);
  const adapter = await gpu.requestAdapter();
  if (!adapter || !adapter.features.has("timestamp-query")) {
    console.error("tune.mjs: no WebGPU adapter with timestamp-query");
    return 2;
  }
  const requiredLimits = {};
  for (const k of ["maxBufferSize", "maxStorageBufferBindingSize", "maxComputeWorkgroupStorageSize",
                   "maxStorageBuffersPerShaderStage", "maxComputeInvocationsPerWorkgroup"]) requiredLimits[k] = adapter.limits[k];
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures: ["timestamp-query"] });
  const errors = [];
  device.addEventListener("uncapturederror", (ev) => errors.push(ev.error.message));
  const info = adapter.info || {};
  const results = { card: info.description || info.device, adapter: { vendor: info.vendor, device: info.device,
                    architecture: info.architecture }, kind: "webgpu", model: manifest.model,
                    versions: manifest.versions, workloads: [] };
  const save = () => writeAtomic(o.out, JSON.stringify(results, null, 1));
  const started = performance.now();
  const querySet = device.createQuerySet({ type: "timestamp", count: 2 * REPEAT });
  const resolved = device.createBuffer({ size: 16 * REPEAT, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
  const U = GPUBufferUsage;

  // the GPU-side comparison: check(a, b) = max |a - b|, check(a) = max |a|
  const checkPipe = device.createComputePipeline({ layout: "auto",
    compute: { module: device.createShaderModule({ code: CHECK_WGSL }), entryPoint: "main" } });
  const maxBits = device.createBuffer({ size: 4, usage: U.STORAGE | U.COPY_SRC | U.COPY_DST });
  const maxRead = device.createBuffer({ size: 4, usage: U.MAP_READ | U.COPY_DST });
  const checkArgs = device.createBuffer({ size: 16, usage: U.UNIFORM | U.COPY_DST });
  async function check(a, b) {
    device.queue.writeBuffer(checkArgs, 0, Uint32Array.of(a.size / 4, b ? 1 : 0, 0, 0));
    const group = device.createBindGroup({ layout: checkPipe.getBindGroupLayout(0), entries: [
      { binding: 0, resource: { buffer: a } }, { binding: 1, resource: { buffer: b || a } },
      { binding: 2, resource: { buffer: maxBits } }, { binding: 3, resource: { buffer: checkArgs } }] });
    const enc = device.createCommandEncoder();
    enc.clearBuffer(maxBits);
    const pass = enc.beginComputePass();
    pass.setPipeline(checkPipe);
    pass.setBindGroup(0, group);
    pass.dispatchWorkgroups(Math.min(4096, Math.ceil(a.size / 4 / 256)));
    pass.end();
    enc.copyBufferToBuffer(maxBits, 0, maxRead, 0, 4);
    device.queue.submit([enc.finish()]);
    await maxRead.mapAsync(GPUMapMode.READ);
    const v = new Float32Array(maxRead.getMappedRange().slice(0))[0];
    maxRead.unmap();
    return v;
  }

  for (const [wi, w] of manifest.workloads.entries()) {
    if (o.only >= 0 && wi !== o.only) continue;
    if (o.budgetS && (performance.now() - started) / 1e3 > o.budgetS) {
      console.log(`time budget of ${o.budgetS} s spent: ${manifest.workloads.length - wi} kernels left untimed`);
      break;
    }
    const bufs = w.args.map((a, i) => {
      const bytes = Math.max(4, a.shape.reduce((x, y) => x * y, 1) * 4);
      const b = device.createBuffer({ size: bytes, usage: U.STORAGE | U.COPY_DST | U.COPY_SRC });
      if (i < w.args.length - 1) { // inputs: a seeded 4M-value block, repeated
        const block = seeded(Math.min(bytes / 4, 1 << 22), 1 + wi * 31 + i);
        for (let off = 0; off < bytes; off += block.byteLength) {
          device.queue.writeBuffer(b, off, block.buffer, 0, Math.min(block.byteLength, bytes - off));
        }
      }
      return b;
    });
    const out = bufs[bufs.length - 1];
    const base = device.createBuffer({ size: out.size, usage: U.STORAGE | U.COPY_DST });
    const before = resumed.find((r) => r.key === w.key) || {};
    const row = { key: w.key, stage: w.stage, kernel: w.kernel, times_ms: { ...before.times_ms },
                  disagree: { ...before.disagree }, failed: { ...before.failed }, complete: false };
    results.workloads.push(row);
    let scale = 1;
    for (const [ci, c] of w.candidates.entries()) {
      // a resumed run skips what the crashed one timed, except the default (the reference)
      if (ci > 0 && (c.config in row.times_ms || c.config in row.disagree || c.config in row.failed)) continue;
      const binds = bindings(c.wgsl);
      const argOf = binds.map((b) => (b.type === "uniform" ? -1 : w.args.findIndex((a) => `${a.name}_ptr` === b.name)));
      if (argOf.some((i, k) => i < 0 && binds[k].type !== "uniform")) {
        row.failed[c.config] = `a binding of ${c.entry} matches no argument: ${binds.map((b) => b.name)}`;
        continue;
      }
      const layout = device.createBindGroupLayout({ entries: binds.map((b) => (
        { binding: b.binding, visibility: GPUShaderStage.COMPUTE, buffer: { type: b.type } })) });
      device.pushErrorScope("validation");
      device.pushErrorScope("internal");
      const pipeline = device.createComputePipeline({
        layout: device.createPipelineLayout({ bindGroupLayouts: [layout] }),
        compute: { module: device.createShaderModule({ code: c.wgsl }), entryPoint: c.entry } });
      const internal = await device.popErrorScope();
      const bad = (await device.popErrorScope()) || internal;
      if (bad) {
        row.failed[c.config] = bad.message.split("\n")[0];
        if (ci === 0) break; // no default, nothing to compare with
        continue;
      }
      const [x, y, z] = grid(c.grid[0], c.grid[1]);
      const pod = device.createBuffer({ size: 16, usage: U.UNIFORM | U.COPY_DST });
      device.queue.writeBuffer(pod, 0, Uint32Array.of(c.grid[0], 0, 0, 0));
      const group = device.createBindGroup({ layout, entries: binds.map((b, k) => (
        { binding: b.binding, resource: { buffer: argOf[k] < 0 ? pod : bufs[argOf[k]] } })) });
      const run = (enc, timestampWrites) => {
        const pass = enc.beginComputePass(timestampWrites ? { timestampWrites } : {});
        pass.setPipeline(pipeline);
        pass.setBindGroup(0, group);
        pass.dispatchWorkgroups(x, y, z);
        pass.end();
      };
      // the check run: zeroed output, one launch, compared on the GPU
      let enc = device.createCommandEncoder();
      enc.clearBuffer(out);
      run(enc);
      if (ci === 0) enc.copyBufferToBuffer(out, 0, base, 0, out.size);
      device.queue.submit([enc.finish()]);
      if (ci === 0) {
        scale = (await check(base)) || 1;
        if (!Number.isFinite(scale)) {
          row.failed[c.config] = "the default's output is not finite";
          break;
        }
      } else {
        const diff = await check(out, base);
        if (!(diff <= AGREE_RTOL * scale)) { // NaN disagrees
          row.disagree[c.config] = diff / scale;
          console.log(`${w.kernel} ${c.config}: DISAGREES with the default (${(diff / scale).toExponential(2)} relative)`);
          pod.destroy();
          save();
          continue;
        }
      }
      // timed: REPEAT launches, each pass between two timestamps
      enc = device.createCommandEncoder();
      for (let r = 0; r < REPEAT; ++r) run(enc, { querySet, beginningOfPassWriteIndex: 2 * r, endOfPassWriteIndex: 2 * r + 1 });
      const read = device.createBuffer({ size: 16 * REPEAT, usage: U.MAP_READ | U.COPY_DST });
      enc.resolveQuerySet(querySet, 0, 2 * REPEAT, resolved, 0);
      enc.copyBufferToBuffer(resolved, 0, read, 0, 16 * REPEAT);
      device.queue.submit([enc.finish()]);
      await read.mapAsync(GPUMapMode.READ);
      const t = new BigUint64Array(read.getMappedRange().slice(0));
      read.unmap(); // before destroy: Dawn for Node frees a mapped range on destroy() without detaching it
      read.destroy();
      pod.destroy();
      const ms = Array.from({ length: REPEAT }, (_, r) => Number(t[2 * r + 1] - t[2 * r]) / 1e6).sort((a, b) => a - b);
      row.times_ms[c.config] = Number(ms[REPEAT >> 1].toFixed(5));
      save();
    }
    for (const b of [...bufs, base]) b.destroy();
    if (errors.length) row.errors = errors.splice(0);
    row.complete = true;
    const best = Object.entries(row.times_ms).sort((a, b) => a[1] - b[1])[0];
    console.log(`${w.stage} ${w.kernel}: default ${row.times_ms[w.candidates[0].config]} ms, best ${best}`);
    save();
  }
  save();
  return 0;
}

process.exitCode = await main();
setTimeout(() => process.exit(process.exitCode), 100).unref();
