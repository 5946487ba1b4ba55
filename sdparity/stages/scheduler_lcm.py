"""LCM (LCMScheduler) stage: two Relax functions with symbolic N, C, H, W.

    lcm_denoise(sample, model_output, scalars=[p, q, r, c_out, c_skip]) -> denoised
        x0       = ((p*sample) - (q*model_output)) / r
        denoised = (c_out*x0) + (c_skip*sample)
    lcm_add_noise(denoised, noise, scalars=[sqrt_alpha_prev, sqrt_beta_prev]) -> prev_sample
        prev     = (sqrt_alpha_prev*denoised) + (sqrt_beta_prev*noise)

epsilon: p = 1, q = sqrt(1-a_t), r = sqrt(a_t) (1*sample and /1 are exact, so this is diffusers'
``(sample - sqrt(1-a_t)*eps)/sqrt(a_t)`` bit for bit); v_prediction: p = sqrt(a_t), r = 1. c_skip and
c_out are the consistency model's boundary-condition scalings (``get_scalings_for_boundary_condition_discrete``
of the timestep as a tensor, as pipelines pass it). Every step but the last adds noise; the last
returns ``denoised`` (no ``lcm_add_noise`` call). The noise is an input: the stage never draws
random numbers; the reference records what diffusers drew (``reference.schedulers.run_lcm``).
Scalars travel packed in one float32 vector (sdparity/stages/_scheduler.py: WebGPU's buffer limit).
"""

from __future__ import annotations

from sdparity.registry import Output, register
from sdparity.stages._scheduler import LATENT, LATENT_OTHER, SchedulerStage


def lcm_denoise(sample, model_output, p, q, r, c_out, c_skip):
    x0 = ((p * sample) - (q * model_output)) / r
    return (c_out * x0) + (c_skip * sample)


def lcm_add_noise(denoised, noise, sqrt_alpha_prev, sqrt_beta_prev):
    return (sqrt_alpha_prev * denoised) + (sqrt_beta_prev * noise)


#: LCM-LoRA / LCM-Dreamshaper's scheduler config (diffusers' defaults, SD 1.x betas)
LCM = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
       "original_inference_steps": 50, "prediction_type": "epsilon", "set_alpha_to_one": True,
       "timestep_scaling": 10.0, "clip_sample": False}
CONFIGS = {"default": LCM, "v_orig100": {**LCM, "prediction_type": "v_prediction", "original_inference_steps": 100}}
PLAN = [("default", 1, LATENT, (0,)), ("default", 4, LATENT, (0, 1, 2, 3)), ("default", 8, LATENT_OTHER, (0, 4, 7)),
        ("v_orig100", 4, LATENT_OTHER, (0, 1, 2, 3))]


@register
class SchedulerLCM(SchedulerStage):
    name = "scheduler_lcm"
    description = "LCM: boundary-condition denoise and noise injection, vs diffusers LCMScheduler"
    outputs = (Output("denoised"), Output("prev_sample"))
    formulas = {"lcm_denoise": (lcm_denoise, 2), "lcm_add_noise": (lcm_add_noise, 2)}
    functions = tuple(formulas)
    faults = {
        "c_skip_c_out_swapped": "the boundary-condition scalings c_skip and c_out change places",
        "v_prediction_as_epsilon": "v_prediction configs get the epsilon constants",
    }

    def cases(self, model, variant: dict, seed: int):
        from reference import schedulers as ref

        out = []
        for cfg_name, n, shape, indices in PLAN:
            cfg = CONFIGS[cfg_name]
            chain = ref.lcm_chain(cfg, n, shape, seed)
            c = chain.consts
            if self.fault == "v_prediction_as_epsilon" and cfg["prediction_type"] == "v_prediction":
                c = ref.lcm_constants({**cfg, "prediction_type": "epsilon"}, n)
            for k in indices:
                r = chain.records("float32")[k]
                denoise = ref.scalars(c, ref.LCM_DENOISE_KEYS, k)
                if self.fault == "c_skip_c_out_swapped":
                    denoise[3], denoise[4] = denoise[4], denoise[3]
                label = f"{cfg_name}/n{n}/k{k}"
                shapes = {"latent": list(r["sample"].shape), "num_steps": n, "step_index": k,
                          "timestep": r.timestep, "add_noise": c["add_noise"][k]}
                out.append(self.case(f"{label}/denoise", "lcm_denoise", [r["sample"], r["model_output"], denoise],
                                     chain, k, "denoised", shapes))
                if c["add_noise"][k]:
                    out.append(self.case(f"{label}/add_noise", "lcm_add_noise",
                                         [r["denoised"], r["noise"], ref.scalars(c, ref.LCM_NOISE_KEYS, k)],
                                         chain, k, "prev_sample", shapes))
        return out
