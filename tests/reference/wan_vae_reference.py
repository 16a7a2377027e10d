"""Independent float64 PyTorch reference of the Wan2.1 VAE decoder (`wan/modules/vae.py`).

Written from the Zoetrope spec /work/shared/spec/wan21.md, not from the C++ engine:
  * sec. 3.2 original checkpoint keys (`conv2.*`, `decoder.*`), sec. 3.4 the diffusers renames,
  * sec. 5.1 config (dim, z_dim, dim_mult, 3 residual blocks per stage, temporal upsample [T, T, F]),
  * sec. 5.2 latent de-normalisation z / (1/std) + mean,
  * sec. 5.3 building blocks (CausalConv3d, RMS_norm = F.normalize·√C·γ, ResidualBlock, per-frame
             single-head AttentionBlock, Resample upsample2d/upsample3d),
  * sec. 5.4 the decoder layer sequence,
  * sec. 5.5 the reference's own **chunked** decode: one latent frame per call with the feature cache
             (CACHE_T = 2, one slot per cached conv in visiting order, the 'Rep' marker of upsample3d).
The modules mirror the reference's structure (torch conv3d / conv2d, `nearest-exact` interpolation) and
run in float64. `decode_full_sequence` implements the sec. 5.5 "full-sequence equivalent" independently,
as a self-check of the chunked decode.

CLI:
    wan_vae_reference.py --weights W --latent IN.safetensors -o OUT.safetensors [--full-sequence]
For every tensor `latent<suffix>` [z_dim, F, Hl, Wl] in IN, OUT gets `video<suffix>`: F32 (F64 with --f64)
**frame-major** [1 + 4(F-1), 3, 8Hl, 8Wl] (the engine's layout; the reference returns [3, T, H, W]),
clamped to [-1, 1]. The config is inferred from `decoder.conv1.weight` (base dim = its rows / 4).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

F64 = torch.float64
CACHE_T = 2

LATENT_MEAN = [-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
               0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921]
LATENT_STD = [2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
              3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160]


# ----------------------------------------------------------------------------------------------
# Key naming (sec. 3.4): diffusers -> original
# ----------------------------------------------------------------------------------------------

def diffusers_to_original(state: Dict[str, torch.Tensor], num_res_blocks: int = 2,
                          stages: int = 4) -> Dict[str, torch.Tensor]:
    per_stage = num_res_blocks + 1
    rename = {"post_quant_conv.": "conv2.", "decoder.conv_in.": "decoder.conv1.",
              "decoder.norm_out.": "decoder.head.0.", "decoder.conv_out.": "decoder.head.2.",
              "decoder.mid_block.resnets.0.": "decoder.middle.0.",
              "decoder.mid_block.resnets.1.": "decoder.middle.2.",
              "decoder.mid_block.attentions.0.": "decoder.middle.1."}
    index = 0
    for stage in range(stages):
        for block in range(per_stage):
            rename[f"decoder.up_blocks.{stage}.resnets.{block}."] = f"decoder.upsamples.{index}."
            index += 1
        if stage + 1 < stages:
            rename[f"decoder.up_blocks.{stage}.upsamplers.0."] = f"decoder.upsamples.{index}."
            index += 1
    block_rename = {"norm1.gamma": "residual.0.gamma", "conv1.": "residual.2.",
                    "norm2.gamma": "residual.3.gamma", "conv2.": "residual.6.",
                    "conv_shortcut.": "shortcut."}
    out = {}
    for key, value in state.items():
        new = key
        for prefix in sorted(rename, key=len, reverse=True):
            if key.startswith(prefix):
                rest = key[len(prefix):]
                if ".resnets." in prefix:
                    for old, replacement in block_rename.items():
                        if rest.startswith(old):
                            rest = replacement + rest[len(old):]
                            break
                new = rename[prefix] + rest
                break
        out[new] = value
    return out


# ----------------------------------------------------------------------------------------------
# Building blocks (sec. 5.3), float64
# ----------------------------------------------------------------------------------------------

class CausalConv3d:
    """Zero-pad W and H symmetrically, T by 2*p_t in front and 0 behind; cached frames replace front
    zeros."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, padding):
        self.weight = weight
        self.bias = bias
        pt, ph, pw = padding
        self.padding = [pw, pw, ph, ph, 2 * pt, 0]  # F.pad order: W, H, T

    def __call__(self, x, cache_x=None):
        padding = list(self.padding)
        if cache_x is not None and self.padding[4] > 0:
            x = torch.cat([cache_x, x], dim=2)
            padding[4] -= cache_x.shape[2]
        x = F.pad(x, padding)
        return F.conv3d(x, self.weight, self.bias)


class RMSNorm:
    def __init__(self, gamma: torch.Tensor):
        self.gamma = gamma  # [C,1,1,1] or [C,1,1]
        self.scale = gamma.shape[0] ** 0.5

    def __call__(self, x):
        return F.normalize(x, dim=1) * self.scale * self.gamma


def cached_conv(conv: CausalConv3d, x, feat_cache, feat_idx):
    """The reference's caching wrapper around every k3 CausalConv3d (conv1, RB convs, head)."""
    idx = feat_idx[0]
    cache_x = x[:, :, -CACHE_T:].clone()
    if cache_x.shape[2] < 2 and feat_cache[idx] is not None:
        cache_x = torch.cat([feat_cache[idx][:, :, -1].unsqueeze(2), cache_x], dim=2)
    x = conv(x, feat_cache[idx])
    feat_cache[idx] = cache_x
    feat_idx[0] += 1
    return x


class ResidualBlock:
    def __init__(self, w: Dict[str, torch.Tensor], prefix: str):
        self.norm1 = RMSNorm(w[prefix + "residual.0.gamma"])
        self.conv1 = CausalConv3d(w[prefix + "residual.2.weight"], w[prefix + "residual.2.bias"], (1, 1, 1))
        self.norm2 = RMSNorm(w[prefix + "residual.3.gamma"])
        self.conv2 = CausalConv3d(w[prefix + "residual.6.weight"], w[prefix + "residual.6.bias"], (1, 1, 1))
        self.shortcut = None
        if prefix + "shortcut.weight" in w:
            self.shortcut = CausalConv3d(w[prefix + "shortcut.weight"], w[prefix + "shortcut.bias"], (0, 0, 0))

    def __call__(self, x, feat_cache=None, feat_idx=None):
        h = self.shortcut(x) if self.shortcut is not None else x
        x = F.silu(self.norm1(x))
        x = cached_conv(self.conv1, x, feat_cache, feat_idx) if feat_cache is not None else self.conv1(x)
        x = F.silu(self.norm2(x))  # dropout p = 0
        x = cached_conv(self.conv2, x, feat_cache, feat_idx) if feat_cache is not None else self.conv2(x)
        return x + h


class AttentionBlock:
    def __init__(self, w: Dict[str, torch.Tensor], prefix: str):
        self.norm = RMSNorm(w[prefix + "norm.gamma"])
        self.qkv_weight = w[prefix + "to_qkv.weight"]
        self.qkv_bias = w[prefix + "to_qkv.bias"]
        self.proj_weight = w[prefix + "proj.weight"]
        self.proj_bias = w[prefix + "proj.bias"]

    def __call__(self, x):
        identity = x
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)  # 'b c t h w -> (b t) c h w'
        x = self.norm(x)
        qkv = F.conv2d(x, self.qkv_weight, self.qkv_bias)
        q, k, v = qkv.reshape(b * t, 1, c * 3, -1).permute(0, 1, 3, 2).contiguous().chunk(3, dim=-1)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(c)  # one head, scale 1/sqrt(C)
        x = torch.matmul(torch.softmax(scores, dim=-1), v)
        x = x.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
        x = F.conv2d(x, self.proj_weight, self.proj_bias)
        x = x.reshape(b, t, c, h, w).permute(0, 2, 1, 3, 4)  # '(b t) c h w -> b c t h w'
        return x + identity


class Resample:
    def __init__(self, w: Dict[str, torch.Tensor], prefix: str, mode: str):
        self.mode = mode
        self.conv_weight = w[prefix + "resample.1.weight"]
        self.conv_bias = w[prefix + "resample.1.bias"]
        self.time_conv = None
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(w[prefix + "time_conv.weight"], w[prefix + "time_conv.bias"], (1, 0, 0))

    def spatial(self, x):
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x = F.interpolate(x, scale_factor=(2.0, 2.0), mode="nearest-exact")
        x = F.conv2d(x, self.conv_weight, self.conv_bias, padding=1)
        return x.reshape(b, t, x.shape[1], 2 * h, 2 * w).permute(0, 2, 1, 3, 4)

    @staticmethod
    def interleave(x):
        b, c2, t, h, w = x.shape
        c = c2 // 2
        x = x.reshape(b, 2, c, t, h, w)
        x = torch.stack((x[:, 0], x[:, 1]), 3)
        return x.reshape(b, c, t * 2, h, w)

    def __call__(self, x, feat_cache=None, feat_idx=None):
        if self.mode == "upsample3d" and feat_cache is not None:
            idx = feat_idx[0]
            if feat_cache[idx] is None:
                feat_cache[idx] = "Rep"
                feat_idx[0] += 1
            else:
                cache_x = x[:, :, -CACHE_T:].clone()
                rep = isinstance(feat_cache[idx], str)
                if cache_x.shape[2] < 2 and not rep:
                    cache_x = torch.cat([feat_cache[idx][:, :, -1].unsqueeze(2), cache_x], dim=2)
                if cache_x.shape[2] < 2 and rep:
                    cache_x = torch.cat([torch.zeros_like(cache_x), cache_x], dim=2)
                x = self.time_conv(x) if rep else self.time_conv(x, feat_cache[idx])
                feat_cache[idx] = cache_x
                feat_idx[0] += 1
                x = self.interleave(x)
        return self.spatial(x)


# ----------------------------------------------------------------------------------------------
# Decoder (sec. 5.4) and the decode loops (sec. 5.5)
# ----------------------------------------------------------------------------------------------

class WanVaeDecoderReference:
    def __init__(self, state: Dict[str, torch.Tensor], dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 temporal_upsample=(True, True, False)):
        if "post_quant_conv.weight" in state or "decoder.conv_in.weight" in state:
            state = diffusers_to_original(state, num_res_blocks, len(dim_mult))
        w = {k: v.to(F64) for k, v in state.items() if k.startswith(("conv2.", "decoder."))}
        self.z_dim = w["conv2.weight"].shape[0]
        self.dim = w["decoder.conv1.weight"].shape[0] // dim_mult[-1]
        dims = [self.dim * u for u in [dim_mult[-1]] + list(dim_mult[::-1])]
        self.conv2 = CausalConv3d(w["conv2.weight"], w["conv2.bias"], (0, 0, 0))
        self.conv1 = CausalConv3d(w["decoder.conv1.weight"], w["decoder.conv1.bias"], (1, 1, 1))
        self.middle = [ResidualBlock(w, "decoder.middle.0."), AttentionBlock(w, "decoder.middle.1."),
                       ResidualBlock(w, "decoder.middle.2.")]
        self.upsamples = []
        index = 0
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks + 1):
                self.upsamples.append(ResidualBlock(w, f"decoder.upsamples.{index}."))
                index += 1
            if i != len(dim_mult) - 1:
                mode = "upsample3d" if temporal_upsample[i] else "upsample2d"
                self.upsamples.append(Resample(w, f"decoder.upsamples.{index}.", mode))
                index += 1
        self.head_norm = RMSNorm(w["decoder.head.0.gamma"])
        self.head_conv = CausalConv3d(w["decoder.head.2.weight"], w["decoder.head.2.bias"], (1, 1, 1))
        self.mean = torch.tensor(LATENT_MEAN, dtype=F64)
        self.inv_std = 1.0 / torch.tensor(LATENT_STD, dtype=F64)

    def decoder(self, x, feat_cache=None, feat_idx=None):
        x = cached_conv(self.conv1, x, feat_cache, feat_idx) if feat_cache is not None else self.conv1(x)
        for layer in self.middle:
            x = layer(x, feat_cache, feat_idx) if isinstance(layer, ResidualBlock) else layer(x)
        for layer in self.upsamples:
            x = layer(x, feat_cache, feat_idx)
        x = F.silu(self.head_norm(x))
        return cached_conv(self.head_conv, x, feat_cache, feat_idx) if feat_cache is not None else self.head_conv(x)

    def _prepare(self, latent):
        z = latent.to(F64).unsqueeze(0)  # [1, z, F, H, W]
        z = z / self.inv_std.view(1, self.z_dim, 1, 1, 1) + self.mean.view(1, self.z_dim, 1, 1, 1)
        return self.conv2(z)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """The reference's chunked decode (WanVAE_.decode): one latent frame per decoder call."""
        x = self._prepare(latent)
        feat_cache: List[Optional[torch.Tensor]] = [None] * 64
        outputs = []
        for i in range(x.shape[2]):
            feat_idx = [0]
            outputs.append(self.decoder(x[:, :, i:i + 1], feat_cache, feat_idx))
        return torch.cat(outputs, 2).clamp(-1, 1).squeeze(0)  # [3, T, H, W]

    def decode_full_sequence(self, latent: torch.Tensor) -> torch.Tensor:
        """Sec. 5.5 'full-sequence equivalent': ordinary causal convs over all frames; upsample3d keeps
        x0 and runs time_conv on x1..xn with its own zero history."""
        x = self._prepare(latent)
        x = self.conv1(x)
        for layer in self.middle:
            x = layer(x)
        for layer in self.upsamples:
            if isinstance(layer, Resample) and layer.mode == "upsample3d":
                rest = x[:, :, 1:]
                if rest.shape[2] > 0:
                    x = torch.cat([x[:, :, :1], layer.interleave(layer.time_conv(rest))], 2)
                x = layer.spatial(x)
            else:
                x = layer(x)
        x = self.head_conv(F.silu(self.head_norm(x)))
        return x.clamp(-1, 1).squeeze(0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="VAE .safetensors (original or diffusers names)")
    parser.add_argument("--latent", required=True, help="safetensors with latent* tensors [z, F, Hl, Wl]")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--full-sequence", action="store_true",
                        help="use the full-sequence equivalent instead of the chunked reference decode")
    parser.add_argument("--f64", action="store_true", help="write float64 instead of float32")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = WanVaeDecoderReference(safetensors_io.load_checkpoint(args.weights))
    latents = safetensors_io.load(args.latent)
    outputs = {}
    for key in sorted(latents):
        if not key.startswith("latent"):
            continue
        with torch.no_grad():
            video = (model.decode_full_sequence if args.full_sequence else model.decode)(latents[key])
        video = video.permute(1, 0, 2, 3).contiguous()  # frame-major [T, 3, H, W]
        outputs["video" + key[len("latent"):]] = video if args.f64 else video.to(torch.float32)
    if not outputs:
        print(f"{args.latent}: no tensor named latent*", file=sys.stderr)
        return 1
    safetensors_io.save(args.output, outputs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
