"""`sdparity bench`: build time, run time, peak memory and the ratio to PyTorch, per stage and
backend, measured side by side in one process.

For every selected stage and backend: the build goes through the build cache (its original
build time is reported when it was cached; --rebuild measures it again); one warm-up run
loads the module and weights; then N rounds each run the TVM function once and the stage's
reference once, alternating, so load from other processes on the machine hits both sides
alike. Run times are medians of the N rounds; ratio = TVM median / reference median.

One case per Relax function of the stage is timed (its first case). The reference is the
stage's own float32 reference (PyTorch/diffusers for clip, unet, vae, concat_embeddings;
numpy for image_to_rgba). The scheduler stage's reference replays a cached diffusers chain,
so it is timed as the same formula in PyTorch eager instead (``reference_kind`` says which).

Memory: resident set size (RSS) of this process, sampled every 5 ms. rss_delta_mib: the
peak during the first (loading) TVM run minus RSS before it: weights plus one run's
intermediates (approximate: memory the allocator kept from earlier stages is reused).
run_rss_delta_mib / ref_rss_delta_mib: the largest rise during one timed TVM / reference
run (the PyTorch model is loaded already, so the reference's is activations only). GPU
backends also record device memory in use (torch.cuda.mem_get_info, when available).

JSON schema "sdparity.bench/1" (written atomically): schema, created, argv, model, versions,
machine, threads (TVM's and torch's thread counts, TVM_BIND_THREADS, cpus_allowed), loadavg
(1-minute load at start and end), results[ {stage, backend, device_class, function, case, build_s,
build_cached, original_build_s, first_run_s, run_s (median), run_s_all, ref_s (median),
ref_s_all, reference_kind, ref_device, ratio, rss_peak_mib, rss_delta_mib, run_rss_delta_mib,
ref_rss_delta_mib,
device_mem_peak_mib, error} ]. ``--merge REPORT`` also stores it under "performance" in an
"sdparity.report/1" file, where GPU and CPU results stay apart by device_class.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from pathlib import Path

import numpy as np

from sdparity.errors import SdparityError

SCHEMA = "sdparity.bench/1"
DEFAULT_JSON = "sdparity-bench.json"
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_mib() -> float:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def device_used_mib() -> float | None:
    """Memory in use on CUDA device 0 (all allocators), or None without torch.cuda."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20
    except Exception:
        return None


class PeakSampler:
    """Samples RSS (and device memory) in a thread while the with-block runs."""

    def __init__(self, device: bool = False, interval: float = 0.005):
        self.device, self.interval = device, interval
        self.rss_peak = 0.0
        self.dev_peak: float | None = None
        self._stop = threading.Event()

    def _sample(self):
        self.rss_peak = max(self.rss_peak, rss_mib())
        if self.device:
            d = device_used_mib()
            if d is not None:
                self.dev_peak = d if self.dev_peak is None else max(self.dev_peak, d)

    def _loop(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        return False


# -- references ---------------------------------------------------------------------------

def reference_for(stage, case):
    """(callable(inputs) -> outputs, reference_kind)."""
    if stage.time_eager:
        import torch

        f = stage.torch_eager(case.function)

        def eager(inputs):
            with torch.no_grad():
                return [f(*[torch.from_numpy(np.array(a)) for a in inputs]).numpy()]

        return eager, stage.reference_kind
    return (lambda _inputs: case.reference("float32")), stage.reference_kind


def bench_cases(stage, model, variant, seed):
    """The first case of each Relax function of the stage."""
    seen, out = set(), []
    for c in stage.cases(model, variant, seed):
        if c.function not in seen:
            seen.add(c.function)
            out.append(c)
    return out


# -- measuring ----------------------------------------------------------------------------

def _median(xs):
    return statistics.median(xs) if xs else None


def measure(stage, backend, runner, model, variant, cache, repeat: int, seed: int = 0, log=print) -> list[dict]:
    gpu = backend.device_class == "gpu"
    t0 = time.perf_counter()
    art, meta, cached = backend.build_cached(lambda: stage.build_ir(model, variant),
                                             stage.build_key(model, variant), cache, log=log,
                                             label=f"{stage.name}/{backend.name}")
    build_s = time.perf_counter() - t0
    records = []
    for case in bench_cases(stage, model, variant, seed):
        rec = {"stage": stage.name, "backend": backend.name, "device_class": backend.device_class,
               "function": case.function, "case": case.label, "shapes": case.shapes,
               "build_s": round(build_s, 3), "build_cached": cached,
               "original_build_s": meta.get("build_s"), "error": None}
        ref, rec["reference_kind"] = reference_for(stage, case)
        rec["ref_device"] = "cpu"
        try:
            before = rss_mib()
            with PeakSampler(device=gpu) as first:  # loads the module and its weights
                t1 = time.perf_counter()
                runner.run(art, case.function, case.inputs)
                rec["first_run_s"] = round(time.perf_counter() - t1, 4)
            dev_peak = first.dev_peak
            runs, refs, run_delta, ref_delta = [], [], 0.0, 0.0
            for _ in range(repeat):  # alternate, so load from elsewhere hits both sides alike
                rss0 = rss_mib()
                with PeakSampler(device=gpu) as m:
                    t1 = time.perf_counter()
                    runner.run(art, case.function, case.inputs)
                    runs.append(time.perf_counter() - t1)
                run_delta = max(run_delta, m.rss_peak - rss0)
                if m.dev_peak is not None:
                    dev_peak = max(dev_peak or 0.0, m.dev_peak)
                rss0 = rss_mib()
                with PeakSampler() as m:
                    t1 = time.perf_counter()
                    ref(case.inputs)
                    refs.append(time.perf_counter() - t1)
                ref_delta = max(ref_delta, m.rss_peak - rss0)
        except Exception as e:  # one failing stage must not lose the other measurements
            rec["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
            log(f"[{backend.name}] {stage.name} {case.function}: ERROR {rec['error']}")
            records.append(rec)
            continue
        rec.update({
            "run_s": round(_median(runs), 5), "run_s_all": [round(x, 5) for x in runs],
            "ref_s": round(_median(refs), 5), "ref_s_all": [round(x, 5) for x in refs],
            "rss_peak_mib": round(first.rss_peak, 1),
            "rss_delta_mib": round(max(first.rss_peak - before, 0.0), 1),
            "run_rss_delta_mib": round(run_delta, 1),
            "ref_rss_delta_mib": round(ref_delta, 1),
            "device_mem_peak_mib": None if dev_peak is None else round(dev_peak, 1),
        })
        rec["ratio"] = round(rec["run_s"] / rec["ref_s"], 3) if rec["ref_s"] > 0 else None
        log(f"[{backend.name}] {stage.name} {case.function}: tvm {rec['run_s']:.4f}s "
            f"ref {rec['ref_s']:.4f}s ratio {rec['ratio']}")
        records.append(rec)
    return records


def run_bench(model, stages, backends, cache, repeat: int = 3, seed: int = 0, variants=None, log=print) -> dict:
    import contextlib

    from sdparity.reports.report import Report
    from sdparity.runner import open_sessions

    data = Report(model).data
    data["schema"] = SCHEMA
    data.pop("results", None)
    data["repeat"] = repeat
    data["threads"] = _threads()
    data["loadavg"] = {"start": _loadavg()}
    data["results"] = []
    with contextlib.ExitStack() as stack:
        runners, problems = open_sessions(backends, stack, log)
        for b in backends:
            if b.name in runners:
                data["backends"][b.name] = b.describe_session(runners[b.name])
            else:
                verdict, why = problems[b.name]
                what = "skipped" if verdict == "skip" else "cannot start"
                data["results"].append({"backend": b.name, "device_class": b.device_class, "stage": None,
                                        "error": f"{what}: {why}"})
        data["threads"] = _threads()  # after the sessions configured the runtime
        for st in stages:
            variant = (variants or {}).get(st.name) or st.default_variant(model)
            for b in backends:
                if b.name in runners:
                    log(f"[{b.name}] {st.name}: benchmarking")
                    try:
                        data["results"] += measure(st, b, runners[b.name], model, variant, cache,
                                                   repeat, seed, log)
                    except Exception as e:
                        data["results"].append({"stage": st.name, "backend": b.name,
                                                "device_class": b.device_class,
                                                "error": f"{type(e).__name__}: {e}"[:500]})
    data["loadavg"]["end"] = _loadavg()
    return data


def _loadavg() -> float | None:
    """1-minute load average: on a shared machine it says how much the numbers can be trusted."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _threads() -> dict:
    # Asking TVM for its thread count starts its thread pool, which reads TVM_NUM_THREADS
    # once: set it first (an earlier version asked before the llvm session set it, and every
    # TVM run of that bench used one thread of two).
    from sdparity.compile.schedule_cpu import configure_threads

    configure_threads()
    out = {"TVM_NUM_THREADS": os.environ.get("TVM_NUM_THREADS"),
           "TVM_BIND_THREADS": os.environ.get("TVM_BIND_THREADS")}
    try:
        import tvm

        out["tvm_runtime"] = int(tvm.runtime.num_threads())
    except Exception:
        pass
    if hasattr(os, "sched_getaffinity"):  # cores this process may use after TVM's pool started
        out["cpus_allowed"] = len(os.sched_getaffinity(0))
    try:
        import torch

        out["torch"] = torch.get_num_threads()
    except Exception:
        pass
    return out


# -- output -------------------------------------------------------------------------------

def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_table(data: dict) -> None:
    head = (f"{'stage':<18} {'backend':<7} {'dev':<4} {'function':<25} {'build s':>8} {'tvm s':>9} "
            f"{'ref s':>9} {'ratio':>7} {'rss MiB':>8} {'gpu MiB':>8}")
    print(head)
    print("-" * len(head))
    for r in data["results"]:
        if r.get("error") and "run_s" not in r:
            print(f"{str(r.get('stage')):<18} {r['backend']:<7} {r['device_class']:<4} {r['error']}")
            continue
        build = r["original_build_s"] if r["build_cached"] and r.get("original_build_s") else r["build_s"]
        print(f"{r['stage']:<18} {r['backend']:<7} {r['device_class']:<4} {r['function']:<25} "
              f"{_fmt(build, '8.1f')}{'c' if r['build_cached'] else ' '}{_fmt(r['run_s'], '9.4f')} "
              f"{_fmt(r['ref_s'], '9.4f')} {_fmt(r['ratio'], '7.2f')} {_fmt(r['rss_delta_mib'], '8.0f')} "
              f"{_fmt(r['device_mem_peak_mib'], '8.0f')}")
    print("build: 'c' = reused from the cache, showing its original build time; "
          "ratio = tvm / reference, medians of side-by-side runs")


def merge_into_report(report_path: Path, data: dict) -> None:
    """Store bench results in an sdparity report under "performance", one list per
    device_class (cpu / gpu): a later merge replaces only the classes it measured."""
    import json

    from sdparity.files import write_atomic
    from sdparity.reports.report import load

    rep = load(report_path)
    perf = rep.setdefault("performance", {})
    by_class: dict[str, list] = {}
    for r in data["results"]:
        by_class.setdefault(r.get("device_class") or "cpu", []).append(r)
    for dc, rows in by_class.items():
        perf[dc] = {"created": data["created"], "machine": data["machine"], "threads": data["threads"],
                    "repeat": data["repeat"], "loadavg": data.get("loadavg"), "backends": data["backends"],
                    "results": rows}
    write_atomic(report_path, json.dumps(rep, indent=1, default=str))


# -- command ------------------------------------------------------------------------------

def add_parser(sub) -> None:
    from sdparity.args import (latent_hw, add_model_args, backend_list, existing_file, out_file, positive_int,
                              seed_arg, stage_list)

    p = sub.add_parser("bench", help="time builds and runs per stage and backend against PyTorch",
                       description="Per stage and backend: build time, run time (median of N), peak "
                       "memory (RSS; GPU memory for GPU backends) and the ratio to the stage's "
                       "PyTorch reference, run side by side in this process. Prints a table and "
                       "writes JSON atomically.")
    add_model_args(p)
    p.add_argument("--stages", type=stage_list, default=None, help="comma-separated stages (default: all)")
    p.add_argument("--backends", type=backend_list, default=["llvm"], help="comma-separated (default: llvm)")
    p.add_argument("--repeat", "-n", type=positive_int, default=3, help="timed rounds per case (default 3)")
    p.add_argument("--latent", type=latent_hw, default=None, help="latent HxW for unet/vae")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--rebuild", action="store_true", help="ignore cached builds (measures build time)")
    p.add_argument("--json", type=out_file, default=DEFAULT_JSON, help=f"output (default {DEFAULT_JSON})")
    p.add_argument("--merge", type=existing_file, default=None, metavar="REPORT",
                   help="also store the results under 'performance' in this sdparity report")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args) -> int:
    from sdparity.cache import BuildCache
    from sdparity.args import load_selection
    from sdparity.files import write_atomic
    from sdparity.errors import Progress

    log = Progress(quiet=args.quiet)  # stages, backends, --repeat, --seed: checked while parsing
    model, selected, backends, variants = load_selection(args, log)
    data = run_bench(model, selected, backends, BuildCache(rebuild=args.rebuild), args.repeat,
                     args.seed, variants, log)
    import json

    write_atomic(args.json, json.dumps(data, indent=1, default=str))
    print_table(data)
    print(f"bench: {args.json}")
    if args.merge:
        merge_into_report(args.merge, data)
        print(f"merged into {args.merge}")
    return 1 if any(r.get("error") and not str(r["error"]).startswith("skipped") for r in data["results"]) else 0
