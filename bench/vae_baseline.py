#!/usr/bin/env python3
"""The Wan2.1 VAE decode in PyTorch on a GPU (the baseline of scripts/device/bench-vae.sh), and the PSNR of
one decode against another.

  vae_baseline.py time --weights W --latent L.safetensors --dtype bf16|fp32 [--warmup 1] [--iterations 3]
                       [--save FRAMES.safetensors] --name NAME_{gpu} [--results-dir DIR]
      Decodes the tensor "latent" [z, F, H, W] of L with the independent reference modules of
      tests/reference/wan_vae_reference.py (torch conv3d/conv2d, the reference's chunked decode: one latent
      frame per decoder call with the feature cache) moved to the GPU in --dtype. bf16 runs the modules in
      bfloat16 (cuDNN bf16 convolutions, fp32 accumulation inside cuDNN); fp32 runs them in float32 with
      PyTorch's default TF32 convolutions (torch.backends.cudnn.allow_tf32 is True by default), the
      official code's default. Times host latent -> host frames, as zoetrope-vae-bench does. Writes JSON
      through bench/write_result.py.
  vae_baseline.py psnr --reference A.safetensors --test B.safetensors
      Prints JSON: PSNR (dB) of B's "video" against A's over the [-1, 1] signal (peak-to-peak 2), the
      maximum absolute difference, and the fraction of A's values at the clamp (±1), which a PSNR over
      saturated frames would hide.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "reference"))
sys.path.insert(0, HERE)
import safetensors_io  # noqa: E402
import wan_vae_reference  # noqa: E402
import write_result  # noqa: E402


def move(obj, device, dtype, seen=None):
    """Moves every tensor attribute of the reference modules (recursively) to device/dtype."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return obj
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.to(device=device, dtype=dtype)
    if isinstance(obj, list):
        return [move(item, device, dtype, seen) for item in obj]
    if hasattr(obj, "__dict__"):
        for key, value in vars(obj).items():
            setattr(obj, key, move(value, device, dtype, seen))
    return obj


def time_decode(args):
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    # The reference computes in its module-level F64; at this dtype instead (it reads the global per call).
    wan_vae_reference.F64 = dtype
    state = safetensors_io.load(args.weights)
    decoder = move(wan_vae_reference.WanVaeDecoderReference(state), args.device, dtype)
    cuda = args.device.startswith("cuda")
    latent_host = safetensors_io.load(args.latent)["latent"].float()
    samples = []
    frames = None
    with torch.no_grad():
        for run in range(args.warmup + args.iterations):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            frames = decoder.decode(latent_host.to(args.device, dtype)).float().cpu()  # [3, T, H, W]
            elapsed = time.perf_counter() - start
            if run >= args.warmup:
                samples.append(elapsed)
            print(f"pytorch {args.dtype} decode {run}: {elapsed:.3f} s{' (warm-up)' if run < args.warmup else ''}",
                  file=sys.stderr)
    if args.save:
        safetensors_io.save(args.save, {"video": frames.permute(1, 0, 2, 3).contiguous()})
    shape = {"latent": list(latent_host.shape), "frames": [frames.shape[1], 3, frames.shape[2], frames.shape[3]]}
    fields = {"implementation": f"PyTorch {torch.__version__} tests/reference/wan_vae_reference.py modules, "
                                f"{args.dtype} on {args.device} (cuDNN {torch.backends.cudnn.version()}), chunked decode "
                                "(one latent frame per call)",
              "dtype": args.dtype, "peak_device_bytes": torch.cuda.max_memory_allocated() if cuda else None}
    path = write_result.write(args.name, fields, samples=samples, shape=shape, directory=args.results_dir)
    print(path)
    return 0


def psnr(args):
    reference = safetensors_io.load(args.reference)["video"].double()
    test = safetensors_io.load(args.test)["video"].double()
    if reference.shape != test.shape:
        print(json.dumps({"error": f"shapes differ: {list(reference.shape)} vs {list(test.shape)}"}))
        return 1
    mse = torch.mean((reference - test) ** 2).item()
    value = math.inf if mse == 0 else 10 * math.log10(4.0 / mse)
    print(json.dumps({"psnr_db": value if math.isfinite(value) else "inf", "mse": mse,
                      "max_abs_difference": torch.max(torch.abs(reference - test)).item(),
                      "saturated_fraction": torch.mean((reference.abs() >= 1.0).double()).item()}))
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    timing = commands.add_parser("time")
    timing.add_argument("--weights", required=True)
    timing.add_argument("--latent", required=True)
    timing.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    timing.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke test)")
    timing.add_argument("--warmup", type=int, default=1)
    timing.add_argument("--iterations", type=int, default=3)
    timing.add_argument("--save", default="")
    timing.add_argument("--name", required=True)
    timing.add_argument("--results-dir", default=None)
    comparing = commands.add_parser("psnr")
    comparing.add_argument("--reference", required=True)
    comparing.add_argument("--test", required=True)
    args = parser.parse_args()
    return time_decode(args) if args.command == "time" else psnr(args)


if __name__ == "__main__":
    sys.exit(main())
