"""The tables of docs/performance.md, rendered from the committed reports under docs/results/.

Every table that states numbers from a committed report sits between two markers::

    <!-- generated: NAME from docs/results/A, docs/results/B -->
    | ... the table ... |
    <!-- end generated -->

and is rendered here from those reports alone: each row ends with a cell naming the
report(s) it was read from and the machine (CPU model and ``mcpu``, from the report's
``machine`` facts and llvm target) or card (from its device facts) that report records.
The prose around the tables is not touched.

    python -m sdparity.reports.perfdoc           # rewrite the generated sections in place
    python -m sdparity.reports.perfdoc --check   # exit 1 and show the first table that differs

Standard library only (no TVM, no torch): tests/unit/test_perf_docs.py runs the check.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from functools import lru_cache
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "performance.md"
RESULTS = ROOT / "docs" / "results"
PIPELINE = ROOT / "sdparity" / "stages" / "pipeline.json"

#: denoising steps of one generation (the web app's default, as in sdparity/gpu/cuda.STEPS)
STEPS = 20

BEGIN = re.compile(r"^<!-- generated: (?P<name>[\w.-]+) from (?P<sources>[^>]*?) -->$")
END = "<!-- end generated -->"


class PerfDocError(Exception):
    """A generated section is missing, unknown, duplicated or not closed."""


# --------------------------------------------------------------------------- reports


class Reports:
    """The committed reports, read once (paths relative to docs/results/)."""

    def __init__(self, results: Path = RESULTS):
        self.results = Path(results)
        self._cache: dict[str, dict] = {}

    def __call__(self, rel: str) -> dict:
        if rel not in self._cache:
            self._cache[rel] = json.loads((self.results / rel).read_text())
        return self._cache[rel]

    def machine(self, rel: str) -> str:
        """The CPU or card the report records, in the report's own words."""
        d = self(rel)
        backends = d.get("backends") or {}
        for b in backends.values():
            if b.get("device_name"):
                return b["device_name"]
        card = d.get("card") or (d.get("performance", {}).get("gpu") or {}).get("card")
        if card:
            return card
        m = d.get("machine") or {}
        if m.get("cpu"):
            cpu = re.sub(r"\((R|TM)\)", "", m["cpu"]).replace("  ", " ").strip()
            extra = []
            for b in backends.values():
                mcpu = json.loads(b["target"]).get("mcpu") if b.get("target") else None
                if mcpu:
                    extra.append(mcpu)
            if m.get("cpus"):
                extra.append(f"{m['cpus']} cores")
            return f"{cpu} ({', '.join(extra)})" if extra else cpu
        raise PerfDocError(f"docs/results/{rel} records neither a machine nor a card")


@dataclass
class Table:
    header: list[str]
    rows: list[tuple[list[str], list[str]]] = field(default_factory=list)  # (cells, reports)

    def add(self, cells: list[str], *reports: str) -> None:
        if len(cells) != len(self.header):
            raise ValueError(f"{len(cells)} cells for {len(self.header)} columns: {cells}")
        self.rows.append(([str(c) for c in cells], list(reports)))

    def sources(self) -> list[str]:
        out: list[str] = []
        for _, reps in self.rows:
            out += [r for r in reps if r not in out]
        return out


def source_cell(reports: Reports, rels: list[str]) -> str:
    """Each report as a link (relative to docs/), then the machine or card it records."""
    groups: dict[str, list[str]] = {}
    for rel in rels:
        groups.setdefault(reports.machine(rel), []).append(rel)
    return "; ".join(", ".join(f"[{r}](results/{r})" for r in rs) + f": {m}" for m, rs in groups.items())


def render(reports: Reports, table: Table) -> str:
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    out = [line(table.header + ["report: machine or card"]), "|" + "---|" * (len(table.header) + 1)]
    for cells, rels in table.rows:
        if not rels:
            raise PerfDocError(f"a row names no report: {cells}")
        out.append(line(cells + [source_cell(reports, rels)]))
    return "\n".join(out)


# --------------------------------------------------------------------------- numbers


def num(x: float | None) -> str:
    """3-4 significant digits, no exponent for the ranges these tables hold (0.012, 5.36,
    85.78, 170.4)."""
    if x is None:
        return ""
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 100:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def mib(x: float | None) -> str:
    return "" if x is None else f"{x:.0f} MiB"


def sci(x: float) -> str:
    """An error: 3 significant digits, short exponent (8.58e-6)."""
    if x == 0:
        return "0"
    if 0.01 <= abs(x) < 1000:
        return f"{x:.3g}"
    m, e = f"{x:.2e}".split("e")
    return f"{m}e{int(e)}"


def fixed(x: float, digits: int = 2) -> str:
    """Round half up on the number as written in the report (0.705 -> 0.71)."""
    q = Decimal(1).scaleb(-digits)
    return str(Decimal(repr(float(x))).quantize(q, rounding=ROUND_HALF_UP))


def ratio(r: dict) -> str:
    """TVM time / reference time as the report records it (3 decimals, computed before the
    medians were rounded: rounding it again, or dividing the rounded medians, would move
    sub-millisecond ratios by up to 20%)."""
    return f"{r['ratio']:.3f}x"


def recorded(x: float) -> str:
    """A number the report already rounded, as it is written there (0.13, 151.45)."""
    return f"{x:g}"


def places(r: dict) -> int:
    """Decimals (of a second) a timing record was rounded to: 1 µs on the GPU, 10 µs in a bench."""
    return 6 if r.get("device_class") == "gpu" else 5


def seconds(x: float, unit: str, digits: int = 6) -> str:
    """A time the report records in seconds (rounded to ``digits`` decimals), in ``unit``,
    never with more decimals than the report kept (a bench's 0.00033 s is 0.33 ms, not 0.330)."""
    v = x * 1000 if unit == "ms" else x
    if x == 0 or abs(v) >= 1:
        return num(v)
    return f"{v:.{max(0, min(3, digits - (3 if unit == 'ms' else 0)))}f}"


def unit_for(r: dict, gpu: bool) -> str:
    return "ms" if gpu or r["run_s"] < 0.1 else "s"


def pair(r: dict, gpu: bool = False) -> str:
    """'TVM / reference unit'."""
    u = unit_for(r, gpu)
    return f"{seconds(r['run_s'], u, places(r))} / {seconds(r['ref_s'], u, places(r))} {u}"


def rounds(values: list[float] | None, unit: str, digits: int = 5) -> str:
    return " ".join(seconds(v, unit, digits) for v in values or [])


def span(values: list[float], fmt: Callable[[float], str] = sci, sep: str = "..") -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}{sep}{fmt(hi)}"


def day(d: dict) -> str:
    return (d.get("created") or "")[:10]


def timed(d: dict) -> list[dict]:
    """A report's timing records: a bench's results, a report's performance.cpu/gpu."""
    if d.get("schema") == "sdparity.bench/1":
        return d["results"]
    perf = d.get("performance") or {}
    return (perf.get("gpu") or perf.get("cpu") or {}).get("results", [])


def by_function(d: dict) -> dict[str, dict]:
    return {r["function"]: r for r in timed(d)}


def functions_in_order(*ds: dict) -> list[str]:
    """Every function timed in any of the reports, in pipeline order."""
    order = [f for s in json.loads(PIPELINE.read_text())["stages"] for f in s["functions"]]
    seen = {f for d in ds for f in by_function(d)}
    return [f for f in order if f in seen] + sorted(seen - set(order))


def per_image() -> dict[str, int]:
    """How often one generation calls each function (stages/pipeline.json)."""
    out = {}
    for s in json.loads(PIPELINE.read_text())["stages"]:
        for f in s["functions"]:
            out[f] = STEPS if s.get("per_image") == "steps" else 1
    return out


def generation_s(d: dict, side: str, only: list[str] | None = None) -> float:
    """One generation summed as gpu_cuda does: every timed function x its calls per image."""
    calls = per_image()
    fns = by_function(d)
    return sum(fns[f][side] * calls.get(f, 1) for f in (only or fns))


# --------------------------------------------------------------------------- tables

CPU = "cpu-sd15/"
QUIET2, QUIET1 = CPU + "bench_sd15_2threads_2026-11-29-quiet.json", CPU + "bench_sd15_1thread_2026-11-29-quiet.json"
FIX2, FIX1 = CPU + "bench_sd15_2threads_2026-11-29.json", CPU + "bench_sd15_1thread_2026-11-29.json"
SOFTMAX2 = CPU + "bench_sd15_2threads_2026-11-29-softmax.json"
BEFORE_ATT2 = CPU + "bench_sd15_2threads_2026-11-30-before-attention.json"
ATT2, ATT1 = CPU + "bench_sd15_2threads_2026-11-30-attention.json", CPU + "bench_sd15_1thread_2026-11-30-attention.json"
BENCH_1126, BENCH2_1126 = CPU + "bench_sd15.json", CPU + "bench2_sd15.json"
CPU_REPORT = CPU + "report-sd15.json"
H200_WINOGRAD, H200_TUNED = "cuda-h200-winograd/gpu-report.json", "cuda-h200-tuned/gpu-report.json"
H200_BEFORE, H100 = "cuda-h200/gpu-report.json", "cuda-h100/gpu-report.json"
# sdxl-random at 1024x1024 (128x128 latents): the run whose VAE did not launch, then the fixed one
SDXL_H100_RUN1, SDXL_H100 = "cuda-sdxl-h100-run1/gpu-report.json", "cuda-sdxl-h100/gpu-report.json"
SDXL_H100_SEEDS = [SDXL_H100] + [f"cuda-sdxl-h100/calibrate-seed{n}.json" for n in (1, 2)]
# sd21-random at 768x768 (96x96 latents): one call with CLIP (OpenCLIP ViT-H), UNet and VAE at
# seed 0; then seeds 0-4 in two calls (the UNet's; CLIP's and the VAE's), seed by seed
SD21_H100 = "cuda-sd21-h100/gpu-report.json"
WEBGPU_SDXL = "webgpu-sdxl-dawn-h100/gpu-report.json"  # sdparity.gpu.webstages: UNet and VAE on Dawn
SD21_H100_SEEDS = [f"cuda-sd21-h100/{part}/{'gpu-report' if n == 0 else f'calibrate-seed{n}'}.json"
                   for n in range(5) for part in ("clip-vae-seeds", "unet-seeds")]

TABLES: dict[str, Callable[[Reports], Table]] = {}


def table(name: str):
    def register(fn):
        TABLES[name] = fn
        return fn

    return register


def _threads(d: dict) -> str:
    t = d.get("threads") or {}
    return str(t.get("tvm_runtime", t.get("TVM_NUM_THREADS", "")))


def _parity_cell(records: list[dict]) -> str:
    n = len(records)
    ok = sum(r["verdict"] == "pass" for r in records)
    exact = all((r.get("metrics") or {}).get("max_abs") == 0 for r in records)
    return f"{ok}/{n} pass" + (", bit-exact" if exact else "")


@table("summary")
def _summary(R: Reports) -> Table:
    fns = functions_in_order(R(H200_WINOGRAD), R(QUIET2))
    t = Table(["measurement"] + fns)
    cpu_rows = [
        (QUIET2, "CPU: TVM llvm / PyTorch, 2 TVM threads, quiet machine"),
        (ATT2, "CPU: same, attention as one kernel (UNet and VAE only)"),
    ]
    gpu_rows = [
        (H200_WINOGRAD, "GPU: TVM CUDA / PyTorch CUDA, Winograd + tuned tiles"),
        (H200_TUNED, "GPU: same, tuned tiles without Winograd"),
        (H200_BEFORE, "GPU: same, before tuning"),
    ]
    for rel, label in cpu_rows + gpu_rows:
        d = R(rel)
        fn = by_function(d)
        gpu = rel in dict(gpu_rows)
        t.add([f"{label} ({day(d)})"] + [f"{pair(fn[f], gpu)} = {ratio(fn[f])}" if f in fn else "" for f in fns], rel)
    for rel, label in ((CPU_REPORT, "parity, CPU (llvm)"), (H200_WINOGRAD, "parity, GPU (CUDA, Winograd)")):
        d = R(rel)
        t.add([f"{label} ({day(d)})"] + [_parity_cell([r for r in d["results"] if r["function"] == f]) for f in fns], rel)
    return t


@table("cpu-machines")
def _cpu_machines(R: Reports) -> Table:
    rels = [CPU_REPORT, BENCH_1126, BENCH2_1126, FIX2, FIX1, QUIET2, QUIET1, SOFTMAX2, BEFORE_ATT2, ATT2, ATT1]
    t = Table(["created", "memory", "Python / torch / TVM", "TVM threads", "`TVM_BIND_THREADS`", "load average start -> end"])
    for rel in sorted(rels, key=lambda r: R(r)["created"]):
        d = R(rel)
        v, m, t_ = d["versions"], d["machine"], d.get("threads") or {}
        load = d.get("loadavg") or {}
        t.add([d["created"][:16].replace("T", " "), f"{m['mem_gib']} GiB",
               f"{v['python']} / {v['torch']} / {v['apache-tvm']}", _threads(d) or "(no bench)",
               t_.get("TVM_BIND_THREADS", "(not set)") if t_ else "",
               f"{load['start']} -> {load['end']}" if load else "(not recorded)"], rel)
    return t


def _two_runs(R: Reports, rel2: str, rel1: str) -> Table:
    d2, d1 = R(rel2), R(rel1)
    f2, f1 = by_function(d2), by_function(d1)
    t = Table(["function", "2 threads: TVM / torch (ratio)", "TVM rounds", "torch rounds",
               "1 thread: TVM / torch (ratio)", "TVM rounds", "torch rounds", "TVM 2 threads / 1 thread"])
    for f in functions_in_order(d2, d1):
        a, b = f2[f], f1[f]
        cells = [f]
        for r in (a, b):
            u = unit_for(r, False)
            cells += [f"{pair(r)} ({ratio(r)})", rounds(r["run_s_all"], u), rounds(r["ref_s_all"], u)]
        t.add(cells + [fixed(a["run_s"] / b["run_s"])], rel2, rel1)
    return t


@table("cpu-sd15-thread-fix")
def _thread_fix(R: Reports) -> Table:
    return _two_runs(R, FIX2, FIX1)


@table("cpu-sd15-quiet")
def _quiet(R: Reports) -> Table:
    return _two_runs(R, QUIET2, QUIET1)


@table("cpu-sd15-before-fix")
def _before_fix(R: Reports) -> Table:
    t = Table(["TVM threads (runtime)", "function", "build (s)", "TVM run", "torch run", "ratio",
               "TVM rounds", "torch rounds", "RSS rise, first TVM run (MiB)"])
    for rel in (BENCH_1126, BENCH2_1126):
        d = R(rel)
        for f in functions_in_order(d):
            r = by_function(d)[f]
            u = unit_for(r, False)
            t.add([_threads(d), f, num(r["original_build_s"]), f"{seconds(r['run_s'], u, places(r))} {u}",
                   f"{seconds(r['ref_s'], u, places(r))} {u}", ratio(r), rounds(r["run_s_all"], u),
                   rounds(r["ref_s_all"], u), f"{r['rss_delta_mib']:.0f}"], rel)
    return t


def _parity(R: Reports, rel: str) -> Table:
    d = R(rel)
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in d["results"]:
        groups.setdefault((r["function"], r.get("output") or ""), []).append(r)
    t = Table(["function", "output", "checks", "max abs error", "float32 noise floor", "max err / floor",
               "elements that differ (of n)"])
    for (f, out), recs in groups.items():
        if any(r["verdict"] == "error" for r in recs):  # a stage that did not build or run
            t.add([f or recs[0]["stage"], out, f"{len(recs)} error: {recs[0]['message']}", "", "", "", ""], rel)
            continue
        ms = [r["metrics"] for r in recs]
        errs = [m["max_abs"] for m in ms]
        floors = [m["noise_floor"] for m in ms if m.get("noise_floor") is not None]
        fr = [m["max_abs"] / m["noise_floor"] for m in ms if m.get("noise_floor")]
        err = ", ".join(sci(e) for e in errs) if len(errs) <= 4 else f"max {sci(max(errs))}"
        diff = [m.get("mismatches") or 0 for m in ms]
        t.add([f, out, _parity_cell(recs), err, span(floors) if floors else "",
               f"{fixed(max(fr), 1)}x" if fr and max(errs) > 0 else ("0" if max(errs) == 0 else ""),
               ", ".join(f"{x} of {m['n']}" for x, m in zip(diff, ms)) if any(diff) else ""], rel)
    return t


@table("cpu-sd15-parity")
def _cpu_parity(R: Reports) -> Table:
    return _parity(R, CPU_REPORT)


@table("cuda-h100-parity")
def _h100_parity(R: Reports) -> Table:
    return _parity(R, H100)


@table("cpu-attention")
def _attention(R: Reports) -> Table:
    runs = [(SOFTMAX2, "exp evaluated once (softmax change)"), (BEFORE_ATT2, "before (commit 1429acc)"),
            (ATT2, "attention as one kernel"), (ATT1, "attention as one kernel, 1 TVM thread")]
    fns = functions_in_order(*(R(rel) for rel, _ in runs))
    t = Table(["run", "TVM threads"] + [c for f in fns for c in (f"TVM {f} (rounds)", f"PyTorch {f} (rounds)", "ratio")]
              + ["RSS rise, first TVM call of the first function (MiB)"])
    for rel, label in runs:
        d = R(rel)
        fn = by_function(d)
        cells = [f"{label} ({day(d)})", _threads(d)]
        for f in fns:
            r = fn.get(f)
            cells += ([f"{num(r['run_s'])} s ({rounds(r['run_s_all'], 's')})",
                       f"{num(r['ref_s'])} s ({rounds(r['ref_s_all'], 's')})", ratio(r)] if r else ["", "", ""])
        t.add(cells + [mib(timed(d)[0]["rss_delta_mib"])], rel)
    return t


#: the columns of a CUDA timing row (``_time_cells``)
TIME_HEADER = ["TVM CUDA", "torch CUDA", "ratio", "TVM device memory (rise)", "torch peak allocated"]


def _time_cells(r: dict) -> list[str]:
    return [f"{seconds(r['run_s'], 'ms')} ms", f"{seconds(r['ref_s'], 'ms')} ms", ratio(r),
            mib(r["device_mem_delta_mib"]), mib(r.get("ref_peak_allocated_mib"))]


def _cuda_times(R: Reports, rel: str) -> Table:
    d = R(rel)
    t = Table(["function"] + TIME_HEADER)
    for f in functions_in_order(d):
        t.add([f] + _time_cells(by_function(d)[f]), rel)
    return t


@table("cuda-h200-before-tuning")
def _h200_before(R: Reports) -> Table:
    return _cuda_times(R, H200_BEFORE)


@table("cuda-h100")
def _h100(R: Reports) -> Table:
    return _cuda_times(R, H100)


@table("cuda-sdxl-h100-run1")
def _sdxl_h100_run1(R: Reports) -> Table:
    return _cuda_times(R, SDXL_H100_RUN1)


@table("cuda-sdxl-h100-run1-parity")
def _sdxl_h100_run1_parity(R: Reports) -> Table:
    return _parity(R, SDXL_H100_RUN1)


def _seeds_times(R: Reports, rels: list[str]) -> Table:
    """One row per function and seed, from whichever of the reports timed it."""
    t = Table(["function", "seed"] + TIME_HEADER)
    for f in functions_in_order(*(R(rel) for rel in rels)):
        for rel in rels:
            d = R(rel)
            if f in by_function(d):
                t.add([f, str(d.get("seed", 0))] + _time_cells(by_function(d)[f]), rel)
    return t


def _seeds_parity(R: Reports, rels: list[str]) -> Table:
    """The parity rows of each report, with its seed, in the order given."""
    t = Table(["seed"] + _parity(R, rels[0]).header)
    for rel in rels:
        seed = str(R(rel).get("seed", 0))
        for cells, reports in _parity(R, rel).rows:
            t.add([seed] + cells, *reports)
    return t


@table("cuda-sdxl-h100")
def _sdxl_h100(R: Reports) -> Table:
    return _seeds_times(R, SDXL_H100_SEEDS)


@table("cuda-sdxl-h100-parity")
def _sdxl_h100_parity(R: Reports) -> Table:
    return _seeds_parity(R, SDXL_H100_SEEDS)


@table("cuda-sd21-h100")
def _sd21_h100(R: Reports) -> Table:
    return _cuda_times(R, SD21_H100)


@table("cuda-sd21-h100-seeds")
def _sd21_h100_seeds(R: Reports) -> Table:
    return _seeds_times(R, SD21_H100_SEEDS)


@table("cuda-sd21-h100-parity")
def _sd21_h100_parity(R: Reports) -> Table:
    return _seeds_parity(R, SD21_H100_SEEDS)


def _profiles(R: Reports, rels: list[str], note: str = "") -> Table:
    """Kernels by kind (scripts/gpu_kernel_profile.py): one column group per function; with
    two profiles the second's milliseconds in brackets."""
    profs = [R(rel) for rel in rels]
    fns = [k for k, v in profs[0].items() if isinstance(v, dict) and "by_kind" in v]
    t = Table(["kind"] + [c for f in fns for c in (f"{f} calls", f"{f} ms", f"{f} share")])
    kinds: list[str] = []
    for f in fns:
        kinds += [k["kind"] for k in profs[0][f]["by_kind"] if k["kind"] not in kinds]
    for kind in kinds:
        cells = [kind]
        for f in fns:
            rows = [{k["kind"]: k for k in p[f]["by_kind"]}.get(kind) for p in profs]
            first = rows[0]
            if first is None:
                cells += ["", "", ""]
                continue
            ms = recorded(first["ms"])
            if len(rows) > 1 and rows[1] is not None and rows[1]["ms"] != first["ms"]:
                ms += f" ({recorded(rows[1]['ms'])})"
            cells += [str(first["calls"]), ms, f"{fixed(first['share'] * 100, 1)}%"]
        t.add(cells, *rels)
    cells = ["synchronized sum (plain call, median)"]
    for f in fns:
        p = profs[0][f]
        cells += ["", f"{recorded(p['synced_sum_ms'])} ({recorded(p['call_ms_median'])})", ""]
    t.add(cells, rels[0])
    return t


@table("cuda-winograd-profile")
def _winograd_profile(R: Reports) -> Table:
    return _profiles(R, ["cuda-h200-winograd/kernel-profile.json"])


@table("cuda-tuned-profile")
def _tuned_profile(R: Reports) -> Table:
    return _profiles(R, ["cuda-h200-tuned/kernel-profile.json", "cuda-h200/kernel-profile.json"])


def _f16_errors(recs: list[dict]) -> str:
    """TVM f16 error / PyTorch f16 error against float64, per output, with the ratio range."""
    outs: dict[str, list[dict]] = {}
    for r in recs:
        outs.setdefault(r.get("output") or "", []).append(r["metrics"])
    parts = []
    for out, ms in outs.items():
        parts.append(f"{out}: {span([m['max_abs'] for m in ms])} / {span([m['torch_f16_max_abs'] for m in ms])}"
                     f" ({span([m['ratio'] for m in ms], lambda x: fixed(x))}x)")
    return "; ".join(parts)


@table("f16-first")
def _f16_first(R: Reports) -> Table:
    rel = "cuda-h200-f16/gpu-report.json"
    d = R(rel)
    t = Table(["function", "checks", "TVM f16 error / PyTorch f16 error against float64 (ratio)", "TVM f16",
               "PyTorch f16", "ratio"])
    for f in functions_in_order(d):
        r = by_function(d)[f]
        recs = [x for x in d["results"] if x["function"] == f]
        t.add([f, _parity_cell(recs), _f16_errors(recs), f"{seconds(r['run_s'], 'ms')} ms",
               f"{seconds(r['ref_s'], 'ms')} ms", ratio(r)], rel)
    return t


F16_STEPS = [
    ("cuda-h200-f16/gpu-report.json", "before (CUDA cores, dlight's default tiles)"),
    ("cuda-h200-f16-mma/gpu-report.json", "`compile/mma.py`: ldmatrix + mma.sync, one 128x128 tile"),
    ("cuda-h200-f16-mma-trans/gpu-report.json", "operands with rows contiguous stored [K, row] (\"trans\" ldmatrix)"),
    ("cuda-h200-f16-winograd/gpu-report.json", "Winograd F(2x2, 3x3) for float16 (transforms in float32, U and V in float16)"),
    ("cuda-h200-f16-lifted/gpu-report.json", "weights' casts, transposes and Winograd transform lifted out (`<fn>_transform_params`, once at load)"),
    ("cuda-h200-f16-tuned/gpu-report.json", "tensor-core tiles timed on the card (`gpu_tune --precision f16`: 88 kernels, 22 tiles each incl. split-K)"),
]


def _ms_columns(R: Reports, rows: list[tuple[str, str]], header0: str) -> Table:
    fns = functions_in_order(*(R(rel) for rel, _ in rows))
    t = Table([header0] + [f"TVM {f}" for f in fns] + ["checks", "TVM / PyTorch f16 error (all checks)"])
    for rel, label in rows:
        d = R(rel)
        fn = by_function(d)
        s = d["summary"]
        ratios = [x["metrics"]["ratio"] for x in d["results"] if (x.get("metrics") or {}).get("ratio") is not None
                  and x["metrics"].get("torch_f16_max_abs") != x["metrics"].get("max_abs")]
        t.add([label] + [f"{seconds(fn[f]['run_s'], 'ms')} ms" if f in fn else "" for f in fns]
              + [f"{s['pass']}/{sum(v for v in s.values())} pass", f"{span(ratios, fixed, '-')}x"], rel)
    return t


@table("f16-steps")
def _f16_steps(R: Reports) -> Table:
    return _ms_columns(R, F16_STEPS, "step")


@table("f16-softmax")
def _f16_softmax(R: Reports) -> Table:
    return _ms_columns(R, [
        ("cuda-h200-f16-tuned/gpu-report.json", "before (tensor cores, tuned tiles)"),
        ("cuda-h200-f16-softmax/gpu-report.json", "safe softmax as one kernel"),
        ("cuda-h200-f16-softmax-graphs/gpu-report.json", "same, built with CUDA graphs (`prepare --cuda-graphs`)"),
    ], "build (H200, median of 10)")


@table("f16-vs-pytorch")
def _f16_vs_pytorch(R: Reports) -> Table:
    calls = [("cuda-h200-f16-tuned/gpu-report.json", "call 1"), ("cuda-h200-f16-tuned/gpu-report-rerun.json", "call 2")]
    fns = functions_in_order(*(R(rel) for rel, _ in calls))
    t = Table(["side, call"] + fns + [f"generation (text + {STEPS} steps + VAE)", "TVM / PyTorch"])
    for side, name in (("run_s", "TVM f16"), ("ref_s", "PyTorch f16")):
        for rel, label in calls:
            d = R(rel)
            fn = by_function(d)
            g = generation_s(d, side)
            other = generation_s(d, "ref_s" if side == "run_s" else "run_s")
            tvm, torch = (g, other) if side == "run_s" else (other, g)
            t.add([f"{name}, {label}"] + [f"{seconds(fn[f][side], 'ms')} ms" for f in fns]
                  + [f"{num(g * 1e3)} ms", f"{fixed(tvm / torch)}x"], rel)
    return t


SOFTMAX_RUNS = [("cuda-h200-f16-softmax/gpu-report.json", "plain build"),
                ("cuda-h200-f16-softmax-graphs/gpu-report.json", "built with CUDA graphs")]


@table("f16-host")
def _f16_host(R: Reports) -> Table:
    t = Table(["function", "build", "PyTorch eager", "host issue", "PyTorch as one CUDA graph", "TVM", "TVM host issue"])
    fns = functions_in_order(*(R(rel) for rel, _ in SOFTMAX_RUNS))
    for f in fns:
        for rel, label in SOFTMAX_RUNS:
            r = by_function(R(rel))[f]
            t.add([f, label] + [f"{seconds(r[k], 'ms')} ms" for k in ("ref_s", "ref_issue_s", "ref_graph_s", "run_s", "run_issue_s")],
                  rel)
    return t


@table("f16-generation")
def _f16_generation(R: Reports) -> Table:
    t = Table(["build", "sum", "TVM f16", "PyTorch f16 eager", "ratio", "PyTorch f16 as CUDA graphs", "ratio"])
    for rel, label in SOFTMAX_RUNS:
        g = R(rel)["performance"]["gpu"]["generation"]
        t.add([label, f"{g['sum']} ({g['steps']} steps)", f"{fixed(g['tvm_s'], 3)} s", f"{fixed(g['torch_s'], 3)} s",
               f"{fixed(g['ratio'])}x", f"{fixed(g['torch_graph_s'], 3)} s", f"{fixed(g['ratio_graph'])}x"], rel)
    return t


WEBGPU_RUNS = [
    ("webgpu-gpu-h100/webgpu-gpu.json", "dlight's WebGPU defaults"),
    ("webgpu-gpu-h200/webgpu-gpu.json", "dlight's WebGPU defaults"),
    ("webgpu-gpu-h200-tuned/webgpu-gpu.json", "exact row reduction"),
    ("webgpu-gpu-h200-winograd/webgpu-gpu.json", "+ Winograd"),
    ("webgpu-gpu-h200-profile/webgpu-gpu.json", "+ per-pass profile (`--profile`)"),
    ("webgpu-gpu-h200-submit/webgpu-gpu.json", "+ early submits"),
    ("webgpu-gpu-h200-tiles/webgpu-gpu.json", "+ round 1 Dawn-timed tiles"),
    ("webgpu-gpu-h200-tiles2/webgpu-gpu.json", "+ every tile Dawn-timed (round 3)"),
    ("webgpu-gpu-h200-tiles2-rerun/webgpu-gpu.json", "same, second call without the profile"),
    ("webgpu-gpu-h100-report1/gpu-report.json", "all tuned, H100, as `sdparity.report/1` (+ seeds 1-4)"),
    ("webgpu-gpu-h100-report2/gpu-report.json", "same, 3 generations a run"),
    ("webgpu-gpu-h100-report3/gpu-report.json", "same, again"),
]


def _webgpu_view(d: dict) -> dict:
    """A WebGPU-on-GPU run in one shape, whichever schema wrote it: ``sdparity.report/1``
    (gpu/web since the tenth session: records of stage "pipeline", times under
    performance.<class>) or the older ``sdparity.webgpu_gpu/1`` (summary, webgpu, torch, parity)."""
    if d.get("schema") != "sdparity.report/1":
        pixels = next((c.get("why") or "" for c in d["parity"]["checks"] if c["what"] == "pixels"), "")
        return {"summary": d["summary"], "webgpu": d["webgpu"], "torch": d["torch"],
                "passed": d["parity"]["passed"], "pixels": pixels, "profile": (
                    (d.get("performance") or {}).get("gpu") or {}).get("webgpu_kernels")}
    perf = next(iter(d["performance"].values()))
    pixels = next((r.get("message") or "" for r in d["results"] if r.get("output") == "pixels"), "")
    return {"summary": perf["generation"], "webgpu": perf["webgpu"], "torch": perf["torch"],
            "passed": all(r["verdict"] == "pass" for r in d["results"]) and bool(d["results"]),
            "pixels": pixels, "profile": perf.get("webgpu_kernels")}


def _pixels(v: dict) -> str:
    m = re.match(r"(\d+) of (\d+) elements differ", v["pixels"])
    return f"{m.group(1)} of {m.group(2)} one level off" if m else v["pixels"]


@table("webgpu-runs")
def _webgpu_runs(R: Reports) -> Table:
    t = Table(["run", "submit every", "step: WebGPU / PyTorch CUDA (ratio)", "20 steps + text + VAE (ratio)",
               "GPU busy a step", "parity"])
    for rel, label in WEBGPU_RUNS:
        d = R(rel)
        v = _webgpu_view(d)
        s, w, prof = v["summary"], v["webgpu"], v["profile"]
        t.add([f"{label} ({day(d)})", str(w.get("submitEvery") or "(no early submits)"),
               f"{num(s['webgpu_step_ms_median'])} / {num(s['torch_step_ms_median'])} ms ({fixed(s['step_ratio'])}x)",
               f"{num(s['webgpu_total_s'])} / {num(s['torch_total_s'])} s ({fixed(s['total_ratio'])}x)",
               f"{num(prof['step']['gpu_busy_ms'])} ms" if prof else "",
               ("pass" if v["passed"] else "FAIL") + f"; pixels {_pixels(v)}"], rel)
    return t


def _webgpu_card(R: Reports, rel: str) -> Table:
    v = _webgpu_view(R(rel))
    s, w, tr = v["summary"], v["webgpu"], v["torch"]
    first_w, first_t = w["runs"][0], tr["runs"][0]
    t = Table([f"{s['card']}", "WebGPU (Dawn, TVM WGSL)", "PyTorch CUDA (diffusers)", "ratio"])
    t.add([f"one denoising step (UNet with CFG + DPM update), median of {s['steps']}, warm run",
           f"**{num(s['webgpu_step_ms_median'])} ms**", f"**{num(s['torch_step_ms_median'])} ms**",
           f"{fixed(s['step_ratio'])}x"], rel)
    t.add([f"{s['steps']} steps + text encoding + VAE decode, warm run", f"**{num(s['webgpu_total_s'])} s**",
           f"**{num(s['torch_total_s'])} s**", f"{fixed(s['total_ratio'])}x"], rel)
    t.add(["same, first run", f"{num(first_w['totalMs'] / 1e3)} s", f"{num(first_t['total_s'])} s",
           f"{fixed(first_w['totalMs'] / 1e3 / first_t['total_s'])}x"], rel)
    t.add(["text encoding (2 prompts + concat) / VAE decode + RGBA, warm",
           f"{num(w['timings']['textMs'])} ms / {num(w['timings']['decodeMs'])} ms",
           f"(in the total) / {seconds(tr['runs'][-1]['decode_s'], 'ms')} ms", ""], rel)
    t.add(["loading (wasm, WGSL shaders, weights over local HTTP)", f"{num(s['webgpu_load_s'])} s", "", ""], rel)
    return t


@table("webgpu-h200")
def _webgpu_h200(R: Reports) -> Table:
    return _webgpu_card(R, "webgpu-gpu-h200/webgpu-gpu.json")


@table("webgpu-h100")
def _webgpu_h100(R: Reports) -> Table:
    return _webgpu_card(R, "webgpu-gpu-h100/webgpu-gpu.json")


@table("webgpu-profile")
def _webgpu_profile(R: Reports) -> Table:
    """GPU time per kind of one step's denoiser and of the decoder: the functions whose passes
    run more than one kind, in the first profile; one column per profiled run."""
    rels = ["webgpu-gpu-h200-profile/webgpu-gpu.json", "webgpu-gpu-h200-tiles/webgpu-gpu.json",
            "webgpu-gpu-h200-tiles2/webgpu-gpu.json"]
    profs = [R(rel)["performance"]["gpu"]["webgpu_kernels"]["functions"] for rel in rels]
    fns = [f for f, v in profs[0].items() if v["gpu_busy_ms_per_call"] >= 50]
    t = Table(["kind"] + [f"{f} ms a call: {rel.split('/')[0]}" for f in fns for rel in rels])
    kinds: list[str] = []
    for f in fns:
        kinds += [k["kind"] for k in profs[0][f]["by_kind"] if k["kind"] not in kinds]
    for kind in kinds:
        cells = [kind]
        for f in fns:
            for p in profs:
                k = {x["kind"]: x for x in p[f]["by_kind"]}.get(kind)
                cells.append(recorded(k["ms"]) if k else "")
        t.add(cells, *rels)
    t.add(["GPU busy"] + [recorded(p[f]["gpu_busy_ms_per_call"]) for f in fns for p in profs], *rels)
    return t


# --------------------------------------------------------------------------- the document


@dataclass
class Section:
    name: str
    sources: str
    start: int  # line index of the begin marker
    end: int  # line index of the end marker
    body: str


def sections(text: str) -> list[Section]:
    lines = text.split("\n")
    out, i = [], 0
    while i < len(lines):
        m = BEGIN.match(lines[i])
        if m:
            j = i + 1
            while j < len(lines) and lines[j] != END:
                if BEGIN.match(lines[j]):
                    raise PerfDocError(f"line {j + 1}: a generated section opens inside {m['name']}")
                j += 1
            if j == len(lines):
                raise PerfDocError(f"line {i + 1}: generated section {m['name']} is not closed by {END!r}")
            out.append(Section(m["name"], m["sources"], i, j, "\n".join(lines[i + 1 : j])))
            i = j
        i += 1
    return out


def expected(reports: Reports | None = None) -> dict[str, tuple[str, str]]:
    """name -> (marker sources, table text), from the reports."""
    reports = reports or Reports()
    out = {}
    for name, fn in TABLES.items():
        t = fn(reports)
        out[name] = (", ".join(f"docs/results/{r}" for r in t.sources()), render(reports, t))
    return out


def check(text: str, reports: Reports | None = None) -> list[str]:
    """Every problem of the document's generated sections, first table first (empty: in step)."""
    want = expected(reports)
    found = sections(text)
    problems = []
    names = [s.name for s in found]
    for s in found:
        if s.name not in want:
            problems.append(f"{s.name}: no such generated table (known: {', '.join(want)})")
            continue
        if names.count(s.name) > 1:
            problems.append(f"{s.name}: appears {names.count(s.name)} times")
            continue
        sources, body = want[s.name]
        if s.sources != sources:
            problems.append(f"{s.name} (line {s.start + 1}): its marker names {s.sources}; the table comes from {sources}")
        if s.body.strip("\n") != body:
            diff = difflib.unified_diff(s.body.strip("\n").split("\n"), body.split("\n"), "docs/performance.md",
                                        "from the reports", lineterm="", n=0)
            problems.append(f"{s.name} (line {s.start + 1}) differs from its reports:\n" + "\n".join(diff))
    for name in want:
        if name not in names:
            problems.append(f"{name}: missing from the document (add its markers where it belongs)")
    return problems



@table("webgpu-sdxl-dawn-h100")
def _webgpu_sdxl(R: Reports) -> Table:
    """WebGPU on Dawn beside PyTorch in the same run, and TVM's CUDA build of the same stage
    from its own run (``cuda-sdxl-h100``), each report naming its card."""
    d, cuda = R(WEBGPU_SDXL), by_function(R(SDXL_H100))
    t = Table(["function", "WebGPU (Dawn)", "torch CUDA (same run)", "ratio", "first call", "load: pipelines, weights",
               "TVM CUDA (its run)", "TVM CUDA / torch CUDA"])
    for f in functions_in_order(d):
        r, c = by_function(d)[f], cuda.get(f)
        load = r.get("load_ms") or {}
        t.add([f, f"{seconds(r['run_s'], 'ms')} ms", f"{seconds(r['ref_s'], 'ms')} ms", ratio(r),
               f"{seconds(r['first_call_s'], 'ms')} ms", f"{num(load.get('pipelines', 0) / 1e3)} s, "
               f"{num(load.get('weights', 0) / 1e3)} s", f"{seconds(c['run_s'], 'ms')} ms" if c else "",
               ratio(c) if c else ""], WEBGPU_SDXL, *([SDXL_H100] if c else []))
    return t


@table("webgpu-sdxl-dawn-h100-parity")
def _webgpu_sdxl_parity(R: Reports) -> Table:
    return _parity(R, WEBGPU_SDXL)


def update(text: str, reports: Reports | None = None) -> str:
    """The document with every generated section rendered anew (markers included)."""
    want = expected(reports)
    lines = text.split("\n")
    for s in reversed(sections(text)):
        if s.name not in want:
            raise PerfDocError(f"{s.name}: no such generated table")
        sources, body = want[s.name]
        lines[s.start : s.end + 1] = [f"<!-- generated: {s.name} from {sources} -->", *body.split("\n"), END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sdparity.reports.perfdoc", description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a generated table differs from its reports")
    ap.add_argument("--doc", type=Path, default=DOC)
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    text = args.doc.read_text()
    reports = Reports(args.results)
    if args.check:
        problems = check(text, reports)
        if problems:
            print(problems[0])
            if len(problems) > 1:
                print(f"... and {len(problems) - 1} more")
            return 1
        print(f"{args.doc}: {len(sections(text))} generated tables match their reports")
        return 0
    new = update(text, reports)
    missing = [p for p in check(new, reports)]
    if new != text:
        args.doc.write_text(new)
        print(f"{args.doc}: generated tables rewritten")
    for p in missing:
        print(p)
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())

