"""PNDM (PLMS) scheduler stage: one Relax function with symbolic N, C, H, W.

    pndm_step(sample, model_output, h1, h2, h3, scalars) -> prev_sample
        scalars = [c0, c1, c2, c3, mul, div, va, vb, sample_coeff, eps_coeff, denom] (float32[11])
        e    = (((((c0*model_output) - (c1*h1)) + (c2*h2)) - (c3*h3)) * mul) / div
        e    = (va*e) + (vb*sample)                 # v_prediction; epsilon: va=1, vb=0 (exact)
        prev = (sample_coeff*sample) - ((eps_coeff*e) / denom)

That is ``PNDMScheduler.step_plms`` (``skip_prk_steps=True``) with its warm-up as constants:
h1, h2, h3 are the last three model outputs kept in the history (zero-filled until there are
three; the zeros are multiplied by 0). Per call k (``reference.schedulers.pndm_constants``):
k=0 c=(1,0,0,0), k=1 (1,-1,0,0)/2 from the *saved* sample of step 0 (a Heun-like redo whose
model output is not added to the history), then (3,1,0,0)/2, (23,16,5,0)/12 and from k=4 on
(55,59,37,9)*float32(1/24). Each scalar multiplies or divides as diffusers does, so the result
is bit-exact with ``scheduler.step`` where the backend rounds each op (llvm).
The caller's loop: ``x_in = saved if saved_sample[k] else x; x = pndm_step(x_in, eps, h1, h2,
h3, ...); if push[k]: h3, h2, h1 = h2, h1, eps`` (saved = the sample of step 0).
"""

from __future__ import annotations

from sdparity.registry import Output, register
from sdparity.stages._scheduler import LATENT, LATENT_OTHER, SchedulerStage


def pndm_step(sample, model_output, h1, h2, h3, c0, c1, c2, c3, mul, div, va, vb, sample_coeff, eps_coeff, denom):
    e = (((((c0 * model_output) - (c1 * h1)) + (c2 * h2)) - (c3 * h3)) * mul) / div
    e = (va * e) + (vb * sample)
    return (sample_coeff * sample) - ((eps_coeff * e) / denom)


#: the SD 1.x scheduler config (CompVis/stable-diffusion-v1-4 scheduler_config.json)
SD1_PNDM = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
            "timestep_spacing": "leading"}
CONFIGS = {
    "sd1": SD1_PNDM,
    "v_trailing": {**SD1_PNDM, "prediction_type": "v_prediction", "timestep_spacing": "trailing", "steps_offset": 0},
}
#: (config, num_steps, latent, call indices); 20 steps are 21 calls
PLAN = [("sd1", 20, LATENT, tuple(range(21))), ("sd1", 1, LATENT_OTHER, (0,)), ("sd1", 3, LATENT_OTHER, (0, 1, 2, 3)),
        ("sd1", 50, LATENT_OTHER, (4, 25, 50)), ("v_trailing", 4, LATENT_OTHER, (0, 1, 2, 3, 4))]


@register
class SchedulerPNDM(SchedulerStage):
    name = "scheduler_pndm"
    description = "PNDM (PLMS, skip_prk_steps) step with its warm-up, vs diffusers PNDMScheduler"
    outputs = (Output("prev_sample"),)
    formulas = {"pndm_step": (pndm_step, 5)}
    functions = tuple(formulas)
    faults = {
        "warmup_skipped": "every call gets the 4-term Adams-Bashforth combination (55,59,37,9)/24 with the "
        "zero-filled history, as if the PLMS warm-up (counters 0-3) did not exist",
        "heun_from_current_sample": "the second call (counter 1) starts from the current latents instead "
        "of the saved sample of step 0",
    }

    def cases(self, model, variant: dict, seed: int):
        from reference import schedulers as ref

        out = []
        for cfg_name, n, shape, indices in PLAN:
            chain = ref.pndm_chain(CONFIGS[cfg_name], n, shape, seed)
            c = chain.consts
            for k in indices:
                r = chain.records("float32")[k]
                scalars = ref.scalars(c, ref.PNDM_STEP_KEYS, k)
                if self.fault == "warmup_skipped":
                    scalars[:6] = ref.PLMS_COEFFS[4]
                x_in = r["sample"] if self.fault == "heun_from_current_sample" else r["sample_in"]
                shapes = {"latent": list(r["sample"].shape), "num_steps": n, "call": k, "timestep": r.timestep,
                          "terms": c["terms"][k], "saved_sample": c["saved_sample"][k]}
                out.append(self.case(f"{cfg_name}/n{n}/k{k}", "pndm_step",
                                     [x_in, r["model_output"], r["h1"], r["h2"], r["h3"], scalars],
                                     chain, k, "prev_sample", shapes))
        return out
