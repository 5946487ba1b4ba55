// The Web Stable Diffusion generation loop, shared by the browser app (web/app/app.js) and
// the Node runner on Dawn (web/node/generate.mjs). No DOM here. Sequence (the same as
// sdparity/app/pipeline.py, which checks it natively; the function list comes from
// sdparity/stages/pipeline.json through the app's config.json):
//   tokenize(prompt), tokenize(negative) -> clip x2 -> concat_embeddings [negative; positive]
//   -> N x { unet (CFG) -> dpm_convert_model_output (SD 2.x: dpm_convert_v_prediction)
//            -> dpm_step (history starts at zeros) }
//   -> vae -> image_to_rgba.
// SDXL (config.tokenizer_2): clip takes both tokenizers' ids and also returns encoder 2's
// pooled text_embeds; stacked [negative; positive], they go to the UNet with the image's time
// ids (config.time_ids) after the embeddings.


// CLIPTokenizer: [bos] + first (max_length - 2) content tokens + [eos], padded with pad id.
// web-tokenizers' encode() adds no special tokens; strip them anyway if a tokenizer.json does.
export function tokenize(tokenizer, c, text) {
  let body = Array.from(tokenizer.encode(text));
  if (body[0] === c.bos_token_id) body = body.slice(1);
  if (body[body.length - 1] === c.eos_token_id) body = body.slice(0, -1);
  const ids = [c.bos_token_id, ...body.slice(0, c.max_length - 2), c.eos_token_id];
  while (ids.length < c.max_length) ids.push(c.pad_token_id);
  return Int32Array.from(ids);
}

// The tokenizers a model's config names: SD 1.x/2.x one, SDXL two (its text encoders').
export function tokenizerConfigs(config) {
  return [config.tokenizer, config.tokenizer_2].filter(Boolean);
}

// Every tokenizer of the config; fetchBytes(url) -> ArrayBuffer of its tokenizer.json. One
// after the other: @mlc-ai/web-tokenizers 0.1.6 initializes its wasm module on the first
// fromJSON without a lock, so two concurrent calls make two modules and the first tokenizer's
// encode() then fails ("Expected null or instance of VectorInt, got an instance of VectorInt").
export async function loadTokenizers(config, fetchBytes) {
  const out = [];
  for (const c of tokenizerConfigs(config)) out.push(await globalThis.tokenizers.Tokenizer.fromJSON(await fetchBytes(c.url)));
  return out;
}

// Seeded Box-Muller noise (NOT torch.randn; tests inject latents instead).
export function seededNormal(n, seed) {
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
export async function rawBytes(inst, tensor) {
  const host = inst.empty(tensor.shape, tensor.dtype, inst.cpu());
  host.copyFrom(tensor);
  await inst.webgpu().sync();
  return host.toRawBytes();
}

// The denoising loops, one per scheduler (sdparity/app/pipeline.py has the same four), each
// yielding the latents after every UNet call. ctx: unet(xIn, k) the guided output at call k,
// call(f, ...args) a function's first output, table the scheduler's constants for this step
// count, init the injected latents (Float32Array), scalar(v) a 0-d float32, vector(keys, k) the
// scalars of call k as one float32 vector (the PNDM/Euler/LCM functions take them packed),
// noise(k) the noise LCM's step k adds (injected, or seeded here).
const PNDM_STEP_KEYS = ["c0", "c1", "c2", "c3", "mul", "div", "va", "vb", "sample_coeff", "eps_coeff", "denom"];
const LOOPS = {
  // DPM-Solver++ 2M; SD 2.x (v-prediction) converts with dpm_convert_v_prediction (config.convert_function)
  *dpm({ config, table, call, unet, init, zeros, upload, scalar }) {
    let x = upload(init);
    let hist = zeros(); // never uninitialized memory: first-order steps multiply it by 0
    for (let k = 0; k < table.timesteps.length; ++k) {
      const eps = unet(x, k);
      const x0 = call(config.convert_function ?? "dpm_convert_model_output", x, eps, scalar(table.alpha[k]),
                      scalar(table.sigma[k]));
      x = call("dpm_step", x, x0, hist, ...["c0", "c1", "half_c1", "inv_r0"].map((c) => scalar(table[c][k])));
      hist = x0;
      yield x;
    }
  },
  // Euler: the injected latents times init_noise_sigma (float32, as the pipeline's
  // prepare_latents: a product of two float32 values rounded once), the UNet fed the scaled sample
  *euler({ table, call, unet, init, upload, vector }) {
    const s = Math.fround(table.init_noise_sigma);
    let x = upload(init.map((v) => Math.fround(v * s)));
    for (let k = 0; k < table.timesteps.length; ++k) {
      const eps = unet(call("euler_scale_model_input", x, vector(["scale"], k)), k);
      const x0 = call("euler_convert_model_output", x, eps, vector(["a", "b"], k));
      x = call("euler_step", x, x0, vector(["sigma_hat", "dt"], k));
      yield x;
    }
  },
  // PNDM (PLMS): call 1 redoes step 0 from its saved sample; the last three outputs are the history
  *pndm({ table, call, unet, init, zeros, upload, vector }) {
    let x = upload(init);
    const saved = x;
    let [h1, h2, h3] = [zeros(), zeros(), zeros()];
    for (let k = 0; k < table.timesteps.length; ++k) {
      const eps = unet(x, k);
      x = call("pndm_step", table.saved_sample[k] ? saved : x, eps, h1, h2, h3, vector(PNDM_STEP_KEYS, k));
      if (table.push[k]) [h1, h2, h3] = [eps, h1, h2];
      yield x;
    }
  },
  // LCM: the boundary-condition denoise, then (every step but the last) fresh noise added
  *lcm({ table, call, unet, init, upload, vector, noise }) {
    let x = upload(init);
    for (let k = 0; k < table.timesteps.length; ++k) {
      x = call("lcm_denoise", x, unet(x, k), vector(["p", "q", "r", "c_out", "c_skip"], k));
      if (table.add_noise[k]) x = call("lcm_add_noise", x, upload(noise(k)), vector(["sqrt_alpha_prev", "sqrt_beta_prev"], k));
      yield x;
    }
  },
};

// model: {inst, vm, meta} from gpu.js loadArtifact; config: the app's config.json;
// tokenizers: loadTokenizers(config); table: DPM-Solver constants for opts.steps; opts: {prompt, negative, steps, guidance, seed,
// latents (Float32Array or null), noises (LCM: one Float32Array per step that adds noise, or
// null: seeded), trace, onCall (optional: called with the function's name
// before each call; the profiler tags GPU work with it)}; onStep(k, steps) after every step.
// Returns {trace, rgba (RGBA bytes), width, height, timings (ms), calls ({fn: count})};
// timings.encodeMs: per step, the time until the step's last call returned (tvmjs records the GPU work then and
// submits it at the sync), timings.stepMs: the same plus the wait for the GPU.
export async function generate(model, config, tokenizers, table, opts, onStep = () => {}) {
  const { inst, vm, meta } = model;
  const gpu = inst.webgpu();
  if (!table) throw new Error(`no scheduler constants for ${opts.steps} steps (1..${config.max_steps})`);
  if (table.num_steps !== undefined && table.num_steps !== opts.steps) {
    throw new Error(`the constants are for ${table.num_steps} steps, not ${opts.steps}`);
  }
  const shape = [1, ...config.latent_shape];
  const n = shape.reduce((a, b) => a * b, 1);
  const params = (fn) => (meta.params[fn] || []).map((name) => inst.tensorCacheGet(name));
  // config.functions: the pipeline's functions (sdparity/stages/pipeline.json), then the other schedulers'
  const fns = Object.fromEntries(config.functions.map((f) => [f, vm.getFunction(f)]));
  // Every function's outputs as a flat list (exported model functions return tuples).
  const flatten = (v, out = []) => {
    if (v instanceof globalThis.tvmjs.TVMArray) { for (let i = 0; i < v.size(); ++i) flatten(v.get(i), out); }
    else out.push(v);
    return out;
  };
  const calls = {};
  const callAll = (f, ...args) => {
    opts.onCall?.(f);
    calls[f] = (calls[f] || 0) + 1;
    return flatten(fns[f](...args, ...params(f)));
  };
  const call = (f, ...args) => callAll(f, ...args)[0];
  const tensor = (arr, shp, dtype) => inst.empty(shp, dtype, gpu).copyFrom(arr);
  const scalar = (v, dtype) => tensor(dtype === "int32" ? Int32Array.of(v) : Float32Array.of(v), [], dtype);
  const trace = { positive: null, negative: null, latents: [], timesteps: table.timesteps.slice() };
  const read = async (t) => new Float32Array((await rawBytes(inst, t)).buffer.slice(0));
  const timings = { stepMs: [], encodeMs: [] };
  const toks = tokenizerConfigs(config);
  // [embeddings] (SD 1.x/2.x) or [embeddings, pooled] (SDXL)
  const encode = (text) => callAll("clip", ...toks.map(
    (c, i) => tensor(tokenize(tokenizers[i], c, text), [1, c.max_length], "int32")));

  inst.beginScope();
  try {
    const t0 = performance.now();
    const [pos, pooled] = encode(opts.prompt);
    const [neg, negPooled] = encode(opts.negative);
    const emb = call("concat_embeddings", neg, pos);
    let added = []; // SDXL's added conditions: pooled [negative; positive], then the three sizes
    if (pooled) {
      // stacked on the host (a few hundred bytes, read back anyway for the trace)
      const [np, pp] = [await read(negPooled), await read(pooled)];
      if (opts.trace) { trace.negative_pooled = np; trace.pooled = pp; }
      const both = new Float32Array(np.length + pp.length);
      both.set(np);
      both.set(pp, np.length);
      const ids = config.time_ids; // [h, w, 0, 0, h, w]: original size, crop top-left, target size
      added = [tensor(both, [2, pp.length], "float32"),
               ...[0, 2, 4].map((i) => tensor(Int32Array.from(ids.slice(i, i + 2)), [2], "int32"))];
    }
    await gpu.sync();
    timings.textMs = performance.now() - t0;
    if (opts.trace) { trace.positive = await read(pos); trace.negative = await read(neg); }
    const init = opts.latents ?? seededNormal(n, opts.seed);
    if (init.length !== n) throw new Error(`injected latents have ${init.length} values, expected ${n}`);
    const g = scalar(opts.guidance, "float32");
    const unet = (xIn, k) => call("unet", xIn, scalar(table.timesteps[k], "int32"), emb, ...added, g);
    const kind = opts.scheduler ?? "dpm";
    if (!LOOPS[kind]) throw new Error(`unknown scheduler ${kind} (${Object.keys(LOOPS).join(", ")})`);
    const ctx = { config, table, call, unet, init, shape,
                  zeros: () => tensor(new Float32Array(n), shape, "float32"),
                  upload: (arr) => tensor(arr, shape, "float32"),
                  scalar: (v) => scalar(v, "float32"),
                  vector: (keys, k) => tensor(Float32Array.from(keys.map((key) => table[key][k])), [keys.length], "float32"),
                  noise: (k) => {  // the k-th call's noise: injected (diffusers' draws), else seeded
                    const i = table.add_noise.slice(0, k).filter(Boolean).length;
                    const z = opts.noises ? opts.noises[i] : seededNormal(n, (opts.seed + 1 + i) >>> 0);
                    if (!z || z.length !== n) throw new Error(`injected noise ${i} has ${z?.length} values, expected ${n}`);
                    return z;
                  } };
    const nCalls = table.timesteps.length; // UNet calls: PNDM's warm-up makes steps + 1
    let x = null;
    let k = 0;
    let ts = performance.now();
    for (x of LOOPS[kind](ctx)) {
      timings.encodeMs.push(performance.now() - ts);
      await gpu.sync();
      timings.stepMs.push(performance.now() - ts);
      if (opts.trace) trace.latents.push(await read(x));
      onStep(k++, nCalls);
      ts = performance.now();
    }
    const tv = performance.now();
    const image = callAll("vae", x)[1]; // (float image, rounded image)
    const rgba = call("image_to_rgba", image);
    const bytes = new Uint8Array((await rawBytes(inst, rgba)).buffer.slice(0));
    timings.decodeMs = performance.now() - tv;
    timings.totalMs = performance.now() - t0;
    const [h, w] = rgba.shape;
    return { trace, rgba: bytes, width: w, height: h, timings, calls };
  } finally {
    inst.endScope();
  }
}
