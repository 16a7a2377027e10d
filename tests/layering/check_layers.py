#!/usr/bin/env python3
"""Fails when a source file includes a header from a layer it may not depend on.

The layers (shared design.md, Layout) form a DAG that the folders show:

    common   kernels <- parallel <- worker
      ^                               ^
      +------------- server           |      (server and worker stand side by side)
                        ^             |
                        +---- cli ----+      (the only place that may include both)

`proto/` is the API: its generated headers (`zoetrope/v1/...`) may be included by worker, server and
cli. bench/ and tests/ sit outside the product and may include anything.

One narrow door: server/ may include a parallel/ header that reaches no kernels/ header, however
indirectly (the sparsity plan format, which the scheduler checks in requests without linking any kernel).

Usage: check_layers.py SOURCE_ROOT          checks the tree, prints every crossing, exits 1 on any
       check_layers.py --self-test          proves the check fails on a planted crossing
"""
import os
import re
import subprocess
import sys
import tempfile

# layer -> the layers its files may include (itself always allowed).
ALLOWED = {
    "common": set(),
    "kernels": set(),
    "parallel": {"kernels"},
    "worker": {"parallel", "kernels", "common", "proto"},
    "server": {"common", "proto"},
    "cli": {"worker", "server", "parallel", "kernels", "common", "proto"},
}
# The first path component of a quoted include names the layer; generated API headers live under
# zoetrope/ (proto/zoetrope/v1/*.proto).
INCLUDE_ROOT_TO_LAYER = {layer: layer for layer in ALLOWED}
INCLUDE_ROOT_TO_LAYER["zoetrope"] = "proto"
SOURCE_SUFFIXES = (".h", ".cc", ".cu", ".cuh", ".inc")
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"')


def source_files(root):
    """Tracked files when `root` is a git checkout (so build folders never count), else every file."""
    try:
        listed = subprocess.run(["git", "-C", root, "ls-files", "--cached", "--others", "--exclude-standard"],
                                check=True, capture_output=True, text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        listed = [os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names]
    return sorted(path for path in listed if path.endswith(SOURCE_SUFFIXES) and os.path.isfile(os.path.join(root, path)))


def project_includes(root, path):
    """The quoted includes of `path` that name a file of the tree."""
    found = []
    try:
        with open(os.path.join(root, path), encoding="utf-8", errors="replace") as handle:
            for line in handle:
                match = INCLUDE.match(line)
                if match and os.path.isfile(os.path.join(root, match.group(1))):
                    found.append(match.group(1))
    except OSError:
        pass
    return found


def reaches_kernels(root, header, seen=None):
    """Whether `header` includes a kernels/ header, directly or through other headers of the tree."""
    seen = set() if seen is None else seen
    if header in seen:
        return False
    seen.add(header)
    for included in project_includes(root, header):
        if included.startswith("kernels/") or reaches_kernels(root, included, seen):
            return True
    return False


def crossings(root):
    found = []
    for path in source_files(root):
        layer = path.split("/", 1)[0]
        if layer not in ALLOWED:
            continue
        with open(os.path.join(root, path), encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                match = INCLUDE.match(line)
                if not match:
                    continue
                target = INCLUDE_ROOT_TO_LAYER.get(match.group(1).split("/", 1)[0])
                if target is None or target == layer or target in ALLOWED[layer]:
                    continue
                if layer == "server" and target == "parallel" and not reaches_kernels(root, match.group(1)):
                    continue
                found.append(f"{path}:{number}: {layer}/ may not include {match.group(1)} ({target}/)")
    return found


def self_test():
    with tempfile.TemporaryDirectory() as root:
        planted = {
            "worker/ok.cc": '#include "kernels/backend.h"\n#include "common/log.h"\n#include "zoetrope/v1/x.pb.h"\n',
            "kernels/bad.cc": '#include "common/log.h"\n',
            "server/bad.cc": '#include "worker/worker_agent.h"\n',
            "worker/bad.h": '#  include "server/scheduler.h"\n',
            "common/bad.cc": '#include "zoetrope/v1/video_service.pb.h"\n',
            "cli/ok.cc": '#include "server/scheduler.h"\n#include "worker/worker_agent.h"\n',
            "parallel/plan.h": '#include "parallel/mode.h"\n',
            "parallel/mode.h": '#include <cstdint>\n',
            "parallel/layout.h": '#include "parallel/plan.h"\n#include "kernels/backend.h"\n',
            "kernels/backend.h": '\n',
            "server/ok.cc": '#include "parallel/plan.h"\n',
            "server/bad_layout.cc": '#include "parallel/layout.h"\n',
            "tests/ok.cc": '#include "server/scheduler.h"\n',
        }
        for path, text in planted.items():
            os.makedirs(os.path.join(root, os.path.dirname(path)), exist_ok=True)
            with open(os.path.join(root, path), "w", encoding="utf-8") as handle:
                handle.write(text)
        found = crossings(root)
        flagged = sorted({line.split(":", 1)[0] for line in found})
        expected = ["common/bad.cc", "kernels/bad.cc", "server/bad.cc", "server/bad_layout.cc", "worker/bad.h"]
        if flagged != expected:
            print(f"self-test FAILED: flagged {flagged}, expected {expected}")
            return 1
        print(f"self-test passed: {len(found)} planted crossings found, allowed includes accepted")
        return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) != 2:
        print(__doc__)
        return 2
    root = argv[1]
    files = source_files(root)
    found = crossings(root)
    for line in found:
        print(line)
    print(f"checked {len(files)} source files: {len(found)} layer crossings")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
