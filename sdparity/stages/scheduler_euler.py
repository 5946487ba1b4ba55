"""Euler (EulerDiscreteScheduler) stage: three Relax functions with symbolic N, C, H, W.

    euler_scale_model_input(sample, [scale]) -> sample / scale          scale = sqrt(sigma^2 + 1)
    euler_convert_model_output(sample, model_output, [a, b]) -> x0 = (model_output*a) + (sample/b)
    euler_step(sample, x0, [sigma_hat, dt]) -> prev = sample + (((sample - x0)/sigma_hat)*dt)

(the bracketed scalars travel as one float32 vector: sdparity/stages/_scheduler.py)

The UNet sees the scaled sample; ``step`` gets the unscaled one. x0 is diffusers'
``pred_original_sample``: for epsilon a = -sigma_hat, b = 1, which is exactly ``sample -
sigma_hat*model_output`` (negation and /1 are exact, + commutes); for v_prediction a =
-sigma/sqrt(sigma^2+1), b = sigma^2+1, diffusers' own expression. dt = sigma_next - sigma_hat.
The scalars come from ``reference.schedulers.euler_constants`` (the scheduler's own ``sigmas``
with its 0-d float32 ops), so the result is bit-exact with ``scheduler.step`` where the backend
rounds each op. No churn (s_churn = 0, the default and the only deterministic setting).
"""

from __future__ import annotations

from sdparity.registry import Output, register
from sdparity.stages._scheduler import LATENT, LATENT_OTHER, SchedulerStage


def euler_scale_model_input(sample, scale):
    return sample / scale


def euler_convert_model_output(sample, model_output, a, b):
    return (model_output * a) + (sample / b)


def euler_step(sample, x0, sigma_hat, dt):
    return sample + (((sample - x0) / sigma_hat) * dt)


#: SD-Turbo's scheduler_config.json (EulerDiscreteScheduler, trailing, 1-4 steps) and SD 1.x's
#: betas with the other spacings
TURBO = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
         "prediction_type": "epsilon", "timestep_spacing": "trailing", "steps_offset": 1,
         "interpolation_type": "linear", "use_karras_sigmas": False}
CONFIGS = {
    "trailing": TURBO,
    "trailing_v": {**TURBO, "prediction_type": "v_prediction"},
    "leading": {**TURBO, "timestep_spacing": "leading"},
    "linspace": {**TURBO, "timestep_spacing": "linspace", "steps_offset": 0},
}
#: (config, num_steps, latent, step indices)
PLAN = [("trailing", 1, LATENT, (0,)), ("trailing", 2, LATENT, (0, 1)), ("trailing", 4, LATENT, (0, 1, 2, 3)),
        ("trailing_v", 1, LATENT_OTHER, (0,)), ("trailing_v", 4, LATENT_OTHER, (0, 1, 2, 3)),
        ("leading", 20, LATENT_OTHER, (0, 10, 19)), ("linspace", 25, LATENT_OTHER, (0, 12, 24))]


@register
class SchedulerEuler(SchedulerStage):
    name = "scheduler_euler"
    description = "Euler discrete: scale_model_input, x0 and step, vs diffusers EulerDiscreteScheduler"
    outputs = (Output("scaled_sample"), Output("pred_original_sample"), Output("prev_sample"))
    formulas = {"euler_scale_model_input": (euler_scale_model_input, 1),
                "euler_convert_model_output": (euler_convert_model_output, 2),
                "euler_step": (euler_step, 2)}
    functions = tuple(formulas)
    faults = {
        "v_prediction_as_epsilon": "v_prediction configs get the epsilon constants (x0 = sample - sigma*v)",
        "leading_for_trailing": "trailing configs get the constants of timestep_spacing='leading' "
        "(steps_offset kept)",
    }

    def cases(self, model, variant: dict, seed: int):
        from reference import schedulers as ref

        out = []
        for cfg_name, n, shape, indices in PLAN:
            cfg = CONFIGS[cfg_name]
            chain = ref.euler_chain(cfg, n, shape, seed)
            c = chain.consts
            if self.fault == "v_prediction_as_epsilon" and cfg["prediction_type"] == "v_prediction":
                c = ref.euler_constants({**cfg, "prediction_type": "epsilon"}, n)
            if self.fault == "leading_for_trailing" and cfg["timestep_spacing"] == "trailing":
                c = ref.euler_constants({**cfg, "timestep_spacing": "leading"}, n)
            for k in indices:
                r = chain.records("float32")[k]
                label = f"{cfg_name}/n{n}/k{k}"
                shapes = {"latent": list(r["sample"].shape), "num_steps": n, "step_index": k,
                          "timestep": r.timestep, "sigma": chain.consts["sigma"][k]}
                out += [
                    self.case(f"{label}/scale", "euler_scale_model_input",
                              [r["sample"], ref.scalars(c, ref.EULER_SCALE_KEYS, k)], chain, k, "scaled_sample", shapes),
                    self.case(f"{label}/convert", "euler_convert_model_output",
                              [r["sample"], r["model_output"], ref.scalars(c, ref.EULER_CONVERT_KEYS, k)],
                              chain, k, "pred_original_sample", shapes),
                    self.case(f"{label}/step", "euler_step",
                              [r["sample"], r["pred_original_sample"], ref.scalars(c, ref.EULER_STEP_KEYS, k)],
                              chain, k, "prev_sample", shapes),
                ]
        return out
