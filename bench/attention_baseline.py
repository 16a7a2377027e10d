#!/usr/bin/env python3
"""Attention benchmark on the GPU machine: Zoetrope's kernel against PyTorch in the same run.

For each shape (batch 1, heads, tokens, head dim 128, non-causal) this script
  1. draws q, k, v (bf16, seed 0) and writes them as [L, H, d] for zoetrope-attention-bench,
  2. runs our binary on them (timing + output),
  3. times torch SDPA with the cuDNN backend, the flash backend, and FlexAttention (dense, compiled),
  4. checks our output against SDPA-cuDNN's output and against an fp32 reference on a slice of queries
     (relative L2), and
  5. writes one JSON document through bench/write_result.py (commit, device, date; per shape and kernel the
     median, min, max where known, TFLOP/s, ratios).

usage: attention_baseline.py --bench build/bin/zoetrope-attention-bench [--shapes 12x32760,40x75600]
                             [--name attention_{gpu} [--results-dir DIR] | --json OUT.json]
Timing: CUDA events around each call after warm-up, median of --iterations calls. Our binary reports its
median and minimum; the PyTorch kernels timed here keep every sample.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import write_result


def timed_ms(fn, warmup, iterations):
    """Milliseconds of each call (CUDA events), in the order taken."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iterations):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def timing_entry(times, flops):
    stats = write_result.summary(times)
    return {"median_ms": stats["median"], "min_ms": stats["min"], "max_ms": stats["max"],
            "spread_pct": stats["spread_pct"], "samples_ms": stats["samples"],
            "tflops": flops / (stats["median"] * 1e-3) / 1e12}


def relative_l2(actual, expected):
    actual = actual.double()
    expected = expected.double()
    if not torch.isfinite(actual).all():
        return float("inf")
    return ((actual - expected).norm() / expected.norm()).item()


def run_shape(args, heads, tokens, dim, workdir):
    flops = 4.0 * tokens * tokens * heads * dim
    generator = torch.Generator(device="cuda").manual_seed(0)
    shape = (1, heads, tokens, dim)
    q = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=generator)
    k = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=generator)
    v = torch.randn(shape, device="cuda", dtype=torch.bfloat16, generator=generator)
    for name, tensor in (("q", q), ("k", k), ("v", v)):
        # [1, H, L, d] -> [L, H, d] contiguous, raw bf16 bytes.
        tensor[0].transpose(0, 1).contiguous().view(torch.int16).cpu().numpy().tofile(os.path.join(workdir, name + ".bin"))
    import numpy
    result = {"heads": heads, "tokens": tokens, "dim": dim, "tflop": flops / 1e12, "kernels": {}}
    outputs = {}
    # "zoetrope": what the backend runs (the two-stage Hopper wgmma kernel for d = 128); "zoetrope_wgmma3"
    # and "zoetrope_pingpong": its three-stage variants; "zoetrope_mma": the mma.sync kernel.
    for label, choice in (("zoetrope", "auto"), ("zoetrope_wgmma3", "wgmma3"), ("zoetrope_pingpong", "pingpong"),
                          ("zoetrope_mma", "mma")):
        path = os.path.join(workdir, f"o_{choice}.bin")
        command = [args.bench, f"--heads={heads}", f"--queries={tokens}", f"--dim={dim}", f"--inputs={workdir}",
                   f"--output={path}", f"--iterations={args.iterations}", f"--warmup={args.warmup}",
                   f"--kernel={choice}"]
        try:
            completed = subprocess.run(command, capture_output=True, text=True, timeout=args.kernel_timeout)
        except subprocess.TimeoutExpired:
            result["kernels"][label] = {"error": f"timed out after {args.kernel_timeout} s"}
            continue
        if completed.returncode != 0:
            result["kernels"][label] = {"error": (completed.stderr or completed.stdout)[-300:]}
            continue
        ours = json.loads(completed.stdout.strip().splitlines()[-1])
        result["kernels"][label] = {"median_ms": ours["median_ms"], "min_ms": ours.get("min_ms"),
                                    "tflops": ours["tflops"]}
        output = torch.from_numpy(numpy.fromfile(path, dtype=numpy.int16)).view(torch.bfloat16)
        outputs[label] = output.view(tokens, heads, dim).transpose(0, 1).unsqueeze(0).cuda()
        os.remove(path)

    def sdpa(backend):
        def call():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v)
        return call

    reference_cudnn = None
    for label, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
        try:
            call = sdpa(backend)
            output = call()
            if label == "sdpa_cudnn":
                reference_cudnn = output
            result["kernels"][label] = timing_entry(timed_ms(call, args.warmup, args.iterations), flops)
        except Exception as error:  # a backend that cannot run this shape is reported, not fatal
            result["kernels"][label] = {"error": str(error)[:300]}
    if not args.skip_flex:
        try:
            from torch.nn.attention.flex_attention import flex_attention
            compiled = torch.compile(flex_attention, dynamic=False)
            call = lambda: compiled(q, k, v)
            result["kernels"]["flex"] = timing_entry(timed_ms(call, args.warmup, args.iterations), flops)
        except Exception as error:
            result["kernels"]["flex"] = {"error": str(error)[:300]}

    # Correctness on the same inputs: against cuDNN's output, and against fp32 math on a query slice
    # (the first and the last 128 queries, so the partial last block is included).
    rows = torch.cat([torch.arange(0, 128), torch.arange(tokens - 128, tokens)]).cuda()
    scores = torch.matmul(q[:, :, rows].float(), k.float().transpose(-1, -2)) / (dim ** 0.5)
    reference = torch.matmul(torch.softmax(scores, dim=-1), v.float())
    del scores
    for label, output in outputs.items():
        entry = result["kernels"][label]
        if reference_cudnn is not None:
            entry["relative_l2_vs_sdpa_cudnn"] = relative_l2(output, reference_cudnn)
        entry["relative_l2_vs_fp32_256_queries"] = relative_l2(output[:, :, rows], reference)
    if reference_cudnn is not None:
        result["kernels"]["sdpa_cudnn"]["relative_l2_vs_fp32_256_queries"] = relative_l2(reference_cudnn[:, :, rows],
                                                                                        reference)
    ours = result["kernels"].get("zoetrope", {})
    for label in ("sdpa_cudnn", "sdpa_flash", "flex"):
        baseline = result["kernels"].get(label, {})
        if "tflops" in baseline and "tflops" in ours:
            result[f"ratio_vs_{label}"] = ours["tflops"] / baseline["tflops"]
    del q, k, v, reference_cudnn
    torch.cuda.empty_cache()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bench", required=True, help="path of zoetrope-attention-bench")
    parser.add_argument("--name", default="attention_{gpu}", help="result name in the results folder ({gpu} = device tag)")
    parser.add_argument("--results-dir", default=None, help="default: see bench/write_result.py")
    parser.add_argument("--json", default=None, help="write to this path instead of the results folder")
    parser.add_argument("--shapes", default="12x32760,40x75600", help="HEADSxTOKENS,...")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--skip-flex", action="store_true")
    parser.add_argument("--kernel-timeout", type=int, default=90, help="seconds per run of our binary")
    parser.add_argument("--commit", default=None, help="default: $ZOETROPE_COMMIT or git")
    args = parser.parse_args()

    document = {
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "timing": f"CUDA events, median of {args.iterations} after {args.warmup} warm-up calls",
        "flops": "4 * Lq * Lk * heads * dim (QK^T and PV)",
        "shapes": [],
    }
    with tempfile.TemporaryDirectory() as workdir:
        for item in args.shapes.split(","):
            heads, tokens = (int(part) for part in item.split("x"))
            print(f"shape heads={heads} tokens={tokens} dim={args.dim}", file=sys.stderr, flush=True)
            document["shapes"].append(run_shape(args, heads, tokens, args.dim, workdir))
    path = write_result.write(args.name, document, directory=args.results_dir, commit_value=args.commit,
                              device_name=torch.cuda.get_device_name(0), path=args.json)
    print(f"written {path}", file=sys.stderr)

    print(f"{'shape':>10} {'kernel':>13} {'ms':>8} {'TFLOP/s':>8} {'ours/x':>7} {'L2 vs cuDNN':>12} {'L2 vs fp32':>11}")
    for shape in document["shapes"]:
        name = f"{shape['heads']}x{shape['tokens']}"
        ours = shape["kernels"].get("zoetrope", {}).get("tflops", float("nan"))
        for label, values in shape["kernels"].items():
            if "tflops" in values:
                print(f"{name:>10} {label:>13} {values['median_ms']:8.2f} {values['tflops']:8.1f} "
                      f"{ours / values['tflops']:7.3f} {values.get('relative_l2_vs_sdpa_cudnn', float('nan')):12.2e} "
                      f"{values.get('relative_l2_vs_fp32_256_queries', float('nan')):11.2e}")
            else:
                print(f"{name:>10} {label:>13}   error: {values['error'][-80:]}")


if __name__ == "__main__":
    main()
