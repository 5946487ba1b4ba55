"""Every kernel of the UNet and VAE on CUDA, timed, and summed by kind (docs/performance.md).

Runs on the GPU machine with the CUDA tier's folder (``python -m sdparity.gpu.cuda
prepare``) and the same set-up as its ``device`` command. TVM 0.27's runtime VM has no
profiler any more (``VirtualMachine(..., profile=True)`` is gone), so this uses its
instrument hook, as ``gpu_cuda --profile`` does, but keeps every kernel: the device is
synchronized before and after each call, so the sum is a little above a plain call (which is
timed too, median of 10).

    python3 scripts/gpu_kernel_profile.py out/gpu $OUT     # writes $OUT/kernel-profile.json
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from sdparity.reports.kernels import by_kind


def main(folder: Path, out: Path) -> None:
    from sdparity.registry import get_stage
    from sdparity.gpu import cuda as gpu_cuda

    tvm = gpu_cuda.load_tvm_runtime()
    from reference.models import random_components

    gpu_cuda.KERNEL_DIRS.extend(p for p in folder.iterdir() if p.is_dir())
    dev = tvm.cuda(0)
    parts = random_components(json.loads((folder / "unet" / "meta.json").read_text())["model"])
    result = {"card": str(dev.device_name), "method": "VM instrument, device synchronized around every call"}
    for name in ("unet", "vae"):
        meta = json.loads((folder / name / "meta.json").read_text())
        z = dict(np.load(folder / name / "cases.npz"))
        case = meta["cases"][0]
        module = get_stage(name).wrap(parts[meta["component"]], None).eval()
        state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        weights = [tvm.runtime.tensor(state[w].detach().numpy(), dev) for w in meta["weights"]]
        args = [tvm.runtime.tensor(np.ascontiguousarray(a) if a.ndim else a, dev)
                for a in (z[f"0/in/{k}"] for k in range(case["n_inputs"]))]
        vm = gpu_cuda.load_vm(tvm, folder / name / "lib.so", dev)
        fn = case["function"]
        weights = gpu_cuda.call_weights(vm, fn, meta, weights)  # f16 mode: cast and transformed once
        vm[fn](*args, *weights)
        dev.sync()
        times = []
        for _ in range(10):
            t0 = time.perf_counter()
            vm[fn](*args, *weights)
            dev.sync()
            times.append(time.perf_counter() - t0)
        del vm  # timed above as built (with CUDA graphs where the build has them); profiled kernel by kernel
        vm = gpu_cuda.load_vm(tvm, folder / name / "lib.so", dev, graphs=False)
        vm[fn](*args, *weights)
        dev.sync()
        kernels = gpu_cuda._kernel_profile(vm, dev, fn, args, weights, top=100000)
        total = sum(k["s"] for k in kernels)
        result[name] = {
            "case": case["label"], "call_ms_median": round(sorted(times)[len(times) // 2] * 1e3, 2),
            "synced_sum_ms": round(total * 1e3, 2), "by_kind": by_kind(kernels),
            "kernels": kernels}
        print(f"{name}: call {result[name]['call_ms_median']} ms, synced sum {total * 1e3:.1f} ms", flush=True)
        for row in result[name]["by_kind"]:
            print(f"  {row['kind']:<40} {row['calls']:5d} calls {row['ms']:8.2f} ms {row['share']:6.1%}", flush=True)
        del vm, weights, args
    out.mkdir(parents=True, exist_ok=True)
    (out / "kernel-profile.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--regroup"]:  # re-sum a kernel-profile.json by today's KINDS
        path = Path(sys.argv[2])
        data = json.loads(path.read_text())
        for name in ("unet", "vae"):
            data[name]["by_kind"] = by_kind(data[name]["kernels"])
        path.write_text(json.dumps(data, indent=1))
    else:
        main(Path(sys.argv[1]), Path(sys.argv[2]))
