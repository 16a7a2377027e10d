#!/usr/bin/env bash
# zoetrope-attention-plan as a user runs it: one site of the radial preset on Wan 720p latents
# (18×48×80 tokens) has the spec's 28.71 % block density; --dump writes the CSR the kernel gets, which
# the dependency-free reader of tests/reference reads back with the right shapes and a valid CSR, for
# a shared layout and for a per-head plan; the table has the dense steps of the scaled schedule; bad
# flags exit non-zero with a message naming the flag.
# usage: attention_plan_test.sh TOOL PYTHON WORK_DIR   (PYTHON: one with numpy and torch, for safetensors_io)
set -euo pipefail
tool=$1 python=$2 work=$3
here=$(cd "$(dirname "$0")" && pwd)
rm -rf "$work" && mkdir -p "$work"
failures=0 passed=0
check() {  # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failures=$((failures + 1)); echo "FAIL $name"; fi
}

# ---- one site, radial preset, Wan 720p ----
if "$tool" --grid 18,48,80 --plan radial --steps 50 --step 20 --block 5 --dump "$work/radial.safetensors" \
     >"$work/site.json" 2>"$work/site.err"; then
  check "radial site exits 0" true
else
  check "radial site exits 0 ($(cat "$work/site.err"))" false
fi
check "radial site density 0.2871" grep -q '^  "density": 0.2871,$' "$work/site.json"
check "radial site: one head group with density 0.2871" "$python" - "$work/site.json" <<'EOF'
import json, sys
site = json.load(open(sys.argv[1]))
groups = site["heads"]
assert len(groups) == 1, groups
group = groups[0]
assert (group["first_head"], group["last_head"], group["mode"]) == (0, 11, "radial"), group
assert group["parameters"] == {"decay": 0.2}, group
assert group["density"] == 0.2871 and group["query_blocks"] == 540 and group["key_blocks"] == 540, group
assert site["grid"] == {"frames": 18, "height": 48, "width": 80, "tokens": 69120}, site["grid"]
assert (site["plan"], site["steps"], site["step"], site["block"]) == ("radial", 50, 20, 5), site
EOF

# Reads a dump back and checks the CSR: read_dump.py FILE GROUPS QUERY_BLOCKS KEY_BLOCKS
cat >"$work/read_dump.py" <<EOF
import sys
sys.path.insert(0, "$here/../reference")
import safetensors_io
path, groups, query_blocks, key_blocks = sys.argv[1], *map(int, sys.argv[2:5])
tensors = safetensors_io.load(path)
assert sorted(tensors) == ["column_indices", "row_offsets"], sorted(tensors)
offsets, columns = tensors["row_offsets"], tensors["column_indices"]
assert str(offsets.dtype) == "torch.int32" and str(columns.dtype) == "torch.int32", (offsets.dtype, columns.dtype)
assert tuple(offsets.shape) == (groups, query_blocks + 1), tuple(offsets.shape)
assert columns.dim() == 2 and columns.shape[0] == groups, tuple(columns.shape)
assert columns.shape[1] == int(offsets[:, -1].max()), (tuple(columns.shape), offsets[:, -1])
for group in range(groups):
    row = offsets[group].tolist()
    assert row[0] == 0 and all(a <= b for a, b in zip(row, row[1:])), group
    used = columns[group, : row[-1]].tolist()
    assert all(0 <= c < key_blocks for c in used), group
    assert all(c == -1 for c in columns[group, row[-1]:].tolist()), group  # padding documented as -1
    for r in range(query_blocks):
        cells = used[row[r] : row[r + 1]]
        assert cells and all(a < b for a, b in zip(cells, cells[1:])), (group, r)
print(tuple(offsets.shape), tuple(columns.shape))
EOF
check "radial dump reads back: row_offsets [1, 541], column_indices [1, entries]" \
  "$python" "$work/read_dump.py" "$work/radial.safetensors" 1 540 540

# ---- a per-head plan: one layout per head, padded with -1 ----
cat >"$work/per_head.yaml" <<'EOF'
name: per-head
rules:
  - heads: [0, 3]
    mode: radial
    decay: 0.2
  - heads: [4, 7]
    mode: attention-tile
    reference_frames: 2
EOF
"$tool" --grid 6,16,16 --plan "$work/per_head.yaml" --steps 4 --step 1 --block 2 --heads 12 \
  --dump "$work/per_head.safetensors" >"$work/per_head.json" 2>"$work/per_head.err" || true
check "per-head site has three head groups" "$python" -c "
import json, sys
groups = json.load(open(sys.argv[1]))['heads']
assert [(g['first_head'], g['last_head'], g['mode']) for g in groups] == \
    [(0, 3, 'radial'), (4, 7, 'attention-tile'), (8, 11, 'dense')], groups
" "$work/per_head.json"
check "per-head dump reads back: row_offsets [12, 13], one group per head" \
  "$python" "$work/read_dump.py" "$work/per_head.safetensors" 12 12 12

# ---- the table: steps × blocks, scaled schedule ----
"$tool" --grid 18,48,80 --plan radial --steps 10 --layers 4 >"$work/table.json" 2>"$work/table.err" || true
check "table: 10 steps × 4 blocks, steps 0-2 and block 0 dense, radial 0.2871 elsewhere" "$python" -c "
import json, sys
table = json.load(open(sys.argv[1]))['density']
assert len(table) == 10 and all(len(row) == 4 for row in table), table
for step, row in enumerate(table):
    for block, density in enumerate(row):
        assert density == (1.0 if step <= 2 or block == 0 else 0.2871), (step, block, density)
" "$work/table.json"

# ---- errors name the flag ----
expect_error() {  # expect_error NAME TEXT FLAGS...
  local name=$1 text=$2; shift 2
  if "$tool" "$@" >/dev/null 2>"$work/err"; then
    check "$name exits non-zero" false
  else
    check "$name names '$text'" grep -q -- "$text" "$work/err"
  fi
}
expect_error "bad grid" "--grid" --grid 18,48 --plan radial --steps 50
expect_error "grid of words" "--grid" --grid a,b,c --plan radial --steps 50
expect_error "zero grid" "--grid" --grid 0,48,80 --plan radial --steps 50
expect_error "missing plan" "--plan" --grid 18,48,80 --steps 50
expect_error "unknown preset" "--plan: 'radal' is neither a preset" --grid 18,48,80 --plan radal --steps 50
printf 'rules:\n  - mode: radial\n    decay: -1\n' >"$work/bad.yaml"
expect_error "bad plan file" "--plan: $work/bad.yaml:3: rule 1: decay" --grid 18,48,80 --plan "$work/bad.yaml" --steps 50
printf 'rules:\n  - blocks: [0, 39]\n    mode: dense\n' >"$work/big.yaml"
expect_error "plan beyond the model" "rule 1: blocks" --grid 18,48,80 --plan "$work/big.yaml" --steps 50
expect_error "steps" "--steps" --grid 18,48,80 --plan radial --steps 0
expect_error "step without block" "--step and --block" --grid 18,48,80 --plan radial --steps 50 --step 3
expect_error "step out of range" "--step must be in" --grid 18,48,80 --plan radial --steps 50 --step 50 --block 1
expect_error "block out of range" "--block must be in" --grid 18,48,80 --plan radial --steps 50 --step 1 --block 30
expect_error "dump without a site" "--dump needs" --grid 18,48,80 --plan radial --steps 50 --dump "$work/x.safetensors"
expect_error "too many reference frames" "--grid 2,48,80" --grid 2,48,80 --plan attention-tile --steps 50 --step 20 \
  --block 3
echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
