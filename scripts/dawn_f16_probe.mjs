// Does Dawn for Node offer WebGPU's `shader-f16` here, with and without Dawn's
// `vulkan_enable_f16_on_nvidia` toggle, and does an f16 kernel compute what it should?
// (issue 13; findings in docs/performance.md "f16 mode"). Prints one JSON line per setting.
//
//   node scripts/dawn_f16_probe.mjs DAWN_DIR      (the `webgpu` package: index.js, dist/)

import { join, resolve } from "node:path";
import { pathToFileURL } from "node:url";

const dawn = resolve(process.argv[2] || "web/node_modules/webgpu");
const { create, globals } = await import(pathToFileURL(join(dawn, "index.js")).href);
Object.assign(globalThis, globals);

// out[i] = f32(f16(x[i]) * 2h): f16 rounding of each input, then an exact doubling
const WGSL = `enable f16;
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(4) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  y[g.x] = f32(f16(x[g.x]) * 2.0h);
}`;
const INPUT = [0.1, 1.5, 3.25, 30000];
const EXPECTED = [0.199951171875, 3, 6.5, 60000]; // f16(0.1) = 0.0999755859375; f16(30000) = 30000

for (const flags of [[], ["enable-dawn-features=vulkan_enable_f16_on_nvidia"]]) {
  const row = { flags };
  const gpu = create(flags); // kept referenced while its adapter is used
  const adapter = await gpu.requestAdapter();
  row.adapter = adapter ? adapter.info.description || adapter.info.device : null;
  row.shader_f16 = Boolean(adapter && adapter.features.has("shader-f16"));
  if (row.shader_f16) {
    const device = await adapter.requestDevice({ requiredFeatures: ["shader-f16"] });
    const U = GPUBufferUsage;
    const x = device.createBuffer({ size: 16, usage: U.STORAGE | U.COPY_DST });
    const y = device.createBuffer({ size: 16, usage: U.STORAGE | U.COPY_SRC });
    const read = device.createBuffer({ size: 16, usage: U.MAP_READ | U.COPY_DST });
    device.queue.writeBuffer(x, 0, Float32Array.from(INPUT));
    const pipeline = device.createComputePipeline({ layout: "auto",
      compute: { module: device.createShaderModule({ code: WGSL }), entryPoint: "main" } });
    const enc = device.createCommandEncoder();
    const pass = enc.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [
      { binding: 0, resource: { buffer: x } }, { binding: 1, resource: { buffer: y } }] }));
    pass.dispatchWorkgroups(1);
    pass.end();
    enc.copyBufferToBuffer(y, 0, read, 0, 16);
    device.queue.submit([enc.finish()]);
    await read.mapAsync(GPUMapMode.READ);
    row.f16_kernel = Array.from(new Float32Array(read.getMappedRange().slice(0)));
    read.unmap();
    row.f16_kernel_exact = row.f16_kernel.every((v, i) => v === EXPECTED[i]);
  }
  console.log(JSON.stringify(row));
}
setTimeout(() => process.exit(0), 100).unref();
