"""DPM-Solver++ (2M) reference: the real ``diffusers.DPMSolverMultistepScheduler``.

Two things live here:

* ``compute_constants``: the per-step scalars the Relax/JS pipeline feeds to
  ``dpm_convert_model_output`` and ``dpm_step``. They are computed from the real
  scheduler's ``sigmas`` and ``_sigma_to_alpha_sigma_t`` with the same float32 torch ops,
  in the same order, as ``DPMSolverMultistepScheduler.step`` uses, so that

      x0   = (sample - sigma * eps) / alpha
      prev = ((c0 * sample) - (c1 * m0)) - (half_c1 * (inv_r0 * (m0 - m1)))

  evaluated in float32, op by op, is bit-identical to ``scheduler.step``. First-order steps
  (the first step, ``lower_order_final``, the final step to sigma 0) have half_c1 = inv_r0 = 0.
* ``run_diffusers``: runs the real scheduler (``set_timesteps`` + ``step``) on given model
  outputs and records every step. It is the reference of every check of this stage.

``tutorial_constants`` reproduces the tutorial-era table (web-stable-diffusion, 2023): no
lower-order logic, the last step second order towards t=0 (= today's
``final_sigmas_type="sigma_min"``), computed in numpy float32 from ``alphas_cumprod``. It exists
for negative tests only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

CONSTS_FORMAT = "sdparity-dpm-solver-multistep-consts"
CONSTS_VERSION = 1
STEP_KEYS = ("c0", "c1", "half_c1", "inv_r0")  # dpm_step scalar arguments, in call order
# Config keys that decide the constants; written into the JSON so a table says what it is for.
CONFIG_KEYS = (
    "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type",
    "algorithm_type", "solver_order", "solver_type", "lower_order_final", "euler_at_final",
    "final_sigmas_type", "timestep_spacing", "steps_offset", "use_karras_sigmas",
)


def make_scheduler(scheduler_config: dict):
    """A real DPMSolverMultistepScheduler from any diffusers scheduler config (PNDM's too)."""
    from diffusers import DPMSolverMultistepScheduler

    sched = DPMSolverMultistepScheduler.from_config(dict(scheduler_config))
    _check_supported(sched.config)
    return sched


def _check_supported(cfg) -> None:
    problems = []
    if cfg.algorithm_type != "dpmsolver++":
        problems.append(f"algorithm_type={cfg.algorithm_type!r} (only 'dpmsolver++')")
    if cfg.solver_order not in (1, 2):
        problems.append(f"solver_order={cfg.solver_order} (only 1 or 2)")
    if cfg.solver_order == 2 and cfg.solver_type != "midpoint":
        problems.append(f"solver_type={cfg.solver_type!r} (only 'midpoint')")
    if cfg.prediction_type not in ("epsilon", "v_prediction"):
        problems.append(f"prediction_type={cfg.prediction_type!r} (only 'epsilon' or 'v_prediction')")
    if cfg.thresholding:
        problems.append("thresholding=True")
    if cfg.variance_type is not None:
        problems.append(f"variance_type={cfg.variance_type!r}")
    if problems:
        raise ValueError("scheduler_dpm supports DPM-Solver++ 2M with epsilon or v prediction; this config has "
                         + ", ".join(problems))


def _set_timesteps(sched, num_steps: int) -> None:
    n_train = int(sched.config.num_train_timesteps)
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or not 1 <= num_steps <= n_train:
        raise ValueError(f"num_steps must be an integer in 1..{n_train}, got {num_steps!r}")
    sched.set_timesteps(int(num_steps))
    ts = sched.timesteps.tolist()
    if len(ts) != num_steps or any(a <= b for a, b in zip(ts, ts[1:])):
        # repeated timesteps make diffusers' index_for_timestep ambiguous
        raise ValueError(f"diffusers gives {len(ts)} timesteps for num_steps={num_steps} that are not "
                         f"strictly decreasing: {ts[:8]}...")


def is_first_order(cfg, num_steps: int, k: int) -> bool:
    """Whether scheduler.step uses the first-order update at step index k (solver_order <= 2)."""
    last = k == num_steps - 1
    lower_order_final = last and (
        cfg.euler_at_final
        or (cfg.lower_order_final and num_steps < 15)
        or cfg.final_sigmas_type == "zero"
    )
    return cfg.solver_order == 1 or k == 0 or lower_order_final


def compute_constants(scheduler_config: dict, num_steps: int) -> dict:
    """Per-step constants for the Relax/JS DPM-Solver++ pipeline; JSON-serializable.

    Every float is a float32 value (stored as the exactly equal Python float).
    """
    import torch

    sched = make_scheduler(scheduler_config)
    _set_timesteps(sched, num_steps)
    cfg = sched.config
    sig = sched.sigmas  # float32, num_steps + 1 entries, the last one is the final target

    def alpha_sigma_lambda(i):
        alpha, sigma = sched._sigma_to_alpha_sigma_t(sig[i])  # 0-d float32, as in step()
        return alpha, sigma, torch.log(alpha) - torch.log(sigma)

    out = {k: [] for k in ("alpha", "sigma", "c0", "c1", "half_c1", "inv_r0", "order")}
    for k in range(num_steps):
        alpha_s0, sigma_s0, lambda_s0 = alpha_sigma_lambda(k)
        alpha_t, sigma_t, lambda_t = alpha_sigma_lambda(k + 1)
        h = lambda_t - lambda_s0
        c0 = sigma_t / sigma_s0
        c1 = alpha_t * (torch.exp(-h) - 1.0)
        if is_first_order(cfg, num_steps, k):
            order, half_c1, inv_r0 = 1, 0.0, 0.0
        else:
            _, _, lambda_s1 = alpha_sigma_lambda(k - 1)
            r0 = (lambda_s0 - lambda_s1) / h
            order, half_c1, inv_r0 = 2, float(0.5 * c1), float(1.0 / r0)
        out["alpha"].append(float(alpha_s0))
        out["sigma"].append(float(sigma_s0))
        out["c0"].append(float(c0))
        out["c1"].append(float(c1))
        out["half_c1"].append(half_c1)
        out["inv_r0"].append(inv_r0)
        out["order"].append(order)
    return {
        "format": CONSTS_FORMAT,
        "version": CONSTS_VERSION,
        "source": "diffusers",
        "config": {k: _jsonable(cfg.get(k)) for k in CONFIG_KEYS},
        "num_steps": int(num_steps),
        "timesteps": [int(t) for t in sched.timesteps.tolist()],
        **out,
    }


def _jsonable(v):
    return v.item() if isinstance(v, np.generic) else v


def tutorial_constants(scheduler_config: dict | None = None, num_steps: int = 20) -> dict:
    """The tutorial-era table (for negative tests): 2nd order at every step but the first,
    the last step towards t=0 (sigma_min), numpy float32 over the training schedule."""
    from reference.models import PINNED_SCHEDULER

    cfg = {**PINNED_SCHEDULER, **(scheduler_config or {})}
    if cfg["beta_schedule"] != "scaled_linear":
        raise ValueError("the tutorial table only knew the scaled_linear schedule")
    n_train = int(cfg["num_train_timesteps"])
    f32 = np.float32
    betas = np.linspace(cfg["beta_start"] ** 0.5, cfg["beta_end"] ** 0.5, n_train, dtype=f32) ** 2
    acp = np.cumprod(f32(1) - betas, dtype=f32)
    alpha, sigma = np.sqrt(acp), np.sqrt(f32(1) - acp)
    lam = np.log(alpha) - np.log(sigma)
    ts = np.linspace(0, n_train - 1, num_steps + 1).round()[::-1][:-1].astype(np.int64).tolist()
    out = {k: [] for k in ("alpha", "sigma", "c0", "c1", "half_c1", "inv_r0", "order")}
    for k, s0 in enumerate(ts):
        t = ts[k + 1] if k + 1 < num_steps else 0
        h = lam[t] - lam[s0]
        c1 = alpha[t] * (np.exp(-h) - f32(1))
        out["alpha"].append(float(alpha[s0]))
        out["sigma"].append(float(sigma[s0]))
        out["c0"].append(float(sigma[t] / sigma[s0]))
        out["c1"].append(float(c1))
        out["half_c1"].append(float(f32(0.5) * c1) if k else 0.0)
        out["inv_r0"].append(float(h / (lam[s0] - lam[ts[k - 1]])) if k else 0.0)
        out["order"].append(2 if k else 1)
    return {"format": CONSTS_FORMAT, "version": CONSTS_VERSION, "source": "tutorial",
            "config": {k: _jsonable(cfg.get(k)) for k in CONFIG_KEYS}, "num_steps": int(num_steps),
            "timesteps": [int(t) for t in ts], **out}


def step_inputs(consts: dict, k: int) -> list[np.ndarray]:
    """The scalar arguments of dpm_step at step k, as 0-d float32 arrays, in call order."""
    return [np.array(consts[key][k], dtype=np.float32) for key in STEP_KEYS]


def convert_inputs(consts: dict, k: int) -> list[np.ndarray]:
    """alpha, sigma of dpm_convert_model_output at step k (0-d float32)."""
    return [np.array(consts["alpha"][k], dtype=np.float32), np.array(consts["sigma"][k], dtype=np.float32)]


def write_constants_json(path: str | os.PathLike, constants: dict) -> Path:
    """Write a table from compute_constants/tutorial_constants atomically (temp file + rename)."""
    path = Path(path)
    from sdparity.files import write_atomic

    text = json.dumps(constants, allow_nan=False, indent=1)  # a NaN/Inf constant is a bug: refuse
    write_atomic(path, text)
    return path


@dataclass
class StepRecord:
    index: int
    timestep: int
    sample: np.ndarray  # input sample x_k
    model_output: np.ndarray  # raw model output (epsilon) at step k
    x0: np.ndarray  # convert_model_output(eps_k, sample=x_k): the new history entry m0
    last_x0: np.ndarray  # history m1 used at step k (zeros at step 0: nothing is uninitialized)
    prev_sample: np.ndarray  # scheduler.step(...).prev_sample


def run_diffusers(
    scheduler_config: dict,
    num_steps: int,
    sample: np.ndarray,
    model_outputs: list[np.ndarray] | Callable[[int, int, np.ndarray], np.ndarray],
    dtype: str = "float32",
    samples: list[np.ndarray] | None = None,
) -> list[StepRecord]:
    """Run the real scheduler step by step at dtype ("float32" | "float64").

    model_outputs: per-step raw model outputs (a list runs min(len, num_steps) steps), or a
    callable (step index, timestep, sample) -> model output. samples: if given, step k uses
    samples[k] as its input instead of the previous prev_sample ("teacher forcing"), so a
    float64 run sees the same inputs as the float32 run it is compared with.
    """
    import torch

    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    sched = make_scheduler(scheduler_config)
    _set_timesteps(sched, num_steps)
    n = num_steps if callable(model_outputs) else min(num_steps, len(model_outputs))
    x = torch.tensor(np.asarray(sample), dtype=tdtype)
    records = []
    for k in range(n):
        t = sched.timesteps[k]
        if samples is not None:
            x = torch.tensor(np.asarray(samples[k]), dtype=tdtype)
        eps = model_outputs(k, int(t), x.numpy()) if callable(model_outputs) else model_outputs[k]
        eps_t = torch.tensor(np.asarray(eps), dtype=tdtype)
        prev = sched.step(eps_t, t, x).prev_sample
        m0 = sched.model_outputs[-1]
        m1 = sched.model_outputs[-2] if len(sched.model_outputs) > 1 else None
        records.append(StepRecord(
            index=k, timestep=int(t), sample=x.numpy().copy(), model_output=eps_t.numpy().copy(),
            x0=m0.numpy().copy(), last_x0=np.zeros_like(x.numpy()) if m1 is None else m1.numpy().copy(),
            prev_sample=prev.numpy().copy(),
        ))
        x = prev
    return records


def toy_denoiser(consts: dict, target: np.ndarray, seed: int, noise: float = 0.1):
    """A model stand-in with realistic magnitudes: eps = (x - alpha*target)/sigma + noise*z.

    Its x0 prediction is target plus noise*sigma/alpha*z, like a decent UNet; i.i.d. random
    eps would instead make x0 ~ 15*|eps| at the first step.
    """
    def f(k: int, t: int, x: np.ndarray) -> np.ndarray:
        z = np.random.default_rng([seed, k]).standard_normal(x.shape)
        a, s = consts["alpha"][k], consts["sigma"][k]
        return ((x.astype(np.float64) - a * target) / s + noise * z).astype(np.float32)

    return f
