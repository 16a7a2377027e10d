#!/usr/bin/env python3
"""PyTorch baseline of one Wan2.1 DiT forward (spec/wan21.md §2), for comparison with zoetrope-dit-bench.

Written for this benchmark after the official `wan/modules/model.py` structure: bf16 parameters and
matmuls, fp32 residual stream / LayerNorm statistics / modulation (as the official autocast region keeps
them), RMSNorm over the full width, interleaved 3D RoPE, SDPA for both attentions (best backend: cuDNN
first), GELU(tanh) FFN. Random weights (the time is independent of their values). Optionally
torch.compile. Prints and writes JSON through bench/write_result.py (commit, device, date, shape): per
variant the seconds of every timed forward (CUDA-synchronised wall clock), median, min, max, peak memory,
TFLOP/s from the analytic FLOPs of spec §7.

usage: dit_baseline.py [--config 1.3b|14b] [--latent 16,21,60,104] [--compile]
                       [--name dit_forward_1.3b_480p_pytorch_{gpu} [--results-dir DIR] | --json OUT]
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import write_result

CONFIGS = {
    "1.3b": dict(dim=1536, ffn=8960, heads=12, layers=30),
    "14b": dict(dim=5120, ffn=13824, heads=40, layers=40),
}
TEXT_LEN, TEXT_DIM, FREQ_DIM = 512, 4096, 256


def rope_tables(grid, head_dim, device):
    frame_dims = head_dim - 4 * (head_dim // 6)
    spatial_dims = 2 * (head_dim // 6)
    f, h, w = grid
    positions = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    positions = positions.reshape(-1, 3).double()
    angles = []
    for axis, dims in enumerate((frame_dims, spatial_dims, spatial_dims)):
        omega = 10000.0 ** (-torch.arange(dims // 2, dtype=torch.float64) * 2 / dims)
        angles.append(positions[:, axis:axis + 1] * omega)
    angle = torch.cat(angles, dim=1)  # [L, head_dim/2]
    return angle.cos().float().to(device), angle.sin().float().to(device)


def apply_rope(x, cos, sin):
    # x [L, H, d] interleaved pairs (2p, 2p+1).
    pairs = x.float().unflatten(-1, (-1, 2))
    real, imaginary = pairs[..., 0], pairs[..., 1]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((real * c - imaginary * s, real * s + imaginary * c), -1).flatten(-2).type_as(x)


def rms_norm(x, weight, eps=1e-6):
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.Parameter(torch.ones(dim))
        self.norm_k = nn.Parameter(torch.ones(dim))

    def forward(self, x, context=None, rope=None):
        source = x if context is None else context
        q = rms_norm(self.q(x), self.norm_q).unflatten(-1, (self.heads, -1))
        k = rms_norm(self.k(source), self.norm_k).unflatten(-1, (self.heads, -1))
        v = self.v(source).unflatten(-1, (self.heads, -1))
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None])
        return self.o(out[0].transpose(0, 1).flatten(-2))


class Block(nn.Module):
    def __init__(self, dim, ffn, heads):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim ** 0.5)
        self.self_attn = Attention(dim, heads)
        self.cross_attn = Attention(dim, heads)
        self.norm3 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn0 = nn.Linear(dim, ffn)
        self.ffn2 = nn.Linear(ffn, dim)

    def forward(self, x, e0, context, rope):
        m = (self.modulation.float() + e0).unbind(1)  # 6 x [1, D], fp32
        y = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + m[1]) + m[0]
        x = x + self.self_attn(y.to(torch.bfloat16), rope=rope).float() * m[2]
        normalized = F.layer_norm(x, x.shape[-1:], self.norm3.weight.float(), self.norm3.bias.float(), 1e-6)
        x = x + self.cross_attn(normalized.to(torch.bfloat16), context=context).float()
        y = F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + m[4]) + m[3]
        hidden = F.gelu(self.ffn0(y.to(torch.bfloat16)), approximate="tanh")
        return x + self.ffn2(hidden).float() * m[5]


class WanDit(nn.Module):
    def __init__(self, dim, ffn, heads, layers):
        super().__init__()
        self.dim, self.heads = dim, heads
        self.patch = nn.Linear(64, dim)
        self.text0, self.text2 = nn.Linear(TEXT_DIM, dim), nn.Linear(dim, dim)
        self.time0, self.time2 = nn.Linear(FREQ_DIM, dim), nn.Linear(dim, dim)
        self.time_projection = nn.Linear(dim, 6 * dim)
        self.blocks = nn.ModuleList(Block(dim, ffn, heads) for _ in range(layers))
        self.head_modulation = nn.Parameter(torch.randn(1, 2, dim) / dim ** 0.5)
        self.head = nn.Linear(dim, 64)

    def forward(self, latent, timestep, context):
        c, f, h, w = latent.shape
        grid = (f, h // 2, w // 2)
        tokens = latent.reshape(c, f, h // 2, 2, w // 2, 2).permute(1, 2, 4, 0, 3, 5).reshape(-1, 64)
        x = self.patch(tokens.to(torch.bfloat16)).float()
        rope = rope_tables(grid, self.dim // self.heads, latent.device)
        half = FREQ_DIM // 2
        omega = 10000.0 ** (-torch.arange(half, dtype=torch.float64, device=latent.device) / half)
        sinusoid = torch.cat([torch.cos(timestep * omega), torch.sin(timestep * omega)]).float()[None]
        e = F.linear(F.silu(F.linear(sinusoid, self.time0.weight.float(), self.time0.bias.float())),
                     self.time2.weight.float(), self.time2.bias.float())
        e0 = F.linear(F.silu(e), self.time_projection.weight.float(), self.time_projection.bias.float())
        e0 = e0.unflatten(1, (6, self.dim))
        padded = torch.zeros(TEXT_LEN, TEXT_DIM, device=latent.device, dtype=torch.bfloat16)
        padded[: context.shape[0]] = context
        ctx = self.text2(F.gelu(self.text0(padded), approximate="tanh"))
        for block in self.blocks:
            x = block(x, e0, ctx, rope)
        shift, scale = (self.head_modulation.float() + e[:, None]).unbind(1)
        out = F.linear(F.layer_norm(x, x.shape[-1:], eps=1e-6) * (1 + scale) + shift, self.head.weight.float(),
                       self.head.bias.float())
        return out


def forward_flops(config, tokens):
    d, f = config["dim"], config["ffn"]
    per_block = 8 * tokens * d * d + 4 * tokens * tokens * d + 4 * tokens * d * d + 4 * TEXT_LEN * d * d + \
        4 * tokens * TEXT_LEN * d + 4 * tokens * d * f
    return per_block * config["layers"] + 2 * tokens * 64 * d + 2 * TEXT_LEN * TEXT_DIM * d + 2 * TEXT_LEN * d * d + \
        2 * tokens * d * 64


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="1.3b", choices=sorted(CONFIGS))
    parser.add_argument("--latent", default="16,21,60,104")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(model)")
    parser.add_argument("--name", default="", help="result name in the results folder ({gpu} = device tag)")
    parser.add_argument("--results-dir", default=None, help="default: see bench/write_result.py")
    parser.add_argument("--json", default="", help="write to this path instead of the results folder")
    parser.add_argument("--commit", default=None, help="default: $ZOETROPE_COMMIT or git")
    args = parser.parse_args()
    config = CONFIGS[args.config]
    torch.manual_seed(0)
    model = WanDit(**config).to("cuda", torch.bfloat16).eval()
    latent = torch.randn(*[int(v) for v in args.latent.split(",")], device="cuda")
    context = torch.randn(128, TEXT_DIM, device="cuda", dtype=torch.bfloat16)
    tokens = latent.shape[1] * (latent.shape[2] // 2) * (latent.shape[3] // 2)
    flops = forward_flops(config, tokens)
    results = {"model_config": args.config, "tokens": tokens, "tflop": flops / 1e12, "torch": torch.__version__,
               "cudnn": torch.backends.cudnn.version(),
               "timing": f"CUDA-synchronised wall clock per forward after {args.warmup} warm-up forwards",
               "variants": {}}
    shape = {"config": args.config, "latent": [int(v) for v in args.latent.split(",")], "tokens": tokens,
             "text_tokens": context.shape[0], "weights": "random bf16 (torch.manual_seed(0))"}

    def timed(function, label):
        with torch.no_grad(), sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
            timestep = 999.0
            for _ in range(args.warmup):
                function(latent, torch.tensor(timestep, device="cuda", dtype=torch.float64), context)
                timestep -= 20
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            seconds = []
            for _ in range(args.iterations):
                start = time.perf_counter()
                function(latent, torch.tensor(timestep, device="cuda", dtype=torch.float64), context)
                torch.cuda.synchronize()
                seconds.append(time.perf_counter() - start)
                timestep -= 20
        stats = write_result.summary(seconds)
        median = stats["median"]
        results["variants"][label] = {"median_s": median, "min_s": stats["min"], "max_s": stats["max"],
                                      "spread_pct": stats["spread_pct"], "samples_s": stats["samples"],
                                      "tflops": flops / median / 1e12,
                                      "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30}
        print(f"{label}: {median:.4f} s, {flops / median / 1e12:.1f} TFLOP/s", flush=True)

    timed(model, "eager")
    if args.compile:
        try:
            timed(torch.compile(model), "compiled")
        except Exception as error:
            results["variants"]["compiled"] = {"error": str(error)[:300]}
    print(json.dumps(results))
    if args.json or args.name:
        name = args.name or f"dit_forward_{args.config}_pytorch_{{gpu}}"
        path = write_result.write(name, results, shape=shape, directory=args.results_dir, commit_value=args.commit,
                                  device_name=torch.cuda.get_device_name(0), path=args.json or None)
        print(f"written {path}")


if __name__ == "__main__":
    main()
