"""Tile tuning for the GPU matmul/convolution kernels: build candidates here, time them on the
card, keep the fastest that computes what the default computes (issue 13).

Three steps (docs/performance.md, "Tuning"):

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


def prepare(model_name: str, dest: Path, stage_names: list[str], log=print, database: dict | None = None,
            min_ms: float = 0.0) -> dict:
    """``database``: skip candidates it already has times for (the default is always timed
    again, as the reference of this run) and kernels whose default took less than ``min_ms``."""
    import tvm

    from reference.models import load_model
    from sdparity.compile.gpu_rules import CANDIDATES, config_name, fits, tuned_matmul, workload_key
    from sdparity.compile.schedule import fused_for_gpu
    from sdparity.errors import SdparityError
    from sdparity.registry import all_stages
    from sdparity.tiers import gpu_cuda

    target = gpu_cuda._cuda_backend().target()
    stages = all_stages()
    unknown = [n for n in stage_names if n not in stages]
    if unknown or not stage_names:
        raise SdparityError(f"unknown stage(s) {', '.join(unknown) or '(none given)'}; stages are: {', '.join(stages)}")
    model = load_model(model_name, log=log)
    dest.mkdir(parents=True, exist_ok=True)
    funcs, workloads, seen = {}, [], set()
    for name in stage_names:
        st = stages[name]
        mod = fused_for_gpu(st.build_ir(model, st.default_variant(model)).mod, target)
        found = list(_kernels(mod, target))
        log(f"{name}: {len(found)} matmul/conv kernels")
        for kname, func in found:
            key = workload_key(func)
            if key in seen:
                continue
            seen.add(key)
            known = (database or {}).get(key, {}).get("times_ms", {})
            if known and known.get(config_name(CANDIDATES[0]), 0.0) < min_ms:
                continue
            args = []
            for buf in func.params:  # Buffers (TVM 0.27 has no buffer_map)
                shape = [int(d) for d in buf.shape]  # static shapes only (the full-size model)
                args.append({"shape": shape, "dtype": str(buf.dtype)})
            cands = []
            for values in CANDIDATES:
                if not fits(values, "cuda") or (values != CANDIDATES[0] and config_name(values) in known):
                    continue
                try:
                    sch = tuned_matmul(database={}, force=values).apply(func, target, False)
                except Exception as e:  # noqa: BLE001 - recorded: the candidate cannot tile this kernel
                    log(f"  {kname} {config_name(values)}: not schedulable ({type(e).__name__})")
                    continue
                fn = f"k{len(workloads)}_{config_name(values)}"
                funcs[fn] = sch.mod["main"].with_attr("global_symbol", fn)
                cands.append({"function": fn, "config": config_name(values)})
            workloads.append({"key": key, "stage": name, "kernel": kname, "args": args, "candidates": cands})
    log(f"{len(workloads)} kernels, {sum(len(w['candidates']) for w in workloads)} candidates; code generation")
    stage_dir = Path(tempfile.mkdtemp(prefix="tune-", dir=dest))
    try:
        for i, w in enumerate(workloads):
            # one module per kernel: the device compiles them with nvcc in parallel (unrolled
            # tiles make ~150 kB of CUDA a candidate: one nvcc over all of them took >13 min here)
            lib = tvm.compile(tvm.IRModule({c["function"]: funcs[c["function"]] for c in w["candidates"]}),
                              target=target)
            lib.export_library(str(stage_dir / f"w{i}.so"))
            for src in gpu_cuda._cuda_sources(getattr(lib, "mod", lib)):
                (stage_dir / f"kernels-{gpu_cuda._sha(src)}.cu").write_text(src)
            w["module"] = f"w{i}.so"
        from sdparity.reports.report import versions

        manifest = {"model": model_name, "stages": stage_names, "arch": gpu_cuda.ARCH, "versions": versions(),
                    "workloads": workloads}
        (stage_dir / "manifest.json").write_text(json.dumps(manifest, indent=1, default=str))
        with tarfile.open(dest / "tune.tgz.part", "w:gz") as tf:
            for p in sorted(stage_dir.iterdir()):
                tf.add(p, arcname=p.name)
        os.replace(dest / "tune.tgz.part", dest / "tune.tgz")
    finally:
        shutil.rmtree(stage_dir, ignore_errors=True)
    gpu_cuda.slim_tvm_package(dest)
    log(f"{dest / 'tune.tgz'}: {(dest / 'tune.tgz').stat().st_size / 2**20:.1f} MiB")
    return manifest


def device(folder: Path, out: Path, log=print, budget_s: float = 0.0) -> int:
    from sdparity.errors import SdparityError
    from sdparity.files import write_atomic
    from sdparity.tiers import gpu_cuda

    if not (folder / "tune.tgz").is_file():
        raise SdparityError(f"{folder / 'tune.tgz'} not found: run `python -m sdparity.tiers.gpu_tune prepare` "
                            f"here and carry the folder")
    tvm = gpu_cuda._load_tvm_runtime()
    from sdparity.compile.compat import tensor

    work = Path(tempfile.mkdtemp(prefix="tune-"))
    with tarfile.open(folder / "tune.tgz") as tf:
        tf.extractall(work)
    manifest = json.loads((work / "manifest.json").read_text())
    _nvcc_all(sorted(work.glob("kernels-*.cu")), log)
    gpu_cuda.KERNEL_DIRS.append(work)
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
                           "disagree": {}}
        for c in w["candidates"]:
            f = lib[c["function"]]
            f(*args)
            dev.sync()
            result = args[-1].numpy()
            if base is None:
                base, scale = result, float(np.max(np.abs(result))) or 1.0
            else:
                diff = float(np.max(np.abs(result - base)))
                if not diff <= AGREE_RTOL * scale:
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


def _nvcc_all(sources: list[Path], log) -> None:
    """nvcc every kernel source, in parallel (one process per core), beside it as the
    kernels-<sha>.fatbin that gpu_cuda's compile callback looks up."""
    from concurrent.futures import ThreadPoolExecutor

    from sdparity.tiers import gpu_cuda

    t0 = time.perf_counter()

    def one(src: Path):
        gpu_cuda._nvcc(src.read_text(), src.with_suffix(".fatbin"))

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


def apply(results_path: Path, dest: Path, log=print) -> Path:
    from sdparity.errors import SdparityError
    from sdparity.files import write_atomic

    try:
        res = json.loads(Path(results_path).read_text())
        rows = res["workloads"]
    except (OSError, ValueError, KeyError) as e:
        raise SdparityError(f"{results_path}: not a tune-results.json ({e})") from None
    from sdparity.compile.gpu_rules import CANDIDATES, config_name, load_database

    old = load_database(dest) if dest.is_file() else {}
    tvm_version = (res.get("versions") or {}).get("apache-tvm")
    db = {"card": res.get("card"), "arch": res.get("arch"), "model": res.get("model"),
          "apache-tvm": tvm_version, "workloads": dict(old)}
    default, saved = config_name(CANDIDATES[0]), 0.0
    for r in rows:
        if not r["times_ms"]:
            continue
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
                                     "disagree": disagree}
        saved += times[default] - min(times.values()) if default in times else 0.0
    write_atomic(dest, json.dumps(db, indent=1, sort_keys=True) + "\n")
    log(f"{dest}: {len(db['workloads'])} kernels; the fastest candidates save {saved:.2f} ms over the "
        f"default (one call of each kernel)")
    return dest


def main(argv=None) -> int:
    from sdparity.compile.gpu_rules import DEFAULT_DATABASE

    p = argparse.ArgumentParser(prog="python -m sdparity.tiers.gpu_tune", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="build every candidate tile of every matmul/conv kernel for CUDA")
    a.add_argument("--model", default="sd15-random")
    a.add_argument("--dir", type=Path, default=Path("out/gpu-tune"))
    a.add_argument("--stages", default="unet,vae,clip")
    a.add_argument("--new-only", action="store_true",
                   help="time only candidates the database has no times for (and the default)")
    a.add_argument("--min-ms", type=float, default=0.0,
                   help="with --new-only: skip kernels whose default took less (ms) in the database")
    b = sub.add_parser("device", help="on the GPU machine: check and time every candidate")
    b.add_argument("--dir", type=Path, default=Path("out/gpu-tune"))
    b.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu-tune-result")))
    b.add_argument("--budget-s", type=float, default=0.0,
                   help="stop timing new kernels after this many seconds (0: no limit); results so far are kept")
    c = sub.add_parser("apply", help="write the tuning database from tune-results.json")
    c.add_argument("results", type=Path)
    c.add_argument("--database", type=Path, default=DEFAULT_DATABASE)
    args = p.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    if args.cmd == "prepare":
        from sdparity.compile.gpu_rules import load_database

        prepare(args.model, args.dir, [s for s in args.stages.split(",") if s], log,
                database=load_database() if args.new_only else None, min_ms=args.min_ms)
        return 0
    if args.cmd == "device":
        return device(args.dir, args.out, log, args.budget_s)
    apply(args.results, args.database, log)
    return 0


if __name__ == "__main__":
    from sdparity.errors import one_line_main

    sys.exit(one_line_main("python -m sdparity.tiers.gpu_tune", main))
