"""Independent NumPy model of the radial attention block mask of mit-han-lab/radial-attention.

The C++ builder (parallel/sparse_layout.cc) generalises the radial rule to grids whose frames are not
whole blocks; on grids where every frame is a whole number of blocks it must give exactly the block
mask of the reference implementation (`gen_log_mask_shrinked`, model type "wan"). This script models
that reference behaviour from its description (shared spec/sparse-attention.md, sec. 1) in the way the
reference evaluates it, so that the comparison also covers its numeric details:

  * the mask is built one frame pair at a time (query frame i, key frame j, d = |i - j|) over the
    in-frame token indices k (query) and l (key), s tokens per frame:
      - key frame 0 is the attention sink: the whole pair is kept;
      - d <= 1: the window is the whole frame;
      - otherwise the window is max(block, 2**bitlen(s) / 2**bitlen(d) * decay) and |k - l| must not
        exceed it (compared in float32, as PyTorch promotes an integer tensor against a Python float);
      - the frequency rule uses the undecayed length 2**bitlen(s) / 2**bitlen(d) against a fixed
        threshold of 128 tokens (the reference hard-codes 128, whatever the block size): below it the
        pair survives only when d is a multiple of int(128 / length);
  * each frame pair's token mask is reduced to blocks on its own: per block, a key column's density is
    (kept query rows) / block in float32; the block is kept when the share of columns denser than 1/3
    among the non-empty columns, high / (non-empty + 1e-9) in float32, exceeds 0.6.

Only grids whose frames hold a whole number of blocks are accepted (the reference fails elsewhere).

CLI:
  radial_mask_reference.py --output FILE --case F H W DECAY BLOCK [--case ...]
      FILE gets, per case, a header line "case F H W DECAY BLOCK ROWS COLUMNS", then ROWS lines of
      COLUMNS characters '0'/'1' (query block rows, key block columns). The density of each case is
      printed on stdout.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List, Tuple

import numpy as np

FREQUENCY_THRESHOLD = 128  # tokens; fixed in the reference, independent of the block size


def frame_pair_rule(query_frame: int, key_frame: int, tokens_per_frame: int, decay: float,
                    block: int) -> Tuple[str, float]:
    """('full', 0), ('none', 0) or ('band', window) for one frame pair, as the reference decides it."""
    if key_frame == 0:
        return "full", 0.0
    distance = abs(query_frame - key_frame)
    group = distance.bit_length()
    undecayed = 2 ** tokens_per_frame.bit_length() / 2 ** group
    if undecayed < FREQUENCY_THRESHOLD and distance % int(FREQUENCY_THRESHOLD / undecayed) != 0:
        return "none", 0.0
    if distance <= 1:
        return "full", 0.0
    return "band", max(float(block), undecayed * decay)


def token_mask(rule: Tuple[str, float], tokens_per_frame: int) -> np.ndarray:
    kind, window = rule
    if kind == "full":
        return np.ones((tokens_per_frame, tokens_per_frame), dtype=bool)
    if kind == "none":
        return np.zeros((tokens_per_frame, tokens_per_frame), dtype=bool)
    index = np.arange(tokens_per_frame, dtype=np.int64)
    distance = np.abs(index[None, :] - index[:, None]).astype(np.float32)
    return distance <= np.float32(window)


def shrink(mask: np.ndarray, block: int) -> np.ndarray:
    """Block reduction of one frame pair (both sides whole blocks)."""
    rows, columns = mask.shape[0] // block, mask.shape[1] // block
    counts = mask.reshape(rows, block, columns, block).sum(axis=1)  # [rows, columns, block]
    density = counts.astype(np.float32) / np.float32(block)
    non_empty = (density > 0).sum(axis=-1)
    dense_columns = (density > np.float32(1.0 / 3.0)).sum(axis=-1)
    share = dense_columns.astype(np.float32) / (non_empty.astype(np.float32) + np.float32(1e-9))
    return share > np.float32(0.6)


def radial_block_mask(frames: int, height: int, width: int, decay: float, block: int) -> np.ndarray:
    tokens_per_frame = height * width
    if tokens_per_frame % block != 0:
        raise ValueError(f"{tokens_per_frame} tokens per frame is not a multiple of the block size {block}")
    blocks_per_frame = tokens_per_frame // block
    result = np.zeros((frames * blocks_per_frame, frames * blocks_per_frame), dtype=bool)
    reduced: Dict[Tuple[str, float], np.ndarray] = {}  # frame pairs with one rule share their blocks
    for query_frame in range(frames):
        for key_frame in range(frames):
            rule = frame_pair_rule(query_frame, key_frame, tokens_per_frame, decay, block)
            if rule not in reduced:
                reduced[rule] = shrink(token_mask(rule, tokens_per_frame), block)
            row, column = query_frame * blocks_per_frame, key_frame * blocks_per_frame
            result[row:row + blocks_per_frame, column:column + blocks_per_frame] = reduced[rule]
    return result


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True)
    parser.add_argument("--case", nargs=5, action="append", required=True,
                        metavar=("FRAMES", "HEIGHT", "WIDTH", "DECAY", "BLOCK"))
    arguments = parser.parse_args(argv)
    with open(arguments.output, "w", encoding="ascii") as output:
        for frames, height, width, decay, block in arguments.case:
            mask = radial_block_mask(int(frames), int(height), int(width), float(decay), int(block))
            output.write(f"case {frames} {height} {width} {decay} {block} {mask.shape[0]} {mask.shape[1]}\n")
            for row in mask:
                output.write("".join("1" if kept else "0" for kept in row) + "\n")
            print(f"radial reference {frames}x{height}x{width} decay {decay} block {block}: "
                  f"density {mask.mean():.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
