"""Self-checks of the Python references themselves (no C++ tools needed).

Covers, against spec /work/shared/spec/wan21.md:
  * safetensors_io: round trips for every dtype, metadata, sharded index.json and directory
    loading, rejection of corrupt headers (sec. 3.1 layout);
  * parameter counts of the 1.3B and 14B configs from shapes only, per component (sec. 2.1 table);
  * original <-> diffusers key mapping incl. the norm2/norm3 swap, config.json parsing for both
    formats (sec. 1, 3.3);
  * sinusoid (sec. 2.3), RoPE (sec. 2.4.2: 44/42/42 split for head_dim 128, interleaved pairs) and
    patchify/unpatchify layouts (sec. 2.2) against formulas / torch conv3d / explicit loops;
  * the float64 DiT forward against a second, differently built implementation (conv3d patch
    embedding, complex-number RoPE, F.layer_norm, F.gelu, heads-first attention), and identical
    outputs from the same random weights saved with original and with diffusers names;
  * the sampler self-test (sampler_reference.py --selftest).

Run: /usr/bin/python3 tests/reference/selftest.py        (a few seconds on one CPU core)
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import tempfile

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402
import sampler_reference  # noqa: E402
import wan_dit_reference as ref  # noqa: E402

F64 = torch.float64
FAILURES = []


def check(name, cond, detail=""):
    print(f"  {'ok  ' if cond else 'FAIL'} {name}{(': ' + str(detail)) if detail and not cond else ''}")
    if not cond:
        FAILURES.append(name)


# ----------------------------------------------------------------------------------------------

def random_state_dict(cfg: ref.WanConfig, seed: int, dtype=torch.float32):
    """Random weights under original names, scaled so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, shape in ref.expected_shapes(cfg).items():
        if k.endswith("modulation"):
            t = 0.2 * torch.randn(shape, generator=g, dtype=F64)
        elif "norm" in k and k.endswith("weight"):
            t = 1.0 + 0.2 * torch.randn(shape, generator=g, dtype=F64)
        elif k.endswith("bias"):
            t = 0.1 * torch.randn(shape, generator=g, dtype=F64)
        else:
            fan_in = math.prod(shape[1:])
            t = torch.randn(shape, generator=g, dtype=F64) / math.sqrt(fan_in)
        sd[k] = t.to(dtype)
    return sd


def write_checkpoint(dirname, cfg, sd, naming, shards=1):
    os.makedirs(dirname, exist_ok=True)
    if naming == "diffusers":
        sd = {ref.original_to_diffusers(k): v for k, v in sd.items()}
    with open(os.path.join(dirname, "config.json"), "w") as f:
        json.dump(ref.config_to_dict(cfg, naming), f)
    if shards == 1:
        path = os.path.join(dirname, "diffusion_pytorch_model.safetensors")
        safetensors_io.save(path, sd)
        return path
    keys = sorted(sd)
    weight_map = {}
    for s in range(shards):
        name = f"diffusion_pytorch_model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k] for k in keys[s::shards]}
        safetensors_io.save(os.path.join(dirname, name), part)
        weight_map.update({k: name for k in part})
    path = os.path.join(dirname, "diffusion_pytorch_model.safetensors.index.json")
    with open(path, "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    return path


# ----------------------------------------------------------------------------------------------

def test_safetensors(tmp):
    print("safetensors_io")
    g = torch.Generator().manual_seed(0)
    t = {"f32": torch.randn(3, 4, generator=g), "bf16": torch.randn(5, 2, generator=g).bfloat16(),
         "f16": torch.randn(7, generator=g).half(), "i64": torch.arange(-3, 9).reshape(3, 4),
         "i32": torch.tensor([1, -2, 2 ** 31 - 1], dtype=torch.int32), "scalar": torch.tensor(2.5),
         "empty": torch.zeros(0, 3), "f64": torch.randn(2, generator=g, dtype=F64)}
    p = os.path.join(tmp, "rt.safetensors")
    safetensors_io.save(p, t, metadata={"format": "pt"})
    r = safetensors_io.load(p)
    check("round trip (all dtypes, scalar, empty)", r.keys() == t.keys() and all(
        r[k].dtype == t[k].dtype and r[k].shape == t[k].shape and torch.equal(r[k], t[k]) for k in t))
    check("metadata", safetensors_io.load_metadata(p) == {"format": "pt"})
    raw = open(p, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    check("header 8-byte aligned, offsets contiguous", (8 + n) % 8 == 0 and sorted(
        v["data_offsets"][0] for k, v in hdr.items() if k != "__metadata__")[0] == 0)
    check("partial load", list(safetensors_io.load(p, ["i32"]).keys()) == ["i32"])
    # bf16 bits are preserved exactly
    b = torch.tensor([1.0, -2.0, 3.140625, 1e-30], dtype=torch.bfloat16)
    safetensors_io.save(p, {"b": b})
    check("bf16 bit-exact", torch.equal(safetensors_io.load(p)["b"].view(torch.int16), b.view(torch.int16)))
    # corrupt files are rejected
    bad = os.path.join(tmp, "bad.safetensors")
    for label, blob in [
        ("truncated", raw[:-3]),
        ("huge header length", struct.pack("<Q", 1 << 40) + raw[8:]),
        ("bad json", struct.pack("<Q", n) + b"x" + raw[9:]),
    ]:
        open(bad, "wb").write(blob)
        try:
            safetensors_io.load(bad)
            check(f"rejects {label}", False)
        except (ValueError, KeyError):
            check(f"rejects {label}", True)
    hdr2 = dict(hdr)
    hdr2["f32"] = dict(hdr["f32"], shape=[3, 5])
    h = json.dumps(hdr2).encode()
    open(bad, "wb").write(struct.pack("<Q", len(h)) + h + raw[8 + n:])
    try:
        safetensors_io.load(bad)
        check("rejects shape/offset mismatch", False)
    except ValueError:
        check("rejects shape/offset mismatch", True)


def test_param_counts():
    print("parameter counts (spec sec. 2.1), from shapes only")
    want = {
        "wan2.1-t2v-1.3b": dict(patch=99840, text=8653824, time=2755584, proj=14164992,
                                attn=9446400, ffn=27535616, block=46440704, blocks=1393221120,
                                head=101440, total=1418996800),
        "wan2.1-t2v-14b": dict(patch=332800, text=47196160, time=27535360, proj=157317120,
                               attn=104888320, ffn=141576704, block=351394304,
                               blocks=14055772160, head=337984, total=14288491584),
    }
    for name, w in want.items():
        shapes = ref.expected_shapes(ref.PRESETS[name])
        cnt = lambda pred: sum(math.prod(s) for k, s in shapes.items() if pred(k))  # noqa: E731
        got = dict(patch=cnt(lambda k: k.startswith("patch_embedding")),
                   text=cnt(lambda k: k.startswith("text_embedding")),
                   time=cnt(lambda k: k.startswith("time_embedding")),
                   proj=cnt(lambda k: k.startswith("time_projection")),
                   attn=cnt(lambda k: k.startswith("blocks.0.self_attn")),
                   ffn=cnt(lambda k: k.startswith("blocks.0.ffn")),
                   block=cnt(lambda k: k.startswith("blocks.0.")),
                   blocks=cnt(lambda k: k.startswith("blocks.")),
                   head=cnt(lambda k: k.startswith("head.")),
                   total=cnt(lambda k: True))
        check(f"{name} per-component counts", got == w, {k: (got[k], w[k]) for k in w if got[k] != w[k]})


def test_names_and_configs():
    print("key mapping and config.json parsing (spec sec. 1, 3.3)")
    cfg = ref.PRESETS["wan2.1-t2v-1.3b"]
    orig = list(ref.expected_shapes(cfg))
    diff = [ref.original_to_diffusers(k) for k in orig]
    check("mapping is a bijection", len(set(diff)) == len(orig)
          and [ref.diffusers_to_original(k) for k in diff] == orig)
    check("norm3 (cross-attn LN) <-> diffusers norm2",
          ref.original_to_diffusers("blocks.7.norm3.weight") == "blocks.7.norm2.weight"
          and ref.diffusers_to_original("blocks.7.norm2.bias") == "blocks.7.norm3.bias")
    spot = {"head.modulation": "scale_shift_table", "head.head.weight": "proj_out.weight",
            "blocks.0.modulation": "blocks.0.scale_shift_table",
            "blocks.3.self_attn.o.bias": "blocks.3.attn1.to_out.0.bias",
            "blocks.3.cross_attn.norm_k.weight": "blocks.3.attn2.norm_k.weight",
            "blocks.3.ffn.0.weight": "blocks.3.ffn.net.0.proj.weight",
            "blocks.3.ffn.2.bias": "blocks.3.ffn.net.2.bias",
            "time_projection.1.weight": "condition_embedder.time_proj.weight",
            "text_embedding.2.bias": "condition_embedder.text_embedder.linear_2.bias",
            "time_embedding.0.weight": "condition_embedder.time_embedder.linear_1.weight"}
    check("spot-check of the sec. 3.3 table",
          all(ref.original_to_diffusers(k) == v for k, v in spot.items()))
    check("naming detection", ref.detect_naming(orig) == "original"
          and ref.detect_naming(diff) == "diffusers")
    hf = json.loads('{"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 1536, '
                    '"eps": 1e-06, "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16, "model_type": '
                    '"t2v", "num_heads": 12, "num_layers": 30, "out_dim": 16, "text_len": 512}')
    check("original HF config.json (1.3B)", ref.config_from_dict(hf) == cfg)
    dconf = {"added_kv_proj_dim": None, "attention_head_dim": 128, "cross_attn_norm": True,
             "eps": 1e-06, "ffn_dim": 13824, "freq_dim": 256, "in_channels": 16,
             "num_attention_heads": 40, "num_layers": 40, "out_channels": 16,
             "patch_size": [1, 2, 2], "qk_norm": "rms_norm_across_heads", "text_dim": 4096}
    check("diffusers converter config (14B)", ref.config_from_dict(dconf) == ref.PRESETS["wan2.1-t2v-14b"])
    tiny = ref.PRESETS["tiny"]
    check("tiny round trips through both formats",
          all(ref.config_from_dict(ref.config_to_dict(tiny, n)) == tiny for n in ("original", "diffusers")))


def complex_rope_freqs(grid, d, table_len=1024):
    """Per-token complex rotations [L, 1, d/2], built the way the original model does it: three
    polar tables (frame/height/width) of `table_len` rows concatenated, split by complex pairs
    [c - 2*(c//3), c//3, c//3] with c = d/2, then broadcast over the (f, h, w) grid."""
    def params(dim):
        inv = 1.0 / torch.pow(10000, torch.arange(0, dim, 2, dtype=F64) / dim)
        ang = torch.outer(torch.arange(table_len, dtype=F64), inv)
        return torch.polar(torch.ones_like(ang), ang)

    c = d // 2
    table = torch.cat([params(d - 4 * (d // 6)), params(2 * (d // 6)), params(2 * (d // 6))], dim=1)
    tf, th, tw = table.split([c - 2 * (c // 3), c // 3, c // 3], dim=1)
    f_, h_, w_ = grid
    return torch.cat([tf[:f_].view(f_, 1, 1, -1).expand(f_, h_, w_, -1),
                      th[:h_].view(1, h_, 1, -1).expand(f_, h_, w_, -1),
                      tw[:w_].view(1, 1, w_, -1).expand(f_, h_, w_, -1)], dim=-1).reshape(-1, 1, c)


def test_layouts():
    print("sinusoid, RoPE, patchify/unpatchify layouts (spec sec. 2.2-2.4.2)")
    # sinusoid: cos first, omega_i = 10000^(-i/128)
    s = ref.sinusoidal_embedding(999, 256)
    i = 5
    check("sinusoid cos-first", abs(s[i].item() - math.cos(999 * 10000 ** (-i / 128))) < 1e-15
          and abs(s[128 + i].item() - math.sin(999 * 10000 ** (-i / 128))) < 1e-15)
    check("sinusoid at t=0", torch.equal(s.new_tensor([1.0] * 128 + [0.0] * 128),
                                         ref.sinusoidal_embedding(0, 256)))

    check("RoPE split for head_dim 128 is 44/42/42", ref.rope_split(128) == (44, 42, 42))
    check("RoPE split for head_dim 64 is 24/20/20", ref.rope_split(64) == (24, 20, 20))
    grid = (3, 5, 4)
    ang = ref.rope_angles(grid, 128)
    n = 2 * 5 * 4 + 3 * 4 + 1  # token (f=2, h=3, w=1)
    exp = ([2 * 10000 ** (-2 * j / 44) for j in range(22)] + [3 * 10000 ** (-2 * j / 42) for j in range(21)]
           + [1 * 10000 ** (-2 * j / 42) for j in range(21)])
    check("RoPE angles of token (2,3,1)", torch.allclose(ang[n], torch.tensor(exp, dtype=F64),
                                                         rtol=1e-15, atol=0))
    # complex-number RoPE built like the official table (1024 rows, polar, split by pairs)
    g = torch.Generator().manual_seed(1)
    for d, heads in ((128, 3), (64, 2), (96, 1)):
        c = d // 2
        fr = complex_rope_freqs(grid, d)
        Fg, Hg, Wg = grid
        x = torch.randn(Fg * Hg * Wg, heads, d, generator=g, dtype=F64)
        want = torch.view_as_real(torch.view_as_complex(x.reshape(-1, heads, c, 2)) * fr).reshape(x.shape)
        got = ref.apply_rope(x, ref.rope_angles(grid, d))
        check(f"RoPE == complex interleaved rotation (head_dim {d})",
              torch.allclose(got, want, rtol=0, atol=1e-13), (got - want).abs().max().item())

    # patchify == Conv3d(kernel=stride=(1,2,2)) flattened frame-major; unpatchify formula
    cfg = ref.WanConfig(dim=8, ffn_dim=16, num_heads=1, num_layers=0, text_dim=8, text_len=4)
    m = ref.WanDiTReference.__new__(ref.WanDiTReference)
    m.cfg = cfg
    z = torch.randn(16, 3, 6, 4, generator=g, dtype=F64)
    W = torch.randn(8, 16, 1, 2, 2, generator=g, dtype=F64)
    b = torch.randn(8, generator=g, dtype=F64)
    patches, gr = m.patchify(z)
    conv = F.conv3d(z[None], W, b, stride=(1, 2, 2))[0].flatten(1).t()
    check("patchify @ W.reshape(D,64) == conv3d (frame-major tokens)", gr == (3, 3, 2) and torch.allclose(
        patches @ W.reshape(8, -1).t() + b, conv, rtol=0, atol=1e-12))
    out = torch.randn(3 * 3 * 2, 64, generator=g, dtype=F64)
    pred = m.unpatchify(out, gr)
    ok = pred.shape == (16, 3, 6, 4)
    for (c, f, h, w, q, r) in [(0, 0, 0, 0, 0, 0), (5, 2, 1, 1, 1, 0), (15, 1, 2, 0, 0, 1), (9, 2, 2, 1, 1, 1)]:
        nn_ = f * 3 * 2 + h * 2 + w
        ok = ok and pred[c, f, 2 * h + q, 2 * w + r].item() == out[nn_, q * 32 + r * 16 + c].item()
    check("unpatchify pred[c,f,2h+q,2w+r] = out[n, q*32+r*16+c]", ok)


# ----------------------------------------------------------------------------------------------
# A second implementation, structured like the original nn.Module code, for cross-checking.
# ----------------------------------------------------------------------------------------------

def alt_forward(cfg: ref.WanConfig, sd, latent, t, context):
    P = {k: v.to(F64) for k, v in sd.items()}
    D, n, d = cfg.dim, cfg.num_heads, cfg.head_dim
    lin = lambda x, p: F.linear(x, P[p + ".weight"], P[p + ".bias"])  # noqa: E731
    gelu = lambda x: F.gelu(x, approximate="tanh")  # noqa: E731
    x = F.conv3d(latent.to(F64)[None], P["patch_embedding.weight"], P["patch_embedding.bias"],
                 stride=cfg.patch_size)
    grid = x.shape[2:]
    x = x.flatten(2).transpose(1, 2)[0]  # [L, D]
    half = cfg.freq_dim // 2
    sinus = torch.outer(torch.tensor([float(t)], dtype=F64),
                        torch.pow(10000, -torch.arange(half, dtype=F64).div(half)))
    sinus = torch.cat([torch.cos(sinus), torch.sin(sinus)], dim=1)
    e = lin(F.silu(lin(sinus, "time_embedding.0")), "time_embedding.2")
    e0 = lin(F.silu(e), "time_projection.1").unflatten(1, (6, D))  # [1, 6, D]
    ctx = torch.cat([context.to(F64), context.new_zeros(cfg.text_len - context.shape[0], context.shape[1]).to(F64)])
    ctx = lin(gelu(lin(ctx, "text_embedding.0")), "text_embedding.2")

    c = d // 2
    freqs = complex_rope_freqs(tuple(grid), d)

    def rope(u):  # u [L, n, d]
        return torch.view_as_real(torch.view_as_complex(u.reshape(u.shape[0], n, c, 2)) * freqs).flatten(2)

    def rms(u, w):
        return u * torch.rsqrt(u.pow(2).mean(dim=-1, keepdim=True) + cfg.eps) * w

    def attn(q, k, v):  # [L, n, d] -> heads-first
        q, k, v = (a.transpose(0, 1) for a in (q, k, v))
        a = torch.softmax(torch.bmm(q, k.transpose(1, 2)) * d ** -0.5, dim=-1)
        return torch.bmm(a, v).transpose(0, 1).flatten(1)

    for i in range(cfg.num_layers):
        b = f"blocks.{i}."
        mod = (P[b + "modulation"] + e0).chunk(6, dim=1)
        y = F.layer_norm(x, (D,), eps=cfg.eps) * (1 + mod[1][0]) + mod[0][0]
        s = b + "self_attn."
        q = rope(rms(lin(y, s + "q"), P[s + "norm_q.weight"]).view(-1, n, d))
        k = rope(rms(lin(y, s + "k"), P[s + "norm_k.weight"]).view(-1, n, d))
        v = lin(y, s + "v").view(-1, n, d)
        x = x + lin(attn(q, k, v), s + "o") * mod[2][0]
        xn = F.layer_norm(x, (D,), P[b + "norm3.weight"], P[b + "norm3.bias"], eps=cfg.eps)
        s = b + "cross_attn."
        q = rms(lin(xn, s + "q"), P[s + "norm_q.weight"]).view(-1, n, d)
        k = rms(lin(ctx, s + "k"), P[s + "norm_k.weight"]).view(-1, n, d)
        v = lin(ctx, s + "v").view(-1, n, d)
        x = x + lin(attn(q, k, v), s + "o")
        y = F.layer_norm(x, (D,), eps=cfg.eps) * (1 + mod[4][0]) + mod[3][0]
        x = x + lin(gelu(lin(y, b + "ffn.0")), b + "ffn.2") * mod[5][0]
    hm = (P["head.modulation"] + e[:, None]).chunk(2, dim=1)
    out = lin(F.layer_norm(x, (D,), eps=cfg.eps) * (1 + hm[1][0]) + hm[0][0], "head.head")
    u = out.view(*grid, *cfg.patch_size, cfg.out_dim)
    u = torch.einsum("fhwpqrc->cfphqwr", u)
    return u.reshape(cfg.out_dim, *[gi * pi for gi, pi in zip(grid, cfg.patch_size)])


def rel(a, b):
    return (torch.linalg.norm(a - b) / torch.linalg.norm(b)).item()


def test_forward(tmp):
    print("DiT forward (spec sec. 2)")
    g = torch.Generator().manual_seed(7)
    tiny = ref.PRESETS["tiny"]
    sd = random_state_dict(tiny, seed=11)
    p_orig = write_checkpoint(os.path.join(tmp, "orig"), tiny, sd, "original")
    p_diff = write_checkpoint(os.path.join(tmp, "diff"), tiny, sd, "diffusers", shards=3)
    m_orig = ref.WanDiTReference.from_checkpoint(p_orig)
    m_diff = ref.WanDiTReference.from_checkpoint(os.path.dirname(p_diff))  # directory -> index.json
    check("config.json read in both formats", m_orig.cfg == tiny and m_diff.cfg == tiny)
    for shape, t, lc in [((16, 1, 4, 4), 999, 7), ((16, 3, 6, 10), 712.5, 20), ((16, 5, 8, 6), 37, 32)]:
        z = torch.randn(*shape, generator=g)
        ctx = torch.randn(lc, tiny.text_dim, generator=g)
        a = m_orig.forward(z, torch.tensor([t]), ctx)
        b = m_diff.forward(z, t, ctx)
        c = alt_forward(tiny, sd, z, t, ctx)
        check(f"{shape} t={t} Lc={lc}: original == diffusers naming (bitwise)", torch.equal(a, b))
        r = rel(a, c)
        check(f"{shape} t={t} Lc={lc}: == second implementation (rel {r:.1e})", r < 1e-12, r)
        check(f"{shape}: output shape and magnitude sane",
              a.shape == z.shape and 0.05 < a.std().item() < 100, a.std().item())
    # sensitivity: padding rows are attended to, the norm2/norm3 swap matters, t matters
    z = torch.randn(16, 2, 4, 4, generator=g)
    ctx = torch.randn(5, tiny.text_dim, generator=g)
    base = m_orig.forward(z, 500, ctx)
    longer = ref.WanDiTReference(ref.WanConfig(**{**tiny.__dict__, "text_len": 40}), sd).forward(z, 500, ctx)
    check("zero-padded context rows change the output (no mask)", rel(longer, base) > 1e-3)
    swapped = dict(sd)
    for i in range(tiny.num_layers):
        swapped[f"blocks.{i}.norm3.weight"] = torch.ones_like(sd[f"blocks.{i}.norm3.weight"])
    check("norm3 weights are used", rel(ref.WanDiTReference(tiny, swapped).forward(z, 500, ctx), base) > 1e-3)
    check("timestep changes the output", rel(m_orig.forward(z, 501, ctx), base) > 1e-6)
    # head_dim 128 path (1.3B-like heads, narrow and shallow to stay fast)
    cfg128 = ref.WanConfig(dim=256, ffn_dim=320, num_heads=2, num_layers=1, text_dim=48, text_len=16)
    sd128 = random_state_dict(cfg128, seed=12, dtype=torch.bfloat16)
    z = torch.randn(16, 3, 4, 6, generator=g)
    ctx = torch.randn(9, 48, generator=g)
    r = rel(ref.WanDiTReference(cfg128, sd128).forward(z, 999, ctx), alt_forward(cfg128, sd128, z, 999, ctx))
    check(f"head_dim 128, bf16 weights: == second implementation (rel {r:.1e})", r < 1e-12, r)
    # a checkpoint with a missing key is rejected
    broken = dict(sd)
    del broken["blocks.1.cross_attn.norm_k.weight"]
    try:
        ref.WanDiTReference(tiny, broken)
        check("rejects a checkpoint with a missing key", False)
    except ValueError:
        check("rejects a checkpoint with a missing key", True)


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        test_safetensors(tmp)
        test_param_counts()
        test_names_and_configs()
        test_layouts()
        test_forward(tmp)
    print("sampler_reference --selftest")
    if sampler_reference.selftest() != 0:
        FAILURES.append("sampler selftest")
    print(f"\nselftest: {'FAILED: ' + ', '.join(FAILURES) if FAILURES else 'all passed'}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
