"""DPM-Solver++ (2M) scheduler stage: two small Relax functions with symbolic N, C, H, W.

    dpm_convert_model_output(sample, model_output, alpha, sigma) -> x0
        x0 = (sample - sigma * model_output) / alpha
    dpm_convert_v_prediction(sample, model_output, alpha, sigma) -> x0   (v-prediction: SD 2.x)
        x0 = alpha * sample - sigma * model_output
    dpm_step(sample, model_output, last_model_output, c0, c1, half_c1, inv_r0) -> prev_sample
        prev = ((c0 * sample) - (c1 * m0)) - (half_c1 * (inv_r0 * (m0 - m1)))

m0 (``model_output``) is x0 of this step (the output of dpm_convert_model_output), m1
(``last_model_output``) the x0 of the previous step. The scalars are 0-d float32 tensors taken
from ``reference.dpm.compute_constants``; the evaluation order is diffusers', so the result is
bit-exact where the backend rounds each op. ``dpm_step`` returns only prev_sample: the caller
keeps the x0 it already holds as the next step's m1 (a buffer swap, no copy). At step 0 m1
must be a zero-filled tensor: first-order steps pass half_c1 = inv_r0 = 0, and 0 * NaN is NaN.
"""

from __future__ import annotations

import numpy as np

from sdparity.registry import Case, Output, Stage, StageIR, register

LATENT = (1, 4, 8, 8)  # the 20-step chains
LATENT_OTHER = (2, 4, 8, 16)  # other step counts: a second shape through the same build
OTHER_COUNTS = {1: (0,), 2: (0, 1), 3: (0, 1, 2), 25: (0, 12, 24), 100: (0, 50, 99)}


def convert_function(scheduler_config: dict) -> str:
    """The function that turns the UNet's output into x0 for a scheduler config: the one choice
    of every driver (these checks, the Python pipeline, the app's config.json for the browser)."""
    if scheduler_config.get("prediction_type") == "v_prediction":
        return "dpm_convert_v_prediction"
    return "dpm_convert_model_output"


def _scheduler_configs(model) -> dict[str, dict]:
    from reference.models import PINNED_SCHEDULER

    base = dict(model.pipe.scheduler.config) if model is not None else dict(PINNED_SCHEDULER)
    other = "epsilon" if base.get("prediction_type") == "v_prediction" else "v_prediction"
    return {"default": base, "sigma_min": {**base, "final_sigmas_type": "sigma_min"},
            other: {**base, "prediction_type": other}}  # both predictions, whatever the model's


@register
class SchedulerDPM(Stage):
    name = "scheduler_dpm"
    description = "DPM-Solver++ 2M: convert_model_output and step, vs diffusers DPMSolverMultistepScheduler"
    uses_model = False
    outputs = (Output("model_output"), Output("prev_sample"))
    functions = ("dpm_convert_model_output", "dpm_convert_v_prediction", "dpm_step")
    faults = {
        "v_prediction_as_epsilon": "v-prediction cases convert with the epsilon formula "
        "((sample - sigma * v) / alpha)",
        "tutorial_last_step": "the default-config cases get the tutorial-era constant table "
        "(2nd-order last step to sigma_min instead of first order to sigma 0)",
        "uninitialized_history": "step 0 gets a NaN-filled last_model_output instead of zeros",
    }

    time_eager = True  # the case reference replays a cached diffusers chain: time the formula
    reference_kind = "torch eager, same formula (the stage's diffusers reference is cached)"

    def torch_eager(self, function):
        if function == "dpm_convert_model_output":
            return lambda x, eps, alpha, sigma: (x - sigma * eps) / alpha
        if function == "dpm_convert_v_prediction":
            return lambda x, v, alpha, sigma: alpha * x - sigma * v
        return lambda x, m0, m1, c0, c1, half_c1, inv_r0: (c0 * x - c1 * m0) - half_c1 * (inv_r0 * (m0 - m1))

    @property
    def accepts_nonfinite(self) -> bool:
        # the runner refuses NaN inputs; only this fault puts them there, on purpose
        return self.fault == "uninitialized_history"

    def build_ir(self, model, variant: dict) -> StageIR:
        return StageIR(build_module(), params={})

    def cases(self, model, variant: dict, seed: int) -> list[Case]:
        from reference import dpm

        out: list[Case] = []
        for cfg_name, cfg in _scheduler_configs(model).items():
            plan = [(20, LATENT, tuple(range(20)))] + [(n, LATENT_OTHER, ks) for n, ks in OTHER_COUNTS.items()]
            for n, shape, indices in plan:
                consts = dpm.compute_constants(cfg, n)
                tvm_consts = consts
                if self.fault == "tutorial_last_step" and cfg_name == "default":
                    tvm_consts = dpm.tutorial_constants(cfg, n)
                chain = _Chain(cfg, n, shape, consts, seed)
                for k in indices:
                    out.extend(self._step_cases(f"{cfg_name}/n{n}/k{k}", chain, k, tvm_consts, cfg))
        return out

    def _step_cases(self, label, chain, k, consts, cfg) -> list[Case]:
        from reference import dpm

        r = chain.records("float32")[k]
        m1 = r.last_x0
        if k == 0 and self.fault == "uninitialized_history":
            m1 = np.full_like(m1, np.nan)
        shapes = {"latent": list(r.sample.shape), "num_steps": chain.n, "step_index": k,
                  "timestep": r.timestep, "final_sigmas_type": chain.final_sigmas_type,
                  "order": chain.consts["order"][k]}
        convert = convert_function(cfg)
        if self.fault == "v_prediction_as_epsilon":
            convert = "dpm_convert_model_output"
        return [
            Case(f"{label}/convert", convert,
                 [r.sample, r.model_output, *dpm.convert_inputs(consts, k)],
                 lambda dtype, k=k: [chain.records(dtype)[k].x0], (Output("model_output"),), shapes),
            Case(f"{label}/step", "dpm_step",
                 [r.sample, r.x0, m1, *dpm.step_inputs(consts, k)],
                 lambda dtype, k=k: [chain.records(dtype)[k].prev_sample], (Output("prev_sample"),), shapes),
        ]


class _Chain:
    """One diffusers run (toy denoiser); its float64 twin is computed on first use with the
    float32 run's samples and raw model outputs as inputs (the noise floor)."""

    def __init__(self, cfg: dict, n: int, shape, consts: dict, seed: int):
        self.cfg, self.n, self.shape, self.consts, self.seed = cfg, n, shape, consts, seed
        self.final_sigmas_type = consts["config"]["final_sigmas_type"]
        self._records: dict[str, list] = {}

    def records(self, dtype: str):
        from reference import dpm

        if dtype not in self._records:
            if dtype == "float32":
                rng = np.random.default_rng([self.seed, self.n])
                sample = rng.standard_normal(self.shape).astype(np.float32)
                target = rng.standard_normal(self.shape)
                eps = dpm.toy_denoiser(self.consts, target, seed=self.seed + 1)
                self._records[dtype] = dpm.run_diffusers(self.cfg, self.n, sample, eps, "float32")
            else:
                r32 = self.records("float32")
                self._records[dtype] = dpm.run_diffusers(
                    self.cfg, self.n, r32[0].sample, [r.model_output for r in r32], dtype,
                    samples=[r.sample for r in r32])
        return self._records[dtype]


def build_module():
    """The two Relax functions, with symbolic (n, c, h, w) int64 dims."""
    from tvm import relax
    from tvm.relax import op

    from sdparity.compile.compat import sym_var, tensor_type

    dims = [sym_var(d) for d in "nchw"]

    def tensor(name):
        return relax.Var(name, tensor_type(dims, "float32"))

    def scalar(name):
        return relax.Var(name, tensor_type([], "float32"))

    bb = relax.BlockBuilder()
    x, eps, alpha, sigma = tensor("sample"), tensor("model_output"), scalar("alpha"), scalar("sigma")
    with bb.function("dpm_convert_model_output", [x, eps, alpha, sigma]):
        with bb.dataflow():
            x0 = bb.emit_output(op.divide(op.subtract(x, op.multiply(sigma, eps)), alpha))
        bb.emit_func_output(x0)

    x, v, alpha, sigma = tensor("sample"), tensor("model_output"), scalar("alpha"), scalar("sigma")
    with bb.function("dpm_convert_v_prediction", [x, v, alpha, sigma]):
        with bb.dataflow():  # diffusers: x0_pred = alpha_t * sample - sigma_t * model_output
            x0 = bb.emit_output(op.subtract(op.multiply(alpha, x), op.multiply(sigma, v)))
        bb.emit_func_output(x0)

    x, m0, m1 = tensor("sample"), tensor("model_output"), tensor("last_model_output")
    c0, c1, half_c1, inv_r0 = (scalar(s) for s in ("c0", "c1", "half_c1", "inv_r0"))
    with bb.function("dpm_step", [x, m0, m1, c0, c1, half_c1, inv_r0]):
        with bb.dataflow():
            first = op.subtract(op.multiply(c0, x), op.multiply(c1, m0))
            d1 = op.multiply(inv_r0, op.subtract(m0, m1))
            prev = bb.emit_output(op.subtract(first, op.multiply(half_c1, d1)))
        bb.emit_func_output(prev)
    return bb.get()
