"""Tile tuning for the GPU matmul/convolution kernels: build candidates here, time them on the
card, keep the fastest that computes what the default computes (issue 13).

Three steps (docs/performance.md, "Tuning"), for CUDA (``--kind cuda``, the default) or WebGPU
(``--kind webgpu``: the candidates' WGSL goes into ``tune-webgpu.json.gz``; on the device
``web/node/tune.mjs`` checks and times them in Dawn with timestamp queries, with the Node and
Dawn of a ``gpu_web prepare`` folder; ``apply`` writes ``tuned/<card>-webgpu.json``):

``prepare`` (here: TVM and nvcc, no GPU)
    legalizes and fuses the model stages with ``sdparity.compile.schedule.fused_for_gpu`` (as
    every GPU build does), and for every distinct kernel dlight's Matmul rule takes (linear
    layers, attention products, convolutions) schedules each candidate tile of
    ``gpu_rules.CANDIDATES`` that fits CUDA; one module per kernel (``w<i>.so`` and its CUDA
    source, nvcc'd on the device in parallel) and ``manifest.json`` go into ``tune.tgz``.
``device`` (on the GPU machine, runtime-only TVM as in ``gpu_cuda``)
    per kernel: random inputs, every candidate run once and its outputs compared with the
    default's (the same sums in the same order: they must agree to float32 rounding), then
    timed (``time_evaluator``, median of 3 repeats of at least 10 ms each). Writes
    ``tune-results.json``.
``apply`` (here)
    writes ``sdparity/compile/tuned/<card>.json`` from the results (atomically): per kernel
    the time of every candidate that agreed; a candidate that disagreed is left out, and
    the build never uses it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

#: how close a candidate's output must be to the default's: the same terms summed in the same
#: order; only FMA contraction may round differently (relative to the output's magnitude)
AGREE_RTOL = 1e-5
#: the same for tensor-core tiles (f16 mode, compile/mma.py): tiles that split K add the float32
#: partial sums in another order, and a kernel that ends in float16 then rounds some outputs
#: one float16 step (2^-10 relative) the other way; a wrong tile is off by far more
AGREE_RTOL_TENSOR_CORE = 2.0 ** -10


def _kernels(mod, target):
    """(name, PrimFunc) of the kernels of a legalized + fused module that Matmul takes."""
    from sdparity.compile.gpu_rules import tuned_matmul

    rule = tuned_matmul(database={})
    from tvm import tirx

    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        try:
            if rule.apply(func, target, False) is not None:
                yield gv.name_hint, func
        except Exception:  # noqa: BLE001 - a kernel the rule cannot take stays with the others
            continue


def _target(kind: str):
    if kind == "webgpu":
        from sdparity.backends.webgpu.backend import WebGPUBackend

        return WebGPUBackend().target()
    from sdparity.gpu import toolchain as gpu_toolchain

    return gpu_toolchain.cuda_backend().target()


def _fused(stage, model, target, precision: str = "f32"):
    """The stage's kernels as a ``kind`` build legalizes and fuses them (``precision="f16"``:
    the model stages through the f16 mode's mixed-precision pass, as ``gpu_cuda prepare
    --precision f16`` builds them)."""
    from sdparity.compile.schedule import fused_for_gpu

    ir = stage.build_ir(model, stage.default_variant(model))
    lift = precision == "f16" and stage.component
    if lift:  # as gpu_cuda builds the f16 mode: float16, the weights' own work lifted out
        from sdparity.commands.f16 import to_f16

        ir = to_f16(ir)
    mod = ir.mod
    if target.kind.name == "webgpu":
        from sdparity.backends.webgpu.wgsl import legalize_for_webgpu

        mod = legalize_for_webgpu(mod)
    from sdparity.backends import get_backend

    backend = get_backend(target.kind.name)  # its capabilities shape the kernels, as in its build
    return fused_for_gpu(mod, target, lift, float64=backend.float64, max_buffer=backend.max_buffer)


def _wgsl_functions(source: str) -> dict[str, str]:
    """TVM's WebGPU module source (every kernel's WGSL after a "// Function: <name>" header)
    split into one standalone WGSL text per kernel."""
    import re

    marks = [(m.start(), m.group(1)) for m in re.finditer(r"^// Function: (\w+)$", source, re.M)]
    out: dict[str, str] = {}
    for i, (start, name) in enumerate(marks):
        end = marks[i + 1][0] if i + 1 < len(marks) else len(source)
        out[name] = out.get(name, "") + source[start:end]
    return out


def _grid(func) -> list[int]:
    """[blockIdx.x, blockIdx.y] extents of a scheduled static-shape kernel."""
    import re

    pattern = r'T\.thread_binding\((?:T\.int(?:32|64)\()?(\d+)\)?, thread="(blockIdx\.[xyz])"\)'
    ext = {t: int(n) for n, t in re.findall(pattern, func.script())}
    if not ext:
        raise ValueError("no blockIdx binding found")
    if "blockIdx.z" in ext:
        raise ValueError("blockIdx.z is reserved by tvmjs")
    return [ext.get("blockIdx.x", 1), ext.get("blockIdx.y", 1)]


def prepare(model_name: str, dest: Path, stage_names: list[str], log=print, database: dict | None = None,
            min_ms: float = 0.0, kind: str = "cuda", kernels: list[str] | None = None,
            precision: str = "f32") -> dict:
    """``database``: skip candidates it already has times for (the default is always timed
    again, as the reference of this run) and kernels whose default took less than ``min_ms``.
    ``kernels``: only the kernels of these names (e.g. to re-time a few, or a test)."""
    import tvm

    from reference.models import load_model
    from sdparity.compile.gpu_rules import DEFAULT, candidates, config_name, tuned_matmul, workload_key
    from sdparity.compile.mma import MmaConfig
    from sdparity.compile.schedule import build_module
    from sdparity.errors import SdparityError
    from sdparity.registry import all_stages
    from sdparity.gpu import toolchain as gpu_toolchain

    target = _target(kind)
    stages = all_stages()
    unknown = [n for n in stage_names if n not in stages]
    if unknown or not stage_names:
        raise SdparityError(f"unknown stage(s) {', '.join(unknown) or '(none given)'}; stages are: {', '.join(stages)}")
    model = load_model(model_name, log=log)
    dest.mkdir(parents=True, exist_ok=True)
    funcs, workloads, seen = {}, [], set()
    name_of = lambda v: DEFAULT if v is None else getattr(v, "name", None) or config_name(v)  # noqa: E731
    for name in stage_names:
        mod = _fused(stages[name], model, target, precision)
        found = list(_kernels(mod, target))
        log(f"{name}: {len(found)} matmul/conv kernels")
        for kname, func in found:
            key = workload_key(func)
            if key in seen or (kernels and kname not in kernels):
                continue
            tiles = candidates(kind, func)
            if precision == "f16" and not isinstance(tiles[0], MmaConfig):
                continue  # f16 mode: only the tensor-core kernels (the rest are small, on CUDA cores)
            seen.add(key)
            known = (database or {}).get(key, {}).get("times_ms", {})
            if known and known.get(name_of(tiles[0]), 0.0) < min_ms:
                continue
            args = []
            for buf in func.params:  # Buffers (TVM 0.27 has no buffer_map)
                shape = [int(d) for d in buf.shape]  # static shapes only (the full-size model)
                args.append({"shape": shape, "dtype": str(buf.dtype), "name": str(buf.name)})
            cands = []
            for values in tiles:
                if values != tiles[0] and name_of(values) in known:
                    continue
                try:
                    sch = tuned_matmul(database={}, force=values).apply(func, target, False)
                except Exception as e:  # noqa: BLE001 - recorded: the candidate cannot tile this kernel
                    sch = e
                if not hasattr(sch, "mod"):
                    log(f"  {kname} {name_of(values)}: not schedulable ({type(sch).__name__})")
                    continue
                fn = f"k{len(workloads)}_{name_of(values)}"
                funcs[fn] = sch.mod["main"].with_attr("global_symbol", fn)
                cands.append({"function": fn, "config": name_of(values)})
            workloads.append({"key": key, "stage": name, "kernel": kname, "args": args, "candidates": cands})
    # the stages in the order given, each one's largest outputs first: a device call that runs
    # out of time has timed what matters most (a UNet kernel runs 20 times a generation)
    workloads.sort(key=lambda w: (stage_names.index(w["stage"]), -int(np.prod(w["args"][-1]["shape"]))))
    log(f"{len(workloads)} kernels, {sum(len(w['candidates']) for w in workloads)} candidates; code generation")
    from sdparity.reports.report import versions

    if kind == "webgpu":
        return _prepare_webgpu(model_name, dest, stage_names, workloads, funcs, target, versions(), log)
    stage_dir = Path(tempfile.mkdtemp(prefix="tune-", dir=dest))
    try:
        for i, w in enumerate(workloads):
            # one module per kernel: the device compiles them with nvcc in parallel (unrolled
            # tiles make ~150 kB of CUDA a candidate: one nvcc over all of them took >13 min here)
            lib = build_module(tvm.IRModule({c["function"]: funcs[c["function"]] for c in w["candidates"]}),
                              target=target)
            lib.export_library(str(stage_dir / f"w{i}.so"))
            for src in gpu_toolchain.cuda_sources(getattr(lib, "mod", lib)):
                (stage_dir / f"kernels-{gpu_toolchain.sha(src)}.cu").write_text(src)
            w["module"] = f"w{i}.so"
        manifest = {"model": model_name, "stages": stage_names, "arch": gpu_toolchain.ARCH, "versions": versions(),
                    "workloads": workloads}
        (stage_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        with tarfile.open(dest / "tune.tgz.part", "w:gz") as tf:
            for p in sorted(stage_dir.iterdir()):
                tf.add(p, arcname=p.name)
        os.replace(dest / "tune.tgz.part", dest / "tune.tgz")
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
    gpu_toolchain.slim_tvm_package(dest)
    log(f"{dest / 'tune.tgz'}: {(dest / 'tune.tgz').stat().st_size / 2**20:.1f} MiB")
    return manifest


WEBGPU_MANIFEST = "tune-webgpu.json.gz"
#: how long one kernel's candidates may take in Dawn (compiling ~17 pipelines, 11 runs each)
KERNEL_TIMEOUT_S = 120
#: Node processes a kernel may take: each one resumes after the tiles the crashed one timed
ATTEMPTS = 3


def _prepare_webgpu(model_name, dest, stage_names, workloads, funcs, target, versions, log) -> dict:
    """WGSL and launch grid of every candidate, for web/node/tune.mjs (one gzipped JSON)."""
    import gzip

    import tvm

    from sdparity.files import write_atomic_bytes

    for w in workloads:
        if any(a["dtype"] != "float32" for a in w["args"]):
            w["candidates"] = []  # tune.mjs fills float32 inputs only
            continue
        ex = tvm.compile(tvm.IRModule({c["function"]: funcs[c["function"]] for c in w["candidates"]}), target=target)
        dev_mod = next(m for m in getattr(ex, "mod", ex).imports if m.kind == "webgpu")
        wgsl = _wgsl_functions(dev_mod.inspect_source())
        for c in w["candidates"]:
            entry = f"{c['function']}_kernel"
            if entry not in wgsl:  # a candidate that needs two kernels: not a tile tune.mjs can launch
                raise RuntimeError(f"{w['kernel']} {c['config']}: no single WGSL kernel {entry}")
            c.update(entry=entry, wgsl=wgsl[entry], grid=_grid(funcs[c["function"]]))
    manifest = {"model": model_name, "stages": stage_names, "kind": "webgpu", "versions": versions,
                "workloads": [w for w in workloads if w["candidates"]]}
    write_atomic_bytes(dest / WEBGPU_MANIFEST, gzip.compress(json.dumps(manifest, default=str).encode(), 6))
    log(f"{dest / WEBGPU_MANIFEST}: {(dest / WEBGPU_MANIFEST).stat().st_size / 2**20:.1f} MiB")
    return manifest


def device(folder: Path, out: Path, log=print, budget_s: float = 0.0) -> int:
    from sdparity.errors import SdparityError
    from sdparity.files import write_atomic
    from sdparity.gpu import toolchain as gpu_toolchain

    if not (folder / "tune.tgz").is_file():
        raise SdparityError(f"{folder / 'tune.tgz'} not found: run `python -m sdparity.gpu.tune prepare` "
                            f"here and carry the folder")
    tvm = gpu_toolchain.load_tvm_runtime()
    from sdparity.compile.compat import tensor

    work = Path(tempfile.mkdtemp(prefix="tune-"))
    with tarfile.open(folder / "tune.tgz") as tf:
        tf.extractall(work)
    manifest = json.loads((work / "manifest.json").read_text())
    _nvcc_all(sorted(work.glob("kernels-*.cu")), log)
    gpu_toolchain.KERNEL_DIRS.append(work)
    dev = tvm.cuda(0)
    rng = np.random.default_rng(0)
    results = []
    card = _card_name()
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for i, w in enumerate(manifest["workloads"]):
        if budget_s and time.perf_counter() - started > budget_s:
            log(f"time budget of {budget_s:.0f} s spent: {len(manifest['workloads']) - i} kernels left untimed")
            break
        lib = tvm.runtime.load_module(str(work / w["module"]))
        # inputs uploaded once per kernel; the output (the last argument: every kernel here
        # writes one) is the only array read back and compared (the VAE's Winograd GEMMs move
        # 0.5 GiB an array: copying and comparing every argument per candidate took minutes)
        args = [tensor(rng.random(a["shape"], dtype=np.float32) * 2 - 1 if a["dtype"] == "float32"
                       else rng.uniform(-1, 1, a["shape"]).astype(a["dtype"]), dev) for a in w["args"]]
        base, row = None, {"key": w["key"], "stage": w["stage"], "kernel": w["kernel"], "times_ms": {},
                           "disagree": {}, "default": w["candidates"][0]["config"] if w["candidates"] else None}
        for c in w["candidates"]:
            f = lib[c["function"]]
            f(*args)
            dev.sync()
            result = args[-1].numpy()
            if base is None:
                base, scale = result, float(np.max(np.abs(result))) or 1.0
            else:
                diff = float(np.max(np.abs(result.astype(np.float64) - base)))
                rtol = AGREE_RTOL_TENSOR_CORE if c["config"].startswith("mma") else AGREE_RTOL
                if not diff <= rtol * scale:
                    row["disagree"][c["config"]] = diff / scale
                    log(f"{w['kernel']} {c['config']}: DISAGREES with the default ({diff / scale:.2e} relative)")
                    continue
            t = lib.time_evaluator(c["function"], dev, number=1, repeat=3, min_repeat_ms=10)(*args)
            row["times_ms"][c["config"]] = round(float(np.median(t.results)) * 1e3, 5)
        best = min(row["times_ms"].items(), key=lambda kv: kv[1]) if row["times_ms"] else None
        default = row["times_ms"].get(w["candidates"][0]["config"]) if w["candidates"] else None
        log(f"{w['stage']} {w['kernel']}: default {default} ms, best {best}")
        results.append(row)
        del args, base
        # after every kernel, atomically: a call that runs out of time keeps what it measured
        write_atomic(out / "tune-results.json", json.dumps(
            {"card": card, "arch": manifest["arch"], "model": manifest["model"], "versions": manifest["versions"],
             "workloads": results}, indent=1))
    return 0


def device_webgpu(folder: Path, out: Path, web_dir: Path | None, log=print, budget_s: float = 0.0,
                  software: bool = False) -> int:
    """Time the WebGPU candidates in Dawn: web/node/tune.mjs with the Node and Dawn of a
    ``gpu_web prepare`` folder (``web_dir``; None: this machine's node and web/node_modules)."""
    import subprocess

    from sdparity.errors import SdparityError
    from sdparity.gpu import toolchain as gpu_toolchain
    from sdparity.gpu import web as gpu_web

    manifest = folder / WEBGPU_MANIFEST
    if not manifest.is_file():
        raise SdparityError(f"{manifest} not found: run `python -m sdparity.gpu.tune prepare --kind webgpu` "
                            f"here and carry the folder")
    node, dawn = "node", gpu_toolchain.WEB / "node_modules" / "webgpu"
    if web_dir is not None:
        node, dawn = gpu_toolchain.node_binary(web_dir), gpu_toolchain.unpack_dawn(web_dir)
    import gzip

    from sdparity.files import write_atomic

    kernels = [w["kernel"] for w in json.loads(gzip.decompress(manifest.read_bytes()))["workloads"]]
    n = len(kernels)
    out.mkdir(parents=True, exist_ok=True)
    results, crashed, part = None, [], out / "one-kernel.json"
    started = time.perf_counter()
    # one Node process a kernel: in one process Dawn for Node crashed (SIGSEGV/SIGABRT) after
    # a few kernels, on SwiftShader and on the H200 alike, while each kernel alone ran through
    for i in range(n):
        if budget_s and time.perf_counter() - started > budget_s:
            log(f"time budget of {budget_s:.0f} s spent: {n - i} kernels left untimed")
            break
        part.unlink(missing_ok=True)
        got, row = None, None
        for attempt in range(ATTEMPTS):  # a crashed process resumes where it stopped
            cmd = [node, str(gpu_toolchain.WEB / "node" / "tune.mjs"), "--manifest", str(manifest), "--out", str(part),
                   "--dawn", str(dawn), "--only", str(i)] + (["--resume", str(part)] if attempt else [])
            try:
                proc = subprocess.run(cmd, env=gpu_web.vulkan_env(software), capture_output=True, text=True,
                                      timeout=KERNEL_TIMEOUT_S)
            except subprocess.TimeoutExpired as e:
                proc = subprocess.CompletedProcess(e.cmd, -9, str(e.stdout or ""),
                                                   f"timed out after {KERNEL_TIMEOUT_S} s")
            if proc.returncode == 2:
                raise SdparityError((proc.stderr.strip().splitlines() or ["tune.mjs failed"])[-1])
            got = json.loads(part.read_text()) if part.is_file() else got
            row = got["workloads"][0] if got and got["workloads"] else row
            # done, out of time, or crashed after its last candidate (Dawn aborts at exit now and then)
            if proc.returncode >= 0 or proc.returncode == -9 or (row and row.get("complete")):
                break
        log((proc.stdout + proc.stderr).strip()[-400:] or f"kernel {i}: no output (exit status {proc.returncode})")
        if results is None and got is not None:
            results = {**got, "workloads": []}
        if row is not None and row["times_ms"]:
            results["workloads"].append(row)  # a partial row (complete: false) keeps the tiles it timed
        if row is None or not row.get("complete"):  # kept even before any kernel ran through
            crashed.append({"index": i, "kernel": kernels[i], "returncode": proc.returncode,
                            "timed": len(row["times_ms"]) if row else 0})
        write_atomic(out / "tune-results-webgpu.json", json.dumps(
            {**(results or {"kind": "webgpu", "workloads": []}), "crashed": crashed}, indent=1))
    part.unlink(missing_ok=True)
    return 0


def _nvcc_all(sources: list[Path], log) -> None:
    """nvcc every kernel source, in parallel (one process per core), beside it as the
    kernels-<sha>.fatbin that gpu_cuda's compile callback looks up."""
    from concurrent.futures import ThreadPoolExecutor

    from sdparity.gpu import toolchain as gpu_toolchain

    t0 = time.perf_counter()

    def one(src: Path):
        gpu_toolchain.nvcc(src.read_text(), src.with_suffix(".fatbin"))

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 4) as ex:
        list(ex.map(one, sources))
    log(f"nvcc: {len(sources)} modules in {time.perf_counter() - t0:.0f}s")


def _card_name() -> str:
    import subprocess

    try:
        return subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def apply(results_path: Path, dest: Path | None = None, log=print) -> Path:
    """Write the tuning database of the results' target kind (``dest``: default, that kind's
    database in gpu_rules.DATABASES)."""
    from sdparity.errors import SdparityError
    from sdparity.files import write_atomic

    try:
        res = json.loads(Path(results_path).read_text())
        rows = res["workloads"]
    except (OSError, ValueError, KeyError) as e:
        raise SdparityError(f"{results_path}: not a tune-results.json ({e})") from None
    from sdparity.compile.gpu_rules import CANDIDATES, DATABASES, DEFAULT, config_name, load_database

    kind = res.get("kind", "cuda")
    dest = Path(dest) if dest is not None else DATABASES[kind]
    old = load_database(dest) if dest.is_file() else {}
    tvm_version = (res.get("versions") or {}).get("apache-tvm")
    db = {"card": res.get("card"), "arch": res.get("arch"), "kind": kind, "model": res.get("model"),
          "apache-tvm": tvm_version, "workloads": dict(old)}
    if kind == "webgpu":
        db["adapter"] = res.get("adapter")
    saved = 0.0
    for r in rows:
        if not r["times_ms"]:
            continue
        # the reference tile the tuner timed first (results from before it was recorded: dlight's)
        default = r.get("default") or (DEFAULT if kind == "webgpu" else config_name(CANDIDATES[0]))
        # merge with an earlier round: its times are scaled by the ratio of the default's times
        # (timed in both), so one kernel's candidates compare as if timed in one run
        prev = old.get(r["key"], {})
        times, disagree = {}, dict(prev.get("disagree", {}))
        if prev.get("times_ms", {}).get(default) and r["times_ms"].get(default):
            scale = r["times_ms"][default] / prev["times_ms"][default]
            times = {k: round(v * scale, 5) for k, v in prev["times_ms"].items()}
        times.update(r["times_ms"])
        disagree.update(r.get("disagree", {}))
        db["workloads"][r["key"]] = {"stage": r["stage"], "kernel": r["kernel"], "times_ms": times,
                                     "disagree": disagree, "default": default}
        saved += times[default] - min(times.values()) if default in times else 0.0
    write_atomic(dest, json.dumps(db, indent=1, sort_keys=True) + "\n")
    log(f"{dest}: {len(db['workloads'])} kernels; the fastest candidates save {saved:.2f} ms over the "
        f"default (one call of each kernel)")
    return dest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m sdparity.gpu.tune", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="build every candidate tile of every matmul/conv kernel")
    a.add_argument("--kind", choices=("cuda", "webgpu"), default="cuda")
    a.add_argument("--model", default="sd15-random")
    a.add_argument("--dir", type=Path, default=Path("out/gpu-tune"))
    a.add_argument("--stages", default="unet,vae,clip")
    a.add_argument("--kernels", default="", help="comma-separated kernel names: only these (default: all)")
    a.add_argument("--precision", choices=("f32", "f16"), default="f32",
                   help="f16: the kernels of the f16 mode's builds (tensor-core tiles for float16 matmuls)")
    a.add_argument("--new-only", action="store_true",
                   help="time only candidates the database has no times for (and the default)")
    a.add_argument("--min-ms", type=float, default=0.0,
                   help="with --new-only: skip kernels whose default took less (ms) in the database")
    b = sub.add_parser("device", help="on the GPU machine: check and time every candidate")
    b.add_argument("--kind", choices=("cuda", "webgpu"), default="cuda")
    b.add_argument("--dir", type=Path, default=Path("out/gpu-tune"))
    b.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu-tune-result")))
    b.add_argument("--budget-s", type=float, default=0.0,
                   help="stop timing new kernels after this many seconds (0: no limit); results so far are kept")
    b.add_argument("--web-dir", type=Path, default=None,
                   help="webgpu: a `gpu_web prepare` folder whose Node and Dawn to use (default: this machine's)")
    b.add_argument("--swiftshader", action="store_true", help="webgpu: Dawn on chromium's SwiftShader (tests)")
    c = sub.add_parser("apply", help="write the tuning database from tune-results(-webgpu).json")
    c.add_argument("results", type=Path)
    c.add_argument("--database", type=Path, default=None, help="default: the results' kind's database")
    args = p.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.cmd == "prepare":
        from sdparity.compile.gpu_rules import load_database

        prepare(args.model, args.dir, [s for s in args.stages.split(",") if s], log,
                database=load_database(kind=args.kind) if args.new_only else None, min_ms=args.min_ms,
                kind=args.kind, kernels=[k for k in args.kernels.split(",") if k] or None,
                precision=args.precision)
        return 0
    if args.cmd == "device":
        if args.kind == "webgpu":
            return device_webgpu(args.dir, args.out, args.web_dir, log, args.budget_s, args.swiftshader)
        return device(args.dir, args.out, log, args.budget_s)
    apply(args.results, args.database, log)
    return 0


if __name__ == "__main__":
    from sdparity.errors import one_line_main

    sys.exit(one_line_main("python -m sdparity.gpu.tune", main))
