"""Independent float64 reference of Wan2.1's flow-matching samplers.

Follows /work/shared/spec/wan21.md:
  * sec. 4.3 schedules:
      UniPC / Euler: sigma_max = float32(0.999); s = linspace(sigma_max, 0, N+1)[:N] (float64);
                     s = shift*s/(1+(shift-1)*s); t = int64(s*1000) (truncation);
                     sigmas = float32([s..., 0]) -- the float32 values are then used in float64.
      DPM++:         the same with linspace(1.0, 0, N+1) (starts at exactly 1.0).
  * sec. 4.4 classifier-free guidance  v = v_u + g*(v_c - v_u)  (one integer t for both passes),
  * sec. 4.5 UniPC (bh2, order 2, predict-x0, lower_order_final, corrector at every step i >= 1),
  * sec. 4.6 DPM++ 2M (midpoint, flow prediction, first order at i = 0 and at the final step),
  * Euler:   x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v_i on the UniPC schedule.

Everything is float64 (NumPy). The "trajectory" is the sample handed back to the pipeline after each
step (the predictor output x_{i+1}; UniPC's corrector modifies x_i only inside the next step).

CLI:
  sampler_reference.py --sampler {unipc,dpmpp,euler} --steps N --shift S --guidance G \
                       --input IN.safetensors --output OUT.safetensors
      IN (F32): noise, cond_a, cond_b, uncond_a, uncond_b, all [16,F,H,W].
      Synthetic model at step i (integer timestep t_i), evaluated at the current sample x:
          v_cond = cond_a * x + cond_b * (t_i / 1000),  v_uncond likewise.
      OUT: timesteps I64 [N], sigmas F32 [N+1], trajectory F32 [N,16,F,H,W], final F32 [16,F,H,W].
  sampler_reference.py --selftest
      asserts the sec. 4.3 tables and a few exactness properties; exits non-zero on mismatch.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, Dict, List, Tuple

import numpy as np

SAMPLERS = ("unipc", "dpmpp", "euler")
NUM_TRAIN_TIMESTEPS = 1000


# ----------------------------------------------------------------------------------------------
# Schedules (sec. 4.3)
# ----------------------------------------------------------------------------------------------

def schedule(sampler: str, steps: int, shift: float) -> Tuple[np.ndarray, np.ndarray]:
    """Return (timesteps int64 [N], sigmas float64 [N+1] holding float32-representable values)."""
    if steps < 1:
        raise ValueError("steps must be >= 1")
    if sampler == "dpmpp":
        sigma_max = 1.0
    elif sampler in ("unipc", "euler"):
        sigma_max = float(np.float32(0.999))  # 0.9990000128746033
    else:
        raise ValueError(f"unknown sampler {sampler!r}")
    s = np.linspace(sigma_max, 0.0, steps + 1, dtype=np.float64)[:steps]
    s = shift * s / (1.0 + (shift - 1.0) * s)
    timesteps = (s * NUM_TRAIN_TIMESTEPS).astype(np.int64)  # truncation toward zero
    sigmas = np.concatenate([s, [0.0]]).astype(np.float32).astype(np.float64)
    return timesteps, sigmas


def _lambda(sigma: float) -> float:
    """lambda = ln(alpha) - ln(sigma), alpha = 1 - sigma; +inf at sigma = 0, -inf at sigma = 1."""
    if sigma == 0.0:
        return math.inf
    alpha = 1.0 - sigma
    if alpha == 0.0:
        return -math.inf
    return math.log(alpha) - math.log(sigma)


# ----------------------------------------------------------------------------------------------
# Samplers. `model(x, i, t_i)` returns the (guided) velocity at step i.
# ----------------------------------------------------------------------------------------------

Model = Callable[[np.ndarray, int, int], np.ndarray]


def sample_euler(model: Model, x: np.ndarray, timesteps, sigmas) -> List[np.ndarray]:
    traj = []
    for i, t in enumerate(timesteps):
        v = model(x, i, int(t))
        x = x + (sigmas[i + 1] - sigmas[i]) * v
        traj.append(x)
    return traj


def sample_unipc(model: Model, x: np.ndarray, timesteps, sigmas) -> List[np.ndarray]:
    """UniPC bh2, order 2, x0-prediction, exactly as spec sec. 4.5."""
    N = len(timesteps)
    lam = [_lambda(s) for s in sigmas]
    alpha = [1.0 - s for s in sigmas]
    ms: List[np.ndarray] = []  # x0 predictions m_0..m_i
    last_sample = None  # corrected x_{i-1}
    prev_order = None  # order used by the predictor at step i-1
    traj = []
    for i in range(N):
        v = model(x, i, int(timesteps[i]))
        m = x - sigmas[i] * v  # x0 prediction from the uncorrected sample
        # --- UniC corrector ---
        if i >= 1:
            h = lam[i] - lam[i - 1]
            hh = -h
            phi1 = math.expm1(hh)
            B = math.expm1(hh)  # bh2
            base = (sigmas[i] / sigmas[i - 1]) * last_sample - alpha[i] * phi1 * ms[i - 1]
            if prev_order == 1:
                corr = 0.5 * (m - ms[i - 1])
            else:
                r = (lam[i - 2] - lam[i - 1]) / h
                D1 = (ms[i - 2] - ms[i - 1]) / r
                g1 = phi1 / hh - 1.0
                b1 = g1 / B
                g2 = g1 / hh - 0.5
                b2 = 2.0 * g2 / B
                # solve [[1,1],[r,1]] [rho0,rho1]^T = [b1,b2]^T
                rho0 = (b1 - b2) / (1.0 - r)
                rho1 = b1 - rho0
                corr = rho0 * D1 + rho1 * (m - ms[i - 1])
            x = base - alpha[i] * B * corr
        ms.append(m)
        # --- UniP predictor ---
        order = min(2, N - i, i + 1)
        if sigmas[i + 1] == 0.0:
            x_next = m
        else:
            h = lam[i + 1] - lam[i]
            phi1 = math.expm1(-h)
            B = math.expm1(-h)
            x_next = (sigmas[i + 1] / sigmas[i]) * x - alpha[i + 1] * phi1 * m
            if order == 2:
                r = (lam[i - 1] - lam[i]) / h
                D1 = (ms[i - 1] - m) / r
                x_next = x_next - alpha[i + 1] * B * 0.5 * D1
        last_sample = x
        prev_order = order
        x = x_next
        traj.append(x)
    return traj


def sample_dpmpp(model: Model, x: np.ndarray, timesteps, sigmas) -> List[np.ndarray]:
    """DPM-Solver++ 2M (midpoint), flow prediction, exactly as spec sec. 4.6."""
    N = len(timesteps)
    lam = [_lambda(s) for s in sigmas]
    alpha = [1.0 - s for s in sigmas]
    m_prev = None
    traj = []
    for i in range(N):
        v = model(x, i, int(timesteps[i]))
        m = x - sigmas[i] * v
        h = lam[i + 1] - lam[i]
        coef = alpha[i + 1] * (math.exp(-h) - 1.0)  # exp(-inf) = 0 at the final step
        x_next = (sigmas[i + 1] / sigmas[i]) * x - coef * m
        if i > 0 and i < N - 1:  # second order
            h0 = lam[i] - lam[i - 1]
            r0 = h0 / h
            if math.isinf(r0):  # sigma_{i-1} == 1  ->  D1 = 0
                D1 = np.zeros_like(m)
            else:
                D1 = (m - m_prev) / r0
            x_next = x_next - 0.5 * coef * D1
        m_prev = m
        x = x_next
        traj.append(x)
    return traj


_SAMPLE_FN = {"unipc": sample_unipc, "dpmpp": sample_dpmpp, "euler": sample_euler}


def run(sampler: str, steps: int, shift: float, noise: np.ndarray, model: Model):
    """Returns (timesteps int64 [N], sigmas float64 [N+1], trajectory list of float64 arrays)."""
    timesteps, sigmas = schedule(sampler, steps, shift)
    traj = _SAMPLE_FN[sampler](model, noise.astype(np.float64), timesteps, sigmas)
    return timesteps, sigmas, traj


def synthetic_cfg_model(inputs: Dict[str, np.ndarray], guidance: float) -> Model:
    """The CLI's synthetic velocity model with CFG (sec. 4.4), in float64."""
    ca, cb = inputs["cond_a"].astype(np.float64), inputs["cond_b"].astype(np.float64)
    ua, ub = inputs["uncond_a"].astype(np.float64), inputs["uncond_b"].astype(np.float64)

    def model(x, i, t):
        tt = t / 1000.0
        v_c = ca * x + cb * tt
        v_u = ua * x + ub * tt
        return v_u + guidance * (v_c - v_u)

    return model


def run_synthetic(sampler: str, steps: int, shift: float, guidance: float,
                  inputs: Dict[str, np.ndarray]):
    """Reference result for the sampler CLI contract, as float64 numpy arrays."""
    model = synthetic_cfg_model(inputs, guidance)
    timesteps, sigmas, traj = run(sampler, steps, shift, inputs["noise"], model)
    return {"timesteps": timesteps, "sigmas": sigmas, "trajectory": np.stack(traj),
            "final": traj[-1]}


# ----------------------------------------------------------------------------------------------
# Self-test (sec. 4.3 tables + exactness on straight flows)
# ----------------------------------------------------------------------------------------------

T50_SHIFT5 = [999, 995, 991, 987, 982, 978, 973, 968, 963, 957, 952, 946, 940, 934, 927, 920, 913,
              906, 898, 890, 882, 873, 863, 854, 843, 833, 821, 809, 796, 783, 768, 753, 737, 720,
              701, 681, 660, 636, 611, 584, 555, 522, 487, 448, 405, 356, 302, 241, 172, 92]
SIGMAS50_SHIFT5_HEAD = [0.9998, 0.995732, 0.99153, 0.987187, 0.982696]
SIGMAS50_SHIFT5_TAIL = [0.356888, 0.302801, 0.24174, 0.172265, 0.092507, 0.0]
T50_SHIFT3_HEAD, T50_SHIFT3_TAIL = [999, 992, 985, 978, 971, 963], [249, 206, 160, 111, 57]
T50_SHIFT8_HEAD, T50_SHIFT8_TAIL = [999, 997, 994, 991, 989, 986], [470, 409, 337, 249, 140]
DPM50_SHIFT5_HEAD = [1000, 995, 991, 987, 982, 978, 973, 968, 963, 957, 952, 946, 940, 934, 927,
                     921, 913]
DPM50_SHIFT5_TAIL = [405, 357, 303, 241, 172, 92]


def selftest() -> int:
    failures = []

    def check(name, cond, detail=""):
        print(f"  {'ok  ' if cond else 'FAIL'} {name}{(': ' + detail) if detail and not cond else ''}")
        if not cond:
            failures.append(name)

    t, s = schedule("unipc", 50, 5.0)
    check("unipc N=50 shift=5 timesteps (full list)", t.tolist() == T50_SHIFT5, str(t.tolist()))
    check("unipc N=50 shift=5 sigma head", np.allclose(s[:5], SIGMAS50_SHIFT5_HEAD, rtol=0, atol=6e-7),
          str(s[:5]))
    check("unipc N=50 shift=5 sigma tail", np.allclose(s[-6:], SIGMAS50_SHIFT5_TAIL, rtol=0, atol=6e-7),
          str(s[-6:]))
    check("sigmas are float32 values", np.array_equal(s, s.astype(np.float32).astype(np.float64)))
    check("sigma_0 = shift(float32(0.999))",
          s[0] == float(np.float32(5 * 0.9990000128746033 / (1 + 4 * 0.9990000128746033))))
    t, _ = schedule("unipc", 50, 3.0)
    check("unipc N=50 shift=3 timesteps", t[:6].tolist() == T50_SHIFT3_HEAD
          and t[-5:].tolist() == T50_SHIFT3_TAIL, str(t.tolist()))
    t, _ = schedule("unipc", 50, 8.0)
    check("unipc N=50 shift=8 timesteps", t[:6].tolist() == T50_SHIFT8_HEAD
          and t[-5:].tolist() == T50_SHIFT8_TAIL, str(t.tolist()))
    t, s = schedule("dpmpp", 50, 5.0)
    check("dpm++ N=50 shift=5 timesteps", t[:17].tolist() == DPM50_SHIFT5_HEAD
          and t[-6:].tolist() == DPM50_SHIFT5_TAIL and len(t) == 50, str(t.tolist()))
    check("dpm++ sigma_0 == 1", s[0] == 1.0)
    check("euler schedule == unipc schedule",
          all(np.array_equal(a, b) for a, b in zip(schedule("euler", 37, 4.0),
                                                   schedule("unipc", 37, 4.0))))

    # Straight flow x_sigma = (1-sigma)*x0 + sigma*eps with the exact velocity eps - x0: every
    # sampler must follow the path exactly and end at x0 (UniPC/DPM++ at their final step return m).
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((2, 3, 4)), rng.standard_normal((2, 3, 4))
    for sampler in SAMPLERS:
        for steps in (1, 2, 3, 10):
            tt, ss, traj = run(sampler, steps, 5.0, (1 - schedule(sampler, steps, 5.0)[1][0]) * x0
                               + schedule(sampler, steps, 5.0)[1][0] * eps,
                               lambda x, i, t: eps - x0)
            err = max(np.abs(traj[i] - ((1 - ss[i + 1]) * x0 + ss[i + 1] * eps)).max()
                      for i in range(steps))
            check(f"{sampler} N={steps} exact on a straight flow", err < 1e-12, f"err={err:g}")

    # Convergence: with a non-trivial linear model, UniPC and DPM++ should agree with a fine Euler
    # solution much better than coarse Euler does (catches sign/coefficient slips).
    a = rng.uniform(-0.5, 0.5, (2, 3, 4))
    b = rng.standard_normal((2, 3, 4))
    lin = lambda x, i, t: a * x + b * (t / 1000.0)  # noqa: E731
    fine = run("euler", 4000, 1.0, eps, lin)[2][-1]
    errs = {}
    for sampler in SAMPLERS:
        errs[sampler] = np.linalg.norm(run(sampler, 20, 1.0, eps, lin)[2][-1] - fine)
    check("unipc/dpm++ more accurate than euler at 20 steps",
          errs["unipc"] < errs["euler"] and errs["dpmpp"] < errs["euler"], str(errs))

    print(f"selftest: {'FAILED ' + str(len(failures)) if failures else 'all passed'}")
    return 1 if failures else 0


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="float64 reference of Wan2.1 flow samplers")
    ap.add_argument("--selftest", action="store_true")
    ap.add_argument("--sampler", choices=SAMPLERS)
    ap.add_argument("--steps", type=int)
    ap.add_argument("--shift", type=float, default=5.0)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--input")
    ap.add_argument("--output")
    args = ap.parse_args(argv)
    if args.selftest:
        return selftest()
    if not (args.sampler and args.steps and args.input and args.output):
        ap.error("--sampler, --steps, --input and --output are required (or --selftest)")

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import safetensors_io
    import torch

    raw = safetensors_io.load(args.input)
    inputs = {k: raw[k].numpy() for k in ("noise", "cond_a", "cond_b", "uncond_a", "uncond_b")}
    shapes = {k: v.shape for k, v in inputs.items()}
    if len(set(shapes.values())) != 1:
        raise SystemExit(f"input shapes differ: {shapes}")
    res = run_synthetic(args.sampler, args.steps, args.shift, args.guidance, inputs)
    safetensors_io.save(args.output, {
        "timesteps": torch.from_numpy(res["timesteps"].astype(np.int64)),
        "sigmas": torch.from_numpy(res["sigmas"].astype(np.float32)),
        "trajectory": torch.from_numpy(res["trajectory"].astype(np.float32)),
        "final": torch.from_numpy(res["final"].astype(np.float32)),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
