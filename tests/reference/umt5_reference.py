#!/usr/bin/python3
"""Independent float64 reference of Wan2.1's umT5 text encoder (spec wan21.md sec. 6.1, 6.2, 3.5).

Written from the spec and Wan's `wan/modules/t5.py` (T5Encoder with shared_pos=False), not from the C++
port: it runs every position of the padded sequence with the key mask, fills masked keys with
finfo(float64).min, computes the relative-position bucket with torch exactly as the reference does
(the log term on a float32 tensor), and keeps the first L rows at the end.

Usage:
  umt5_reference.py --weights W.safetensors --cases CASES.safetensors --out OUT.safetensors

  W      umT5 encoder weights with Wan names (token_embedding.weight, blocks.{i}.attn.q.weight, ...) or
         HF UMT5EncoderModel names (shared.weight or encoder.embed_tokens.weight, encoder.block.{i}...);
         the naming is detected from the keys, the config from the shapes.
  CASES  for every case NAME: "NAME.ids" I32/I64 [P] and "NAME.mask" I32/I64 [P] (1 = real token;
         the real tokens come first).
  OUT    for every case: "NAME.hidden" F32 [L, d_model] (L = mask.sum()); plus "buckets" I64 [1201],
         the bucket of rel = -600..600 (32 buckets, max distance 128) from the reference function.

Exit status 0 on success; any error (missing key, inconsistent case) raises.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

DTYPE = torch.float64
MAX_DISTANCE = 128
EPS = 1e-6

# HF UMT5EncoderModel key -> Wan T5Encoder key (spec sec. 3.5).
_HF_BLOCK = {
    "layer.0.layer_norm.weight": "norm1.weight",
    "layer.0.SelfAttention.q.weight": "attn.q.weight",
    "layer.0.SelfAttention.k.weight": "attn.k.weight",
    "layer.0.SelfAttention.v.weight": "attn.v.weight",
    "layer.0.SelfAttention.o.weight": "attn.o.weight",
    "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
    "layer.1.layer_norm.weight": "norm2.weight",
    "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
    "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
    "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
}


def to_wan_names(state: dict) -> dict:
    if "token_embedding.weight" in state:
        return state
    out = {}
    for key, value in state.items():
        if key in ("shared.weight", "encoder.embed_tokens.weight"):
            out["token_embedding.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
        else:
            match = re.fullmatch(r"encoder\.block\.(\d+)\.(.+)", key)
            if match is None or match.group(2) not in _HF_BLOCK:
                raise KeyError(f"unexpected HF key {key}")
            out[f"blocks.{match.group(1)}.{_HF_BLOCK[match.group(2)]}"] = value
    return out


def relative_position_bucket(rel_pos: torch.Tensor, num_buckets: int, max_dist: int) -> torch.Tensor:
    """T5RelativeEmbedding._relative_position_bucket, bidirectional (verbatim arithmetic)."""
    num_buckets = num_buckets // 2
    rel_buckets = (rel_pos > 0).long() * num_buckets
    rel_pos = torch.abs(rel_pos)
    max_exact = num_buckets // 2
    rel_pos_large = max_exact + (torch.log(rel_pos.float() / max_exact) / math.log(max_dist / max_exact) *
                                 (num_buckets - max_exact)).long()
    rel_pos_large = torch.min(rel_pos_large, torch.full_like(rel_pos_large, num_buckets - 1))
    rel_buckets += torch.where(rel_pos < max_exact, rel_pos, rel_pos_large)
    return rel_buckets


def rms_norm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + EPS))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def encode(weights: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """ids, mask: [P] -> hidden states of the real tokens [L, d_model], float64."""
    layers = 0
    while f"blocks.{layers}.norm1.weight" in weights:
        layers += 1
    num_buckets, num_heads = weights["blocks.0.pos_embedding.embedding.weight"].shape
    length = ids.shape[0]
    x = weights["token_embedding.weight"][ids.long()]  # [P, D], no sqrt(d) scaling
    rel_pos = torch.arange(length).unsqueeze(0) - torch.arange(length).unsqueeze(1)  # key - query
    buckets = relative_position_bucket(rel_pos, num_buckets, MAX_DISTANCE)  # [P, P]
    for i in range(layers):
        w = lambda name: weights[f"blocks.{i}.{name}"]  # noqa: E731
        h = rms_norm(x, w("norm1.weight"))
        q = (h @ w("attn.q.weight").T).view(length, num_heads, -1)
        k = (h @ w("attn.k.weight").T).view(length, num_heads, -1)
        v = (h @ w("attn.v.weight").T).view(length, num_heads, -1)
        bias = w("pos_embedding.embedding.weight")[buckets].permute(2, 0, 1).clone()  # [H, P, P]
        bias.masked_fill_((mask == 0).view(1, 1, -1), torch.finfo(DTYPE).min)
        scores = torch.einsum("inc,jnc->nij", q, k) + bias  # no 1/sqrt(d)
        attention = torch.softmax(scores, dim=-1)
        attended = torch.einsum("nij,jnc->inc", attention, v).reshape(length, -1)
        x = x + attended @ w("attn.o.weight").T
        h = rms_norm(x, w("norm2.weight"))
        x = x + ((h @ w("ffn.fc1.weight").T) * gelu_tanh(h @ w("ffn.gate.0.weight").T)) @ w("ffn.fc2.weight").T
    x = rms_norm(x, weights["norm.weight"])
    real = int(mask.sum())
    if not bool((mask[:real] == 1).all()):
        raise ValueError("the real tokens must come first")
    return x[:real]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--cases", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    weights = {k: v.to(DTYPE) for k, v in to_wan_names(safetensors_io.load(args.weights)).items()}
    cases = safetensors_io.load(args.cases)
    names = sorted({key.rsplit(".", 1)[0] for key in cases})
    out = {}
    for name in names:
        ids, mask = cases[f"{name}.ids"], cases[f"{name}.mask"]
        hidden = encode(weights, ids, mask)
        if not torch.isfinite(hidden).all():
            raise ValueError(f"case {name}: non-finite reference output")
        out[f"{name}.hidden"] = hidden.to(torch.float32).contiguous()
    out["buckets"] = relative_position_bucket(torch.arange(-600, 601), 32, MAX_DISTANCE).to(torch.int64)
    safetensors_io.save(args.out, out)
    print(f"umt5_reference: {len(names)} cases -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
