"""Tensor-core schedules for float16 matmuls on CUDA (f16 mode, issue 13): ``mma_schedule``.

The rule uses the tensor-core intrinsics TVM registers as ``get_mma_intrin_group``: ``ldmatrix``
from shared memory into registers (its "trans" form for operands stored [K, row]),
``mma.sync`` m16n8k16 with float32 accumulation, and a plain store back to shared memory. It
needs apache-tvm-ffi 0.1.14 (with 0.1.15 every ``tensorize`` segfaults: known issue
``tvm_ffi_0115_dtype_json_segfault``) and ``schedule.build_module``'s TIR pipeline (known issues
``tvm_lower_warp_memory_first_only`` and ``tvm_cse_hides_warp_index``).

What it computes: every kernel dlight's Matmul rule takes, normalized the same way to
``C[S, I, J] += A[S, I, K] * B[S, J, K]`` (linear layers, attention's products, convolutions
as implicit GEMMs, the Winograd GEMMs), when A and B are float16 and C accumulates in float32
(what ``ToMixedPrecision(out_dtype="float32")`` produces) and I and J are at least
``MIN_EXTENT``. Producers (casts, im2col gathers, padding) are inlined into the global-to-shared
copies and consumers (bias, residual adds, the cast back to float16) into the shared-to-global
copy, as dlight does.

Numerics: a float16 x float16 product is exact in float32 (11 + 11 significant bits < 24), so
the result differs from the CUDA-core kernel only in the order of the float32 additions (the
tensor core adds 16 products per step; a split K adds its parts at the end). That difference is
~1e-7 relative, far below the float16 rounding (2^-11 ~ 4.9e-4) the kernel's consumers apply;
the f16 rule judges the whole stage on the card (``sdparity.commands.f16``).

Tile: ``MmaConfig`` (warps a block along I and J, 16x16 fragments a warp along I and J, 16-wide
K steps a shared-memory stage, K split across blocks). ``gpu_tune --precision f16`` times
``CANDIDATES`` on the card; ``gpu_rules.tuned_matmul`` takes the fastest from the database and
``DEFAULT_CONFIG`` for kernels it does not know (docs/performance.md, "f16 mode").
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class MmaConfig:
    warps_i: int = 2
    warps_j: int = 2
    frags_i: int = 4
    frags_j: int = 4
    k_steps: int = 2
    vector: int = 8  # float16 elements a thread copies at once (16 bytes)
    split_k: int = 1  # K split across blocks (partial sums in float32, added by a second kernel)

    @property
    def tile(self) -> tuple[int, int, int]:
        return 16 * self.warps_i * self.frags_i, 16 * self.warps_j * self.frags_j, 16 * self.k_steps

    @property
    def name(self) -> str:
        return "mma" + "x".join(str(getattr(self, f.name)) for f in dataclasses.fields(self))

    @classmethod
    def parse(cls, name: str) -> "MmaConfig":
        return cls(*(int(v) for v in name[3:].split("x")))

    def shared_bytes(self) -> int:
        bi, bj, bk = self.tile
        return (bi + bj) * (bk + 8) * 2 + 16 * 16 * 4 * self.warps_i * self.warps_j * self.frags_i * self.frags_j


DEFAULT_CONFIG = MmaConfig()
#: the tiles the tuner times (``gpu_tune``; ``gpu_rules.candidates``), the default first: block
#: tiles of 32..128 on each side, 1..8 warps, K stages of 16..64, K split in up to 8 parts
CANDIDATES: tuple[MmaConfig, ...] = (
    DEFAULT_CONFIG,                 # 128 x 128, 4 warps of 64 x 64, K 32
    MmaConfig(2, 2, 2, 4, 2),       # 64 x 128
    MmaConfig(2, 2, 4, 2, 2),       # 128 x 64
    MmaConfig(2, 2, 2, 2, 2),       # 64 x 64
    MmaConfig(2, 2, 2, 2, 4),       # 64 x 64, K 64
    MmaConfig(1, 2, 2, 2, 4),       # 32 x 64, 2 warps
    MmaConfig(2, 1, 2, 2, 4),       # 64 x 32, 2 warps
    MmaConfig(1, 1, 2, 2, 4),       # 32 x 32, 1 warp
    MmaConfig(2, 2, 1, 2, 4),       # 32 x 64, 4 warps
    MmaConfig(2, 2, 2, 1, 4),       # 64 x 32, 4 warps
    MmaConfig(2, 2, 1, 1, 4),       # 32 x 32, 4 warps
    MmaConfig(4, 2, 2, 2, 2),       # 128 x 64, 8 warps
    MmaConfig(2, 4, 2, 2, 2),       # 64 x 128, 8 warps
    MmaConfig(4, 2, 2, 4, 2),       # 128 x 128, 8 warps
    MmaConfig(2, 2, 4, 4, 1),       # 128 x 128, K 16
    MmaConfig(2, 2, 2, 2, 2, 8, 4),  # 64 x 64, K split in 4
    MmaConfig(2, 2, 2, 2, 2, 8, 8),  # 64 x 64, K split in 8
    MmaConfig(2, 2, 2, 4, 2, 8, 4),  # 64 x 128, K split in 4
    MmaConfig(2, 2, 4, 4, 2, 8, 4),  # 128 x 128, K split in 4
    MmaConfig(2, 2, 2, 2, 4, 8, 2),  # 64 x 64, K 64, K split in 2
    MmaConfig(4, 1, 2, 4, 2),       # 128 x 64, 4 warps of 32 x 64 (narrow J: attention x V)
    MmaConfig(2, 1, 4, 4, 2),       # 128 x 64, 2 warps of 64 x 64
)
#: the root-block annotation that marks a tensor-core kernel (``schedule.build_module`` builds
#: modules with one through its own TIR pipeline)
MARK = "sdparity.tensor_core"
#: the smallest I and J extents worth a tensor-core tile (smaller ones: mostly padding). 32:
#: attention's second product has J = the head size, 40 in SD 1.5 (padded to 64: 1.6x the
#: work, on tensor cores; on CUDA cores it took 1.34 ms a call at 4096 tokens on the H200)
MIN_EXTENT = 32


def _normalize(func):
    """(schedule, root block, main block) with the contraction normalized as dlight's Matmul
    does, C[S, I, J] += A[S, I, K] * B[S, J, K], when the kernel is one this rule takes: one
    contraction reading float16 and accumulating in float32, static sizes, I and J at least
    MIN_EXTENT; else None."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.gpu.matmul import get_in_out_dtypes, get_index_map, get_reduction_blocks

    from sdparity.compile.compat import dlight

    dl = dlight()
    try:
        sch = s_tir.Schedule(func)
        root = dl.analysis.get_root_block(sch)
        reductions = get_reduction_blocks(sch, sch.get_child_blocks(root))
    except Exception:  # noqa: BLE001 - not a kernel this rule reads
        return None
    if not reductions or len(reductions) != 1:
        return None
    main = reductions[0]
    if tuple(get_in_out_dtypes(sch.get(main))) != ("float16", "float32"):
        return None
    try:
        reindex_a = sch.reindex(main, ("read", 0))
        reindex_b = sch.reindex(main, ("read", 1))
        reindex_c = sch.reindex(main, ("write", 0))
        maps = get_index_map(sch.get(main))
        if maps is None:
            return None
        matmul_map, a_map, b_map, c_map = maps
        sch.transform_layout(reindex_a, ("write", 0), a_map)
        sch.transform_layout(reindex_b, ("write", 0), b_map)
        sch.transform_layout(reindex_c, ("read", 0), c_map)
        sch.transform_block_layout(main, matmul_map)
    except Exception:  # noqa: BLE001 - a contraction dlight's normalization cannot take
        return None
    extents = [iv.dom.extent for iv in sch.get(main).iter_vars]
    if not all(isinstance(e, tirx.IntImm) for e in extents) or min(int(e) for e in extents[1:3]) < MIN_EXTENT:
        return None
    return sch, root, main, reindex_c


def takes(func) -> bool:
    """Whether ``mma_schedule`` schedules this kernel (else it stays on CUDA cores)."""
    return _normalize(func) is not None


def _uses(expr, var) -> bool:
    from tvm.tirx.analysis import undefined_vars

    return any(v.same_as(var) for v in undefined_vars(expr))


def _k_contiguous(block) -> bool:
    """Whether the global buffers a shared-memory copy block reads are contiguous along K (the
    innermost index of each depends on the block's K iterator and not on its row iterator)."""
    row, k = block.iter_vars[-2].var, block.iter_vars[-1].var
    reads = [r for r in block.reads if r.source.scope() == "global"]
    if not reads:
        return True
    for r in reads:
        last = r.region[-1].min
        if not _uses(last, k) or _uses(last, row):
            return False
    return True


def mma_schedule(func, config: MmaConfig = DEFAULT_CONFIG):
    """The kernel scheduled on tensor cores, or None when its structure does not fit (``takes``)."""
    normalized = _normalize(func)
    if normalized is None:
        return None
    # imported only now: registering TVM's CUDA tensor intrinsics takes ~5 s of TVMScript
    # parsing (40 s without compat.name_frozen_import_frames), which a build without a float16
    # contraction never pays
    from sdparity.compile.compat import name_frozen_import_frames

    name_frozen_import_frames()
    from tvm.s_tir.dlight.gpu.matmul import auto_inline_consumer_chain, auto_inline_producers
    from tvm.s_tir.tensor_intrin.cuda import get_mma_intrin_group, shared_16x16_to_ldmatrix_32x8_layout

    sch, root, main, reindex_c = normalized
    bi, bj, bk = config.tile
    if config.split_k > 1 and int(sch.get(main).iter_vars[3].dom.extent) % (bk * config.split_k):
        # a split of a padded K predicates the 16-byte copies, and TVM 0.27's CUDA codegen
        # writes a predicated 8 x float16 load as make_uint4 with 8 arguments (nvcc rejects it)
        return None
    sch.pad_einsum(main, [1, bi, bj, bk * config.split_k])
    final = None
    if config.split_k > 1:
        # split K: the contraction becomes split_k partial sums (C_rf[part, S, I, J], float32 in
        # global memory), each part a batch of the tensor-core kernel below, and a second kernel
        # adds the parts in order and applies the epilogue (small I x J with a long K, e.g. the
        # UNet's 8x8 convolutions: 1280 x 11520 per output pixel, 10 blocks without a split)
        batch, i, j, k = sch.get_loops(main)
        part, k = sch.split(k, [config.split_k, None])
        final, main = main, sch.rfactor(part, 0)
        batch, i, j, part, k = sch.get_loops(main)
        sch.reorder(part, batch, i, j, k)
        sch.fuse(part, batch)
    batch, i, j, k = sch.get_loops(main)
    i, i_frag = sch.split(i, [None, 16])
    j, j_frag = sch.split(j, [None, 16])
    k, k_frag = sch.split(k, [None, 16])
    sch.reorder(i, j, k, i_frag, j_frag, k_frag)
    inner = main
    outer = sch.blockize(i_frag)

    i0, i1, i2 = sch.split(i, [None, config.warps_i, config.frags_i])
    j0, j1, j2 = sch.split(j, [None, config.warps_j, config.frags_j])
    k0, k1 = sch.split(k, [None, config.k_steps])
    sch.reorder(batch, i0, j0, i1, j1, k0, k1, i2, j2)
    sch.bind(batch, "blockIdx.y")
    sch.bind(sch.fuse(i0, j0), "blockIdx.x")
    warp = sch.fuse(i1, j1)
    sch.bind(warp, "threadIdx.y")
    warps = config.warps_i * config.warps_j

    def to_shared(index) -> bool:
        """The operand's tile copied to shared memory. Where global memory holds it with K
        contiguous (linear layers, attention's Q and K, convolution weights): as [row, K], in
        16-byte vectors along K. Where it holds it with rows contiguous (attention's V, the
        im2col of an NCHW image): as [K, row], threads along the rows, so that the global reads
        coalesce and the shared stores do not conflict; ldmatrix then transposes it (the
        "trans" intrinsics). Returns whether the tile is stored transposed."""
        cache = sch.cache_read(outer, index, "shared.dyn")
        sch.compute_at(cache, k0)
        auto_inline_producers(sch, cache)
        transposed = not _k_contiguous(sch.get(cache))
        row, kk = sch.get_loops(cache)[-2:]
        if not transposed:
            # 16 bytes a thread: 8 float16, or 4 where a float32 source (weights) is cast here
            wide = any(str(r.source.dtype) == "float32" for r in sch.get(cache).reads)
            fused, vector = sch.fuse(row, kk), config.vector // 2 if wide else config.vector
        else:
            sch.transform_layout(cache, ("write", 0), lambda s_, r, k_: (s_, k_, r))
            sch.reorder(kk, row)
            fused, vector = sch.fuse(kk, row), 1
        _, ty, tx, vec = sch.split(fused, [None, warps, 32, vector])
        sch.bind(ty, "threadIdx.y")
        sch.bind(tx, "threadIdx.x")
        if vector > 1:
            sch.vectorize(vec)
        sch.storage_align(cache, 0, axis=-2, factor=32, offset=8)  # rows 16 bytes apart: ldmatrix without bank conflicts
        return transposed

    a_rows = to_shared(0)
    b_rows = to_shared(1)

    a_warp = sch.cache_read(outer, 0, "warp")
    b_warp = sch.cache_read(outer, 1, "warp")
    sch.compute_at(a_warp, k1)
    sch.compute_at(b_warp, k1)

    c_shared = sch.cache_write(outer, 0, "shared.dyn")
    c_warp = sch.cache_write(outer, 0, "warp")
    sch.reverse_compute_at(c_warp, warp)
    sch.reverse_compute_at(c_shared, warp)
    ci, cj = sch.get_loops(c_warp)[-2:]
    ci0, ci1 = sch.split(ci, [None, 16])
    cj0, cj1 = sch.split(cj, [None, 16])
    sch.reorder(ci0, cj0, ci1, cj1)

    init = sch.decompose_reduction(outer, k0)
    init_inner = sch.get_child_blocks(init)[0]

    def fragments(cache):
        fi, fj = sch.get_loops(cache)[-2:]
        fi0, fi1 = sch.split(fi, [None, 16])
        fj0, fj1 = sch.split(fj, [None, 16])
        sch.reorder(fi0, fj0, fi1, fj1)
        return fi1

    loop_a = fragments(a_warp)
    loop_b = fragments(b_warp)

    def lanes(*ij):
        *rest, r, c = ij
        return (*rest, r // 16, c // 16, *shared_16x16_to_ldmatrix_32x8_layout(r % 16, c % 16))

    for block, buf in ((a_warp, ("write", 0)), (b_warp, ("write", 0)), (c_warp, ("read", 0))):
        sch.transform_layout(block, buf, lanes)

    # mma's A is [I, K] ("trans" when stored [K, I]); its B is [K, J] ("trans" when [J, K])
    group = get_mma_intrin_group("shared.dyn", "shared.dyn", "float16", "float32", a_rows, not b_rows)
    sch.tensorize(loop_a, group["load_a"])
    sch.tensorize(loop_b, group["load_b"])
    sch.tensorize(sch.get_loops(inner)[-3], group["compute"])
    sch.tensorize(sch.get_loops(init_inner)[-2], group["init"])
    sch.tensorize(sch.get_loops(c_warp)[-2], group["store"])

    if final is None:
        auto_inline_consumer_chain(sch, c_shared)
    fused = sch.fuse(*sch.get_loops(c_shared)[-2:])
    _, tx, vec = sch.split(fused, [None, 32, 4])
    sch.bind(tx, "threadIdx.x")
    sch.vectorize(vec)
    if final is not None:  # the sum of the parts, one thread an output, and the epilogue after it
        auto_inline_consumer_chain(sch, reindex_c)
        *spatial, _ = sch.get_loops(final)
        bx, tx = sch.split(sch.fuse(*spatial), [None, 256])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")
        sch.reverse_compute_at(reindex_c, tx)
    sch.annotate(root, MARK, config.name)
    return sch
