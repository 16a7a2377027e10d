#!/usr/bin/env bash
# GPU machine: the cost of live previews (issue 15, docs/previews.md). Wan2.1-1.3B (random bf16 DiT and
# umT5-XXL, f32 VAE: scripts/device/wan13b-model.sh), 832x480, 81 frames, 50 steps, guidance 5, seed 0,
# `zoetrope generate --device cuda` run PREVIEW_PAIRS times (default 2) as a pair, alternating:
#   without previews, then with --preview_every 5 --preview DIR (9 JPEG contact sheets written to disk),
# so that drift of the machine hits both alike. Per run: wall time, and from generate's log the text,
# denoise, decode and write seconds, the previews written and the seconds spent making them.
# Writes to $OUT/bench-results:
#   preview_cost_1.3b_480p_<gpu>.json   medians of both, the overhead of previews in % of the denoise time and
#                                       of the whole generation (target: ≤ 1 %), samples, preview sizes
# Run from the repository root with build-cuda-pack carried (scripts/device/pack-cuda.sh --pipeline):
#   scripts/device/run-packed.sh bench-preview.sh          (PREVIEW_PAIRS=3 for more runs)
set -uo pipefail
cd "$(dirname "$0")/../.."
source scripts/device/env.sh
source scripts/device/wan13b-model.sh
bin=$carry/bin
pairs=${PREVIEW_PAIRS:-2}
width=832 height=480 frames=81 steps=50 guidance=5 seed=0 every=5
work=/tmp/zoetrope-preview-bench
mkdir -p "$work"
failures=0
make_13b_model || { echo "cannot write the 1.3B model"; exit 1; }

run() {  # NAME [EXTRA FLAGS...]: one generation, log in $logs/NAME.log, wall seconds in $logs/NAME.wall
  local name=$1
  shift
  local start end status
  start=$(date +%s%N)
  timeout 280 "$bin/zoetrope" generate --model "$model" --device cuda --width $width --height $height \
    --frames $frames --steps $steps --guidance $guidance --seed $seed --output "$work/$name.mp4" "$@" \
    >"$logs/$name.log" 2>&1
  status=$?
  end=$(date +%s%N)
  echo "$(( (end - start) / 1000 ))e-6" >"$logs/$name.wall"
  echo "$name: exit $status, $(grep -E '^text |^previews:' "$logs/$name.log" | tr '\n' ' ')"
  (( status == 0 )) || failures=$((failures + 1))
}

for pair in $(seq 1 "$pairs"); do
  run "preview_off_$pair"
  rm -rf "$work/previews_$pair"
  run "preview_on_$pair" --preview_every $every --preview "$work/previews_$pair"
done
du -b "$work"/previews_1/* 2>/dev/null | head -20

python3 - "$logs" "$results" "$pairs" "$work" "$every" <<'PY' || failures=$((failures + 1))
import glob, json, os, re, statistics, sys
sys.path.insert(0, "bench")
import write_result
logs, results, pairs, work, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
# generate writes the video while it decodes: "decode + overlapped write D s, write tail W s".
timing = re.compile(r"text ([\d.]+) s, denoise ([\d.]+) s \(([\d.]+) s/step\), decode(?: \+ overlapped write)? ([\d.]+) s, "
                    r"write(?: tail)? ([\d.]+) s")
previews = re.compile(r"previews: (\d+) every (\d+) steps.*, ([\d.]+) s in all")
runs = {"off": [], "on": []}
for kind in runs:
    for pair in range(1, pairs + 1):
        name = f"preview_{kind}_{pair}"
        text = open(f"{logs}/{name}.log").read()
        match = timing.search(text)
        if match is None:
            raise SystemExit(f"{name}: no timing line in its log")
        run = {"wall_s": float(open(f"{logs}/{name}.wall").read().strip()),
               "text_s": float(match[1]), "denoise_s": float(match[2]), "decode_s": float(match[4]),
               "write_s": float(match[5])}
        made = previews.search(text)
        if made:
            run.update(previews=int(made[1]), preview_s=float(made[3]))
        runs[kind].append(run)
def median(kind, key):
    return statistics.median(r[key] for r in runs[kind])
sizes = [os.path.getsize(p) for p in glob.glob(f"{work}/previews_*/step-*.jpg")]
fields = {
    "weights": "random: DiT and umT5-XXL bf16, VAE f32, stand-in tokenizer (zoetrope-mkweights*)",
    "preview_every": every, "pairs": pairs, "generations": runs,
    "denoise_s_median_off": median("off", "denoise_s"), "denoise_s_median_on": median("on", "denoise_s"),
    "wall_s_median_off": median("off", "wall_s"), "wall_s_median_on": median("on", "wall_s"),
    "preview_s_median": median("on", "preview_s") if all("preview_s" in r for r in runs["on"]) else None,
    "previews_per_run": runs["on"][0].get("previews"),
    "preview_bytes": {"count": len(sizes), "min": min(sizes, default=0), "max": max(sizes, default=0),
                      "mean": statistics.mean(sizes) if sizes else 0},
}
fields["denoise_overhead_pct"] = 100.0 * (fields["denoise_s_median_on"] / fields["denoise_s_median_off"] - 1.0)
fields["wall_overhead_pct"] = 100.0 * (fields["wall_s_median_on"] / fields["wall_s_median_off"] - 1.0)
fields["meets_1pct_target"] = fields["wall_overhead_pct"] <= 1.0
shape = {"model": "wan2.1-t2v-1.3b", "width": 832, "height": 480, "frames": 81, "steps": 50, "guidance": 5,
         "latent": [16, 21, 60, 104]}
path = write_result.write("preview_cost_1.3b_480p_{gpu}", fields,
                          samples=[r["wall_s"] for r in runs["on"]], unit="s", shape=shape, directory=results)
print(path)
print(json.dumps({k: v for k, v in fields.items() if k != "generations"}, indent=1))
PY
echo "bench-preview: $failures failure(s)"
(( failures == 0 ))
