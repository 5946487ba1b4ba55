"""TVM run time of each stage with 1 and 2 pool threads, alternated in one process so both see
the same load (runtime.config_threadpool switches the pool between calls). Tiny model, llvm,
builds from the cache (docs/performance.md, "Threads").

    python scripts/bench_threads.py [ROUNDS] [STAGES]     # default 15, every stage
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("TVM_BIND_THREADS", "0")
os.environ["TVM_NUM_THREADS"] = "2"


def main(rounds: int, names: list[str] | None) -> None:
    import tvm

    from reference.models import load_model
    from sdparity.backends import get_backend
    from sdparity.cache import BuildCache
    from sdparity.registry import all_stages

    config = tvm.get_global_func("runtime.config_threadpool")  # (affinity mode, threads)
    model = load_model("tiny", log=lambda *a: None)
    backend = get_backend("llvm")
    stages = all_stages()
    with backend.session() as runner:
        for name in names or list(stages):
            st = stages[name]
            variant = st.default_variant(model)
            art, _, _ = backend.build_cached(lambda: st.build_ir(model, variant), st.build_key(model, variant),
                                             BuildCache(), log=lambda *a: None)
            seen = set()
            for case in st.cases(model, variant, 0):
                if case.function in seen:
                    continue
                seen.add(case.function)
                runner.run(art, case.function, case.inputs)  # load
                times: dict[int, list[float]] = {1: [], 2: []}
                for _ in range(rounds):
                    for n in (1, 2):
                        config(1, n)
                        t0 = time.perf_counter()
                        runner.run(art, case.function, case.inputs)
                        times[n].append(time.perf_counter() - t0)
                one, two = statistics.median(times[1]), statistics.median(times[2])
                print(f"{case.function:<26} 1 thread {one * 1e3:9.3f} ms   2 threads {two * 1e3:9.3f} ms   "
                      f"2/1 = {two / one:.2f}   load {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 15, sys.argv[2].split(",") if len(sys.argv) > 2 else None)
