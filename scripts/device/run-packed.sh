#!/usr/bin/env bash
# GPU machine, one device call: unpacks build-cuda-pack/carry.tar.xz (scripts/device/pack-cuda.sh) into
# build-cuda-carry/, runs one device script, then packs $OUT/logs/ into $OUT/logs-<script>.tgz so that
# few files come back (8 at most): the result files in $OUT/bench-results/ and that archive.
#   scripts/device/run-packed.sh pipeline-check.sh tests parity full13b
#   scripts/device/run-packed.sh cuda-check.sh attention
# Exits with the script's status.
set -uo pipefail
cd "$(dirname "$0")/../.."
script=${1:?usage: scripts/device/run-packed.sh SCRIPT [ARGS...]}
shift
pack=build-cuda-pack/carry.tar.xz
carry=${ZOETROPE_CARRY:-build-cuda-carry}
if [[ -f $pack ]]; then
  rm -rf "$carry" && mkdir -p "$carry" && tar -C "$carry" -xJf "$pack" || { echo "cannot unpack $pack" >&2; exit 2; }
elif [[ ! -d $carry ]]; then
  echo "neither $pack nor $carry/ is here: carry build-cuda-pack" >&2
  exit 2
fi
# The tiny model's weights are not packed (pack-cuda.sh): write them again, deterministically.
if [[ -d $carry/models/tiny && ! -f $carry/models/tiny/transformer/diffusion_pytorch_model.safetensors ]]; then
  (source scripts/device/env.sh && scripts/make-model.sh --size tiny --weights-only --build-dir "$carry" "$carry/models/tiny") >/dev/null ||
    { echo "cannot write the tiny model's weights" >&2; exit 2; }
fi
"scripts/device/${script#scripts/device/}" "$@"
status=$?
out=${OUT:-/tmp/zoetrope-out}
if [[ -d $out/logs ]]; then
  name=$(basename "$script" .sh)
  tar -C "$out" -czf "/tmp/logs-$name.tgz" logs && rm -rf "$out/logs" && mv "/tmp/logs-$name.tgz" "$out/"
fi
exit $status
