"""Which kernels of a stage fit WebGPU's buffer and grid limits, from its WebGPU schedule.

Schedules the stage for WebGPU exactly as the webgpu backend builds it (``legalize_for_webgpu``,
then ``schedule_for``: Winograd, tuned tiles, dlight), without linking a wasm, and lists every
kernel binding larger than each limit below, and the kernels whose grid has more than 65535
workgroups on an axis tvmjs does not fold (y, z). Each binding is one tensor (activation or
weight); a planned storage holds the largest tensor that shares it, so the largest binding is the
largest buffer too. The model is made in memory with only the stage's weights
(``reference.models.seeded_model``), so sdxl-random's UNet needs ~10.5 GB here.

    python scripts/webgpu_buffer_sizes.py --model sdxl-random --stages unet,vae [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

#: maxStorageBufferBindingSize (bytes) of the adapters this project runs on
LIMITS = {
    "webgpu_default_128MiB": 128 << 20,  # the WebGPU spec's default, what a page gets unless it asks
    "swiftshader_chromium_1GiB": 1 << 30,  # Chromium 156's SwiftShader here (a 1024 MiB buffer failed)
    "dawn_nvidia_h100": 2147483644,  # Dawn for Node on the lent H100 (gpu-report.json's adapter limits)
}
MAX_WORKGROUPS = 65535  # maxComputeWorkgroupsPerDimension (tvmjs folds x into z, not y or z)


def kernels(stage_name: str, model_name: str) -> list[dict]:
    import tvm

    from reference.models import seeded_model
    from sdparity.backends import get_backend
    from sdparity.registry import get_stage

    st = get_stage(stage_name)
    parts = {"": (), "text_encoder": ("text_encoder", "text_encoder_2")}.get(st.component, (st.component,))
    model = seeded_model(model_name, parts)
    ir = st.build_ir(model, st.default_variant(model))
    mod = tvm.IRModule({gv: f for gv, f in ir.mod.functions.items()})
    del ir, model
    mod = get_backend("webgpu").scheduled(mod)
    out = []
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        sizes = {}
        for param in func.params:
            buf = func.buffer_map.get(param) if hasattr(func, "buffer_map") else None
            buf = buf if buf is not None else param
            shape = getattr(buf, "shape", None)
            if shape is None or not all(isinstance(d, tvm.tirx.IntImm) for d in shape):
                continue
            bits = tvm.runtime.DataType(str(buf.dtype)).bits
            sizes[str(buf.name)] = math.prod(int(d) for d in shape) * bits // 8
        grid = _grid(func)
        out.append({"kernel": gv.name_hint, "bindings": sizes, "grid": grid})
    return out


def _grid(func) -> dict:
    import re

    pattern = r'T\.thread_binding\((?:T\.int(?:32|64)\()?(\d+)\)?, thread="(blockIdx\.[xyz])"\)'
    grid: dict = {}
    for n, tag in re.findall(pattern, func.script()):
        grid[tag] = max(grid.get(tag, 0), int(n))
    return grid


def summary(stage_name: str, found: list[dict]) -> dict:
    largest = sorted(((size, k["kernel"], name) for k in found for name, size in k["bindings"].items()),
                     reverse=True)
    over = {lim: sorted({k for s, k, _ in largest if s > b}) for lim, b in LIMITS.items()}
    grid_over = [k["kernel"] for k in found
                 if any(k["grid"].get(a, 0) > MAX_WORKGROUPS for a in ("blockIdx.y", "blockIdx.z"))]
    return {"stage": stage_name, "kernels": len(found),
            "largest_bindings": [{"bytes": s, "MiB": round(s / 2**20, 1), "kernel": k, "buffer": n}
                                 for s, k, n in largest[:8]],
            "kernels_over": {lim: len(ks) for lim, ks in over.items()},
            "kernels_over_names": over, "grid_over_65535_yz": grid_over}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="sdxl-random")
    p.add_argument("--stages", default="unet,vae")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    result = {"model": args.model, "limits": LIMITS, "max_workgroups": MAX_WORKGROUPS, "stages": []}
    for name in args.stages.split(","):
        s = summary(name, kernels(name, args.model))
        result["stages"].append(s)
        print(json.dumps({k: v for k, v in s.items() if k != "kernels_over_names"}, indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
