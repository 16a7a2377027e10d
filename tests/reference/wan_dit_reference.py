"""Independent float64 PyTorch reference of the Wan2.1 text-to-video DiT forward pass.

Written from the Zoetrope spec /work/shared/spec/wan21.md, not from the C++ engine:
  * sec. 1   model configs (config.json fields and constructor defaults),
  * sec. 2.1 parameter keys and shapes (original checkpoint naming),
  * sec. 2.2 patchify (frame-major tokens, channel-major patch vector) and unpatchify
             (channel-minor head output, einsum `fhwpqrc->cfphqwr`),
  * sec. 2.3 sinusoidal timestep embedding (cos first, float64), time MLPs, text embedding with
             zero padding to text_len and no cross-attention mask,
  * sec. 2.4 transformer block (modulation order, RMSNorm over the full dim before the head split,
             interleaved 3D RoPE split d-4*(d//6) / 2*(d//6) / 2*(d//6), cross-attn LayerNorm `norm3`),
             and the head,
  * sec. 3.3 the diffusers key naming (pure renames plus the norm2/norm3 swap).

Everything is computed in float64 (the spec's bf16/fp32 mix in sec. 2.5 is what the engine may do;
this file is the exact-math reference). Weights may be stored as F32/BF16/F16; they are converted to
float64 when used.

Library use:
    model = WanDiTReference.from_checkpoint("dir/with/config.json/and/weights")
    v = model.forward(latent[16,F,H,W], t, context[Lc, text_dim])     # float64 [out_dim,F,H,W]

CLI (same contract as `zoetrope-dit`):
    wan_dit_reference.py --weights W --inputs IN.safetensors -o OUT.safetensors [--f64]
IN holds `latent` [16,F,H,W], `timestep` [1] (float or int), `context` [Lc, text_dim];
OUT holds `velocity` (F32, or F64 with --f64).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# Config (spec sec. 1)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WanConfig:
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    freq_dim: int = 256
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    eps: float = 1e-6
    patch_size: Tuple[int, int, int] = (1, 2, 2)
    rope_max_seq_len: int = 1024  # RoPE table length per axis
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def validate(self):
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} not divisible by num_heads {self.num_heads}")
        d = self.head_dim
        if d % 2 or d < 6:
            raise ValueError(f"head_dim {d} must be even and >= 6 for the 3D RoPE split")
        if self.freq_dim % 2:
            raise ValueError("freq_dim must be even")


PRESETS: Dict[str, WanConfig] = {
    "tiny": WanConfig(dim=128, ffn_dim=256, freq_dim=256, num_heads=2, num_layers=2, in_dim=16,
                      out_dim=16, text_dim=64, text_len=32, eps=1e-6),
    "wan2.1-t2v-1.3b": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}


def _require(cond: bool, msg: str):
    if not cond:
        raise ValueError(msg)


def config_from_dict(c: dict) -> WanConfig:
    """Build a WanConfig from an original-format or a diffusers-format config.json dict."""
    if "dim" in c:  # original WanModel config.json (spec sec. 1)
        _require(c.get("model_type", "t2v") == "t2v", f"unsupported model_type {c.get('model_type')}")
        _require(bool(c.get("qk_norm", True)), "qk_norm=False is not supported")
        _require(bool(c.get("cross_attn_norm", True)), "cross_attn_norm=False is not supported")
        _require(tuple(c.get("window_size", (-1, -1))) == (-1, -1), "windowed attention unsupported")
        cfg = WanConfig(dim=int(c["dim"]), ffn_dim=int(c["ffn_dim"]),
                        freq_dim=int(c.get("freq_dim", 256)), num_heads=int(c["num_heads"]),
                        num_layers=int(c["num_layers"]), in_dim=int(c.get("in_dim", 16)),
                        out_dim=int(c.get("out_dim", 16)), text_dim=int(c.get("text_dim", 4096)),
                        text_len=int(c.get("text_len", 512)), eps=float(c.get("eps", 1e-6)),
                        patch_size=tuple(int(p) for p in c.get("patch_size", (1, 2, 2))))
    elif "num_attention_heads" in c:  # diffusers WanTransformer3DModel config (spec sec. 3.3)
        _require(c.get("added_kv_proj_dim") is None, "added_kv_proj_dim (I2V) is not supported")
        _require(c.get("image_dim") is None, "image_dim (I2V) is not supported")
        _require(c.get("qk_norm", "rms_norm_across_heads") == "rms_norm_across_heads",
                 f"unsupported qk_norm {c.get('qk_norm')}")
        _require(bool(c.get("cross_attn_norm", True)), "cross_attn_norm=False is not supported")
        heads = int(c["num_attention_heads"])
        cfg = WanConfig(dim=heads * int(c["attention_head_dim"]), ffn_dim=int(c["ffn_dim"]),
                        freq_dim=int(c.get("freq_dim", 256)), num_heads=heads,
                        num_layers=int(c["num_layers"]), in_dim=int(c.get("in_channels", 16)),
                        out_dim=int(c.get("out_channels", 16)), text_dim=int(c.get("text_dim", 4096)),
                        text_len=int(c.get("text_len", 512)), eps=float(c.get("eps", 1e-6)),
                        patch_size=tuple(int(p) for p in c.get("patch_size", (1, 2, 2))),
                        rope_max_seq_len=int(c.get("rope_max_seq_len", 1024)))
    else:
        raise ValueError("config.json is neither original Wan (has 'dim') nor diffusers "
                         "(has 'num_attention_heads') format")
    cfg.validate()
    return cfg


def config_to_dict(cfg: WanConfig, naming: str = "original") -> dict:
    """Serialise a config in the original or diffusers config.json format (used by self-tests)."""
    if naming == "original":
        return {"_class_name": "WanModel", "dim": cfg.dim, "eps": cfg.eps, "ffn_dim": cfg.ffn_dim,
                "freq_dim": cfg.freq_dim, "in_dim": cfg.in_dim, "model_type": "t2v",
                "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "out_dim": cfg.out_dim,
                "text_len": cfg.text_len, "text_dim": cfg.text_dim}
    return {"_class_name": "WanTransformer3DModel", "added_kv_proj_dim": None,
            "attention_head_dim": cfg.head_dim, "cross_attn_norm": True, "eps": cfg.eps,
            "ffn_dim": cfg.ffn_dim, "freq_dim": cfg.freq_dim, "in_channels": cfg.in_dim,
            "num_attention_heads": cfg.num_heads, "num_layers": cfg.num_layers,
            "out_channels": cfg.out_dim, "patch_size": list(cfg.patch_size),
            "qk_norm": "rms_norm_across_heads", "text_dim": cfg.text_dim,
            "rope_max_seq_len": cfg.rope_max_seq_len, "text_len": cfg.text_len}


def load_config(weights_path: str) -> WanConfig:
    """Read config.json beside the weights (or inside the directory `weights_path`)."""
    d = weights_path if os.path.isdir(weights_path) else os.path.dirname(os.path.abspath(weights_path))
    with open(os.path.join(d, "config.json"), "r", encoding="utf-8") as f:
        return config_from_dict(json.load(f))


# ----------------------------------------------------------------------------------------------
# Parameter names and shapes (spec sec. 2.1, 3.3)
# ----------------------------------------------------------------------------------------------

def expected_shapes(cfg: WanConfig) -> Dict[str, Tuple[int, ...]]:
    """Original-format key -> shape, for every parameter of the model."""
    D, F, pt, ph, pw = cfg.dim, cfg.ffn_dim, *cfg.patch_size
    s = {
        "patch_embedding.weight": (D, cfg.in_dim, pt, ph, pw), "patch_embedding.bias": (D,),
        "text_embedding.0.weight": (D, cfg.text_dim), "text_embedding.0.bias": (D,),
        "text_embedding.2.weight": (D, D), "text_embedding.2.bias": (D,),
        "time_embedding.0.weight": (D, cfg.freq_dim), "time_embedding.0.bias": (D,),
        "time_embedding.2.weight": (D, D), "time_embedding.2.bias": (D,),
        "time_projection.1.weight": (6 * D, D), "time_projection.1.bias": (6 * D,),
        "head.modulation": (1, 2, D),
        "head.head.weight": (pt * ph * pw * cfg.out_dim, D),
        "head.head.bias": (pt * ph * pw * cfg.out_dim,),
    }
    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        s[b + "modulation"] = (1, 6, D)
        for attn in ("self_attn", "cross_attn"):
            for p in "qkvo":
                s[f"{b}{attn}.{p}.weight"] = (D, D)
                s[f"{b}{attn}.{p}.bias"] = (D,)
            s[f"{b}{attn}.norm_q.weight"] = (D,)
            s[f"{b}{attn}.norm_k.weight"] = (D,)
        s[b + "norm3.weight"] = (D,)
        s[b + "norm3.bias"] = (D,)
        s[b + "ffn.0.weight"] = (F, D)
        s[b + "ffn.0.bias"] = (F,)
        s[b + "ffn.2.weight"] = (D, F)
        s[b + "ffn.2.bias"] = (D,)
    return s


# diffusers name -> original name. Block-level renames use a `{i}` placeholder.
_DIFFUSERS_GLOBAL = {
    "patch_embedding.": "patch_embedding.",
    "condition_embedder.time_embedder.linear_1.": "time_embedding.0.",
    "condition_embedder.time_embedder.linear_2.": "time_embedding.2.",
    "condition_embedder.time_proj.": "time_projection.1.",
    "condition_embedder.text_embedder.linear_1.": "text_embedding.0.",
    "condition_embedder.text_embedder.linear_2.": "text_embedding.2.",
    "proj_out.": "head.head.",
}
_DIFFUSERS_BLOCK = {
    "scale_shift_table": "modulation",
    "attn1.to_q.": "self_attn.q.", "attn1.to_k.": "self_attn.k.", "attn1.to_v.": "self_attn.v.",
    "attn1.to_out.0.": "self_attn.o.",
    "attn1.norm_q.": "self_attn.norm_q.", "attn1.norm_k.": "self_attn.norm_k.",
    "attn2.to_q.": "cross_attn.q.", "attn2.to_k.": "cross_attn.k.", "attn2.to_v.": "cross_attn.v.",
    "attn2.to_out.0.": "cross_attn.o.",
    "attn2.norm_q.": "cross_attn.norm_q.", "attn2.norm_k.": "cross_attn.norm_k.",
    "norm2.": "norm3.",  # the cross-attn LayerNorm: diffusers norm2 == original norm3 (swapped names)
    "ffn.net.0.proj.": "ffn.0.", "ffn.net.2.": "ffn.2.",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.*)$")


def diffusers_to_original(name: str) -> str:
    if name == "scale_shift_table":
        return "head.modulation"
    m = _BLOCK_RE.match(name)
    if m:
        i, rest = m.groups()
        for src, dst in _DIFFUSERS_BLOCK.items():
            if rest == src or (src.endswith(".") and rest.startswith(src)):
                return f"blocks.{i}.{dst}{rest[len(src):]}"
        raise KeyError(f"unknown diffusers block key {name!r}")
    for src, dst in _DIFFUSERS_GLOBAL.items():
        if name.startswith(src):
            return dst + name[len(src):]
    raise KeyError(f"unknown diffusers key {name!r}")


def original_to_diffusers(name: str) -> str:
    if name == "head.modulation":
        return "scale_shift_table"
    m = _BLOCK_RE.match(name)
    if m:
        i, rest = m.groups()
        for src, dst in _DIFFUSERS_BLOCK.items():
            if rest == dst or (dst.endswith(".") and rest.startswith(dst)):
                return f"blocks.{i}.{src}{rest[len(dst):]}"
        raise KeyError(f"unknown original block key {name!r}")
    for src, dst in _DIFFUSERS_GLOBAL.items():
        if name.startswith(dst):
            return src + name[len(dst):]
    raise KeyError(f"unknown original key {name!r}")


def detect_naming(keys) -> str:
    keys = set(keys)
    if "condition_embedder.time_embedder.linear_1.weight" in keys:
        return "diffusers"
    if "time_embedding.0.weight" in keys:
        return "original"
    raise ValueError("cannot tell the checkpoint naming: neither 'time_embedding.0.weight' "
                     "nor 'condition_embedder.time_embedder.linear_1.weight' is present")


def canonicalize(state_dict: Dict[str, torch.Tensor], cfg: WanConfig) -> Dict[str, torch.Tensor]:
    """Return the state dict under original names, checked strictly against expected_shapes."""
    naming = detect_naming(state_dict.keys())
    if naming == "diffusers":
        sd = {}
        for k, v in state_dict.items():
            ok = diffusers_to_original(k)
            if ok in sd:
                raise ValueError(f"two keys map to {ok!r}")
            sd[ok] = v
    else:
        sd = dict(state_dict)
    want = expected_shapes(cfg)
    missing = sorted(set(want) - set(sd))
    extra = sorted(set(sd) - set(want))
    if missing or extra:
        raise ValueError(f"checkpoint ({naming} names) does not match the config: "
                         f"missing {missing[:6]}{'...' if len(missing) > 6 else ''}, "
                         f"unexpected {extra[:6]}{'...' if len(extra) > 6 else ''}")
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise ValueError(f"{k}: shape {tuple(sd[k].shape)} != expected {shape}")
        if not sd[k].is_floating_point():
            raise ValueError(f"{k}: non-float dtype {sd[k].dtype}")
    return sd


# ----------------------------------------------------------------------------------------------
# Elementary functions (all float64)
# ----------------------------------------------------------------------------------------------

def silu(x):
    return x * torch.sigmoid(x)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x, eps, weight=None, bias=None):
    """LayerNorm over the last dim with biased variance."""
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight + bias
    return y


def rms_norm(x, weight, eps):
    """RMSNorm over the full last dim (all heads together, before the head split)."""
    return x * torch.rsqrt((x * x).mean(dim=-1, keepdim=True) + eps) * weight


def attention(q, k, v):
    """q [Lq,H,d], k/v [Lk,H,d] -> [Lq,H,d]; full softmax attention with scale 1/sqrt(d), no mask."""
    d = q.shape[-1]
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d)
    p = torch.softmax(scores, dim=-1)
    return torch.einsum("hqk,khd->qhd", p, v)


def sinusoidal_embedding(t: float, freq_dim: int) -> torch.Tensor:
    """[cos(t*w_i), sin(t*w_i)] with w_i = 10000^(-i/half), i < half; t as float64 (sec. 2.3)."""
    half = freq_dim // 2
    omega = torch.pow(torch.tensor(10000.0, dtype=F64), -torch.arange(half, dtype=F64) / half)
    arg = torch.tensor(float(t), dtype=F64) * omega
    return torch.cat([torch.cos(arg), torch.sin(arg)])


def rope_split(head_dim: int) -> Tuple[int, int, int]:
    """Real dims of the frame/height/width RoPE sections (sec. 2.4.2, generalised)."""
    return head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)


def rope_angles(grid: Tuple[int, int, int], head_dim: int, theta: float = 10000.0) -> torch.Tensor:
    """Angles theta[n, p] for token n = f*Hg*Wg + h*Wg + w and complex pair p (dims 2p, 2p+1)."""
    Fg, Hg, Wg = grid
    sections = rope_split(head_dim)
    f, h, w = torch.meshgrid(torch.arange(Fg, dtype=F64), torch.arange(Hg, dtype=F64),
                             torch.arange(Wg, dtype=F64), indexing="ij")
    cols = []
    for pos, sec in zip((f.reshape(-1), h.reshape(-1), w.reshape(-1)), sections):
        j = torch.arange(sec // 2, dtype=F64)
        omega = torch.pow(torch.tensor(theta, dtype=F64), -2.0 * j / sec)
        cols.append(pos[:, None] * omega[None, :])
    return torch.cat(cols, dim=1)  # [L, head_dim/2]


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Interleaved (GPT-J) rotation: x [L,H,d], angles [L,d/2]; same angles for every head."""
    cos = torch.cos(angles)[:, None, :]
    sin = torch.sin(angles)[:, None, :]
    xr, xi = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = xr * cos - xi * sin
    out[..., 1::2] = xr * sin + xi * cos
    return out


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------

class WanDiTReference:
    """Float64 Wan2.1 DiT. Weights are kept in their stored dtype and converted per use."""

    def __init__(self, cfg: WanConfig, state_dict: Dict[str, torch.Tensor]):
        cfg.validate()
        self.cfg = cfg
        self.sd = canonicalize(state_dict, cfg)

    @classmethod
    def from_checkpoint(cls, path: str, cfg: Optional[WanConfig] = None) -> "WanDiTReference":
        if cfg is None:
            cfg = load_config(path)
        return cls(cfg, safetensors_io.load_checkpoint(path))

    # -- helpers --
    def p(self, name: str) -> torch.Tensor:
        return self.sd[name].to(F64)

    def linear(self, x, prefix: str):
        return x @ self.p(prefix + ".weight").t() + self.p(prefix + ".bias")

    # -- sec. 2.2 --
    def patchify(self, z: torch.Tensor):
        """z [C,F,H,W] -> (patches [L, C*pt*ph*pw] channel-major, grid (Fg,Hg,Wg))."""
        C, F, H, W = z.shape
        pt, ph, pw = self.cfg.patch_size
        if F % pt or H % ph or W % pw:
            raise ValueError(f"latent {tuple(z.shape)} not divisible by patch {self.cfg.patch_size}")
        Fg, Hg, Wg = F // pt, H // ph, W // pw
        x = z.reshape(C, Fg, pt, Hg, ph, Wg, pw).permute(1, 3, 5, 0, 2, 4, 6)
        return x.reshape(Fg * Hg * Wg, C * pt * ph * pw), (Fg, Hg, Wg)

    def unpatchify(self, out: torch.Tensor, grid) -> torch.Tensor:
        """out [L, pt*ph*pw*C] (channel-minor) -> [C, F, H, W] (einsum fhwpqrc->cfphqwr)."""
        Fg, Hg, Wg = grid
        pt, ph, pw = self.cfg.patch_size
        C = self.cfg.out_dim
        x = out.reshape(Fg, Hg, Wg, pt, ph, pw, C)
        x = torch.einsum("fhwpqrc->cfphqwr", x)
        return x.reshape(C, Fg * pt, Hg * ph, Wg * pw)

    # -- sec. 2.3 --
    def time_embeddings(self, t):
        s = sinusoidal_embedding(t, self.cfg.freq_dim)
        e = self.linear(silu(self.linear(s, "time_embedding.0")), "time_embedding.2")
        e0 = self.linear(silu(e), "time_projection.1").reshape(6, self.cfg.dim)
        return e, e0

    def text_embedding(self, context: torch.Tensor) -> torch.Tensor:
        Lc, td = context.shape
        if td != self.cfg.text_dim:
            raise ValueError(f"context width {td} != text_dim {self.cfg.text_dim}")
        if Lc > self.cfg.text_len:
            raise ValueError(f"context has {Lc} rows > text_len {self.cfg.text_len}")
        ctx = torch.zeros(self.cfg.text_len, td, dtype=F64)
        ctx[:Lc] = context.to(F64)
        return self.linear(gelu_tanh(self.linear(ctx, "text_embedding.0")), "text_embedding.2")

    # -- sec. 2.4 --
    def split_heads(self, x):
        return x.reshape(x.shape[0], self.cfg.num_heads, self.cfg.head_dim)

    def self_attention(self, y, prefix, angles):
        eps = self.cfg.eps
        q = rms_norm(self.linear(y, prefix + ".q"), self.p(prefix + ".norm_q.weight"), eps)
        k = rms_norm(self.linear(y, prefix + ".k"), self.p(prefix + ".norm_k.weight"), eps)
        v = self.linear(y, prefix + ".v")
        q = apply_rope(self.split_heads(q), angles)
        k = apply_rope(self.split_heads(k), angles)
        o = attention(q, k, self.split_heads(v)).reshape(y.shape[0], self.cfg.dim)
        return self.linear(o, prefix + ".o")

    def cross_attention(self, xn, ctx, prefix):
        eps = self.cfg.eps
        q = rms_norm(self.linear(xn, prefix + ".q"), self.p(prefix + ".norm_q.weight"), eps)
        k = rms_norm(self.linear(ctx, prefix + ".k"), self.p(prefix + ".norm_k.weight"), eps)
        v = self.linear(ctx, prefix + ".v")
        o = attention(self.split_heads(q), self.split_heads(k), self.split_heads(v))
        return self.linear(o.reshape(xn.shape[0], self.cfg.dim), prefix + ".o")

    def block(self, i, x, e0, ctx, angles):
        b = f"blocks.{i}."
        eps = self.cfg.eps
        m = self.p(b + "modulation")[0] + e0  # [6, D]: shift_sa, scale_sa, gate_sa, shift_ffn, ...
        y = layer_norm(x, eps) * (1 + m[1]) + m[0]
        x = x + self.self_attention(y, b + "self_attn", angles) * m[2]
        xn = layer_norm(x, eps, self.p(b + "norm3.weight"), self.p(b + "norm3.bias"))
        x = x + self.cross_attention(xn, ctx, b + "cross_attn")
        y = layer_norm(x, eps) * (1 + m[4]) + m[3]
        h = gelu_tanh(self.linear(y, b + "ffn.0"))
        x = x + self.linear(h, b + "ffn.2") * m[5]
        return x

    def head(self, x, e):
        mod = self.p("head.modulation")[0]
        shift, scale = mod[0] + e, mod[1] + e
        return self.linear(layer_norm(x, self.cfg.eps) * (1 + scale) + shift, "head.head")

    def forward(self, latent: torch.Tensor, t, context: torch.Tensor) -> torch.Tensor:
        """velocity [out_dim,F,H,W] (float64) for latent [in_dim,F,H,W], timestep t, context [Lc,text_dim]."""
        cfg = self.cfg
        if latent.dim() != 4 or latent.shape[0] != cfg.in_dim:
            raise ValueError(f"latent shape {tuple(latent.shape)} is not [{cfg.in_dim},F,H,W]")
        if isinstance(t, torch.Tensor):
            if t.numel() != 1:
                raise ValueError("timestep must be a scalar")
            t = t.reshape(()).to(F64).item()
        patches, grid = self.patchify(latent.to(F64))
        if max(grid) > cfg.rope_max_seq_len:
            raise ValueError(f"grid {grid} exceeds the RoPE table length {cfg.rope_max_seq_len}")
        wpe = self.p("patch_embedding.weight").reshape(cfg.dim, -1)
        x = patches @ wpe.t() + self.p("patch_embedding.bias")
        e, e0 = self.time_embeddings(t)
        ctx = self.text_embedding(context)
        angles = rope_angles(grid, cfg.head_dim, cfg.rope_theta)
        for i in range(cfg.num_layers):
            x = self.block(i, x, e0, ctx, angles)
        return self.unpatchify(self.head(x, e), grid)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", required=True, help="safetensors file, index.json or directory")
    ap.add_argument("--inputs", required=True)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--f64", action="store_true", help="write velocity as F64 instead of F32")
    args = ap.parse_args(argv)
    model = WanDiTReference.from_checkpoint(args.weights)
    inp = safetensors_io.load(args.inputs)
    v = model.forward(inp["latent"], inp["timestep"], inp["context"])
    safetensors_io.save(args.output, {"velocity": v if args.f64 else v.float()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
