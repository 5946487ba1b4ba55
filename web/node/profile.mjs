// GPU time of every compute dispatch, through WebGPU timestamp queries (feature
// "timestamp-query"), for `generate.mjs --profile`.
//
// tvmjs records each kernel launch as its own compute pass in one command encoder that it
// submits at the next sync. `instrument(device)` wraps that device's command encoders so that,
// after `start()`, every compute pass writes a timestamp at its start and end and remembers
// which kernel (the pipeline's entry point: TVM's PrimFunc name) and which VM function
// (`setTag`, from the generation loop's onCall hook) it belonged to. After the work has been
// submitted, `collect()` reads the timestamps back. Nothing here changes what passes compute.
//
// Dawn quantizes timestamps unless its `timestamp_quantization` toggle is off: generate.mjs
// turns it off in profile mode (a Dawn feature flag; Chromium keeps it on for pages).

const QUERY_CAPACITY = 4096; // WebGPU's largest query set: 2048 passes per command encoder

export function instrument(device) {
  const kernelOf = new WeakMap();
  for (const m of ["createComputePipeline", "createComputePipelineAsync"]) {
    const orig = device[m].bind(device);
    device[m] = (desc) => {
      const remember = (p) => { kernelOf.set(p, desc.compute.entryPoint); return p; };
      const r = orig(desc);
      return r instanceof Promise ? r.then(remember) : remember(r);
    };
  }
  const state = { on: false, tag: "", pending: [], untimed: 0 };
  const origEncoder = device.createCommandEncoder.bind(device);
  device.createCommandEncoder = (desc) => {
    const enc = origEncoder(desc);
    const slots = [];
    let querySet = null;
    const begin = enc.beginComputePass.bind(enc);
    enc.beginComputePass = (pd = {}) => {
      if (!state.on) return begin(pd);
      if (2 * slots.length + 2 > QUERY_CAPACITY) {
        state.untimed += 1;
        return begin(pd);
      }
      querySet ??= device.createQuerySet({ type: "timestamp", count: QUERY_CAPACITY });
      const i = slots.length;
      const slot = { fn: state.tag, kernel: "?" };
      slots.push(slot);
      const pass = begin({ ...pd, timestampWrites: { querySet, beginningOfPassWriteIndex: 2 * i,
                                                     endOfPassWriteIndex: 2 * i + 1 } });
      const setPipeline = pass.setPipeline.bind(pass);
      pass.setPipeline = (p) => { slot.kernel = kernelOf.get(p) ?? "?"; setPipeline(p); };
      return pass;
    };
    const finish = enc.finish.bind(enc);
    enc.finish = (fd) => {
      if (slots.length) {
        const bytes = 2 * slots.length * 8;
        const resolved = device.createBuffer({ size: bytes, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC });
        const read = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
        enc.resolveQuerySet(querySet, 0, 2 * slots.length, resolved, 0);
        enc.copyBufferToBuffer(resolved, 0, read, 0, bytes);
        state.pending.push({ slots, read, resolved, querySet });
      }
      return finish(fd);
    };
    return enc;
  };
  return {
    start: () => { state.on = true; }, // passes begun before this are not timed
    setTag: (t) => { state.tag = t; },
    // Every timed pass so far: [{fn, kernel, ns, start}] (start: ns, relative to the first);
    // call after the work was submitted and synchronized.
    async collect() {
      await device.queue.onSubmittedWorkDone();
      const out = [];
      for (const p of state.pending) {
        await p.read.mapAsync(GPUMapMode.READ);
        const t = new BigUint64Array(p.read.getMappedRange().slice(0));
        p.read.unmap();
        p.slots.forEach((s, i) => out.push({ ...s, start: t[2 * i], ns: Number(t[2 * i + 1] - t[2 * i]) }));
        for (const b of [p.read, p.resolved, p.querySet]) b.destroy();
      }
      state.pending = [];
      const t0 = out.reduce((m, r) => (r.start < m ? r.start : m), out.length ? out[0].start : 0n);
      for (const r of out) r.start = Number(r.start - t0);
      return { passes: out, untimed: state.untimed };
    },
  };
}

// Sum the passes per VM function and kernel; per call of each function: how many passes, the
// GPU's busy time (sum of pass times) and each kernel's time. calls: {fn: how many calls}.
export function summarize(passes, calls) {
  const fns = {};
  for (const p of passes) {
    const f = (fns[p.fn] ??= { kernels: {}, busyNs: 0 });
    const k = (f.kernels[p.kernel] ??= { calls: 0, ns: 0 });
    k.calls += 1;
    k.ns += p.ns;
    f.busyNs += p.ns;
  }
  const out = {};
  for (const [fn, f] of Object.entries(fns)) {
    const n = calls[fn] || 1;
    out[fn] = {
      calls: n,
      passes_per_call: passes.filter((p) => p.fn === fn).length / n,
      gpu_busy_ms_per_call: f.busyNs / n / 1e6,
      kernels: Object.entries(f.kernels)
        .map(([kernel, k]) => ({ kernel, calls: k.calls / n, ms_per_call: k.ns / n / 1e6 }))
        .sort((a, b) => b.ms_per_call - a.ms_per_call),
    };
  }
  return out;
}
