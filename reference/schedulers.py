"""PNDM (PLMS), Euler and LCM references: the real diffusers scheduler classes.

For each scheduler, as ``reference/dpm.py`` does for DPM-Solver++:

* ``<name>_constants(config, num_steps)``: the per-step scalars the Relax functions of
  ``sdparity/stages/scheduler_<name>.py`` take, computed from the real scheduler's own state
  (``alphas_cumprod``, ``sigmas``, ``timesteps``, LCM's ``get_scalings_for_boundary_condition_discrete``)
  with the same 0-d float32 torch ops, in the same order, as its ``step``. Evaluated in float32
  op by op, the stage formulas then give exactly ``step``'s bits (tests/unit/test_schedulers.py).
* ``run_<name>(config, num_steps, sample, model_outputs, dtype, ...)``: runs the real scheduler
  step by step (``set_timesteps``, ``scale_model_input`` where it does something, ``step``) and
  records every step's inputs and outputs. It is the reference of every check of the stages.

Numerics that decide the formulas (diffusers 0.42):

* PNDM, ``skip_prk_steps=True`` (SD 1.x ships it): ``n`` steps are ``n + 1`` UNet calls (the
  second timestep is repeated). ``step_plms`` keeps a list ``ets`` of past model outputs and
  warms up: counter 0 uses the output as is; counter 1 is a Heun-like redo of step 0 from the
  *saved* sample of step 0 with the average of both outputs, timestep shifted up by
  ``num_train_timesteps // n`` (and its output is never added to ``ets``); counter 2 and 3 use
  2- and 3-term Adams-Bashforth; 4 terms from counter 4 on. The combination is evaluated as
  ``((((c0*e) - c1*h1) + c2*h2) - c3*h3) * mul / div``: ``div`` 2 or 12 where diffusers divides,
  ``mul`` = float32(1/24) where it multiplies; 1 (exact) elsewhere. ``prev_timestep`` is always
  ``t - num_train_timesteps // n``, whatever ``timestep_spacing`` is (see docs/schedulers.md).
  ``skip_prk_steps=False`` (Runge-Kutta warm-up, 12 extra calls at half-step timesteps) is refused.
* Euler: ``x0 = model_output*a + sample/b`` (epsilon: a = -sigma_hat, b = 1, exactly
  ``sample - sigma_hat*model_output``; v_prediction: a = -sigma/sqrt(sigma^2+1), b = sigma^2+1),
  ``prev = sample + ((sample - x0)/sigma_hat)*dt``. No churn (``s_churn=0``: the only
  deterministic setting, and the default), so sigma_hat = sigma*(0+1) = sigma.
* LCM: ``x0 = ((p*sample) - q*model_output) / r`` (epsilon: p = 1, q = sqrt(1-a_t), r = sqrt(a_t);
  v: p = sqrt(a_t), r = 1), ``denoised = c_out*x0 + c_skip*sample``; every step but the last then
  draws noise with ``randn_tensor(shape, generator, dtype=denoised.dtype)`` and returns
  ``sqrt(a_prev)*denoised + sqrt(1-a_prev)*noise``; the last returns ``denoised``. The stage takes
  the noise as an input; ``run_lcm`` draws it from a copy of the generator state just before
  ``step`` draws it, so the recorded noise is the one diffusers used (proved bit-exact by the tests).
  c_skip/c_out depend on whether ``timestep`` is a tensor (float32 math) or a Python int
  (float64 math): pipelines pass the tensor element of ``scheduler.timesteps``, and so does
  ``run_lcm``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

CONSTS_VERSION = 1
PLMS_COEFFS = {  # terms in ets -> (c0, c1, c2, c3, mul, div) of step_plms' combinations
    "first": (1.0, 0.0, 0.0, 0.0, 1.0, 1.0),  # counter 0: the model output as is
    "heun": (1.0, -1.0, 0.0, 0.0, 1.0, 2.0),  # counter 1: (e + ets[-1]) / 2
    2: (3.0, 1.0, 0.0, 0.0, 1.0, 2.0),  # (3*e - h1) / 2
    3: (23.0, 16.0, 5.0, 0.0, 1.0, 12.0),  # (23*e - 16*h1 + 5*h2) / 12
    4: (55.0, 59.0, 37.0, 9.0, float(np.float32(1 / 24)), 1.0),  # (1/24) * (55*e - 59*h1 + 37*h2 - 9*h3)
}
PNDM_STEP_KEYS = ("c0", "c1", "c2", "c3", "mul", "div", "va", "vb", "sample_coeff", "eps_coeff", "denom")
EULER_SCALE_KEYS = ("scale",)
EULER_CONVERT_KEYS = ("a", "b")
EULER_STEP_KEYS = ("sigma_hat", "dt")
LCM_DENOISE_KEYS = ("p", "q", "r", "c_out", "c_skip")
LCM_NOISE_KEYS = ("sqrt_alpha_prev", "sqrt_beta_prev")


# ---- shared -------------------------------------------------------------------------------

def make(kind: str, config: dict):
    """A real diffusers scheduler (kind "pndm" | "euler" | "lcm") from any scheduler config.

    Keys starting with "_" are dropped first: diffusers' ``from_config`` silently ignores every
    key listed in a config's ``_use_default_values`` (so ``{**s.config, "timestep_spacing": ...}``
    would keep the old spacing)."""
    import diffusers

    cls = {"pndm": diffusers.PNDMScheduler, "euler": diffusers.EulerDiscreteScheduler,
           "lcm": diffusers.LCMScheduler}[kind]
    sched = cls.from_config({k: v for k, v in dict(config).items() if not k.startswith("_")})
    _check_supported(kind, sched.config)
    return sched


def _check_supported(kind: str, cfg) -> None:
    problems = []
    if cfg.prediction_type not in ("epsilon", "v_prediction"):
        problems.append(f"prediction_type={cfg.prediction_type!r} (only 'epsilon' or 'v_prediction')")
    if kind == "pndm" and not cfg.skip_prk_steps:
        problems.append("skip_prk_steps=False (the Runge-Kutta warm-up is not implemented; SD 1.x ships True)")
    if kind == "lcm" and (cfg.thresholding or cfg.clip_sample):
        problems.append("thresholding or clip_sample")
    if problems:
        raise ValueError(f"scheduler_{kind} does not support " + ", ".join(problems))


def set_timesteps(sched, num_steps: int, calls: int | None = None, strictly_decreasing: bool = True) -> None:
    """set_timesteps, refusing what the constants cannot describe: a step count out of range, a
    number of timesteps other than ``calls`` (default num_steps: diffusers' "trailing" spacing
    gives n+1 timesteps, the last -1, for n = 61, 103, ... from float rounding in np.arange; see
    docs/schedulers.md), timesteps that repeat where the scheduler looks them up."""
    n_train = int(sched.config.num_train_timesteps)
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= n_train:
        raise ValueError(f"num_steps must be an integer in 1..{n_train}, got {num_steps!r}")
    sched.set_timesteps(int(num_steps))
    ts = sched.timesteps.tolist()
    calls = num_steps if calls is None else calls
    if len(ts) != calls:
        raise ValueError(f"diffusers gives {len(ts)} timesteps for num_steps={num_steps} (expected {calls}), "
                         f"ending {ts[-3:]}: refused")
    if strictly_decreasing and any(a <= b for a, b in zip(ts, ts[1:])):
        # repeated timesteps make diffusers' index_for_timestep ambiguous
        raise ValueError(f"diffusers gives timesteps for num_steps={num_steps} that are not strictly "
                         f"decreasing: {ts[:8]}...")


def _header(kind: str, sched, num_steps: int) -> dict:
    cfg = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in sched.config.items()
           if not k.startswith("_") and k != "trained_betas"}
    return {"format": f"sdparity-{kind}-consts", "version": CONSTS_VERSION, "source": "diffusers",
            "config": cfg, "num_steps": int(num_steps), "timesteps": [float(t) for t in sched.timesteps.tolist()]}


def scalars(consts: dict, keys, k: int) -> np.ndarray:
    """The scalar arguments named ``keys`` at step k as one float32 vector, in call order (the
    stages' functions take their scalars packed: sdparity/stages/_scheduler.py)."""
    return np.array([consts[key][k] for key in keys], dtype=np.float32)


@dataclass
class StepRecord:
    index: int
    timestep: float
    arrays: dict = field(default_factory=dict)  # name -> np.ndarray (see each run_* function)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


def _tdtype(dtype: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[dtype]


def _np(t) -> np.ndarray:
    return t.detach().numpy().copy()


def toy_output(x_vp: np.ndarray, abar: float, target: np.ndarray, z: np.ndarray, prediction_type: str,
               noise: float = 0.1) -> np.ndarray:
    """A model stand-in with realistic magnitudes (float64 math, float32 result): the exact eps
    of a variance-preserving sample x_vp = sqrt(abar)*target + sqrt(1-abar)*eps, plus noise*z;
    for v_prediction the v of that eps and its x0."""
    a, s = np.sqrt(abar), np.sqrt(1.0 - abar)
    eps = (x_vp.astype(np.float64) - a * target) / s + noise * z
    if prediction_type == "v_prediction":
        x0 = (x_vp - s * eps) / a
        eps = a * eps - s * x0
    return eps.astype(np.float32)


class Chain:
    """One float32 diffusers run on a toy model (``run(dtype, None)``), and on first use its
    float64 twin (``run("float64", float32 records)``), fed the float32 run's samples, model
    outputs (and noise) so the two differ only by the rounding of one step (the noise floor)."""

    def __init__(self, run: Callable, n: int, consts: dict):
        self._run, self.n, self.consts = run, n, consts
        self._records: dict[str, list[StepRecord]] = {}

    def records(self, dtype: str) -> list[StepRecord]:
        if dtype not in self._records:
            teacher = None if dtype == "float32" else self.records("float32")
            self._records[dtype] = self._run(dtype, teacher)
        return self._records[dtype]


def _model_fn(model_outputs, k, t, x):
    return model_outputs(k, t, x) if callable(model_outputs) else model_outputs[k]


# ---- PNDM (PLMS) -----------------------------------------------------------------------------

def pndm_calls(num_steps: int) -> int:
    """UNet calls of PLMS with skip_prk_steps: the second timestep is repeated (n >= 2)."""
    return num_steps + 1 if num_steps > 1 else 1


def pndm_constants(config: dict, num_steps: int) -> dict:
    """Per PLMS call k (len(timesteps) of them): the combination (c0..c3, mul, div; see
    PLMS_COEFFS), v-prediction (va, vb: 1, 0 for epsilon) and _get_prev_sample's scalars;
    ``saved_sample[k]``: the step starts from step 0's sample (counter 1); ``push[k]``: this
    step's model output enters the history. Every float is a float32 value."""
    sched = make("pndm", config)
    set_timesteps(sched, num_steps, pndm_calls(num_steps), strictly_decreasing=False)
    ratio = sched.config.num_train_timesteps // num_steps
    out = {k: [] for k in (*PNDM_STEP_KEYS, "t", "prev_t", "alpha_prod_t", "saved_sample", "push", "terms")}
    n_ets = 0
    for k, t_call in enumerate(sched.timesteps.tolist()):
        if k == 1:  # step_plms' counter 1: redo step 0 from its sample, timestep shifted up
            t, prev_t, terms = t_call + ratio, t_call, "heun"
        else:
            n_ets = min(n_ets + 1, 4)
            t, prev_t, terms = t_call, t_call - ratio, ("first" if k == 0 else n_ets)
        a_t = sched.alphas_cumprod[t]
        a_prev = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod
        b_t, b_prev = 1 - a_t, 1 - a_prev
        if sched.config.prediction_type == "v_prediction":
            va, vb = a_t ** 0.5, b_t ** 0.5
        else:
            va, vb = 1.0, 0.0
        sample_coeff = (a_prev / a_t) ** 0.5
        denom = a_t * b_prev ** 0.5 + (a_t * b_t * a_prev) ** 0.5
        values = (*PLMS_COEFFS[terms], va, vb, sample_coeff, a_prev - a_t, denom)
        for key, v in zip(PNDM_STEP_KEYS, values):
            out[key].append(float(v))
        out["t"].append(int(t))
        out["prev_t"].append(int(prev_t))
        out["alpha_prod_t"].append(float(sched.alphas_cumprod[t_call]))  # of the UNet's timestep
        out["saved_sample"].append(k == 1)
        out["push"].append(k != 1)
        out["terms"].append(1 if terms in ("first", "heun") else terms)
    return {**_header("pndm", sched, num_steps), **out}


def run_pndm(config: dict, num_steps: int, sample: np.ndarray, model_outputs, dtype: str = "float32",
             samples: list | None = None) -> list[StepRecord]:
    """PNDMScheduler.step call by call. Records: sample (passed to step), sample_in (the sample
    step_plms uses: the saved one at counter 1), model_output, h1, h2, h3 (ets[-1], ets[-2],
    ets[-3] before the step, zeros where absent), prev_sample."""
    import torch

    td = _tdtype(dtype)
    sched = make("pndm", config)
    set_timesteps(sched, num_steps, pndm_calls(num_steps), strictly_decreasing=False)
    x = torch.tensor(np.asarray(sample), dtype=td)
    records = []
    for k, t in enumerate(sched.timesteps):
        if samples is not None:
            x = torch.tensor(np.asarray(samples[k]), dtype=td)
        mo = torch.tensor(np.asarray(_model_fn(model_outputs, k, int(t), x.numpy())), dtype=td)
        hist = [_np(sched.ets[-i]) if len(sched.ets) >= i else np.zeros(x.shape, x.numpy().dtype) for i in (1, 2, 3)]
        x_in = sched.cur_sample if sched.counter == 1 else x
        prev = sched.step(mo, t, x).prev_sample
        records.append(StepRecord(k, float(t), {
            "sample": _np(x), "sample_in": _np(x_in), "model_output": _np(mo),
            "h1": hist[0], "h2": hist[1], "h3": hist[2], "prev_sample": _np(prev)}))
        x = prev
    return records


def pndm_chain(config: dict, n: int, shape, seed: int) -> Chain:
    consts = pndm_constants(config, n)
    return _toy_chain(run_pndm, config, n, consts, shape, seed, lambda k: consts["alpha_prod_t"][k])


def _toy_chain(run_fn, config: dict, n: int, consts: dict, shape, seed: int, alpha, init_scale: float = 1.0
               ) -> Chain:
    """The float32 chain of ``run_fn`` (run_pndm, run_euler) on the toy model from seeded
    latents scaled by ``init_scale`` (``alpha(k)``: the alpha_prod the model sees at step k); its
    float64 twin teacher-forced with the float32 run's samples and model outputs."""
    pred = consts["config"]["prediction_type"]

    def run(dtype, teacher):
        if teacher is not None:
            return run_fn(config, n, teacher[0]["sample"], [r["model_output"] for r in teacher], dtype,
                          samples=[r["sample"] for r in teacher])
        rng = np.random.default_rng([seed, n])
        x = (rng.standard_normal(shape) * init_scale).astype(np.float32)
        target = rng.standard_normal(shape)

        def model(k, t, x):  # Euler's model sees the scaled (variance-preserving) sample
            z = np.random.default_rng([seed, n, k]).standard_normal(x.shape)
            return toy_output(x, alpha(k), target, z, pred)

        return run_fn(config, n, x, model, dtype)

    return Chain(run, n, consts)


# ---- Euler ----------------------------------------------------------------------------------

def euler_constants(config: dict, num_steps: int) -> dict:
    """Per step: scale (scale_model_input divides by it), a, b (x0 = model_output*a + sample/b),
    sigma_hat, dt (prev = sample + ((sample - x0)/sigma_hat)*dt); init_noise_sigma (the
    pipeline scales the initial noise by it)."""
    sched = make("euler", config)
    set_timesteps(sched, num_steps)
    out = {k: [] for k in (*EULER_SCALE_KEYS, *EULER_CONVERT_KEYS, *EULER_STEP_KEYS, "sigma")}
    for k in range(num_steps):
        sigma = sched.sigmas[k]
        sigma_hat = sigma * (0.0 + 1)  # gamma = 0: no churn
        scale = (sigma ** 2 + 1) ** 0.5
        if sched.config.prediction_type == "v_prediction":
            a, b = -sigma / (sigma ** 2 + 1) ** 0.5, sigma ** 2 + 1
        else:
            a, b = -sigma_hat, 1.0
        dt = sched.sigmas[k + 1] - sigma_hat
        for key, v in zip(("scale", "a", "b", "sigma_hat", "dt", "sigma"), (scale, a, b, sigma_hat, dt, sigma)):
            out[key].append(float(v))
    return {**_header("euler", sched, num_steps), "init_noise_sigma": float(sched.init_noise_sigma), **out}


def run_euler(config: dict, num_steps: int, sample: np.ndarray, model_outputs, dtype: str = "float32",
              samples: list | None = None) -> list[StepRecord]:
    """EulerDiscreteScheduler as the pipeline drives it: scale_model_input, the model on the
    scaled sample, step. Records: sample, scaled_sample, model_output, pred_original_sample,
    prev_sample."""
    import torch

    td = _tdtype(dtype)
    sched = make("euler", config)
    set_timesteps(sched, num_steps)
    x = torch.tensor(np.asarray(sample), dtype=td)
    records = []
    for k, t in enumerate(sched.timesteps):
        if samples is not None:
            x = torch.tensor(np.asarray(samples[k]), dtype=td)
        xs = sched.scale_model_input(x, t)
        mo = torch.tensor(np.asarray(_model_fn(model_outputs, k, float(t), xs.numpy())), dtype=td)
        out = sched.step(mo, t, x)
        records.append(StepRecord(k, float(t), {
            "sample": _np(x), "scaled_sample": _np(xs), "model_output": _np(mo),
            "pred_original_sample": _np(out.pred_original_sample), "prev_sample": _np(out.prev_sample)}))
        x = out.prev_sample
    return records


def euler_chain(config: dict, n: int, shape, seed: int) -> Chain:
    consts = euler_constants(config, n)
    return _toy_chain(run_euler, config, n, consts, shape, seed, lambda k: 1.0 / (consts["sigma"][k] ** 2 + 1.0),
                      init_scale=consts["init_noise_sigma"])


# ---- LCM ------------------------------------------------------------------------------------

def lcm_constants(config: dict, num_steps: int) -> dict:
    """Per step: p, q, r, c_out, c_skip (denoised = c_out*(((p*sample) - q*model_output)/r)
    + c_skip*sample) and sqrt_alpha_prev, sqrt_beta_prev (prev = sqrt_alpha_prev*denoised
    + sqrt_beta_prev*noise, every step but the last; ``add_noise[k]`` says which)."""
    sched = make("lcm", config)
    set_timesteps(sched, num_steps)
    ts = sched.timesteps
    out = {k: [] for k in (*LCM_DENOISE_KEYS, *LCM_NOISE_KEYS, "alpha_prod_t", "add_noise")}
    for k in range(num_steps):
        t = ts[k]  # a 0-d int64 tensor, as pipelines pass it: c_skip/c_out are float32 math
        prev_t = ts[k + 1] if k + 1 < num_steps else t
        a_t = sched.alphas_cumprod[t]
        a_prev = sched.alphas_cumprod[prev_t] if prev_t >= 0 else sched.final_alpha_cumprod
        b_t, b_prev = 1 - a_t, 1 - a_prev
        c_skip, c_out = sched.get_scalings_for_boundary_condition_discrete(t)
        if sched.config.prediction_type == "v_prediction":
            p, q, r = a_t.sqrt(), b_t.sqrt(), 1.0
        else:
            p, q, r = 1.0, b_t.sqrt(), a_t.sqrt()
        values = (p, q, r, c_out, c_skip, a_prev.sqrt(), b_prev.sqrt(), a_t)
        for key, v in zip((*LCM_DENOISE_KEYS, *LCM_NOISE_KEYS, "alpha_prod_t"), values):
            out[key].append(float(v))
        out["add_noise"].append(k != num_steps - 1)
    return {**_header("lcm", sched, num_steps), **out}


def run_lcm(config: dict, num_steps: int, sample: np.ndarray, model_outputs, dtype: str = "float32",
            samples: list | None = None, seed: int = 0, noises: list | None = None) -> list[StepRecord]:
    """LCMScheduler.step with a torch.Generator seeded ``seed``. Records: sample, model_output,
    denoised, noise (what step drew: ``randn_tensor`` on a copy of the generator's state just
    before the step; None at the last step, which draws nothing), prev_sample.

    float64: diffusers would draw float64 noise (other values); with ``noises`` (the float32
    run's) prev_sample is sqrt(a_prev)*denoised + sqrt(1-a_prev)*noise in float64 from the
    float64 step's own ``denoised``: the float64 twin of what step computes, same scalars."""
    import torch
    from diffusers.utils.torch_utils import randn_tensor

    td = _tdtype(dtype)
    sched = make("lcm", config)
    set_timesteps(sched, num_steps)
    consts = lcm_constants(config, num_steps) if noises is not None else None
    gen = torch.Generator().manual_seed(seed)
    x = torch.tensor(np.asarray(sample), dtype=td)
    records = []
    for k, t in enumerate(sched.timesteps):
        if samples is not None:
            x = torch.tensor(np.asarray(samples[k]), dtype=td)
        mo = torch.tensor(np.asarray(_model_fn(model_outputs, k, int(t), x.numpy())), dtype=td)
        noise = None
        if k < num_steps - 1:
            twin = torch.Generator().set_state(gen.get_state())
            noise = randn_tensor(mo.shape, generator=twin, device=mo.device, dtype=td)
        out = sched.step(mo, t, x, generator=gen)
        prev = out.prev_sample
        if noises is not None and noises[k] is not None:
            noise = torch.tensor(np.asarray(noises[k]), dtype=td)
            sa, sb = (torch.tensor(consts[key][k], dtype=torch.float32) for key in LCM_NOISE_KEYS)
            prev = sa * out.denoised + sb * noise
        records.append(StepRecord(k, float(t), {
            "sample": _np(x), "model_output": _np(mo), "denoised": _np(out.denoised),
            "noise": None if noise is None else _np(noise), "prev_sample": _np(prev)}))
        x = prev
    return records


def lcm_chain(config: dict, n: int, shape, seed: int) -> Chain:
    consts = lcm_constants(config, n)
    pred = consts["config"]["prediction_type"]

    def run(dtype, teacher):
        if teacher is not None:
            return run_lcm(config, n, teacher[0]["sample"], [r["model_output"] for r in teacher], dtype,
                           samples=[r["sample"] for r in teacher], noises=[r["noise"] for r in teacher])
        rng = np.random.default_rng([seed, n])
        x, target = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape)

        def model(k, t, x):
            z = np.random.default_rng([seed, n, k]).standard_normal(x.shape)
            return toy_output(x, consts["alpha_prod_t"][k], target, z, pred)

        return run_lcm(config, n, x, model, dtype, seed=seed)

    return Chain(run, n, consts)
