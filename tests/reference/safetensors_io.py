"""Minimal, dependency-free safetensors reader/writer for Zoetrope's reference tests.

Implements the file layout described in spec wan21.md sec. 3.1 (and the HF sharded-checkpoint
index format of the same section) without the `safetensors` package:

    [8 bytes little-endian u64 N][N bytes JSON header][raw little-endian tensor bytes]

The JSON header maps each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} with the
offsets relative to the first byte after the header; an optional "__metadata__" entry maps strings to
strings. Supported dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL.

Public API:
    load(path, keys=None)          -> dict[str, torch.Tensor]   (one .safetensors file)
    load_metadata(path)            -> dict[str, str]
    save(path, tensors, metadata=None)
    load_checkpoint(path, keys=None) -> dict[str, torch.Tensor]
        accepts a .safetensors file, a *.safetensors.index.json, or a directory containing either.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Dict, Iterable, Optional

import numpy as np
import torch

if sys.byteorder != "little":  # the format is little-endian; we rely on native == LE below
    raise RuntimeError("safetensors_io assumes a little-endian host")

# dtype name -> (torch dtype, numpy dtype used to read the raw bytes, element size)
_DTYPES = {
    "F64": (torch.float64, np.float64, 8),
    "F32": (torch.float32, np.float32, 4),
    "F16": (torch.float16, np.float16, 2),
    "BF16": (torch.bfloat16, np.int16, 2),  # numpy has no bf16: read the bits, reinterpret in torch
    "I64": (torch.int64, np.int64, 8),
    "I32": (torch.int32, np.int32, 4),
    "I16": (torch.int16, np.int16, 2),
    "I8": (torch.int8, np.int8, 1),
    "U8": (torch.uint8, np.uint8, 1),
    "BOOL": (torch.bool, np.bool_, 1),
}
_TORCH_TO_NAME = {v[0]: k for k, v in _DTYPES.items()}

# Headers larger than this are rejected (the reference implementation uses 100 MB as well).
_MAX_HEADER = 100 * 1024 * 1024


def _read_header(f, path: str, file_size: int):
    raw = f.read(8)
    if len(raw) != 8:
        raise ValueError(f"{path}: file too short for a safetensors header")
    (n,) = struct.unpack("<Q", raw)
    if n > _MAX_HEADER or 8 + n > file_size:
        raise ValueError(f"{path}: invalid header length {n}")
    header_bytes = f.read(n)
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: header is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise ValueError(f"{path}: header is not a JSON object")
    return n, header


def _validate_entries(path: str, header: dict, data_size: int):
    """Check dtype/shape/offset consistency; returns {name: (dtype, shape, begin, end)}."""
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise ValueError(f"{path}: entry {name!r} is not an object")
        dtype = info.get("dtype")
        shape = info.get("shape")
        offsets = info.get("data_offsets")
        if dtype not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {dtype!r}")
        if (not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape)):
            raise ValueError(f"{path}: tensor {name!r} has invalid shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)):
            raise ValueError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
        begin, end = offsets
        numel = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if not (0 <= begin <= end <= data_size) or end - begin != numel * _DTYPES[dtype][2]:
            raise ValueError(f"{path}: tensor {name!r} offsets {offsets} do not match "
                             f"dtype {dtype} shape {shape} (data size {data_size})")
        entries[name] = (dtype, shape, begin, end)
    return entries


def load_metadata(path: str) -> Dict[str, str]:
    """Return the "__metadata__" dict of a safetensors file ({} if absent)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        _, header = _read_header(f, path, size)
    return dict(header.get("__metadata__") or {})


def load(path: str, keys: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
    """Load tensors from one .safetensors file (all of them, or only `keys`).

    Tensors are returned with the stored dtype, as independent (copied) CPU tensors.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        n, header = _read_header(f, path, size)
    data_start = 8 + n
    entries = _validate_entries(path, header, size - data_start)
    if keys is not None:
        keys = list(keys)
        missing = [k for k in keys if k not in entries]
        if missing:
            raise KeyError(f"{path}: tensors not found: {missing[:5]}")
        entries = {k: entries[k] for k in keys}

    out: Dict[str, torch.Tensor] = {}
    if not entries:
        return out
    if size == data_start:  # only empty tensors: np.memmap cannot map zero bytes
        mm = np.zeros(0, dtype=np.uint8)
    else:
        mm = np.memmap(path, dtype=np.uint8, mode="r", offset=data_start,
                       shape=(size - data_start,))
    try:
        for name, (dtype, shape, begin, end) in entries.items():
            tdtype, ndtype, _ = _DTYPES[dtype]
            arr = np.array(mm[begin:end]).view(ndtype).reshape(shape)  # np.array copies
            t = torch.from_numpy(arr)
            if dtype == "BF16":
                t = t.view(torch.bfloat16)
            out[name] = t
    finally:
        del mm
    return out


def save(path: str, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None):
    """Write `tensors` to `path` in safetensors format (tensors are laid out in sorted-name order)."""
    header = {}
    blobs = []
    offset = 0
    for name in sorted(tensors):
        if name == "__metadata__":
            raise ValueError("'__metadata__' is not a valid tensor name")
        t = tensors[name]
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(t))
        t = t.detach().cpu().contiguous()
        if t.dtype not in _TORCH_TO_NAME:
            raise ValueError(f"tensor {name!r}: unsupported dtype {t.dtype}")
        dname = _TORCH_TO_NAME[t.dtype]
        if t.dtype == torch.bfloat16:
            data = t.view(torch.int16).numpy().tobytes()
        else:
            data = t.numpy().tobytes()
        header[name] = {"dtype": dname, "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((-len(hbytes)) % 8)  # pad so the data section starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def _load_index(index_path: str, keys: Optional[Iterable[str]]) -> Dict[str, torch.Tensor]:
    with open(index_path, "r", encoding="utf-8") as f:
        index = json.load(f)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path}: no weight_map")
    base = os.path.dirname(os.path.abspath(index_path))
    wanted = set(weight_map) if keys is None else set(keys)
    missing = wanted - set(weight_map)
    if missing:
        raise KeyError(f"{index_path}: tensors not in weight_map: {sorted(missing)[:5]}")
    by_shard: Dict[str, list] = {}
    for k in sorted(wanted):
        by_shard.setdefault(weight_map[k], []).append(k)
    out: Dict[str, torch.Tensor] = {}
    for shard, shard_keys in by_shard.items():
        out.update(load(os.path.join(base, shard), shard_keys))
    return out


def find_checkpoint_file(path: str) -> str:
    """Resolve a directory to the single .safetensors file or .safetensors.index.json inside it."""
    if not os.path.isdir(path):
        return path
    names = sorted(os.listdir(path))
    indexes = [n for n in names if n.endswith(".safetensors.index.json")]
    if len(indexes) == 1:
        return os.path.join(path, indexes[0])
    if len(indexes) > 1:
        raise ValueError(f"{path}: several index files: {indexes}")
    files = [n for n in names if n.endswith(".safetensors")]
    if len(files) == 1:
        return os.path.join(path, files[0])
    raise ValueError(f"{path}: expected one *.safetensors.index.json or one *.safetensors, "
                     f"found {files}")


def load_checkpoint(path: str, keys: Optional[Iterable[str]] = None) -> Dict[str, torch.Tensor]:
    """Load a checkpoint given as a file, an HF `*.safetensors.index.json`, or a directory."""
    path = find_checkpoint_file(path)
    if path.endswith(".json"):
        return _load_index(path, keys)
    return load(path, keys)


def checkpoint_keys(path: str) -> Dict[str, tuple]:
    """Return {name: (dtype_name, shape)} for a checkpoint without reading tensor data."""
    path = find_checkpoint_file(path)
    files = [path]
    if path.endswith(".json"):
        with open(path, "r", encoding="utf-8") as f:
            wm = json.load(f)["weight_map"]
        base = os.path.dirname(os.path.abspath(path))
        files = [os.path.join(base, s) for s in sorted(set(wm.values()))]
    out = {}
    for fp in files:
        size = os.path.getsize(fp)
        with open(fp, "rb") as f:
            n, header = _read_header(f, fp, size)
        for name, (dtype, shape, _, _) in _validate_entries(fp, header, size - 8 - n).items():
            out[name] = (dtype, tuple(shape))
    return out
