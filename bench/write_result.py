#!/usr/bin/env python3
"""Writes one benchmark or test result as JSON: the one place every file in bench/results/ comes from.

Every document gets the same header: `benchmark` (the name), `commit`, `device`, `device_tag`, `date`
(UTC), `shape` (what was measured), and, when samples are given, `unit`, `samples`, `runs`, `median`,
`min`, `max` and `spread_pct` = 100 · (max − min) / median. Other fields are added as given.

  commit   --commit, else $ZOETROPE_COMMIT (the device scripts set it from the packed build's commit file:
           the GPU machine has no .git), else `git rev-parse HEAD` (+ "-dirty" when tracked files differ
           from HEAD), else "unknown".
  device   $ZOETROPE_DEVICE, else the first GPU's name from nvidia-smi, else the CPU ("x86_64, 2 cores").
  tag      $ZOETROPE_DEVICE_TAG, else derived from the device: "NVIDIA H200" -> h200, "NVIDIA H100 80GB
           HBM3" -> h100, "NVIDIA GeForce RTX 4090" -> rtx4090, a CPU -> cpu.
  folder   --results-dir, else $ZOETROPE_RESULTS_DIR, else $OUT/bench-results when $OUT is set (the GPU
           machine: what is under $OUT comes back), else bench/results/ of this checkout.
The name may hold "{gpu}", replaced by the tag: `pipeline_1.3b_480p_{gpu}` -> pipeline_1.3b_480p_h200.json.

As a module (the other bench/*.py scripts): `write_result.write(name, fields, samples=..., shape=...)`.
From the shell:
  write_result.py --name NAME [--samples 1.2,1.3,1.1] [--unit s] [--shape KEY=VALUE ...] [--field KEY=VALUE ...]
                  [--fields-json JSON_OR_@FILE] [--results-dir DIR] [--commit C]
  write_result.py --print-device-tag
VALUEs are read as JSON where they parse (numbers, lists, true/false/null), else kept as strings.
Prints the path of the file written.
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(command):
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() if completed.returncode == 0 else None


def commit(explicit=None):
    for value in (explicit, os.environ.get("ZOETROPE_COMMIT")):
        if value and value != "unknown":
            return value
    head = _run(["git", "-C", REPO, "rev-parse", "HEAD"])
    if not head:
        return "unknown"
    # Plumbing only (no index refresh, never writes): a file merely touched may read as modified.
    clean = subprocess.run(["git", "-C", REPO, "diff-index", "--quiet", "HEAD", "--"], capture_output=True)
    return head if clean.returncode == 0 else head + "-dirty"


def gpu_query():
    """(name, driver) of the first GPU, or None where nvidia-smi is missing or sees no GPU."""
    line = _run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"])
    if not line:
        return None
    name, _, driver = line.splitlines()[0].partition(",")
    return name.strip(), driver.strip()


def cpu_description():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def device():
    """(device name, extra fields) of where this runs."""
    if os.environ.get("ZOETROPE_DEVICE"):
        return os.environ["ZOETROPE_DEVICE"], {}
    gpu = gpu_query()
    if gpu:
        return gpu[0], {"driver": gpu[1]}
    return cpu_description(), {}


def device_tag(name=None):
    if os.environ.get("ZOETROPE_DEVICE_TAG"):
        return os.environ["ZOETROPE_DEVICE_TAG"]
    if name is None:
        name = device()[0]
    words = [word for word in re.split(r"[^a-z0-9]+", name.lower())
             if word and word not in ("nvidia", "geforce", "tesla", "quadro")]
    if "cores" in words:
        return "cpu"
    for index, word in enumerate(words):
        if word == "rtx" and index + 1 < len(words):
            return "rtx" + words[index + 1]
        if re.fullmatch(r"[a-z]*\d+[a-z]*", word):
            return word
    return "".join(words)[:16] or "unknown"


def results_dir(explicit=None):
    if explicit:
        return explicit
    if os.environ.get("ZOETROPE_RESULTS_DIR"):
        return os.environ["ZOETROPE_RESULTS_DIR"]
    if os.environ.get("OUT"):
        return os.path.join(os.environ["OUT"], "bench-results")
    return os.path.join(REPO, "bench", "results")


def summary(samples):
    """median, min, max and spread of a list of numbers (the file's `samples` in the order measured)."""
    values = [float(value) for value in samples]
    if not values:
        raise ValueError("no samples")
    if not all(math.isfinite(value) for value in values):
        raise ValueError(f"non-finite sample in {values}")
    median = statistics.median(values)
    result = {"samples": values, "runs": len(values), "median": median, "min": min(values), "max": max(values)}
    result["spread_pct"] = 100.0 * (result["max"] - result["min"]) / median if median else None
    return result


def header(name, commit_value=None, device_name=None):
    name_device, extra = (device_name, {}) if device_name else device()
    tag = device_tag(name_device)
    document = {
        "benchmark": re.sub(r"_?\{gpu\}", "", name),
        "commit": commit(commit_value),
        "device": name_device,
        "device_tag": tag,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    document.update(extra)
    return document


def finite_json(value):
    """Values JSON can hold: a non-finite float becomes the string "inf", "-inf" or "nan"."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def write(name, fields=None, samples=None, unit="s", shape=None, directory=None, commit_value=None, device_name=None,
          path=None):
    """Writes `name`.json (with {gpu} replaced) into the results folder, or to `path`; returns the path."""
    document = header(name, commit_value, device_name)
    if shape is not None:
        document["shape"] = shape
    if samples is not None:
        document["unit"] = unit
        document.update(summary(samples))
    for key, value in (fields or {}).items():
        if key in document and key != "shape":
            raise ValueError(f"field {key!r} would overwrite the header")
        document[key] = value
    if path is None:
        folder = results_dir(directory)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name.replace("{gpu}", document["device_tag"]) + ".json")
    text = json.dumps(finite_json(document), indent=2, allow_nan=False) + "\n"
    temporary = f"{path}.tmp.{os.getpid()}"
    with open(temporary, "w") as file:
        file.write(text)
    os.replace(temporary, path)
    return path


def parse_value(text):
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_pairs(pairs, flag):
    result = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise SystemExit(f"write_result.py: {flag} wants KEY=VALUE, got {pair!r}")
        result[key] = parse_value(value)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", help="file name without .json; {gpu} becomes the device tag")
    parser.add_argument("--samples", default=None, help="comma-separated measurements, in the order taken")
    parser.add_argument("--unit", default="s")
    parser.add_argument("--shape", action="append", metavar="KEY=VALUE")
    parser.add_argument("--field", action="append", metavar="KEY=VALUE")
    parser.add_argument("--fields-json", default=None, help="a JSON object of more fields, or @FILE")
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--commit", default=None)
    parser.add_argument("--print-device-tag", action="store_true", help="print the device tag and exit")
    args = parser.parse_args()
    if args.print_device_tag:
        print(device_tag())
        return 0
    if not args.name:
        parser.error("--name is required")
    fields = parse_pairs(args.field, "--field")
    if args.fields_json:
        text = args.fields_json
        if text.startswith("@"):
            with open(text[1:]) as file:
                text = file.read()
        more = json.loads(text)
        if not isinstance(more, dict):
            raise SystemExit("write_result.py: --fields-json must be a JSON object")
        fields.update(more)
    samples = None
    if args.samples is not None:
        samples = [float(value) for value in args.samples.split(",") if value.strip()]
    shape = parse_pairs(args.shape, "--shape") if args.shape else None
    print(write(args.name, fields, samples=samples, unit=args.unit, shape=shape, directory=args.results_dir,
                commit_value=args.commit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
