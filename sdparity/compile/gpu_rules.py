"""GPU schedule rules of sdparity's own, used by ``schedule.schedule_for`` before dlight's:

* ``tuned_matmul``: dlight's Matmul rule with a tile per kernel (below);
* ``exact_row_reduction``: max/min over a row, one block of threads a row;
* ``group_norm_rows``: the float64-statistics GroupNorm of ``compile/legalize.py`` (CUDA).

Each was measured on the lent H200 (docs/performance.md, "GPU tuning").

dlight's ``Matmul`` rule turns every contraction it recognises (linear layers, attention's
two products, and convolutions as implicit GEMMs: the im2col gather is inlined into the
shared-memory loads) into ``C[S, I, J] += A[S, I, K] * B[S, J, K]`` and tiles it with ONE
config per target (CUDA: 8x16 threads of 4x4 outputs, a 32x64 tile). The tile that is fastest
depends on the kernel's sizes, so this rule takes the config per kernel from a database of
times measured on a real GPU (``sdparity.gpu.tune``: every candidate below timed on the
card; ``tuned/<card>.json``). A kernel the database does not know keeps dlight's default.

What a config changes: tiling, threads, vector widths, unrolling. What it does not change: the
order in which each output adds its terms (the K loop stays one serial loop per output, split
into ``micro_size_k`` chunks), so every candidate computes the same sums; the tuner checks
that every candidate's output equals the default's on the card before its time counts.

The database is keyed by the kernel's structure (``workload_key``: a hash of the PrimFunc
without its name), so it applies to every build with the same shapes (the full-size model
at 512x512) and to nothing else. There is one database per target kind (``DATABASES``), each
timed where that kind runs: CUDA kernels by TVM's time_evaluator on the card, WebGPU kernels
in Dawn on the same card with timestamp queries (``gpu_tune --kind webgpu``). The WebGPU
candidates (``candidates("webgpu")``) have no vector loads (TVM 0.27 cannot build dlight's
matmul with them for WebGPU, known issue tvm_webgpu_vectorized_matmul) and no virtual threads
(a 2x2-virtual-thread tile made SwiftShader lose its device after 160 s), and fit WebGPU's
default limits (256 invocations, 16 KiB of workgroup memory), so a tuned wasm runs on any
adapter the untuned one runs on. The WebGPU database also times dlight's own WebGPU config
(which forcing a config cannot reproduce: it has no storage alignment) under ``DEFAULT``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

TUNED_DIR = Path(__file__).with_name("tuned")
#: per target kind, the times its builds take tiles from (docs/performance.md: the lent H200)
DATABASES = {"cuda": TUNED_DIR / "nvidia-h200.json", "webgpu": TUNED_DIR / "nvidia-h200-webgpu.json"}
DEFAULT_DATABASE = DATABASES["cuda"]
#: the name of dlight's own config in a database where it cannot be written as a candidate
DEFAULT = "default"

#: the knobs of dlight's Matmul.Config that a candidate sets, in this order
FIELDS = ("block_size_x", "block_size_y", "vthread_x", "vthread_y",
          "micro_size_x", "micro_size_y", "micro_size_k", "vector_size")

#: Candidate tiles (x = the I axis: rows of A, a convolution's output pixels; y = the J axis:
#: columns of B, a convolution's output channels). The first is dlight's CUDA default; the
#: rest span tiles of 32..128 on each side, 64..256 threads, 16..64 outputs per thread and
#: K chunks of 8, 16 and 32 (attention's head size 40 pads to 48 with 16, not with 8).
CANDIDATES: tuple[tuple[int, ...], ...] = (
    (8, 16, 1, 1, 4, 4, 16, 2),   # dlight's CUDA default: 32 x 64 tile, 128 threads
    (16, 16, 1, 1, 4, 4, 16, 4),  # 64 x 64, 256 threads
    (16, 16, 1, 1, 4, 4, 8, 4),   # 64 x 64, K chunk 8
    (8, 16, 1, 1, 8, 4, 16, 4),   # 64 x 64, 128 threads, 32 outputs each
    (16, 8, 1, 1, 4, 8, 16, 4),   # 64 x 64, 128 threads, 32 outputs each
    (16, 16, 2, 1, 4, 4, 8, 4),   # 128 x 64
    (16, 16, 1, 2, 4, 4, 8, 4),   # 64 x 128
    (16, 16, 2, 2, 4, 4, 8, 4),   # 128 x 128, 64 outputs a thread
    (16, 16, 1, 1, 8, 8, 8, 4),   # 128 x 128 without virtual threads
    (8, 8, 2, 2, 4, 4, 16, 4),    # 64 x 64, 64 threads
    (32, 8, 1, 1, 4, 4, 16, 4),   # 128 x 32
    (8, 32, 1, 1, 4, 4, 16, 4),   # 32 x 128
    # round 2 (after round 1 found dlight's 128-thread 4x4 tile best for most kernels and
    # every larger tile slower): its neighbours, with 2-float vectors as in the default
    (8, 16, 1, 1, 4, 4, 8, 2),    # K chunk 8
    (8, 16, 1, 1, 4, 4, 32, 2),   # K chunk 32
    (8, 16, 1, 1, 4, 4, 16, 4),   # 4-float vectors
    (8, 16, 1, 1, 4, 4, 16, 1),   # no vectors
    (8, 8, 2, 2, 4, 4, 16, 2),    # round 1's most frequent winner, 2-float vectors
    (16, 8, 1, 1, 4, 8, 16, 2),
    (8, 16, 2, 1, 4, 4, 16, 2),   # 64 x 64 through a virtual thread
    (8, 16, 1, 2, 4, 4, 16, 2),   # 32 x 128
    (16, 16, 1, 1, 4, 4, 16, 2),  # 256 threads, 2-float vectors
    # round 3: round 2's winners (2-float vectors) with other K chunks and virtual threads
    (8, 8, 2, 2, 4, 4, 32, 2),
    (8, 8, 2, 2, 4, 4, 8, 2),
    (16, 8, 1, 1, 4, 8, 32, 2),
    (8, 16, 1, 2, 4, 4, 32, 2),
    (16, 8, 2, 1, 4, 8, 16, 2),   # 128 x 64
    (8, 8, 2, 4, 4, 4, 16, 2),    # 64 x 128 through virtual threads
)

#: the target kinds whose builds take tiles from a database
TUNED_KINDS = tuple(DATABASES)

#: WebGPU-only candidates (their neighbours with more work a thread; vector 1, no virtual threads)
WEBGPU_EXTRA: tuple[tuple[int, ...], ...] = (
    (8, 8, 1, 1, 4, 4, 16, 1),    # dlight's WebGPU tile, K chunk 16
    (8, 8, 1, 1, 8, 8, 8, 1),     # 64 x 64, 64 threads, 64 outputs each
    (16, 8, 1, 1, 8, 8, 8, 1),    # 128 x 64
    (8, 16, 1, 1, 8, 8, 8, 1),    # 64 x 128
    (8, 8, 1, 1, 8, 4, 16, 1),    # 64 x 32
    (8, 8, 1, 1, 4, 8, 16, 1),    # 32 x 64
)

#: the limits a candidate must fit, per target kind: threads a block and bytes of shared memory
LIMITS = {"cuda": (1024, 48 * 1024), "webgpu": (256, 16 * 1024)}


def config_name(values) -> str:
    return "x".join(str(v) for v in values)


def shared_bytes(values) -> int:
    """Shared memory of one block: the A and B tiles of one K chunk, rows padded by storage_align
    (at most 8 floats a row)."""
    c = dict(zip(FIELDS, values))
    rows = (c["block_size_x"] * c["vthread_x"] * c["micro_size_x"]
            + c["block_size_y"] * c["vthread_y"] * c["micro_size_y"])
    return rows * (c["micro_size_k"] + 8) * 4


def fits(values, kind: str) -> bool:
    threads, shared = LIMITS.get(kind, LIMITS["webgpu"])
    c = dict(zip(FIELDS, values))
    return c["block_size_x"] * c["block_size_y"] <= threads and shared_bytes(values) <= shared


def candidates(kind: str, func=None) -> list:
    """The tiles the tuner times for a target kind (and kernel), the default first. CUDA: a
    float16 kernel with float32 accumulation (f16 mode) takes the tensor-core tiles of
    ``compile/mma.py`` (``mma.CANDIDATES``, its default first); other kernels CANDIDATES that
    fit (the first is dlight's CUDA default). WebGPU: None (dlight's own WebGPU config), then
    every CANDIDATES tile without virtual threads and with vector loads off, and WEBGPU_EXTRA."""
    if kind == "cuda" and func is not None:
        from sdparity.compile import mma

        if mma.takes(func):
            return list(mma.CANDIDATES)
    if kind == "cuda":
        return [v for v in CANDIDATES if fits(v, "cuda")]
    out: list = [None]
    for v in CANDIDATES + WEBGPU_EXTRA:
        v = webgpu_variant(v)
        if v is not None and v not in out:
            out.append(v)
    return out


def webgpu_variant(values) -> tuple[int, ...] | None:
    """A tile as WebGPU builds can take it (vector loads off), or None when it cannot (virtual
    threads, or over WebGPU's limits)."""
    c = dict(zip(FIELDS, values))
    v = tuple(values[:-1]) + (1,)
    return v if c["vthread_x"] == c["vthread_y"] == 1 and fits(v, "webgpu") else None


def workload_key(func) -> str:
    """The kernel's structure without its name: equal for the same computation and shapes."""
    from sdparity.compile.compat import structural_hash

    if func.attrs is not None and "global_symbol" in func.attrs:
        func = func.without_attr("global_symbol")
    return f"{structural_hash(func) & (2**64 - 1):016x}"


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime: float) -> dict:
    from sdparity.errors import SdparityError

    try:
        data = json.loads(Path(path).read_text())
        return dict(data["workloads"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SdparityError(f"tuning database {path} is unreadable ({e}); "
                            f"re-create it with `python -m sdparity.gpu.tune apply`") from None


def load_database(path: Path | None = None, kind: str = "cuda") -> dict:
    """{workload key: {"stage", "kernel", "times_ms": {config name: ms}, ...}} of ``path``
    (default: the database of ``kind``, looked up at call time); {} when there is none."""
    if path is None and kind not in DATABASES:
        return {}
    path = Path(path) if path is not None else DATABASES[kind]
    if not path.is_file():
        return {}
    return _read(str(path), path.stat().st_mtime)


def choose(entry: dict, kind: str) -> tuple[int, ...] | None:
    """The fastest measured candidate that the target can take, among those that agreed with
    the default on the card (the tuner drops the others); None: keep dlight's default (when it
    was fastest, when nothing was timed, and for a target kind outside TUNED_KINDS). WebGPU
    takes only ``webgpu_variant`` tiles as they are."""
    if kind not in TUNED_KINDS:
        return None
    from sdparity.compile.mma import MmaConfig

    best = None
    for name, ms in entry.get("times_ms", {}).items():
        if name == DEFAULT:
            values = None
        elif name.startswith("mma"):  # a tensor-core tile (compile/mma.py): CUDA only
            if kind != "cuda":
                continue
            values = MmaConfig.parse(name)
        else:
            values = tuple(int(v) for v in name.split("x"))
            if len(values) != len(FIELDS) or not fits(values, kind) or (
                    kind == "webgpu" and webgpu_variant(values) != values):
                continue
        if best is None or ms < best[0]:
            best = (ms, values)
    return None if best is None else best[1]


#: the most blocks on a grid's y and z axes: CUDA's gridDim.y/z and WebGPU's
#: maxComputeWorkgroupsPerDimension (tvmjs folds only x)
MAX_GRID_YZ = 65535


def _grid_fits(sch) -> bool:
    """Whether every blockIdx.y/z loop of a scheduled kernel has at most MAX_GRID_YZ blocks."""
    import tvm

    for block in sch.get_child_blocks(sch.get_sblock("root")):
        for loop in sch.get_loops(block):
            node = sch.get(loop)
            tag = node.thread_binding.thread_tag if node.thread_binding is not None else ""
            if tag in ("blockIdx.y", "blockIdx.z") and not (
                    isinstance(node.extent, tvm.tirx.IntImm) and int(node.extent) <= MAX_GRID_YZ):
                return False
    return True


def _has_float16(func) -> bool:
    return any(str(b.dtype) == "float16" for b in getattr(func, "params", []) if hasattr(b, "dtype"))


def tuned_matmul(database: dict | None = None, force: tuple[int, ...] | None = None):
    """dlight's Matmul rule, with the config of each kernel from ``database`` (or ``force``d
    for every kernel: the tuner's candidates)."""
    from sdparity.compile.compat import dlight

    from tvm.tirx import PrimFunc

    base = dlight().gpu.Matmul

    class TunedMatmul(base):
        def apply(self, func, target, tunable):
            from sdparity.errors import one_line

            values = force
            db = load_database(kind=target.kind.name) if database is None else database
            if values is None and db:
                entry = db.get(workload_key(func)) if isinstance(func, PrimFunc) else None
                values = choose(entry, target.kind.name) if entry else None
            from sdparity.compile import mma

            if isinstance(values, mma.MmaConfig) and force is not None:
                return mma.mma_schedule(func, values)  # the tuner: a candidate that fails says so
            if target.kind.name == "cuda" and isinstance(func, PrimFunc) and (
                    values is None or isinstance(values, mma.MmaConfig)):
                # float16 in, float32 accumulation: tensor cores (compile/mma.py; None: not such a kernel)
                try:
                    sch = mma.mma_schedule(func, values or mma.DEFAULT_CONFIG)
                except Exception as e:  # noqa: BLE001 - a structure the tensor-core rule cannot take
                    import sys

                    name = func.attrs.get("global_symbol", "?") if func.attrs else "?"
                    print(f"tensor-core schedule refused {name}: {one_line(e)}; CUDA cores instead", file=sys.stderr)
                    sch = None
                if sch is not None:
                    return sch
                values = None
            self._values = values
            if target.kind.name == "cuda" and _has_float16(func):
                # a float16 kernel the tensor-core rule did not take: with an arch of sm_70+
                # dlight would hand it to its own wmma rule (MatmulTensorization), which no
                # check here has vouched for; without one dlight tiles it like float32 (the
                # schedule does not depend on the arch otherwise)
                import tvm

                target = tvm.target.Target({"kind": "cuda", "max_num_threads": 1024, "thread_warp_size": 32})
            sch = super().apply(func, target, tunable)
            if sch is None or force is not None or _grid_fits(sch):
                return sch
            # dlight puts the batch and the row tiles on blockIdx.y unfolded: SDXL's VAE at
            # 1024x1024 (Winograd GEMMs of 16 x 262144 rows) asked for 65536 blocks there and its
            # launch failed (CUDA_ERROR_INVALID_VALUE, lent H100). A larger row tile launches;
            # every tile adds each output's terms in the same order (above), so the sums are
            # the same: the first candidate whose grid fits
            for values in candidates(target.kind.name):
                if values is not None and not isinstance(values, mma.MmaConfig):
                    self._values = values
                    tiled = super().apply(func, target, tunable)
                    if tiled is not None and _grid_fits(tiled):
                        return tiled
            return sch

        def get_configs(self, target):
            config = super().get_configs(target)
            if self._values is not None:
                config = dataclasses.replace(config, **dict(zip(FIELDS, self._values)),
                                             unroll=256, use_shared=True, storage_align=True,
                                             inner_x=False)
            return config

    return TunedMatmul()


#: the most threads that share one row of an exact reduction (its rows of 4096 and longer)
ROW_THREADS = 256
#: the fewest (a warp): the values each thread reads before the threads combine
ROW_VALUES_PER_THREAD = 8
MIN_ROW_THREADS = 32


def row_threads(n) -> int:
    """Threads for a row of ``n`` values: about ``ROW_VALUES_PER_THREAD`` reads each, a power of two
    in [MIN_ROW_THREADS, ROW_THREADS] (a symbolic length: ROW_THREADS). Short rows get few threads:
    with 256, a row of 77 keys (cross-attention) left 70% of its block idle, and any row of up to
    256 values paid 9 barriers of the cross-thread combination for 256 invocations that read at
    most one value each (on SwiftShader, which runs a block's invocations in turn, the tiny
    UNet's two such kernels took 8.0 s of its 18.7 s of kernel time: docs/webgpu.md)."""
    if not isinstance(n, int):
        return ROW_THREADS
    t = MIN_ROW_THREADS
    while t < ROW_THREADS and t * ROW_VALUES_PER_THREAD < n:
        t *= 2
    return t


def exact_row_reduction():
    """A rule for kernels that end in a max or min over their innermost axis after elementwise
    work, e.g. the "is every score of this row -inf" test of PyTorch's safe softmax in every
    attention (``max(int8(!(x == -inf)))``), which no dlight rule but Fallback takes: one
    thread a row, 4096 strided reads each (UNet, 64x64 latents: 2.9 ms a call, 7.8% of the
    CUDA UNet in docs/performance.md). Here one block takes a row and its threads
    (``row_threads``: 32-256 by the row's length) read it together (coalesced), combining with
    a cross-thread reduction. Only max and min: their
    result does not depend on the order in which the values meet, so the kernel computes
    exactly what the unscheduled one does."""
    from tvm import s_tir, tirx

    from sdparity.compile.compat import dlight

    dl = dlight()

    class ExactRowReduction(dl.gpu.Fallback.__mro__[1]):  # dlight's GPUScheduleRule
        def apply(self, func, target, _):
            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            blocks = sch.get_child_blocks(dl.analysis.get_root_block(sch))
            if not blocks:
                return None
            red = blocks[-1]
            stmt = sch.get(red)
            kinds = [iv.iter_type for iv in stmt.iter_vars]  # 0 data-parallel, 2 reduction
            store = stmt.body
            if (kinds.count(2) != 1 or kinds[-1] != 2 or not isinstance(store, tirx.BufferStore)
                    or not isinstance(store.value, (tirx.Max, tirx.Min))):
                return None
            try:
                for b in blocks[:-1]:
                    sch.compute_inline(b)
            except Exception:  # noqa: BLE001 - a producer that cannot be inlined: not this rule's kernel
                return None
            loops = sch.get_loops(red)
            if len(loops) != len(kinds):
                return None
            bx = sch.fuse(*loops[:-1]) if len(loops) > 1 else sch.add_unit_loop(red)
            extent = sch.get(loops[-1]).extent
            n = int(extent) if isinstance(extent, tirx.IntImm) else None
            _, tx = sch.split(loops[-1], [None, row_threads(n)])
            sch.bind(bx, "blockIdx.x")
            sch.bind(tx, "threadIdx.x")
            return sch

    return ExactRowReduction()


def group_norm_rows():
    """A rule for sdparity's float64-statistics GroupNorm (compile/legalize.py; CUDA): every
    sum gets a block of threads that read its row together, coalesced, and combine with a
    cross-thread reduction, and the elementwise rest (mean, variance, normalization and the
    fused epilogue, e.g. SiLU) is inlined into one pass over the tensor. Under Fallback, one
    thread summed each 512-value row with strided reads (VAE: 15 ms, 11% of a decode, ~5x its
    memory-bound time). The sums accumulate in float64 in another order; their rounding
    (~1e-16 relative) is far below the float32 rounding of the output, so the result is the
    float32 rounding of the same value. Only the float64 variant: the float32 one (WebGPU)
    keeps its order."""
    from tvm import s_tir, tirx

    from sdparity.compile.compat import dlight

    dl = dlight()
    row_sums = ("gn_row_sum", "gn_row_sumsq")
    group_sums = ("gn_sum", "gn_sumsq")

    class GroupNormRows(dl.gpu.Fallback.__mro__[1]):  # dlight's GPUScheduleRule
        def apply(self, func, target, _):
            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            sch = s_tir.Schedule(func)
            root = dl.analysis.get_root_block(sch)
            names = {sch.get(b).name_hint: b for b in sch.get_child_blocks(root)}
            if not set(row_sums + group_sums) <= set(names) or "gn_norm" not in names:
                return None
            if str(sch.get(names["gn_row_sum"]).writes[0].source.dtype) != "float64":
                return None
            try:
                blocks = sch.get_child_blocks(root)
                for b in blocks[:-1]:
                    name = sch.get(b).name_hint
                    if name not in row_sums + group_sums:
                        sch.compute_inline(b)
                for b in sch.get_child_blocks(root):
                    name = sch.get(b).name_hint
                    loops = sch.get_loops(b)
                    if name in row_sums:  # (n, c, rows..., w): one block of 64 threads a row
                        bx = sch.fuse(*loops[:-1])
                        _, tx = sch.split(loops[-1], [None, 64])
                    elif name in group_sums:  # (n, g, channels in group, rows...): 256 threads a group
                        bx = sch.fuse(*loops[:2])
                        _, tx = sch.split(sch.fuse(*loops[2:]), [None, 256])
                    else:  # the elementwise rest
                        bx, tx = sch.split(sch.fuse(*loops), [None, 256])
                    sch.bind(bx, "blockIdx.x")
                    sch.bind(tx, "threadIdx.x")
            except Exception:  # noqa: BLE001 - a structure this rule does not know: leave it to the others
                return None
            return sch

    return GroupNormRows()
