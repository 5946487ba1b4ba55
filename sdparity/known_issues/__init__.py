"""Known upstream issues: divergences that are TVM's (or torch's / diffusers') and not sdparity's.

One registry, this file. An entry says what the bug is (root cause in one paragraph), which
report records it may explain (``covers``, a predicate over a report record: a *pre-selection*
only), the TVM versions it was seen on, and a standalone repro script
``sdparity/known_issues/repros/<id>.py`` that uses only torch and TVM (no sdparity import) and
exits 1 while the bug reproduces (sdparity/known_issues/repro.py reads its exit status).

Known means proven (issue 22). An entry that covers checks has a *neutralizer* of the same id
(sdparity/compile/neutralize.py): the build-time change that removes exactly that bug. A failing
(or erroring) check gets the verdict ``known`` only when the same check, built with the
neutralizers of every entry that pre-selects it, passes its normal tolerance and budget
(sdparity.runner._prove_known): ``record["known_issue"]`` = the first id, ``known_issues`` = all,
``known_was`` = the verdict it replaced, ``neutralized`` = what the neutralized build gave. When
the neutralized build still fails, the check stays ``fail`` and its message gives both results,
so a new bug in the same area as a known one is never hidden by it. Entries whose bug no check
meets use ``covers=no_check`` and keep their repros as the evidence.

``known`` is never a pass: the summary and the table count it on its own; it does not make
``sdparity check`` exit 1 (docs/known-issues.md explains why), and ``sdparity gate`` compares
known checks like others (as built and neutralized) and reports one that passes again as
"fixed upstream?".

Add an entry with ``register(KnownIssue(...))`` at the bottom of this file, and its neutralizer
in compile/neutralize.py (docs/known-issues.md).

A report record (``covers`` receives it) has: stage, backend, device_class, case, function,
output, shapes (dict: e.g. {"latents": [1, 4, 9, 16]}), verdict, message, metrics
(max_abs, floor_ratio, ...) or None, tolerance, model_scope ("tiny" | "full").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPROS = Path(__file__).parent / "repros"
_ISSUES: dict[str, "KnownIssue"] = {}


@dataclass(frozen=True)
class KnownIssue:
    id: str  # short slug, also the repro's file name: repros/<id>.py
    title: str
    description: str  # one paragraph, with the root cause
    covers: Callable[[dict], bool]  # report record -> does this issue explain it?
    tvm_versions: tuple[str, ...]  # apache-tvm versions it was seen on
    upstream: str = ""  # link or reference to the upstream report, if any

    @property
    def repro(self) -> Path:
        return REPROS / f"{self.id}.py"

    def to_json(self) -> dict:
        return {"id": self.id, "title": self.title, "tvm_versions": list(self.tvm_versions),
                "repro": str(self.repro.relative_to(REPROS.parent.parent.parent)), "upstream": self.upstream}


def no_check(record: dict) -> bool:
    """``covers`` of an entry no check of the suite reaches (a bug sdparity avoids by a pin or
    works around where it builds, or one its checks never run into): the repro is the evidence."""
    return False


def register(issue: KnownIssue) -> KnownIssue:
    if not issue.id or issue.id in _ISSUES:
        raise ValueError(f"known issue id {issue.id!r} is empty or registered twice")
    _ISSUES[issue.id] = issue
    return issue


def unregister(issue_id: str) -> None:
    _ISSUES.pop(issue_id, None)


def all_issues() -> dict[str, KnownIssue]:
    return dict(_ISSUES)


def candidates(record: dict) -> list[KnownIssue]:
    """The registered issues that pre-select this failing/erroring record (a predicate that
    raises, e.g. on a field missing in an old report, does not select). Every entry that covers
    checks must have a neutralizer: one without is an error of the registry, not a pass."""
    if record.get("verdict") not in ("fail", "error"):
        return []
    out = []
    for issue in _ISSUES.values():
        try:
            if issue.covers(record):
                out.append(issue)
        except (KeyError, TypeError, AttributeError, IndexError):
            continue
    return out


def proven(record: dict, ids, neutralized: list[dict]) -> dict:
    """The record's check passed with the issues ``ids`` neutralized: verdict ``known`` (in place)."""
    ids = list(ids)
    record["known_was"] = record["verdict"]
    record["verdict"] = "known"
    record["known_issue"], record["known_issues"] = ids[0], ids
    record["neutralized"] = _neutralized(ids, "pass", neutralized)
    record["message"] = (f"known issue {', '.join(ids)} (proven: passes with it neutralized: "
                         f"{neutralized[0]['message']}); "
                         f"as built: {record.get('message') or ''}")
    return record


def not_proven(record: dict, ids, why: str, neutralized: list[dict] | None = None) -> dict:
    """The record's check still fails (or cannot be rebuilt) with ``ids`` neutralized: it stays
    a failure, and says so."""
    record["neutralized"] = _neutralized(list(ids), "fail", neutralized or [], why)
    record["message"] = (f"{record.get('message') or ''}; not known issue {', '.join(ids)}: {why}")
    return record


def settle(record: dict, ids, why: str, again: list[dict]) -> dict:
    """The proof's verdict on a failing record (in place): ``known`` when the checks made again
    with ``ids`` neutralized (``again``) all pass, else a failure saying why (``why``: the
    neutralized build could not be made)."""
    if why:
        return not_proven(record, ids, why)
    if again and all(r["verdict"] == "pass" for r in again):
        return proven(record, ids, again)
    bad = next((r for r in again if r["verdict"] != "pass"), None)
    return not_proven(record, ids, "still fails with them neutralized: " + (bad["message"] if bad else "no result"),
                      again)


def no_neutralizer(ids) -> str:
    """Why nothing proves ``ids`` ("" when each has a neutralizer: compile/neutralize.py)."""
    from sdparity.compile.neutralize import NEUTRALIZERS

    missing = [i for i in ids if i not in NEUTRALIZERS]
    return f"{', '.join(missing)} has no neutralizer (compile/neutralize.py): nothing proves it" if missing else ""


def _neutralized(ids, verdict, records, why: str = "") -> dict:
    def facts(r):
        return {"output": r.get("output"), "case": r.get("case"), "verdict": r["verdict"],
                "metrics": r.get("metrics"), "message": r.get("message")}
    return {"issues": list(ids), "verdict": verdict, "why": why, "checks": [facts(r) for r in records]}


# ---- entries ----------------------------------------------------------------------------
# register(KnownIssue(id="...", title="...", description="...", covers=lambda r: ...,
#                     tvm_versions=("0.27.0.post1",)))


def _nearest_rows_differ(n_in: int, n_out: int) -> bool:
    """Whether TVM's import of torch's nearest resize n_in -> n_out reads other rows than torch:
    torch floor(d * in/out), TVM round-half-even((d + 0.5) * in/out - 0.5), both in float32.
    Both formulas reproduce the real outputs exactly for all 236 pairs in->out with
    in <= out <= 19 and ceil(h/2) -> h for h <= 65 (TVM 0.27.0.post1, torch 2.13)."""
    import numpy as np

    d = np.arange(n_out, dtype=np.float32)
    scale = np.float32(n_in) / np.float32(n_out)
    torch_rows = np.minimum(np.floor(d * scale), n_in - 1)
    tvm_rows = np.clip(np.rint((d + np.float32(0.5)) * scale - np.float32(0.5)), 0, n_in - 1)
    return bool((torch_rows != tvm_rows).any())


def _unet_resize_differs(r: dict) -> bool:
    """The UNet check's latent sides make one of its up steps a resize whose rows differ.
    A side's sizes down the UNet halve with ceil (1 downsampler on the tiny model, 3 on SD 1.x);
    each upsampler goes back one level, to the skip connection's size."""
    downs = 1 if r["model_scope"] == "tiny" else 3
    for side in r["shapes"]["latents"][2:]:
        sizes = [side]
        for _ in range(downs):
            sizes.append(-(-sizes[-1] // 2))
        if any(_nearest_rows_differ(small, big) for big, small in zip(sizes, sizes[1:])):
            return True
    return False


register(KnownIssue(
    id="tvm_nearest_resize_half_pixel",
    title="PyTorch nearest upsampling to a size imported as half-pixel rounding",
    description="torch's F.interpolate(mode='nearest', size=...) reads source index "
    "floor(dst * in / out); TVM's relax.frontend.torch (_upsample_impl) lowers it to "
    "relax.op.image.resize2d with coordinate_transformation_mode='half_pixel' and the default "
    "rounding_method='round', i.e. round((dst + 0.5) * in / out - 0.5). The two agree for an "
    "exact 2x (SD's usual case) and differ otherwise (3 -> 5: torch rows 0,0,1,1,2, TVM 0,0,1,2,2). "
    "diffusers' UNet2DConditionModel upsamples to the skip connection's size whenever a latent "
    "side is not a multiple of 2**upsamplers, so the UNet diverges there (tiny UNet: every odd "
    "side >= 5, max abs 0.3-1.0 on noise_pred; found by shape fuzzing). The VAE only doubles.",
    covers=lambda r: r["stage"] == "unet" and r["metrics"] is not None and _unet_resize_differs(r),
    tvm_versions=("0.27.0.post1",),
    upstream="related: https://github.com/apache/tvm/issues/19570 (ONNX Resize, half_pixel, "
    "non-integer scales)",
))

register(KnownIssue(
    id="tvm_symbolic_upsample",
    title="PyTorch nearest upsampling of a symbolic size cannot be imported",
    description="relax.frontend.torch assumes constant sizes in upsample_nearest2d: with a scale "
    "factor it computes int(shape[i].value * scale) and a symbolic dimension (tirx.Var) has no "
    ".value (AttributeError); with an output size it passes the torch.fx Nodes of the symbolic "
    "sizes to relax.ShapeExpr unconverted (TypeError: Mismatched type ... relax.ShapeExpr). So "
    "neither the SD VAE decoder nor the UNet can be built once for every latent size (torch.export "
    "with torch.export.Dim). sdparity's symbolic-shape builds (shape fuzzing) convert that one op "
    "themselves (compile/frontend.py, keeping TVM's own resize semantics); the variant "
    "patch_upsample=False builds with TVM's conversion and reports this error.",
    covers=lambda r: r["stage"] in ("unet", "vae") and r["verdict"] == "error"
    and ("has no attribute 'value'" in r["message"] or "relax.ShapeExpr" in r["message"]),
    tvm_versions=("0.27.0.post1",),
))


register(KnownIssue(
    id="tvm_webgpu_sin_cos_unreduced",
    title="WebGPU sin/cos: WGSL builtins used as is, accurate to 2^-11 at best and unreduced",
    description="WGSL specifies sin/cos only on [-pi, pi] and only to an absolute error of 2^-11; TVM "
    "0.27's WebGPU code generation emits the builtins sin(x)/cos(x) on the raw argument. SD's UNet "
    "time projection takes sin/cos of timestep * frequency (up to ~999): on WebGPU (Chromium, "
    "SwiftShader) aten.sin/aten.cos of the tiny UNet are 1.9e-4 off torch float64 where torch float32 "
    "is 6e-8 off (~3000x the floor), and 2.5e-5 off already at arguments ~N(0, 1); llvm is within 1x. "
    "Found by op replay and op-statistics fuzzing (issue 11). Range reduction alone cannot fix it (the "
    "builtin is 2.5e-5 off inside [-pi, pi] already); the "
    "neutralizer computes sin/cos from + - * (compile/neutralize.py): 9.2e-8, as llvm. The repro "
    "checks the generated WGSL (no browser); the numbers come from tests/unit/test_opstats.py (webgpu).",
    # the time projection; a generation ("pipeline", "pipeline_<scheduler>") runs the UNet at every step
    covers=lambda r: r["backend"] == "webgpu" and (r["stage"] == "unet" or r["stage"].startswith("pipeline")),
    tvm_versions=("0.27.0.post1",),
    upstream="not reported upstream yet",
))

register(KnownIssue(
    id="tvm_webgpu_gelu_erf_constants",
    title="WebGPU GELU of large negative inputs is +6e-8*|x| instead of ~0 (erf constants printed with 7 digits)",
    description="WGSL has no erf; TVM 0.27 lowers erf for WebGPU to its rational approximation "
    "(topi fast_erf) on the argument clamped to [-4, 4], and its WGSL printer writes the "
    "approximation's float32 constants with 7 significant digits (9 are needed). With the exact "
    "constants (llvm) erf(-4) is -1; with the printed ones it is -1.0000001, so GELU = 0.5*x*(1+erf) "
    "is +5.96e-8*|x| for x < -5.66 where torch and the exact value are -0 (+6e-5 at x=-1000, "
    "+6e-7 at x=-10). Found by op-statistics fuzzing (issue 11) of the tiny UNet's feed-forward "
    "GELU on WebGPU (SwiftShader) at an input mean of -1000.",
    # the feed-forward GELU, also inside a generation
    covers=lambda r: r["backend"] == "webgpu" and (r["stage"] == "unet" or r["stage"].startswith("pipeline")),
    tvm_versions=("0.27.0.post1",),
    upstream="not reported upstream yet; related: the WGSL float printing noted in NOTES.md (WebGPU)",
))

register(KnownIssue(
    id="tvm_webgpu_vectorized_matmul",
    title="dlight's matmul with vector loads cannot be built for WebGPU",
    description="dlight's GPU Matmul rule tiles contractions with vector loads for CUDA "
    "(Config.vector_size 2); with any vector_size > 1 the same schedule fails to build for WebGPU "
    "('Check failed: (me->coeff == 0 || info.factor() % me->coeff == 0)'), at every size tried, "
    "while it builds for CUDA. dlight's WebGPU default uses vector_size 1 and never meets it; the "
    "tiles sdparity tunes on CUDA (issue 13) all have vector loads, so WebGPU builds keep dlight's "
    "default tile (compile/gpu_rules.py TUNED_KINDS). Found when the tuned tiles were first built "
    "for WebGPU.",
    covers=no_check,
    tvm_versions=("0.27.0.post1",),
    upstream="not reported upstream yet",
))

register(KnownIssue(
    id="tvm_webgpu_grid_guard_off_by_one",
    title="WebGPU kernels with an x grid tvmjs folds into z run one workgroup too many",
    description="tvmjs launches a kernel whose x grid X is 2^16 or more as (ceil(X/2^k), y, 2^k) "
    "workgroups and passes X as the uniform packGridDimX; TVM's WGSL code generator guards every "
    "kernel with `if (blockIdx.z * gridDim.x + blockIdx.x > podArgs.packGridDimX) { return; }`. "
    "Linear workgroup indices of the grid are 0..X-1, so the guard needs `>=`: with `>` the "
    "workgroup whose index is X runs too, one block past the grid, whenever the fold rounds up "
    "(X not a multiple of 2^k). The repro launches a 65537 x 64-thread fill as tvmjs does (32769 x "
    "2 workgroups) in Dawn and finds the 64 floats past the grid written; with `>=` they stay 0. "
    "No sdparity check meets it: SD 1.5 at 512x512 folds only power-of-two grids (other image "
    "sizes would not). Found reading the WGSL of the tuner's kernels (issue 13), confirmed in Dawn.",
    covers=no_check,
    tvm_versions=("0.27.0.post1",),
    upstream="not reported upstream yet",
))

register(KnownIssue(
    id="tvm_ffi_0115_dtype_json_segfault",
    title="apache-tvm 0.27.0.post1 with apache-tvm-ffi 0.1.15: serializing any node with a dtype "
    "segfaults, and with it every Schedule.tensorize",
    description="apache-tvm 0.27.0.post1 asks for apache-tvm-ffi>=0.1.14.post0, and pip picks "
    "0.1.15.post2. With it (and with 0.1.15.post1), tvm.ir.save_json of any IR node that holds a "
    "data type (tvm.ir.PrimType('float32'), an IntImm, any TIR expression) dies with a segmentation "
    "fault in tvm::ffi::ToJSONGraph; with 0.1.14.post1 the same call works. Schedule.tensorize "
    "deep-copies the tensor intrinsic's implementation through that serializer, so every tensorize "
    "crashes the process: dlight's tensor-core Matmul rule (wmma) on any float16 matmul for sm_70+, "
    "MetaSchedule's RewriteTensorize, sdparity's own mma schedules (compile/mma.py). This was first "
    "registered as tvm_dlight_f16_tensorize_segfault (the crash localized to the first tensorize); "
    "the serializer is the root cause. sdparity pins apache-tvm-ffi==0.1.14.post1 "
    "(pyproject.toml); the repro installs 0.1.15.post2 beside TVM in a temporary folder.",
    covers=no_check,
    tvm_versions=("0.27.0.post1",),
    upstream="not reported upstream yet",
))

register(KnownIssue(
    id="tvm_lower_warp_memory_first_only",
    title="LowerWarpMemory lowers only the first warp buffer of a statement sequence; the others "
    "silently become per-thread arrays",
    description="TVM 0.27's WarpMemoryRewriter visits a SeqStmt, and at the first AllocBuffer of "
    "scope 'warp' hands all later siblings to that buffer's WarpAccessRewriter and stops: a second "
    "warp buffer in the same sequence keeps its whole per-warp size as a thread-local array, and "
    "each thread reads elements only other lanes wrote (no error; the kernel computes garbage; "
    "the repro shows the generated CUDA). Tensor-core kernels hold three (A, B, accumulator), and "
    "there CUDA codegen fails later on the leftover 'warp' allocation. sdparity's builds with "
    "tensor-core kernels run the pass once per warp buffer (compile/schedule.py, "
    "build_module: each run lowers the next; one with none left changes nothing); other builds "
    "keep TVM's pipeline.",
    covers=no_check,
    tvm_versions=("0.27.0.post1",),
    upstream="not reported upstream yet",
))

register(KnownIssue(
    id="tvm_cse_hides_warp_index",
    title="The default TIR pipeline runs CSE before LowerWarpMemory, which then cannot read a "
    "warp store's index",
    description="CommonSubexprElim is part of TVM 0.27's main TIR pipeline and LowerWarpMemory of the "
    "device finalization after it. LowerWarpMemory needs each warp-buffer store index (and each "
    "ldmatrix offset) as a linear expression in threadIdx.x; when the index repeats a subexpression "
    "of the stored value, CSE binds it to a let variable and the pass fails ('require positive "
    "constant coefficient on warp index threadIdx_x but get 0'). Every ldmatrix + mma kernel hits "
    "it. sdparity's builds with tensor-core kernels turn TVM's CSE off (tirx.disable_cse_tir) and "
    "run it after LowerWarpMemory instead (compile/schedule.py, build_module).",
    covers=no_check,
    tvm_versions=("0.27.0.post1",),
    upstream="not reported upstream yet",
))

register(KnownIssue(
    id="tvm_webgpu_ldexp_printed_as_ldexpf",
    title="WebGPU code generation prints ldexp as `ldexpf`, which WGSL does not have",
    description="TVM 0.27's WebGPU code generator prints tirx.ldexp with the C library's float name, "
    "`ldexpf(x, k)`; WGSL's builtin is `ldexp`, so every shader holding it fails to compile "
    "('Invalid ShaderModule') and the module cannot load in the browser. Found by sdparity's "
    "negative tests (issue 22): the TVM perturbations that replace a legalization by a fast-math "
    "exp (a polynomial times ldexp(1, k)) built and ran on llvm and failed to load on WebGPU "
    "(Chromium 156, SwiftShader). No stage of the suite uses ldexp (the perturbations now build 2^k "
    "from its bits), so no check meets it; a TVM lowering that used ldexp would fail on WebGPU.",
    covers=no_check,
    tvm_versions=("0.27.0.post1",),
    upstream="not reported upstream yet",
))

register(KnownIssue(
    id="tvm_webgpu_int64_argmax",
    title="An argmax cannot be built for WebGPU: its int64 index reaches a WGSL kernel",
    description="torch's argmax returns int64 and TVM 0.27 keeps that dtype through the reduction "
    "(its shared-memory index buffer included); the WebGPU target refuses any kernel with a 64-bit "
    "integer buffer ('... allocated in the function has dtype T.int64'), since WGSL has no 64-bit "
    "integers. Met by sdparity's SDXL check (issue 25): transformers pools SDXL's second text "
    "encoder at input_ids.argmax(-1), so tiny-sdxl's clip stage does not build on WebGPU (an error "
    "as built; llvm builds it and agrees with torch). Two more 64-bit values meet WebGPU on that "
    "path: the pooling's gather x[arange(B), j] (TVM imports it with int64 indices) and the int64 "
    "copy of the token ids, which TVM materializes as a buffer because SDXL's second encoder uses "
    "it twice (embedding and pooling). The neutralizer (compile/neutralize.py) keeps all three in "
    "int32: an argmax from min/where/min (the maximum of integers as -min(-x): an int32 max's "
    "identity prints as the invalid WGSL literal -2147483648i), the pooling as a row gather with "
    "int32 indices, the token ids' int64 copy left in int32 (the same values); the neutralized "
    "clip stage builds for WebGPU and passes, so the as-built build error is a proven known "
    "issue. The stage keeps transformers' code path.",
    covers=lambda r: (r["backend"] == "webgpu" and r["stage"] == "clip" and r["verdict"] == "error"
                      and str(r.get("model_scope", "")).startswith("sdxl")
                      and ("i64" in r["message"] or "int64" in r["message"])),
    tvm_versions=("0.27.0.post1",),
    upstream="not reported upstream yet",
))
