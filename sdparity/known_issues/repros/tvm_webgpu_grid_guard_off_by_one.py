"""Known issue tvm_webgpu_grid_guard_off_by_one: a WebGPU kernel whose x grid tvmjs folds into z
runs one workgroup too many whenever the fold rounds up.

WebGPU allows at most 65535 workgroups per dimension. TVM's web runtime (tvmjs, web/src/
webgpu.ts) launches a kernel with an x grid X >= 2^16 as (ceil(X / 2^k), y, 2^k) workgroups and
passes X in the kernel's uniform `packGridDimX`; TVM's WGSL code generator starts every kernel
with

    if (blockIdx.z * gridDim.x + blockIdx.x > podArgs.packGridDimX) { return; }

The linear index of a workgroup runs 0 .. X-1 for the grid, so the guard must be `>=`: with `>`,
the workgroup whose index is exactly X also runs, with blockIdx.x one past the grid, and writes
(or reads) past what the kernel was scheduled for. It happens whenever ceil(X / 2^k) * 2^k > X,
i.e. for every X >= 2^16 that is not a multiple of the fold (power-of-two grids, as in SD 1.5 at
512x512, are not hit; other image sizes can be).

Standalone (TVM, and Dawn for Node from web/node_modules/webgpu on Vulkan: chromium's
SwiftShader where it is installed, else the system's driver): a TVM kernel that writes 1.0 to
y[b * 64 + t] for its 65537 x 64 threads is launched as tvmjs launches it, into a buffer with 64
spare floats past the grid. Any spare float that becomes 1.0 was written by the extra workgroup.
Exit status (sdparity's repro protocol): 1 while one is (the bug), 0 once the spare floats stay
0 (and the grid is written whole), 4 when Dawn for Node cannot run here (no node, no
web/node_modules/webgpu, no WebGPU adapter), 3 for anything else (the grid not written, no
result, any exception: an error of this script).
Run: python sdparity/known_issues/repros/tvm_webgpu_grid_guard_off_by_one.py
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BLOCKS, THREADS = 65537, 64  # 65537 = 2^16 + 1: tvmjs folds it to 32769 x 2 = 65538 workgroups
FIXED, REPRODUCES, CANNOT_RUN = 0, 1, 4


def kernel():
    from tvm.script import tirx as T

    @T.prim_func
    def fill(y: T.Buffer((BLOCKS * THREADS + THREADS,), "float32")):  # THREADS spare floats at the end
        T.func_attr({"global_symbol": "fill", "tirx.noalias": True})
        for bx in T.thread_binding(BLOCKS, thread="blockIdx.x"):
            for tx in T.thread_binding(THREADS, thread="threadIdx.x"):
                y[bx * THREADS + tx] = T.float32(1)

    return fill


# tvmjs's launch (web/src/webgpu.ts): fold x into z, pass the original x size as packGridDimX
LAUNCH = r"""
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
const [dawn, wgslFile, blocks, threads] = process.argv.slice(2);
const { create, globals } = await import(pathToFileURL(join(dawn, "index.js")).href);
Object.assign(globalThis, globals);
const gpu = create([]); // kept referenced: Dawn for Node must not collect it under the adapter
const adapter = await gpu.requestAdapter();
if (!adapter) { console.log(JSON.stringify({ error: "no WebGPU adapter" })); process.exit(0); }
const device = await adapter.requestDevice();
const n = Number(blocks) * Number(threads) + Number(threads);
const U = GPUBufferUsage;
const y = device.createBuffer({ size: n * 4, usage: U.STORAGE | U.COPY_SRC });
const pod = device.createBuffer({ size: 16, usage: U.UNIFORM | U.COPY_DST });
const read = device.createBuffer({ size: n * 4, usage: U.MAP_READ | U.COPY_DST });
let x = Number(blocks), z = 1;
while (x >= 1 << 16) { x = Math.ceil(x / 2); z *= 2; }
device.queue.writeBuffer(pod, 0, Uint32Array.of(Number(blocks), 0, 0, 0));
const pipeline = device.createComputePipeline({ layout: "auto",
  compute: { module: device.createShaderModule({ code: readFileSync(wgslFile, "utf8") }), entryPoint: "fill_kernel" } });
const enc = device.createCommandEncoder();
const pass = enc.beginComputePass();
pass.setPipeline(pipeline);
pass.setBindGroup(0, device.createBindGroup({ layout: pipeline.getBindGroupLayout(0), entries: [
  { binding: 0, resource: { buffer: y } }, { binding: 1, resource: { buffer: pod } }] }));
pass.dispatchWorkgroups(x, 1, z);
pass.end();
enc.copyBufferToBuffer(y, 0, read, 0, n * 4);
device.queue.submit([enc.finish()]);
await read.mapAsync(GPUMapMode.READ);
const out = new Float32Array(read.getMappedRange().slice(0));
read.unmap();
const grid = Number(blocks) * Number(threads);
let written = 0, spare = 0;
for (let i = 0; i < grid; ++i) written += out[i] === 1 ? 1 : 0;
for (let i = grid; i < n; ++i) spare += out[i] === 1 ? 1 : 0;
console.log(JSON.stringify({ adapter: adapter.info.description || adapter.info.device, dispatch: [x, 1, z],
                             grid_written: written, grid: grid, spare_written: spare }));
setTimeout(() => process.exit(0), 100).unref();
"""


def main() -> int:
    import tvm

    print(f"tvm {tvm.__version__}")
    root = Path(__file__).resolve().parents[3]
    dawn = root / "web" / "node_modules" / "webgpu"
    node = shutil.which("node")
    if node is None or not (dawn / "index.js").is_file():
        print(f"cannot run here: needs node ({node or 'not found'}) and Dawn for Node in {dawn} (npm ci in web/)")
        return CANNOT_RUN
    target = tvm.target.Target({"kind": "webgpu"}, host={"kind": "llvm", "mtriple": "wasm32-unknown-unknown-wasm"})
    ex = tvm.compile(tvm.IRModule({"fill": kernel()}), target=target)
    wgsl = next(m for m in ex.mod.imports if m.kind == "webgpu").inspect_source()
    guard = re.search(r"if \((.*packGridDimX)\) \{ return; \}", wgsl)
    print("TVM's guard:", guard.group(1) if guard else "(none found)")
    env = dict(os.environ)
    swiftshader = Path("/usr/lib/chromium/vk_swiftshader_icd.json")
    if swiftshader.is_file() and "VK_ICD_FILENAMES" not in env:
        env.update(VK_ICD_FILENAMES=str(swiftshader), LD_LIBRARY_PATH=f"/usr/lib/chromium:{env.get('LD_LIBRARY_PATH', '')}")
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "fill.wgsl").write_text(wgsl.split("//----------------------------------------\n")[-1])
        (Path(d) / "launch.mjs").write_text(LAUNCH)
        proc = subprocess.run([node, str(Path(d) / "launch.mjs"), str(dawn), str(Path(d) / "fill.wgsl"),
                               str(BLOCKS), str(THREADS)], capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"Dawn for Node gave no result (exit {proc.returncode}): {' '.join(proc.stderr.split())[-300:]}")
    res = json.loads(lines[-1])
    print(json.dumps(res))
    if res.get("error") == "no WebGPU adapter":
        print("cannot run here: Dawn for Node found no WebGPU adapter (Vulkan: SwiftShader or a driver)")
        return CANNOT_RUN
    if "error" in res:
        raise RuntimeError(f"Dawn for Node: {res['error']}")
    if res["grid_written"] != res["grid"]:
        raise RuntimeError(f"only {res['grid_written']} of the grid's {res['grid']} floats were written: "
                           "the launch itself is wrong, the repro cannot tell")
    if res["spare_written"]:
        print(f"BUG: {res['spare_written']} floats past the {BLOCKS} x {THREADS} grid were written: the workgroup "
              f"with index {BLOCKS} ran (dispatch {res['dispatch']})")
        return REPRODUCES
    print("fixed: no float past the grid was written")
    return FIXED


if __name__ == "__main__":
    # sdparity's repro protocol: 1 reproduces, 0 fixed, 3 an error of this script, 4 cannot run here
    try:
        code = main()
    except Exception as e:  # noqa: BLE001 - an error of the repro, never evidence
        print(f"repro error: {type(e).__name__}: {' '.join(str(e).split())[:300]}", flush=True)
        sys.exit(3)
    sys.exit(code)
