#!/usr/bin/env bash
# Trains the STAND-IN tokenizer: a small sentencepiece unigram model (~1000 pieces) over the prompt
# corpus shipped in assets/tokenizer/prompt_corpus.txt, with umT5's special ids (pad 0, EOS 1, unk 2,
# no BOS). It is NOT umT5's tokenizer (google/umt5-xxl spiece.model, 256,384 ids): it only lets tests
# and the tiny quick start run the real code path without downloads. Its ids mean nothing to real
# umT5 weights; pair it with the `tiny` text encoder only.
#
# Deterministic: one thread, fixed seed, no sentence sampling or shuffling, and training runs in a
# scratch directory with relative paths, so the file (which records its training options) is the same
# byte for byte wherever it is built.
#
# Usage: scripts/build-tokenizer.sh OUT_DIR      writes OUT_DIR/spiece.model (and spiece.vocab)
# Needs spm_train (Debian package `sentencepiece`).
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 OUT_DIR" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
corpus="$root/assets/tokenizer/prompt_corpus.txt"
out_dir=$1
if ! command -v spm_train >/dev/null 2>&1; then
  echo "build-tokenizer: spm_train not found (apt-get install sentencepiece)" >&2
  exit 1
fi
mkdir -p "$out_dir"
out_dir=$(cd "$out_dir" && pwd)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cp "$corpus" "$scratch/prompt_corpus.txt"
(
  cd "$scratch"
  spm_train \
    --input=prompt_corpus.txt --model_prefix=spiece \
    --model_type=unigram --vocab_size=1000 \
    --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1 \
    --character_coverage=1.0 \
    --num_threads=1 --random_seed=20250301 \
    --input_sentence_size=1000000 --shuffle_input_sentence=false \
    --minloglevel=2 >spm_train.log 2>&1 || { cat spm_train.log >&2; exit 1; }
)
mv "$scratch/spiece.model" "$scratch/spiece.vocab" "$out_dir/"
echo "$out_dir/spiece.model"
