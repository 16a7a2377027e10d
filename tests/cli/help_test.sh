#!/usr/bin/env bash
# `zoetrope COMMAND --help` prints that command's flags (and only flags the command reads).
# Usage: help_test.sh ZOETROPE_BINARY
set -euo pipefail
zoetrope="$1"
failures=0

# expect COMMAND "flags it must list" "flags it must not list"
expect() {
  local command="$1" present="$2" absent="$3" output
  if ! output="$("$zoetrope" "$command" --help 2>&1)"; then
    echo "FAIL: zoetrope $command --help exited non-zero:"; echo "$output"; failures=$((failures + 1)); return
  fi
  if grep -q "No flags matched" <<<"$output"; then
    echo "FAIL: zoetrope $command --help: No flags matched"; failures=$((failures + 1))
  fi
  for flag in $present; do
    grep -q -- "^  --$flag " <<<"$output" || { echo "FAIL: $command --help lacks --$flag"; failures=$((failures + 1)); }
  done
  for flag in $absent; do
    if grep -q -- "^  --$flag " <<<"$output"; then echo "FAIL: $command --help lists --$flag"; failures=$((failures + 1)); fi
  done
}

expect generate "prompt width height frames steps device sp gpus output" "server token page_size"
expect serve    "embedded listen data_dir drain_timeout" "prompt server"
expect submit   "prompt width frames steps server token tls_ca watch priority deadline" "device page_size embedded"
expect watch    "server token reconnect_for" "prompt page_size"
expect get      "server json" "prompt"
expect list     "server state page_size page_token all json" "prompt"
expect cancel   "server token" "prompt json"
expect fetch    "server output reconnect_for" "prompt"
# -h works too, and a command's help does not run it (no server is listening here).
"$zoetrope" fetch -h | grep -q -- "^  --output " || { echo "FAIL: fetch -h"; failures=$((failures + 1)); }

if [ "$failures" -ne 0 ]; then echo "$failures failure(s)"; exit 1; fi
echo "cli help: every command lists its flags"
