#!/usr/bin/env bash
# zoetrope-attention-fidelity on the tiny model: a dense plan reproduces dense exactly (every error 0);
# the radial preset computes fewer blocks, leaves its dense steps and its dense first block exact, moves
# the other calls' outputs and the final latent by a finite, non-zero amount; bad flags are named.
# usage: attention_fidelity_test.sh TOOL MODEL_FOLDER PYTHON WORK_DIR
set -euo pipefail
tool=$1 model=$2 python=$3 work=$4
rm -rf "$work" && mkdir -p "$work"
failures=0 passed=0
check() {  # check NAME CONDITION...
  local name=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok   $name"; else failures=$((failures + 1)); echo "FAIL $name"; fi
}
# 33 frames at 256×256: 9 × 16 × 16 = 2,304 tokens, 18 blocks of 128; 6 steps.
request=(--model "$model" --width 256 --height 256 --frames 33 --steps 6 --seed 3)
for plan in dense radial; do
  if "$tool" "${request[@]}" --plan "$plan" -o "$work/$plan.json" >"$work/$plan.out" 2>"$work/$plan.err"; then
    check "$plan exits 0" true
  else
    check "$plan exits 0 ($(tail -3 "$work/$plan.err"))" false
  fi
done
check "dense plan: every error exactly 0, density 1" "$python" - "$work/dense.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
errors = [e for row in r["attention_relative_l2"]["per_step_block"] for e in row]
assert len(errors) == 6 * 2 and all(e == 0.0 for e in errors), errors
assert r["final_latent_relative_l2"] == 0.0 and r["block_density"] == 1.0, r
PY
check "radial: sparse calls differ, dense steps and block 0 exact, final latent moved" "$python" - "$work/radial.json" <<'PY'
import json, math, sys
r = json.load(open(sys.argv[1]))
grid = r["per_step_block"] if "per_step_block" in r else r["attention_relative_l2"]["per_step_block"]
assert r["grid_tokens"] == [9, 16, 16], r["grid_tokens"]
assert 0.0 < r["block_density"] < 1.0, r["block_density"]
# The preset is dense for the first 12 of 50 steps, scaled: steps 0 and 1 of 6; and in block 0.
for step, row in enumerate(grid):
    assert all(e is not None and math.isfinite(e) for e in row), row
    assert row[0] == 0.0, (step, row)
    if step < 2:
        assert row[1] == 0.0, (step, row)
    else:
        assert 0.0 < row[1] < 1.0, (step, row)
final = r["final_latent_relative_l2"]
assert final is not None and 0.0 < final < 1.0, final
PY
if "$tool" "${request[@]}" --plan no-such-plan -o "$work/x.json" >/dev/null 2>"$work/bad.err"; then
  check "unknown plan exits non-zero" false
else
  check "unknown plan names --plan" grep -q -- "--plan" "$work/bad.err"
fi
echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
