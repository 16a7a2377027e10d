#!/usr/bin/env bash
# GPU machine: sequence and CFG parallelism on CUDA (docs/parallel.md). Carry build-cuda-pack
# (scripts/device/pack-cuda.sh --pipeline) and run through scripts/device/run-packed.sh.
#   parity     Wan2.1-1.3B random bf16 weights, one 480p forward (32,760 tokens, 12 heads): --sp 2, 3, 4, 5
#              loopback ranks vs one rank, dense and radial (relative L2, bound 5e-3), and NCCL with one
#              rank (--gpus 0) vs the plain path; the tiny model's 4-step generation with --sp 2 --loopback
#              --cfg_parallel vs one device -> sequence_parallel_parity_<gpu>.json
#   overhead   zoetrope-dit-bench at 1.3B 480p: the plain forward, the group path on one rank, and 2 and
#              4 loopback ranks (on ONE GPU: the ranks share its SMs, so this measures what the parallel
#              path costs, not a speed-up) -> sequence_parallel_overhead_1.3b_480p_<gpu>.json
#   alltoall   zoetrope-alltoall-bench: the Ulysses all-to-all at 1.3B 480p shapes (32,760 tokens, 12 heads,
#              d 128, bf16) on 2, 4 and 8 loopback ranks and on NCCL with every GPU of the machine, against
#              a plain device-to-device copy of the same bytes -> alltoall_bandwidth_<gpu>.json
#   overlap    zoetrope-dit-bench at 1.3B 480p on 2 and 4 loopback ranks with --ulysses_chunks 1 (no
#              overlap), 2 and 4 (all-to-alls of one head chunk overlapping the attention of another)
#              -> ulysses_overlap_1.3b_480p_<gpu>.json
# Results in $OUT/bench-results, logs in $OUT/logs; a table last. Exits non-zero when a stage failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
bin=$carry/bin
stages=${*:-parity overhead alltoall overlap}
export NCCL_NVLS_ENABLE=0
summary=()
failed=0
model=/tmp/wan13b-sp
mkdir -p "$model"

if [[ " $stages " == *" parity "* ]]; then
  [[ -f $model/dit.safetensors ]] ||
    "$bin/zoetrope-mkweights" --config wan2.1-t2v-1.3b --dtype bf16 --seed 1 -o "$model/dit.safetensors" >"$logs/mkweights.log" 2>&1
  python3 - "$model/config.json" "$model/inputs.safetensors" <<'PY'
import json, struct, sys
import numpy as np
config = json.load(open(sys.argv[1]))
rng = np.random.default_rng(7)
tensors = {"latent": rng.standard_normal((16, 21, 60, 104)).astype(np.float32),
           "timestep": np.array([731.0], dtype=np.float32),
           "context": rng.standard_normal((128, config.get("text_dim", 4096))).astype(np.float32)}
header, offset, blobs = {}, 0, []
for name, array in tensors.items():
    data = array.tobytes()
    header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
    offset += len(data)
    blobs.append(data)
text = json.dumps(header).encode()
text += b" " * (-len(text) % 8)
open(sys.argv[2], "wb").write(struct.pack("<Q", len(text)) + text + b"".join(blobs))
PY
  runs=()
  for attention in dense radial; do
    for ranks in 1 2 3 4 5; do
      flags=(--sp "$ranks"); (( ranks > 1 )) && flags+=(--loopback)
      "$bin/zoetrope-dit" --weights "$model/dit.safetensors" --inputs "$model/inputs.safetensors" --device cuda \
        --attention "$attention" --step 30 "${flags[@]}" -o "$logs/velocity_${attention}_$ranks.safetensors" \
        >>"$logs/parity.log" 2>&1 || { echo "zoetrope-dit $attention --sp $ranks failed" >>"$logs/parity.log"; failed=1; }
      runs+=("$attention:$ranks")
    done
  done
  "$bin/zoetrope-dit" --weights "$model/dit.safetensors" --inputs "$model/inputs.safetensors" --device cuda \
    --gpus 0 --sp 1 -o "$logs/velocity_nccl1.safetensors" >>"$logs/parity.log" 2>&1 || failed=1
  # The tiny model's 4-step generation: one device, then 2 x 2 loopback ranks (sequence and CFG parallel).
  for group in "one:" "mesh:--sp 2 --cfg_parallel --loopback"; do
    name=${group%%:*}
    "$bin/zoetrope" generate --model "$carry/models/tiny" --device cuda --width 256 --height 256 --frames 33 \
      --steps 4 --seed 3 --format latent --output "$logs/generation_$name.safetensors" ${group#*:} \
      >>"$logs/parity.log" 2>&1 || { echo "generate $name failed" >>"$logs/parity.log"; failed=1; }
  done
  parity=$(python3 - "$logs" <<'PY'
import json, sys
sys.path.insert(0, "tests/reference")
import safetensors_io, torch
logs = sys.argv[1]
def load(name, key="velocity"):
    try:
        return safetensors_io.load(f"{logs}/{name}.safetensors")[key].double()
    except Exception:
        return None
def error(a, b):
    if a is None or b is None or not bool(torch.isfinite(b).all()):
        return None
    return ((a - b).norm() / a.norm()).item()
rows = {}
for attention in ("dense", "radial"):
    one = load(f"velocity_{attention}_1")
    for ranks in (2, 3, 4, 5):
        rows[f"{attention}_sp{ranks}_loopback"] = error(one, load(f"velocity_{attention}_{ranks}"))
rows["dense_nccl_one_rank"] = error(load("velocity_dense_1"), load("velocity_nccl1"))
rows["tiny_generation_sp2_cfg2_loopback"] = error(load("generation_one", "latent"), load("generation_mesh", "latent"))
print(json.dumps(rows))
PY
)
  echo "$parity" >"$logs/parity.json"
  python3 bench/write_result.py --name "sequence_parallel_parity_{gpu}" --fields-json "{\"relative_l2\": $parity, \"bound\": 5e-3}" \
    --shape config=wan2.1-t2v-1.3b --shape "latent=[16,21,60,104]" --shape tokens=32760 --shape heads=12 \
    --shape step=30 --shape "tiny_generation=256x256x33, 4 steps" --field "weights=random bf16 (zoetrope-mkweights)" \
    >"$logs/parity.result" 2>&1 || failed=1
  python3 -c "
import json, sys
rows = json.loads(sys.argv[1])
bad = [k for k, v in rows.items() if v is None or v > 5e-3]
sys.exit(1 if bad else 0)" "$parity" || failed=1
  summary+=("parity (relative L2 vs one rank, bound 5e-3): $parity")
fi

if [[ " $stages " == *" overhead "* ]]; then
  samples=()
  for ranks in 0 1 2 4; do
    flags=(--sp "$ranks"); (( ranks > 1 )) && flags+=(--loopback)
    timeout 300 "$bin/zoetrope-dit-bench" --config wan2.1-t2v-1.3b --device cuda --latent 16,21,60,104 \
      --workdir /tmp/wan13b-forward --reuse_weights --warmup 1 --iterations 5 "${flags[@]}" \
      >"$logs/overhead_$ranks.json" 2>"$logs/overhead_$ranks.log" || failed=1
  done
  overhead=$(python3 - "$logs" <<'PY'
import json, sys
rows = {}
for ranks in (0, 1, 2, 4):
    try:
        r = json.loads(open(f"{sys.argv[1]}/overhead_{ranks}.json").read().strip().splitlines()[-1])
        rows[{0: "plain", 1: "group_1_rank"}.get(ranks, f"loopback_{ranks}_ranks")] = {
            "median_s": r["median_s"], "samples_s": r["samples_s"]}
    except Exception as error:
        rows[f"sp{ranks}"] = {"error": str(error)}
print(json.dumps(rows))
PY
)
  python3 bench/write_result.py --name "sequence_parallel_overhead_1.3b_480p_{gpu}" --fields-json "{\"forwards\": $overhead}" \
    --shape config=wan2.1-t2v-1.3b --shape "latent=[16,21,60,104]" --shape tokens=32760 --shape attention=dense \
    --field "note=loopback ranks share one GPU: this is the cost of the parallel path, not a speed-up" \
    >"$logs/overhead.result" 2>&1 || failed=1
  summary+=("1.3B 480p forward, median s: $overhead")
fi

if [[ " $stages " == *" alltoall "* ]]; then
  gpu_list=$(nvidia-smi --query-gpu=index --format=csv,noheader | paste -sd, -)
  runs=()
  for ranks in 2 4 8; do
    timeout 120 "$bin/zoetrope-alltoall-bench" --communicator loopback --ranks "$ranks" \
      >"$logs/alltoall_loopback_$ranks.json" 2>"$logs/alltoall_loopback_$ranks.log" || failed=1
    runs+=("$logs/alltoall_loopback_$ranks.json")
  done
  timeout 120 "$bin/zoetrope-alltoall-bench" --communicator nccl --gpus "$gpu_list" \
    >"$logs/alltoall_nccl.json" 2>"$logs/alltoall_nccl.log" || failed=1
  runs+=("$logs/alltoall_nccl.json")
  alltoall=$(python3 - "${runs[@]}" <<'PY'
import json, sys
rows = {}
for path in sys.argv[1:]:
    name = path.rsplit("/", 1)[1][len("alltoall_"):-len(".json")]
    try:
        rows[name] = json.loads(open(path).read().strip().splitlines()[-1])
    except Exception as error:
        rows[name] = {"error": str(error)}
print(json.dumps(rows))
PY
)
  python3 bench/write_result.py --name "alltoall_bandwidth_{gpu}" --fields-json "{\"runs\": $alltoall}" \
    --shape tokens=32760 --shape heads=12 --shape head_dim=128 --shape dtype=bf16 \
    --field "note=one timed all-to-all = host barrier, collective, stream sync, host barrier (rank 0 wall time); baseline = one cudaMemcpyAsync of the same bytes" \
    >"$logs/alltoall.result" 2>&1 || failed=1
  summary+=("all-to-all (median ms, GB/s; copy baseline GB/s): $(python3 -c "
import json, sys
rows = json.loads(sys.argv[1])
print('; '.join(f\"{k}: {v.get('median_ms')} ms {v.get('gbytes_per_s')} GB/s (copy {v.get('copy_baseline_gbytes_per_s')})\" for k, v in rows.items()))" "$alltoall")")
fi

if [[ " $stages " == *" overlap "* ]]; then
  for ranks in 2 4; do
    for chunks in 1 2 4; do
      timeout 300 "$bin/zoetrope-dit-bench" --config wan2.1-t2v-1.3b --device cuda --latent 16,21,60,104 \
        --workdir /tmp/wan13b-forward --reuse_weights --warmup 1 --iterations 5 --sp "$ranks" --loopback \
        --ulysses_chunks "$chunks" >"$logs/overlap_${ranks}_$chunks.json" 2>"$logs/overlap_${ranks}_$chunks.log" || failed=1
    done
  done
  overlap=$(python3 - "$logs" <<'PY'
import json, sys
rows = {}
for ranks in (2, 4):
    for chunks in (1, 2, 4):
        try:
            r = json.loads(open(f"{sys.argv[1]}/overlap_{ranks}_{chunks}.json").read().strip().splitlines()[-1])
            rows[f"loopback_{ranks}_ranks_chunks_{chunks}"] = {"median_s": r["median_s"], "samples_s": r["samples_s"]}
        except Exception as error:
            rows[f"loopback_{ranks}_ranks_chunks_{chunks}"] = {"error": str(error)}
print(json.dumps(rows))
PY
)
  python3 bench/write_result.py --name "ulysses_overlap_1.3b_480p_{gpu}" --fields-json "{\"forwards\": $overlap}" \
    --shape config=wan2.1-t2v-1.3b --shape "latent=[16,21,60,104]" --shape tokens=32760 --shape attention=dense \
    --field "note=loopback ranks share one GPU; chunks 1 = no overlap of all-to-all and attention" \
    >"$logs/overlap.result" 2>&1 || failed=1
  summary+=("Ulysses overlap, 1.3B 480p forward median s: $overlap")
fi

echo "==== summary ===="
printf '%s\n' "${summary[@]}"
exit $failed
