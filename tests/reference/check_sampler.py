"""End-to-end check of Zoetrope's flow samplers against the float64 reference.

Reference: sampler_reference.py (spec wan21.md sec. 4.3-4.6). For each sampler in
(unipc, dpmpp, euler) x steps (10, 50) x shift (5.0, 3.0) this driver writes an input file
{noise, cond_a, cond_b, uncond_a, uncond_b} (F32, shape [16,3,4,6], fixed seed), runs

    SAMPLER --sampler S --steps N --shift X --guidance 5.0 --input IN --output OURS

and compares with the reference computed in-process in float64:
  * `timesteps` (I64 [N]) exactly,
  * `sigmas` (F32 [N+1]) to within 1e-6 absolute (they are float32 roundings of float64 values),
  * `final` and every step of `trajectory` with relative L2 <= 1e-5 (the case's rel_l2 is the worst).

Output: one line per case, `case <name>: rel_l2=<value> (limit 1e-05) PASS|FAIL`, then a summary
table. Exit status 1 if any case fails, is NaN/inf, or the tool fails.

Usage: check_sampler.py --sampler-binary PATH --workdir DIR
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402
import sampler_reference as sref  # noqa: E402

LIMIT = 1e-5
LIMIT_STR = "1e-5"
SIGMA_ATOL = 1e-6
SHAPE = (16, 3, 4, 6)
GUIDANCE = 5.0
TOOL_TIMEOUT_S = 300


def make_inputs(seed: int):
    rng = np.random.default_rng(seed)
    return {
        "noise": rng.standard_normal(SHAPE).astype(np.float32),
        "cond_a": rng.uniform(-0.5, 0.5, SHAPE).astype(np.float32),
        "cond_b": rng.standard_normal(SHAPE).astype(np.float32),
        "uncond_a": rng.uniform(-0.5, 0.5, SHAPE).astype(np.float32),
        "uncond_b": rng.standard_normal(SHAPE).astype(np.float32),
    }


def rel_l2(ours: np.ndarray, want: np.ndarray) -> float:
    ours, want = ours.astype(np.float64), want.astype(np.float64)
    num, den = np.linalg.norm(ours - want), np.linalg.norm(want)
    return float(num / den) if den > 0 else (0.0 if num == 0 else math.inf)


def compare(got: dict, want: dict, steps: int):
    """Returns (worst rel_l2, list of problems)."""
    problems = []
    for key in ("timesteps", "sigmas", "trajectory", "final"):
        if key not in got:
            problems.append(f"missing tensor {key!r}")
    if problems:
        return math.nan, problems

    ts = got["timesteps"]
    if ts.dtype != torch.int64 or tuple(ts.shape) != (steps,):
        problems.append(f"timesteps: dtype {ts.dtype} shape {tuple(ts.shape)}, want int64 [{steps}]")
    elif not np.array_equal(ts.numpy(), want["timesteps"]):
        bad = np.nonzero(ts.numpy() != want["timesteps"])[0]
        problems.append(f"timesteps differ at {bad[:5].tolist()}: ours "
                        f"{ts.numpy()[bad[:5]].tolist()} ref {want['timesteps'][bad[:5]].tolist()}")

    sg = got["sigmas"]
    if sg.dtype != torch.float32 or tuple(sg.shape) != (steps + 1,):
        problems.append(f"sigmas: dtype {sg.dtype} shape {tuple(sg.shape)}, want float32 [{steps + 1}]")
    else:
        err = np.abs(sg.numpy().astype(np.float64) - want["sigmas"]).max()
        if not err <= SIGMA_ATOL:
            problems.append(f"sigmas differ by up to {err:.3e}")

    rels = []  # rel_l2 of every trajectory step, then of final
    tr, fin = got["trajectory"], got["final"]
    if tuple(tr.shape) != (steps,) + SHAPE or tr.dtype != torch.float32:
        problems.append(f"trajectory: dtype {tr.dtype} shape {tuple(tr.shape)}")
        rels.append(math.nan)
    else:
        step_rels = [rel_l2(tr[i].numpy(), want["trajectory"][i]) for i in range(steps)]
        rels += step_rels
        bad = [i for i, r in enumerate(step_rels) if not (math.isfinite(r) and r <= LIMIT)]
        if bad:
            worst_i = max(bad, key=lambda i: step_rels[i] if math.isfinite(step_rels[i]) else math.inf)
            problems.append(f"trajectory: {len(bad)}/{steps} steps over the limit; first step {bad[0]} "
                            f"rel_l2={step_rels[bad[0]]:.3e}, worst step {worst_i} "
                            f"rel_l2={step_rels[worst_i]:.3e}")
    if tuple(fin.shape) != SHAPE or fin.dtype != torch.float32:
        problems.append(f"final: dtype {fin.dtype} shape {tuple(fin.shape)}")
        rels.append(math.nan)
    else:
        r = rel_l2(fin.numpy(), want["final"])
        rels.append(r)
        if not (math.isfinite(r) and r <= LIMIT):
            problems.append(f"final: rel_l2={r:.3e}")
    worst = math.nan if any(not math.isfinite(r) for r in rels) else max(rels)
    return worst, problems


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="compare the sampler tool with the float64 reference")
    ap.add_argument("--sampler-binary", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args(argv)
    binary = os.path.abspath(args.sampler_binary)
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)

    t_start = time.time()
    rows = []
    seed = 1000
    for sampler in sref.SAMPLERS:
        for steps in (10, 50):
            for shift in (5.0, 3.0):
                seed += 1
                name = f"{sampler}_n{steps}_shift{shift:g}"
                inputs = make_inputs(seed)
                in_path = os.path.join(workdir, f"{name}.in.safetensors")
                out_path = os.path.join(workdir, f"{name}.out.safetensors")
                if os.path.exists(out_path):
                    os.remove(out_path)
                safetensors_io.save(in_path, {k: torch.from_numpy(v) for k, v in inputs.items()})
                want = sref.run_synthetic(sampler, steps, shift, GUIDANCE, inputs)
                cmd = [binary, "--sampler", sampler, "--steps", str(steps), "--shift", f"{shift:g}",
                       "--guidance", f"{GUIDANCE:g}", "--input", in_path, "--output", out_path]
                t0 = time.time()
                rel, problems = math.nan, []
                try:
                    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       timeout=TOOL_TIMEOUT_S)
                    if p.returncode != 0:
                        tail = p.stdout.decode("utf-8", "replace").strip().splitlines()[-6:]
                        problems = [f"sampler exited {p.returncode}"] + tail
                except FileNotFoundError:
                    problems = [f"not found: {binary}"]
                except subprocess.TimeoutExpired:
                    problems = [f"timed out after {TOOL_TIMEOUT_S}s"]
                dt = time.time() - t0
                if not problems:
                    try:
                        got = safetensors_io.load(out_path)
                        rel, problems = compare(got, want, steps)
                    except Exception as exc:  # noqa: BLE001 - reported as a failed case
                        problems = [f"cannot read {out_path}: {exc}"]
                ok = not problems and math.isfinite(rel) and rel <= LIMIT
                line = f"case {name}: rel_l2={rel:.3e} (limit {LIMIT_STR}) {'PASS' if ok else 'FAIL'}"
                if problems:
                    line += f"  [{problems[0]}]" + "".join(f"\n    | {p}" for p in problems[1:8])
                    if len(problems) > 8:
                        line += f"\n    | ... {len(problems) - 8} more"
                print(line, flush=True)
                rows.append((name, rel, dt, ok))

    print("\nsummary (worst rel_l2 over trajectory steps and final, float64 reference)")
    print(f"  {'case':<24} {'rel_l2':>10} {'tool_s':>7}  status")
    for name, rel, dt, ok in rows:
        print(f"  {name:<24} {rel:>10.3e} {dt:>7.2f}  {'PASS' if ok else 'FAIL'}")
    n_fail = sum(not r[3] for r in rows)
    print(f"{len(rows) - n_fail}/{len(rows)} cases passed in {time.time() - t_start:.1f}s")
    return 1 if n_fail else 0


if __name__ == "__main__":
    sys.exit(main())
