"""End-to-end check of Zoetrope's DiT forward (`zoetrope-dit`) against the float64 reference.

Reference: wan_dit_reference.py (spec wan21.md sec. 1, 2, 3.3). For every weight set this driver
  1. runs `zoetrope-mkweights --config NAME --seed S -o DIR/weights.safetensors [--diffusers]
     [--num_layers N] [--dtype bf16]` (each weight set in its own directory, since config.json is
     written beside the weights),
  2. checks that config.json describes the requested preset, then loads the weights into the
     reference (original or diffusers names are detected from the keys),
  3. for each input case writes IN.safetensors {latent F32 [16,F,H,W], timestep [1] I64 or F32,
     context F32 [Lc, text_dim]}, runs `zoetrope-dit --weights W --inputs IN -o OUT`, and compares
     OUT["velocity"] with the reference: rel_l2 = ||ours - ref|| / ||ref|| in float64 <= 1e-4.

Output: one line per case, `case <name>: rel_l2=<value> (limit 1e-4) PASS|FAIL`, then a summary
table. Exit status 1 if any case fails, is NaN/inf, or a tool fails; 0 otherwise.

Usage: check_dit.py --mkweights PATH --dit PATH --workdir DIR [--quick]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from typing import List, Optional, Tuple

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402
import wan_dit_reference as ref  # noqa: E402

LIMIT = 1e-4
LIMIT_STR = "1e-4"
TOOL_TIMEOUT_S = 600


@dataclass
class InputCase:
    name: str
    latent_shape: Tuple[int, int, int, int]
    timestep: float
    timestep_dtype: str  # "i64" or "f32"
    context_rows: int
    seed: int
    quick: bool = False


@dataclass
class WeightSet:
    name: str
    config: str
    seed: int
    diffusers: bool = False
    num_layers: Optional[int] = None
    dtype: Optional[str] = None  # None: the tool's default (f32)
    inputs: List[InputCase] = field(default_factory=list)


def _tiny_inputs():
    return [
        InputCase("t999_f1x4x4_c7", (16, 1, 4, 4), 999, "i64", 7, seed=101, quick=True),
        InputCase("t500_f3x6x10_c20", (16, 3, 6, 10), 500, "i64", 20, seed=102),
        InputCase("t37_f5x8x6_c7", (16, 5, 8, 6), 37, "i64", 7, seed=103),
        InputCase("t712.5f_f3x6x10_c20", (16, 3, 6, 10), 712.5, "f32", 20, seed=104, quick=True),
        InputCase("t0_f2x2x2_c32", (16, 2, 2, 2), 0, "i64", 32, seed=105),  # Lc == text_len
    ]


def build_cases() -> List[WeightSet]:
    tiny = _tiny_inputs()
    diff_inputs = [replace(c, quick=(c.name == "t500_f3x6x10_c20")) for c in tiny[:4]]
    return [
        WeightSet("tiny", "tiny", seed=1, inputs=tiny),
        WeightSet("tiny-diffusers", "tiny", seed=1, diffusers=True, inputs=diff_inputs),
        WeightSet("tiny-bf16", "tiny", seed=2, dtype="bf16",
                  inputs=[replace(tiny[2], quick=False)]),
        WeightSet("1.3b-2blocks", "wan2.1-t2v-1.3b", seed=3, num_layers=2, inputs=[
            InputCase("t999_f2x4x6_c10", (16, 2, 4, 6), 999, "i64", 10, seed=301, quick=True),
            InputCase("t712.5f_f3x4x4_c10", (16, 3, 4, 4), 712.5, "f32", 10, seed=302),
        ]),
    ]


def make_inputs(case: InputCase, text_dim: int):
    rng = np.random.default_rng(case.seed)
    latent = rng.standard_normal(case.latent_shape).astype(np.float32)
    context = rng.standard_normal((case.context_rows, text_dim)).astype(np.float32)
    if case.timestep_dtype == "i64":
        timestep = np.array([int(case.timestep)], dtype=np.int64)
    else:
        timestep = np.array([case.timestep], dtype=np.float32)
    return {"latent": torch.from_numpy(latent), "timestep": torch.from_numpy(timestep),
            "context": torch.from_numpy(context)}


def run_tool(cmd: List[str]) -> Tuple[bool, str, float]:
    t0 = time.time()
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=TOOL_TIMEOUT_S)
    except FileNotFoundError:
        return False, f"not found: {cmd[0]}", 0.0
    except subprocess.TimeoutExpired:
        return False, f"timed out after {TOOL_TIMEOUT_S}s: {' '.join(cmd)}", time.time() - t0
    out = p.stdout.decode("utf-8", "replace")
    if p.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        return False, f"{os.path.basename(cmd[0])} exited {p.returncode}\n{tail}", time.time() - t0
    return True, out, time.time() - t0


def rel_l2(ours: torch.Tensor, want: torch.Tensor) -> Tuple[float, float]:
    ours, want = ours.to(torch.float64), want.to(torch.float64)
    diff = ours - want
    denom = torch.linalg.norm(want).item()
    num = torch.linalg.norm(diff).item()
    r = num / denom if denom > 0 else (0.0 if num == 0 else math.inf)
    return r, diff.abs().max().item()


@dataclass
class Result:
    name: str
    rel: float = math.nan
    max_abs: float = math.nan
    ok: bool = False
    note: str = ""
    t_ref: float = 0.0
    t_ours: float = 0.0
    shape: str = ""
    t: str = ""
    lc: int = 0


def report(res: Result, results: List[Result]):
    status = "PASS" if res.ok else "FAIL"
    line = f"case {res.name}: rel_l2={res.rel:.3e} (limit {LIMIT_STR}) {status}"
    if res.note and not res.ok:
        first, *rest = res.note.splitlines()
        line += f"  [{first}]"
        for r in rest:
            line += f"\n    | {r}"
    print(line, flush=True)
    results.append(res)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="compare zoetrope-dit with the float64 reference")
    ap.add_argument("--mkweights", required=True)
    ap.add_argument("--dit", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--quick", action="store_true", help="run a subset of the cases")
    args = ap.parse_args(argv)
    mkweights, dit = os.path.abspath(args.mkweights), os.path.abspath(args.dit)
    os.makedirs(args.workdir, exist_ok=True)

    results: List[Result] = []
    canonical = {}  # weight-set name -> canonical state dict (for the naming cross-check)
    t_start = time.time()
    for ws in build_cases():
        inputs = [c for c in ws.inputs if c.quick or not args.quick]
        if not inputs:
            continue
        wdir = os.path.join(os.path.abspath(args.workdir), ws.name)
        os.makedirs(wdir, exist_ok=True)
        wfile = os.path.join(wdir, "weights.safetensors")
        for stale in ("config.json", "weights.safetensors"):
            if os.path.exists(os.path.join(wdir, stale)):
                os.remove(os.path.join(wdir, stale))
        cmd = [mkweights, "--config", ws.config, "--seed", str(ws.seed), "-o", wfile]
        if ws.diffusers:
            cmd.append("--diffusers")
        if ws.num_layers is not None:
            cmd += ["--num_layers", str(ws.num_layers)]
        if ws.dtype is not None:
            cmd += ["--dtype", ws.dtype]
        ok, msg, _ = run_tool(cmd)
        model = None
        if ok:
            try:
                cfg = ref.load_config(wfile)
                want = ref.PRESETS[ws.config]
                if ws.num_layers is not None:
                    want = replace(want, num_layers=ws.num_layers)
                if cfg != want:
                    raise ValueError(f"config.json gives {cfg}, expected {want}")
                model = ref.WanDiTReference.from_checkpoint(wfile, cfg)
                naming = ref.detect_naming(safetensors_io.checkpoint_keys(wfile).keys())
                if naming != ("diffusers" if ws.diffusers else "original"):
                    raise ValueError(f"weights use {naming} names")
                if ws.dtype == "bf16" and any(v.dtype != torch.bfloat16 for v in model.sd.values()
                                              if v.dim() == 2):
                    raise ValueError("--dtype bf16 did not store the weight matrices as BF16")
                canonical[ws.name] = model.sd
            except Exception as exc:  # noqa: BLE001 - reported as a failed case
                ok, msg = False, f"reference could not load the weights: {exc}"
        for case in inputs:
            name = f"{ws.name}/{case.name}"
            res = Result(name, shape="x".join(map(str, case.latent_shape[1:])),
                         t=f"{case.timestep:g}{'' if case.timestep_dtype == 'i64' else 'f'}",
                         lc=case.context_rows)
            if not ok:
                res.note = f"mkweights step failed: {msg}"
                report(res, results)
                continue
            in_path = os.path.join(wdir, f"{case.name}.in.safetensors")
            out_path = os.path.join(wdir, f"{case.name}.out.safetensors")
            if os.path.exists(out_path):
                os.remove(out_path)
            inp = make_inputs(case, model.cfg.text_dim)
            safetensors_io.save(in_path, inp)
            t0 = time.time()
            want = model.forward(inp["latent"], inp["timestep"], inp["context"])
            res.t_ref = time.time() - t0
            tool_ok, tool_msg, res.t_ours = run_tool([dit, "--weights", wfile, "--inputs", in_path,
                                                      "-o", out_path])
            if not tool_ok:
                res.note = tool_msg
                report(res, results)
                continue
            try:
                got = safetensors_io.load(out_path)["velocity"]
            except Exception as exc:  # noqa: BLE001
                res.note = f"cannot read velocity from {out_path}: {exc}"
                report(res, results)
                continue
            if tuple(got.shape) != tuple(want.shape):
                res.note = f"velocity shape {tuple(got.shape)} != {tuple(want.shape)}"
            elif got.dtype != torch.float32:
                res.note = f"velocity dtype {got.dtype} != float32"
            else:
                res.rel, res.max_abs = rel_l2(got, want)
                res.ok = math.isfinite(res.rel) and res.rel <= LIMIT
                if not torch.isfinite(got).all():
                    res.ok, res.note = False, "velocity has NaN/inf"
                elif not res.ok:
                    res.note = f"max_abs_err={res.max_abs:.3e}"
            report(res, results)

    # Informational: if both namings were generated from the same seed with identical values,
    # the diffusers loader (incl. the norm2/norm3 swap) must reproduce the original weights.
    a, b = canonical.get("tiny"), canonical.get("tiny-diffusers")
    if a is not None and b is not None:
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        print(f"note: tiny original vs diffusers weights after renaming: "
              f"{'identical' if same else 'different (mkweights draws them differently; fine)'}")

    print("\nsummary (rel_l2 = ||ours-ref||/||ref||, float64 reference)")
    print(f"  {'case':<38} {'grid FxHxW':>10} {'t':>7} {'Lc':>3} {'rel_l2':>10} {'max_abs':>10}"
          f" {'ref_s':>6} {'ours_s':>6}  status")
    for r in results:
        print(f"  {r.name:<38} {r.shape:>10} {r.t:>7} {r.lc:>3} {r.rel:>10.3e} {r.max_abs:>10.3e}"
              f" {r.t_ref:>6.2f} {r.t_ours:>6.2f}  {'PASS' if r.ok else 'FAIL'}")
    n_fail = sum(not r.ok for r in results)
    print(f"{len(results) - n_fail}/{len(results)} cases passed in {time.time() - t_start:.1f}s")
    return 1 if n_fail or not results else 0


if __name__ == "__main__":
    sys.exit(main())
