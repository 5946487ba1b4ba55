"""Where kernels get their schedules, for every native and web target: one place.

Unscheduled kernels are correct on the CPU (naive loops) but GPU targets (CUDA, Vulkan,
WebGPU) need every loop nest bound to threads; dlight's GPU rules do that, and
DefaultGPUSchedule covers what no rule matches.
"""

from __future__ import annotations


def schedule_for(mod, target):
    from tvm import relax

    kind = target.kind.name
    if kind == "llvm":
        return mod
    from .compat import default_gpu_schedule, dlight

    dl = dlight()

    with target:
        mod = relax.get_pipeline("zero")(mod)
        mod = dl.ApplyDefaultSchedule(
            dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
        )(mod)
        mod = default_gpu_schedule()(mod)
    return mod
