#!/usr/bin/env bash
# Prints the Debian packages that hold the shared libraries BINARY... load (as `ldd` resolves them on
# this machine), one a line, sorted: what a runtime image built on the same Debian release must install.
# Libraries that no Debian package holds (CUDA from NVIDIA's repository is a package too, so this is
# only a build-tree library or a driver library) are listed on stderr and left out.
# Usage: runtime-packages.sh BINARY...
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u | while read -r library; do
  # dpkg knows the path a package installed, which may be the /lib or /usr/lib spelling of it.
  real=$(readlink -f "$library")
  package=$(dpkg-query -S "$library" "$real" "${library#/usr}" "/usr$library" 2>/dev/null | head -n1 | cut -d: -f1) || true
  if [ -n "$package" ]; then echo "$package"; else echo "runtime-packages: no package holds $library" >&2; fi
done | sort -u
