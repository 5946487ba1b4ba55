"""Op-statistics fuzzing (issue 11): every distinct aten op of the tiny model's CLIP, UNet and
VAE programs, built alone for a backend (sdparity.check.opreplay), on inputs with drawn
*statistics* instead of the ones the random tiny weights happen to produce.

An op's recorded input keeps its shape and its pattern (values are standardized, then given
the drawn mean and spread), so a convolution still sees a conv-shaped activation. Drawn per
example (``InputStats``): a mean offset up to +-1e3, a spread 1e-3..1e3, outliers (a few
values 1e2..1e4 spreads away), exact ties (values on a 0.5 grid: equal maxima, round-half
cases), and values near float32 exp overflow (|x| in 80..88.7, exp(88.72) = float32 max).
Only activations are changed: tensors computed from the model's weights alone keep their
recorded values (``OpCall.weights``).

Each result is judged with the op-replay budget (float64 torch as reference, floor = torch
float32 on the same inputs; ``sdparity.tolerances.op_budget``). ``EDGE_STATS`` are always
checked (``hypothesis.example``); Hypothesis adds drawn ones (profile "ci": derandomized).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

EXP_EDGE = (80.0, 88.7)  # float32 exp overflows above 88.72


@dataclass(frozen=True)
class InputStats:
    mean: float = 0.0  # added to every value
    scale: float = 1.0  # spread (standard deviation)
    outliers: float = 0.0  # outlier magnitude in spreads (0: none); 1% of values, at least 1
    ties: bool = False  # values rounded to multiples of 0.5
    near_exp: bool = False  # a quarter of the values set to +-(80..88.7)

    def label(self) -> str:
        parts = [f"mean {self.mean:g}", f"scale {self.scale:g}"]
        parts += [f"outliers {self.outliers:g}x"] if self.outliers else []
        parts += ["ties"] if self.ties else []
        parts += ["near exp overflow"] if self.near_exp else []
        return ", ".join(parts)

    def kinds(self) -> set[str]:
        """The named statistics this example exercises (what the report lists per op)."""
        k = set()
        if abs(self.mean) >= 30 * self.scale:
            k.add("mean offset")
        if self.scale <= 1e-2:
            k.add("small scale")
        if self.scale >= 1e2:
            k.add("large scale")
        if self.outliers:
            k.add("outliers")
        if self.ties:
            k.add("ties")
        if self.near_exp:
            k.add("near exp overflow")
        return k or {"plain"}

    def apply(self, x: np.ndarray, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = np.array(x, np.float64, order="C")
        data = np.isfinite(x) & (np.abs(x) < 1e30)  # masks (-inf, float32 min) stay as they are
        v = x[data]
        sd = float(v.std()) if v.size > 1 else 0.0
        z = (x - v.mean()) / sd if sd > 0 else rng.standard_normal(x.shape)
        y = np.where(data, self.mean + self.scale * z, x)
        flat, where = y.reshape(-1), np.flatnonzero(data)
        if self.outliers and where.size:
            idx = rng.choice(where, size=max(1, where.size // 100), replace=False)
            flat[idx] = self.mean + rng.choice([-1.0, 1.0], idx.size) * self.outliers * self.scale
        if self.near_exp and where.size:
            idx = rng.choice(where, size=max(1, where.size // 4), replace=False)
            flat[idx] = rng.choice([-1.0, 1.0], idx.size) * rng.uniform(*EXP_EDGE, idx.size)
        if self.ties:
            y = np.where(data, np.round(2 * y) / 2, y)
        return np.ascontiguousarray(y, dtype=np.float32).reshape(x.shape)  # 0-d stays an array


#: checked for every op, whatever Hypothesis draws
EDGE_STATS = (
    InputStats(),
    InputStats(mean=1e3),
    InputStats(mean=-1e3, scale=10.0),
    InputStats(mean=100.0),
    InputStats(scale=1e-3),
    InputStats(scale=1e3),
    InputStats(outliers=1e4),
    InputStats(ties=True),
    InputStats(near_exp=True),
)


@st.composite
def input_stats(draw):
    return InputStats(
        mean=draw(st.one_of(st.sampled_from([0.0, 1.0, -10.0, 100.0, -1e3, 1e3]), st.floats(-1e3, 1e3))),
        scale=10.0 ** draw(st.floats(-3, 3)),
        outliers=draw(st.sampled_from([0.0, 0.0, 1e2, 1e4])),
        ties=draw(st.booleans()),
        near_exp=draw(st.booleans()),
    )


def perturb(call, stats: InputStats, seed: int = 0) -> list:
    """The op's inputs with ``stats`` applied to its float activations (weights kept)."""
    import torch

    floats = [i for i, t in enumerate(call.tensors) if t.is_floating_point()]
    acts = [i for i in floats if not call.weights[i]] or floats
    out = list(call.tensors)
    for j, i in enumerate(acts):
        out[i] = torch.from_numpy(stats.apply(call.tensors[i].numpy(), seed + j))
    return out


def evaluate(call, engine, stats: InputStats, seed: int = 0) -> dict:
    """Verdict (opreplay.judge) of the backend's op against torch on inputs with ``stats``."""
    from sdparity.check.opreplay import judge, run_op

    tensors = perturb(call, stats, seed)
    out32, out64 = run_op(call, tensors, "float32"), run_op(call, tensors, "float64")
    return judge(engine.run(call, tensors), out32, out64, engine.budget)


def fuzz_op(call, engine, max_examples: int | None = None) -> dict:
    """Every example (EDGE_STATS, then Hypothesis's draws) run on ``call``. Returns
    {"broke": [{"stats", "kinds", "max_abs", "floor", "ratio", "why"}...], "examples": n,
    "worst_use": max err/allowed over the examples that passed, "worst_ratio": their max err/floor}."""
    import torch

    out = {"broke": [], "examples": 0, "worst_use": 0.0, "worst_ratio": 0.0}
    kw = {} if max_examples is None else {"max_examples": max_examples}

    @settings(database=None, deadline=None, **kw)  # the first example of an op includes its build
    @given(stats=input_stats())
    def prop(stats):
        v = evaluate(call, engine, stats)
        out["examples"] += 1
        if not v["ok"]:
            out["broke"].append({"stats": stats.label(), "kinds": sorted(stats.kinds()), "max_abs": v.get("max_abs"),
                                 "floor": v.get("floor"), "ratio": v.get("ratio"), "why": v.get("why", "")})
        elif v.get("allowed"):
            out["worst_use"] = max(out["worst_use"], v["max_abs"] / v["allowed"])
            if v.get("ratio") not in (None, float("inf")):
                out["worst_ratio"] = max(out["worst_ratio"], v["ratio"])

    for s in EDGE_STATS:
        prop = example(stats=s)(prop)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: 2 threads on 2 shared cores ran a tiny conv 100x slower
    try:
        prop()
    finally:
        torch.set_num_threads(threads)
    return out
