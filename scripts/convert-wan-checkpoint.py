#!/usr/bin/env python3
"""Converts the PyTorch pickles of the official Wan2.1 release to safetensors, once, keeping the key names.

The official text encoder (models_t5_umt5-xxl-enc-bf16.pth) and VAE (Wan2.1_VAE.pth) are pickled
state dicts, which Zoetrope's C++ loaders cannot read. This writes NAME.safetensors beside each NAME.pth
with the same keys, shapes and dtypes (bf16 stays bf16, fp32 stays fp32). Needs PyTorch.

usage: scripts/convert-wan-checkpoint.py MODEL_FOLDER_OR_PTH_FILE...
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
import safetensors_io  # noqa: E402  (the project's own reader/writer)
import torch  # noqa: E402


def convert(path: str) -> str:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # torch < 1.13 has no weights_only
        state = torch.load(path, map_location="cpu")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SystemExit(f"{path}: not a state dict of tensors")
    output = path[: -len(".pth")] + ".safetensors"
    safetensors_io.save(output, {k: v.contiguous() for k, v in state.items()},
                        metadata={"converted_from": os.path.basename(path)})
    return output


def main(arguments):
    if not arguments:
        print(__doc__, file=sys.stderr)
        return 2
    paths = []
    for argument in arguments:
        if os.path.isdir(argument):
            paths += [os.path.join(argument, name) for name in sorted(os.listdir(argument)) if name.endswith(".pth")]
        else:
            paths.append(argument)
    if not paths:
        print("convert-wan-checkpoint: no .pth files found", file=sys.stderr)
        return 1
    for path in paths:
        print(f"{path} -> {convert(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
