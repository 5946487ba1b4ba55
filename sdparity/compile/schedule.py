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


def build_context(target, cse: bool = True, cuda_graphs: bool | None = None):
    """The PassContext every relax.build for this target runs in (one place). ``cse=False``:
    TVM's pipeline skips its common-subexpression elimination (``build_module`` runs it later).
    ``cuda_graphs``: replay static regions as CUDA graphs; by default on CUDA_GRAPH_KINDS (a
    build that asks for them explicitly: the f16 mode's CUDA stages, ``gpu/cuda.py``)."""
    import tvm

    graphs = target.kind.name in CUDA_GRAPH_KINDS if cuda_graphs is None else cuda_graphs
    config = {"relax.backend.use_cuda_graph": graphs}
    if not cse:
        config["tirx.disable_cse_tir"] = True
    return tvm.transform.PassContext(config=config)


#: the TIR pipeline of builds with tensor-core kernels (registered by ``build_module``)
TENSOR_CORE_PIPELINE = "sdparity_tensor_core"
#: how often its device finalization runs LowerWarpMemory: once per warp buffer a kernel holds
#: (the tensor-core kernels of ``compile/mma.py`` hold three)
WARP_LOWERINGS = 4


def _register_tensor_core_pipeline() -> str:
    """TVM's default TIR pipeline with two changes, for modules with tensor-core kernels only
    (known issue ``tvm_lower_warp_memory_first_only``): common-subexpression elimination runs
    after ``LowerWarpMemory`` instead of before it (the pass needs each ldmatrix offset as a
    linear expression of threadIdx.x, and CSE hides threadIdx.x behind a let variable), and
    ``LowerWarpMemory`` runs ``WARP_LOWERINGS`` times (TVM 0.27's pass lowers only the first
    warp buffer of a statement sequence and leaves its siblings in "warp" scope, which CUDA
    codegen then rejects; each further run lowers the next, and one with none left changes
    nothing). Every other build keeps TVM's default pipeline."""
    import tvm
    from tvm.tirx import compilation_pipeline as cp

    if TENSOR_CORE_PIPELINE not in cp.PIPELINE_MAP:
        def factory(**kwargs):
            pipeline, host, device = cp.get_tir_pipeline("s_tir", **kwargs)

            def device_passes():
                lower = tvm.tirx.transform.LowerWarpMemory()
                return tvm.ir.transform.Sequential(
                    [lower] * WARP_LOWERINGS + [tvm.tirx.transform.CommonSubexprElim(), device()])

            return pipeline, host, device_passes

        cp.register_tir_pipeline(TENSOR_CORE_PIPELINE, factory)
    return TENSOR_CORE_PIPELINE


def uses_tensor_cores(mod) -> bool:
    """Whether a scheduled module holds a kernel of ``compile/mma.py`` (marked on its root block)."""
    from tvm import tirx

    from sdparity.compile.mma import MARK

    for _, func in mod.functions_items():
        body = func.body if isinstance(func, tirx.PrimFunc) else None
        block = getattr(body, "block", None)
        if block is not None and MARK in block.annotations:
            return True
    return False


def build_module(mod, target, cuda_graphs: bool | None = None):
    """tvm.compile of a scheduled module (Relax + kernels, or kernels alone: the tuner's) for
    ``target``, in the PassContext and TIR pipeline it needs (one place for every build)."""
    import tvm

    tensor_cores = uses_tensor_cores(mod)
    with build_context(target, cse=not tensor_cores, cuda_graphs=cuda_graphs):
        return tvm.compile(mod, target=target,
                           tir_pipeline=_register_tensor_core_pipeline() if tensor_cores else "default")


def fused_for_gpu(mod, target, lift: bool = False, float64: bool | None = None, max_buffer: int | None = None):
    """The kernels a GPU build schedules: legalized (the precise GroupNorm first, with float64
    statistics where the target has float64: ``legalize.stats_dtype``; the zero pipeline
    legalizes the rest) and fused, not yet scheduled. ``lift``: every computation that
    depends on the weights alone (casts to float16, transposes, the Winograd weight transform)
    first goes into ``<function>_transform_params`` (relax.transform.LiftTransformParams), which
    a runner calls once after loading the weights and whose outputs it passes instead of them
    (gpu_cuda.call_weights, f16 mode). Which arguments are weights, LiftTransformParams reads
    from each function's ``num_input``, which TVM's exported-program frontend sets (its inputs,
    then the weights: tests/unit/test_f16.py checks the stages). The tuner
    (sdparity.gpu.tune) takes its kernels from here too."""
    from tvm import relax

    from sdparity.compile import legalize

    mod = legalize.apply(mod, target, float64=float64, max_buffer=max_buffer)
    if lift:
        mod = relax.transform.LiftTransformParams()(mod)
    with target:
        return relax.get_pipeline("zero")(mod)


def schedule_for(mod, target, lift: bool = False, float64: bool | None = None, max_buffer: int | None = None):
    """``mod`` legalized, fused and scheduled for ``target``. ``float64``: whether the target has
    float64 (the building backend's ``Backend.float64``, which every backend passes; None:
    ``legalize.stats_dtype``'s default for the target kind). ``max_buffer``: the largest buffer
    a kernel may bind (``Backend.max_buffer``; GPU kinds only: ``legalize.precise_legalize_map``)."""
    from sdparity.compile import legalize

    kind = target.kind.name
    if kind == "llvm":
        from sdparity.compile.schedule_cpu import schedule_llvm  # CPU schedules (issue 6)

        if legalize.stats_dtype(kind, float64) != "float64":  # the CPU map's GroupNorm is float64
            mod = legalize.group_norm_only(mod, target, float64=float64)
        return schedule_llvm(mod, target)
    from sdparity.compile.compat import default_gpu_schedule, dlight
    from sdparity.compile.gpu_rules import exact_row_reduction, group_norm_rows, tuned_matmul

    dl = dlight()
    mod = fused_for_gpu(mod, target, lift, float64=float64, max_buffer=max_buffer)
    with target:
        mod = dl.ApplyDefaultSchedule(
            group_norm_rows(), tuned_matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
            exact_row_reduction(), dl.gpu.Fallback()
        )(mod)
        mod = default_gpu_schedule()(mod)
    return mod
