"""CPU schedules for llvm builds (issue 6).

An unscheduled ``relax.build(mod, "llvm")`` runs every kernel as naive single-threaded
loops. This module legalizes and fuses the Relax module itself (the same passes as TVM's CPU
pipeline) and then gives every PrimFunc a schedule:

* contractions (conv2d, matmul: ``C[...] += A[...] * B[...]``) get a register-tiled
  micro-kernel: the output's innermost axis is vectorized, a second output axis that the
  vector operand does not depend on is unrolled, the accumulator tile lives in a local
  buffer, the reduction loops keep their original order (so every output element sums its
  terms in the same order as the unscheduled kernel), and the outer tiles run in parallel;
  the elementwise epilogue (bias, residual add) is folded into the tile's write-back;
* every other block is parallelized over its leading spatial loops and, where the innermost
  extent allows, vectorized;
* only blocks with enough work (``PARALLEL_MIN_WORK``, ``PARALLEL_MIN_MACS``) run in
  parallel: small kernels stay serial and never wake TVM's thread pool.

Nothing here reassociates a sum, so numerics stay those of the unscheduled kernels up to the
fused multiply-adds LLVM may form for the host's CPU (``mcpu``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os

from sdparity.compile.attention import ATTENTION, fuse_attention
from sdparity.compile.legalize import precise_legalize_map

#: bump when a schedule below changes the generated code: it is part of the build cache key
VERSION = 7

#: A block runs in parallel only when it has at least this much work and all of its extents are
#: known at build time: iterations of its loop nest (reductions included), or multiply-adds
#: for a contraction (vectorized, each costs ~1/16 of an elementwise iteration). Both are about
#: a millisecond of single-thread work here. Below that a parallel loop gains microseconds on an
#: idle core and loses up to a scheduling slice (milliseconds) when the other core is taken:
#: with every block over 2^18 iterations parallel, the tiny UNet took 3.3x and the VAE 2.0x as
#: long with 2 threads as with 1 at load 7-8 (docs/performance.md, "Threads"). Kernels with
#: symbolic extents (the scheduler, concat and RGBA stages, built once for any shape) stay
#: serial: at SD sizes they are sub-millisecond.
PARALLEL_MIN_WORK = 1 << 22
PARALLEL_MIN_MACS = 1 << 26

#: register tile: at most this many rows and accumulator registers (AVX-512 has 32 vector
#: registers: the rest hold operands)
_MAX_ROWS = int(os.environ.get("SDPARITY_CPU_ROWS", 8))
_MAX_ACC = int(os.environ.get("SDPARITY_CPU_ACC", 24))


def host_target():
    """An llvm target for this machine: its CPU (mcpu) and core count."""
    import tvm

    spec = {"kind": "llvm", "num-cores": os.cpu_count() or 1}
    try:
        cpu = tvm.target.codegen.llvm_get_system_cpu()
    except Exception:  # an LLVM without host detection: generic x86-64 code still works
        cpu = ""
    if cpu and cpu != "generic":
        spec["mcpu"] = cpu
    return tvm.target.Target(spec)


def build_target(scheduled_mod, target):
    """The target to compile a scheduled module with.

    LLVM contracts a*b+c into one fused multiply-add wherever the CPU has FMA (TVM's LLVM
    backend always allows it; no target option turns it off). That changes the rounding of
    elementwise arithmetic: with mcpu the DPM-Solver formulas were 1 ulp off torch instead
    of bit-exact. So the host CPU's target (AVX-512, FMA: 3x faster convolutions here) is
    used only for modules with a contraction (conv2d, matmul), which never match torch
    bit for bit anyway; modules of elementwise kernels keep the generic x86-64 target and
    round every operation as written."""
    import tvm

    heavy = any(isinstance(f, tvm.tirx.PrimFunc) and f.attrs is not None
                and f.attrs.get("sdparity.contraction", False)
                for f in scheduled_mod.functions.values())
    if heavy:
        return target
    return tvm.target.Target({"kind": "llvm", "num-cores": os.cpu_count() or 1})


def configure_threads() -> int:
    """Give the TVM runtime one thread per core (it defaults to half the cores, assuming SMT:
    1 thread on a 2-core machine). TVM_NUM_THREADS, when set, wins. Must run before the
    first parallel kernel: the pool reads it once.

    The pool also pins threads to cores unless TVM_BIND_THREADS=0: each worker to one core,
    and with one thread the *main* thread to core 0. Everything the process starts later
    inherits that mask: PyTorch's two OpenMP threads then shared one core, and with
    TVM_NUM_THREADS=1 the tiny CLIP took 0.4-0.6 s in torch instead of about 1 ms (measured in
    `sdparity bench`, docs/performance.md). On a shared machine a pinned worker also cannot
    move off a busy core. So binding is off unless asked for."""
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
    os.environ.setdefault("TVM_BIND_THREADS", "0")
    return int(os.environ["TVM_NUM_THREADS"])


def schedule_llvm(mod, target):
    """Legalize + fuse mod as TVM's CPU pipeline does, then schedule every PrimFunc. Before
    that, each attention becomes one kernel (``rewrite_graph``)."""
    import tvm
    from tvm import relax

    mod = rewrite_graph(mod)
    with target:
        mod = tvm.transform.Sequential([
            relax.transform.LegalizeOps(customize_legalize_map=PRECISE_LEGALIZE),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ])(mod)
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and not _scheduled(func):
            attention = func.attrs is not None and func.attrs.get(ATTENTION, False)
            mod[gv] = schedule_attention(func) if attention else schedule_primfunc(func)
    return mod


#: GroupNorm with float64 statistics (sdparity.compile.legalize; also used by the CUDA builds)
PRECISE_LEGALIZE = precise_legalize_map("llvm")


#: False inside ``without_rewrites()``: the own-kernel check's build of the chain a rewrite replaces
_REWRITES = contextvars.ContextVar("sdparity_llvm_rewrites", default=True)


def rewrite_graph(mod):
    """The Relax rewrites of every llvm build, before legalization (one place: the builds and
    the trusted build of kernel replay, ``check/localize.py``, both call this): each unmasked
    float32 attention as one kernel (``compile/attention.fuse_attention``, scheduled by
    ``schedule_attention``). None inside ``without_rewrites()``."""
    return fuse_attention(mod) if _REWRITES.get() else mod


@contextlib.contextmanager
def without_rewrites():
    """llvm builds made inside keep TVM's own lowering of what ``rewrite_graph`` would replace
    (the reference side of ``sdparity.check.own_kernels``)."""
    token = _REWRITES.set(False)
    try:
        yield
    finally:
        _REWRITES.reset(token)


#: query rows an attention kernel computes at a time (``schedule_attention``)
ATTENTION_ROWS = 16


def schedule_attention(func):
    """The whole-attention kernel of ``compile/attention.fuse_attention``, a block of
    ATTENTION_ROWS query rows at a time (parallel over blocks): the block's scores (rows x S,
    256 KiB at S = 4096) and probabilities stay in cache instead of going to memory whole.
    Inside a block: the scores' and the output's sums keep their order (their reduction loop
    moves outside a vectorized spatial loop), the max, exp, sum and quotient run along each
    row as in the softmax. Not bit-identical to the unfused chain (the kernel's own exp and
    16-lane row sum, ``attention._attention_te``); its error against float64 stays at the
    unfused chain's (tests/unit/test_attention.py)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    out = sch.get_sblock("attn_out")
    b, i, c, j = sch.get_loops(out)
    t = _const(sch.get(i).extent)
    io, ii = sch.split(i, [None, _largest_divisor(t, ATTENTION_ROWS)])
    tile = sch.fuse(b, io)
    sch.reorder(tile, ii, j, c)
    names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    lanes = [n for n in ("softmax_max_lanes", "softmax_sum_lanes") if n in names]  # S % 16 == 0 only
    for name in ("softmax_norm", "softmax_sum", "softmax_sum_lanes", "softmax_exp", "softmax_max",
                 "softmax_max_lanes", "attn_scores"):
        if name in names:
            sch.compute_at(sch.get_sblock(name), tile, preserve_unit_loops=True)

    def inner(block):
        """The block's loops under the tile loop (unit loops kept: take them from the end)."""
        loops = list(sch.get_loops(block))
        at = next(n for n, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(tile)))
        return loops[at + 1:]

    def vectorize(loop):
        ext = _const(sch.get(loop).extent)
        vw = _pick(ext, (16, 8)) if ext else 1
        if vw > 1:
            sch.vectorize(sch.split(loop, [None, vw])[1])

    rows = _const(sch.get(ii).extent)
    # scores: rows_i rows x one vector of columns accumulate over k in registers (the k loop
    # inside, each kt load feeding rows_i rows); order of each sum unchanged
    scores = sch.get_sblock("attn_scores")
    r, col, k = inner(scores)[-3:]
    vw = _pick(_const(sch.get(col).extent), (16, 8))
    r_o, r_i = sch.split(r, [None, _largest_divisor(rows, 4)])
    c_o, c_i = sch.split(col, [None, vw])
    sch.reorder(r_o, c_o, k, r_i, c_i)
    sch.unroll(r_i)
    if vw > 1:
        sch.vectorize(c_i)
    # the row max and sum in vector lanes first (``_attention_te``)
    for name in lanes:
        lane, chunk = inner(sch.get_sblock(name))[-2:]
        sch.reorder(chunk, lane)
        sch.vectorize(lane)
    for name in ("softmax_exp", "softmax_norm"):
        vectorize(inner(sch.get_sblock(name))[-1])
    # output: rows_i rows x all Dv columns accumulate over j in registers while they fit
    r, j, c = inner(out)[-3:]
    dv = _const(sch.get(c).extent)
    vw = _pick(dv, (8,))
    vectors = -(-dv // vw)
    rows_i = _largest_divisor(rows, max(1, 24 // vectors)) if vectors <= 24 else 1
    r_o, r_i = sch.split(r, [None, rows_i])
    c_o, c_i = sch.split(c, [None, vw])
    sch.reorder(r_o, j, r_i, c_o, c_i)
    if vectors <= 24:
        sch.unroll(r_i)
        sch.unroll(c_o)
    if vw > 1:
        sch.vectorize(c_i)
    # parallel before decompose_reduction: a block under a parallel loop must be complete or a
    # reduction with its init (as in _schedule_contraction)
    if _worth_parallel(sch.get(out), PARALLEL_MIN_MACS):
        sch.parallel(tile)
    sch.decompose_reduction(scores, k)
    sch.decompose_reduction(out, j)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)


def _scheduled(func) -> bool:
    attrs = func.attrs
    return bool(attrs is not None and attrs.get("tirx.is_scheduled", False))


def schedule_primfunc(func):
    """Return func with a CPU schedule (unchanged if no rule applies)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
    except Exception:
        return func
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    contractions = [n for n in names if _is_contraction(sch, sch.get_sblock(n))]
    # A contraction's producers (padding, transposed operands) stay materialized: inlined,
    # they would put a condition or a strided read into the innermost loop.
    keep = set(contractions)
    for n in contractions:
        keep |= {sch.get(p).name_hint for p in sch.get_producers(sch.get_sblock(n))}
    for n in names:
        if n not in keep:
            _try_inline(sch, n)
    done: set[str] = set()
    for n in contractions:
        done |= _schedule_contraction(sch, sch.get_sblock(n))
    for n in [sch.get(b).name_hint for b in sch.get_child_blocks(root)]:
        if n not in done:
            try:
                _schedule_generic(sch, sch.get_sblock(n))
            except Exception:  # a block no rule fits stays serial: slower, still correct
                pass
    out = sch.mod["main"].with_attr("tirx.is_scheduled", True)
    return out.with_attr("sdparity.contraction", True) if contractions else out


#: elementwise functions that cost far more than a load (glibc's scalar expf: ~10 ns here)
_COSTLY = ("exp", "log", "tanh", "erf", "sigmoid", "pow")


def _costly(block) -> bool:
    """Whether the block's value calls one of _COSTLY (read from its printed TIR: the 0.27
    Python API has no TIR expression visitor)."""
    import re

    return re.search(r"\bT\.(%s)\w*\(" % "|".join(_COSTLY), str(block.body)) is not None


def _try_inline(sch, name: str) -> None:
    """Inline an elementwise block into its consumers (masks, casts, reshapes): no full-size
    intermediate is written and read back. Blocks that write a function output or are not
    plainly elementwise stay, and so does a costly one (exp, ...) with more than one consumer:
    softmax's exp(x - max) feeds both the row sum and the normalization, and inlined it was
    evaluated twice per element (docs/performance.md, "Where the CPU time goes")."""
    block = sch.get_sblock(name)
    consumers = sch.get_consumers(block)
    if any(iv.iter_type != 0 for iv in sch.get(block).iter_vars) or not consumers:
        return
    if len(consumers) > 1 and _costly(sch.get(block)):
        return
    try:
        sch.compute_inline(block)
    except Exception:
        pass


# -- analysis helpers -----------------------------------------------------------------

_LOADS = ("BufferLoad", "TensorLoad")  # TensorLoad: the 0.27 name of a buffer load


def _is(node, *names) -> bool:
    """Node type test by class name: the classes moved between TVM modules across versions."""
    return type(node).__name__ in names


def _buffer(load):
    """The buffer a load reads (``buffer`` before 0.27, ``source`` in 0.27)."""
    return load.buffer if hasattr(load, "buffer") else load.source


def _vars(expr) -> list:
    """Variables an index expression uses (compared with same_as: == builds an expression)."""
    from tvm import tirx

    return list(tirx.analysis.undefined_vars(expr))


def _uses(exprs, var) -> bool:
    return any(x.same_as(var) for e in exprs for x in _vars(e))


def _const(x):
    return int(x.value) if _is(x, "IntImm") else None


def _work(b) -> int | None:
    """Iterations of a block's loop nest (None when an extent is symbolic)."""
    n = 1
    for iv in b.iter_vars:
        e = _const(iv.dom.extent)
        if e is None:
            return None
        n *= e
    return n


def _worth_parallel(b, minimum: int = PARALLEL_MIN_WORK) -> bool:
    work = _work(b)
    return work is not None and work >= minimum


def _is_contraction(sch, block) -> bool:
    """C[s...] = C[s...] + A[...] * B[...] with an init, one loop per iter var."""
    b = sch.get(block)
    body = b.body
    if b.init is None or not _is(body, "BufferStore") or len(b.writes) != 1:
        return False
    val = body.value
    if not (_is(val, "Add") and _is(val.a, *_LOADS) and _buffer(val.a).same_as(body.buffer)
            and _is(val.b, "Mul") and _is(val.b.a, *_LOADS) and _is(val.b.b, *_LOADS)):
        return False
    if str(body.buffer.dtype) != "float32":
        return False
    loops = sch.get_loops(block)
    if len(loops) != len(b.iter_vars) or any(_const(iv.dom.extent) is None for iv in b.iter_vars):
        return False
    spatial = [iv.var for iv in b.iter_vars if iv.iter_type == 0]
    reduce_ = [iv.var for iv in b.iter_vars if iv.iter_type == 2]
    if not reduce_ or len(spatial) + len(reduce_) != len(b.iter_vars):
        return False
    # the output is indexed by the spatial iters, in order
    idx = list(body.indices)
    return len(idx) == len(spatial) and all(i.same_as(v) for i, v in zip(idx, spatial))


def _pick(extent: int, choices) -> int:
    for c in choices:
        if extent % c == 0:
            return c
    return 1


def _vector_tile(extent: int) -> tuple[int, int]:
    """(vector length, vectors per tile row) for an output axis: power-of-two vectors (LLVM
    handles a <40 x float> badly: it spilled, 20x slower), up to 48 floats a row."""
    vlen = _pick(extent, (16, 8, 4))
    if vlen == 1:  # e.g. 77 keys: one short odd vector
        return _largest_divisor(extent, 16), 1
    return vlen, _largest_divisor(extent // vlen, 48 // vlen)


def _largest_divisor(extent: int, limit: int) -> int:
    for d in range(min(limit, extent), 0, -1):
        if extent % d == 0:
            return d
    return 1


def _schedule_contraction(sch, block) -> set[str]:
    """Register-tiled micro-kernel; returns the names of the blocks it scheduled."""
    b = sch.get(block)
    parallel = _worth_parallel(b, PARALLEL_MIN_MACS)
    iters = list(b.iter_vars)
    loops = sch.get_loops(block)
    ext = [_const(iv.dom.extent) for iv in iters]
    kinds = [iv.iter_type for iv in iters]
    spatial = [i for i, k in enumerate(kinds) if k == 0]
    reduce_ = [i for i, k in enumerate(kinds) if k == 2]
    v = spatial[-1]  # the output's innermost axis: contiguous stores
    a_load, b_load = b.body.value.b.a, b.body.value.b.b
    v_var = iters[v].var
    with_v = [ld.indices for ld in (a_load, b_load) if _uses(ld.indices, v_var)]
    without_v = [ld.indices for ld in (a_load, b_load) if not _uses(ld.indices, v_var)]
    # the unrolled axis: a spatial axis the vector operand does not read along, so one vector
    # load feeds several rows of the tile
    cands = [i for i in spatial if i != v and any(_uses(ix, iters[i].var) for ix in without_v)
             and not any(_uses(ix, iters[i].var) for ix in with_v)]
    u = max(cands, key=lambda i: ext[i]) if cands else None

    vlen, nvec = _vector_tile(ext[v])
    vw = vlen * nvec
    regs = nvec * -(-vlen // 16)  # vector registers per tile row
    ru = _largest_divisor(ext[u], min(_MAX_ROWS, _MAX_ACC // regs)) if u is not None else 1

    # Tile order: v_o outside u_o. The vector operand's panel (K x vw) then stays in cache
    # while the row tiles stream past it; the other operand is re-read N/vw times instead
    # of the vector operand M/ru times, and vw > ru.
    v_o, v_m, v_i = sch.split(loops[v], [None, nvec, vlen])
    others = [loops[i] for i in spatial if i not in (u, v)]
    if u is not None:
        u_o, u_i = sch.split(loops[u], [None, ru])
        outer, tile, inner = others + [v_o], u_o, [u_i, v_m, v_i]
    else:
        outer, tile, inner = others, v_o, [v_m, v_i]
    sch.reorder(*outer, tile, *[loops[i] for i in reduce_], *inner)

    names = {b.name_hint}
    cw = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(cw, tile)
    names.add(sch.get(cw).name_hint)
    # fold the elementwise epilogue into the write-back, one consumer at a time
    while True:
        consumers = sch.get_consumers(cw)
        if len(consumers) != 1:
            break
        nxt = consumers[0]
        name = sch.get(nxt).name_hint
        try:
            sch.reverse_compute_inline(nxt)
        except Exception:
            break
        names.add(name)
    # annotate every loop before decompose_reduction: only a block with its init is
    # a reduction block that vectorize accepts; the init block inherits the loop kinds
    cw_loops = list(sch.get_loops(cw))
    tile_stmt = sch.get(tile)
    depth = next(i for i, lp in enumerate(cw_loops) if sch.get(lp).same_as(tile_stmt)) + 1
    cw_loops = cw_loops[depth:]  # the tile's write-back: (rows, vw)
    if vlen > 1 and vw > vlen:
        cw_loops = cw_loops[:-1] + list(sch.split(cw_loops[-1], [None, vlen]))
    for lp in inner[:-1] + cw_loops[:-1]:
        sch.unroll(lp)
    if vlen > 1:
        sch.vectorize(v_i)
        sch.vectorize(cw_loops[-1])
    par = outer or [tile]
    if parallel:
        sch.parallel(sch.fuse(*par) if len(par) > 1 else par[0])
    init = sch.decompose_reduction(block, loops[reduce_[0]])
    names.add(sch.get(init).name_hint)
    return names


def _schedule_generic(sch, block) -> None:
    """Parallel over the leading spatial loops (when the block has enough work); vectorize an
    injective block's last loop."""
    b = sch.get(block)
    parallel = _worth_parallel(b)
    loops = sch.get_loops(block)
    if not loops or len(loops) != len(b.iter_vars):
        return
    kinds = [iv.iter_type for iv in b.iter_vars]
    lead = 0
    while lead < len(kinds) and kinds[lead] == 0:
        lead += 1
    if lead == 0:
        return
    par = list(loops[:lead])
    if lead == len(kinds) and _tile_transpose(sch, block, b, loops, parallel):
        return
    if lead == len(kinds):  # injective: vectorize the innermost loop when its extent allows
        last = _const(b.iter_vars[-1].dom.extent)
        if last is not None:
            vw = _pick(last, (16, 8))
            if vw > 1:
                lo, li = sch.split(par[-1], [None, vw])
                sch.vectorize(li)
                par[-1] = lo
    if parallel:
        sch.parallel(sch.fuse(*par) if len(par) > 1 else par[0])


def _tile_transpose(sch, block, b, loops, parallel: bool) -> bool:
    """A copy whose source is read along another axis than the output's innermost one (a
    transpose, e.g. of a linear layer's weight): 16x16 tiles, so both sides touch whole cache
    lines; writes are vectorized. Returns False when the block is no such copy."""
    iters = list(b.iter_vars)
    ext = [_const(iv.dom.extent) for iv in iters]
    last = len(iters) - 1
    if ext[last] is None or ext[last] % 16:
        return False
    for region in b.reads:
        mins = [r.min for r in region.region]
        j = next((i for i, iv in enumerate(iters) if iv.var.same_as(mins[-1])), None)
        if j is None or j == last or ext[j] is None or ext[j] % 16:
            continue
        if not _uses(mins[:-1], iters[last].var):  # a broadcast, not a transpose
            continue
        j_o, j_i = sch.split(loops[j], [None, 16])
        l_o, l_i = sch.split(loops[last], [None, 16])
        others = [lp for i, lp in enumerate(loops) if i not in (j, last)]
        sch.reorder(*others, j_o, l_o, j_i, l_i)
        sch.vectorize(l_i)
        if parallel:
            sch.parallel(sch.fuse(*others, j_o) if others else j_o)
        return True
    return False
