"""Where kernels get their schedules, for every native and web target: one place.

Target-specific IR rewrites that must come first belong to the backend (e.g. the WebGPU
backend's ``sdparity.backends.webgpu.wgsl.legalize_for_webgpu``), which calls this after them.

Unscheduled kernels are correct on the CPU (naive loops) but GPU targets (CUDA, Vulkan,
WebGPU) need every loop nest bound to threads; dlight's GPU rules do that, and
DefaultGPUSchedule covers what no rule matches. Matmuls and convolutions take their tile from
the database of times measured on a GPU (``sdparity.compile.gpu_rules``, issue 13).
"""

from __future__ import annotations

#: The trusted build that localization compares against: kernels legalized and fused as the
#: backends do, left unscheduled, compiled for plain LLVM at opt-level 0 (naive loops).
TRUSTED_TARGET = {"kind": "llvm", "opt-level": 0}

#: target kinds whose builds replay each static region of a call as one CUDA graph
#: (relax.transform.RewriteCUDAGraph). None: on the lent H200 the full-size UNet built with
#: graphs stopped at its first call with cudaErrorIllegalAddress, while the same library with
#: its regions run kernel by kernel (``gpu_cuda device --no-graphs``) passed parity at 86 ms
#: (docs/performance.md, "CUDA graphs"; cause not localized, so not filed as a TVM issue).
#: A graph also keeps the addresses it was captured with: weights must stay in the same device
#: arrays between calls (every runner here keeps them).
CUDA_GRAPH_KINDS: frozenset[str] = frozenset()


def build_context(target):
    """The PassContext every relax.build for this target runs in (one place)."""
    import tvm

    return tvm.transform.PassContext(
        config={"relax.backend.use_cuda_graph": target.kind.name in CUDA_GRAPH_KINDS})


def fused_for_gpu(mod, target):
    """The kernels a GPU build schedules: legalized (the precise GroupNorm first; the zero
    pipeline legalizes the rest) and fused, not yet scheduled. The tuner
    (sdparity.tiers.gpu_tune) takes its kernels from here too."""
    from tvm import relax

    from sdparity.compile import legalize

    mod = legalize.apply(mod, target)
    with target:
        return relax.get_pipeline("zero")(mod)


def schedule_for(mod, target):
    kind = target.kind.name
    if kind == "llvm":
        from sdparity.compile.schedule_cpu import schedule_llvm  # CPU schedules (issue 6)
        return schedule_llvm(mod, target)
    from sdparity.compile.compat import default_gpu_schedule, dlight
    from sdparity.compile.gpu_rules import exact_row_reduction, group_norm_rows, tuned_matmul

    dl = dlight()
    mod = fused_for_gpu(mod, target)
    with target:
        mod = dl.ApplyDefaultSchedule(
            group_norm_rows(), tuned_matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            exact_row_reduction(), dl.gpu.Fallback()
        )(mod)
        mod = default_gpu_schedule()(mod)
    return mod
