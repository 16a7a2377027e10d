#!/usr/bin/env python3
"""Turns what the GPU runs print into result files, through bench/write_result.py (same header, same folder).

  convert_results.py gtest --gtest-json FILE [--log FILE] --exit-status N --name cuda_backend_test_{gpu}
      GoogleTest's --gtest_output=json -> counts (ran, passed, failed, skipped, disabled), each test's
      result and time, the properties tests record (RecordProperty: relative L2 values) and the
      "...: relative L2 X" lines of the log. Exits 1, after writing, when the binary failed, no test
      ran, or any test failed or was skipped: a GPU run that skipped its tests is not a pass.

  convert_results.py generate-log --log FILE --exit-status N --wall-s S --name pipeline_1.3b_480p_{gpu} [--shape K=V]...
      the stderr of one `zoetrope generate` (cli/generate_command.cc): the "loaded ... in X s" line,
      the plain progress lines "denoise ... k/N steps ... t=T  X s/step" (at most one a second, so not
      every step) and the last line "text X s, denoise X s (X s/step), decode X s, write X s"
      -> seconds per stage; samples = [end-to-end wall time of the process, as the script measured it].
      Exits 1 (and writes nothing) when the run failed or its timing line is missing.

  convert_results.py dit-bench --json FILE --exit-status N --warmup W --iterations I --name ... [--baseline FILE]
      the JSON line of zoetrope-dit-bench (bench/dit_bench.cc). It prints the median and the minimum of
      its timed forwards, not every sample: the file gets median/min from it and `samples` only once the
      binary prints `samples_s`. --baseline: a dit_baseline.py result of the same shape, for ratios.

  convert_results.py fidelity --report FILE --exit-status N --name attention_fidelity_..._{gpu} [--shape K=V]...
      the JSON report of zoetrope-attention-fidelity (worker/tools/attention_fidelity_main.cc): block density,
      per (step, block) attention relative L2 against dense on the same inputs, final-latent relative L2.

Common: --shape KEY=VALUE, --field KEY=VALUE (JSON where it parses), --results-dir, --commit.
"""
import argparse
import json
import re
import sys

import write_result

GTEST_STANDARD_KEYS = {"name", "file", "line", "status", "result", "timestamp", "time", "classname", "failures",
                       "value_param", "type_param"}


def number_or_text(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def gtest(args, fields):
    try:
        with open(args.gtest_json) as file:
            report = json.load(file)
    except (OSError, ValueError) as error:
        print(f"convert_results.py gtest: {args.gtest_json}: {error} (exit status {args.exit_status})", file=sys.stderr)
        return 1
    tests = []
    counts = {"ran": 0, "passed": 0, "failed": 0, "skipped": 0, "disabled": 0}
    properties = {}
    for suite in report.get("testsuites", []):
        for case in suite.get("testsuite", []):
            name = f"{suite['name']}.{case['name']}"
            failures = [failure.get("failure", "") for failure in case.get("failures", [])]
            if case.get("status") == "NOTRUN" or name.split(".")[-1].startswith("DISABLED_"):
                outcome = "disabled"
            elif case.get("result") == "SKIPPED":
                outcome = "skipped"
            elif failures:
                outcome = "failed"
            else:
                outcome = "passed"
            if outcome != "disabled":
                counts["ran"] += 1
            counts[outcome] += 1
            entry = {"name": name, "outcome": outcome, "time": case.get("time")}
            recorded = {key: number_or_text(value) for key, value in case.items() if key not in GTEST_STANDARD_KEYS}
            if recorded:
                entry["properties"] = recorded
                properties.update({f"{name}.{key}": value for key, value in recorded.items()})
            if failures:
                entry["failures"] = [text[:2000] for text in failures]
            tests.append(entry)
    printed = {}
    if args.log:
        try:
            with open(args.log, errors="replace") as file:
                for line in file:
                    match = re.match(r"^(.*\S):\s*relative L2\s+([0-9.eE+\-]+)\s*$", line.strip())
                    if match:
                        printed[match.group(1)] = float(match.group(2))
        except OSError as error:
            print(f"convert_results.py gtest: {args.log}: {error}", file=sys.stderr)
    problems = []
    if args.exit_status != 0:
        problems.append(f"the test binary exited with status {args.exit_status}")
    if counts["ran"] == 0:
        problems.append("no test ran")
    if counts["failed"]:
        problems.append(f"{counts['failed']} failed")
    if counts["skipped"]:
        problems.append(f"{counts['skipped']} skipped (a GPU run must run every test)")
    fields.update({
        "binary": args.binary,
        "exit_status": args.exit_status,
        "ok": not problems,
        "problems": problems,
        **counts,
        "gtest_totals": {key: report.get(key) for key in ("tests", "failures", "disabled", "errors", "time")},
        "recorded_properties": properties,
        "printed_relative_l2": printed,
        "tests": tests,
    })
    path = write_result.write(args.name, fields, shape=args.shape_values, directory=args.results_dir,
                              commit_value=args.commit)
    print(f"{path}: {counts['ran']} ran, {counts['passed']} passed, {counts['failed']} failed, "
          f"{counts['skipped']} skipped, {counts['disabled']} disabled")
    if problems:
        print("convert_results.py gtest: FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


def generate_log(args, fields):
    if args.exit_status != 0:
        print(f"convert_results.py generate-log: zoetrope generate exited with status {args.exit_status}; "
              f"no result written (see {args.log})", file=sys.stderr)
        return 1
    with open(args.log, errors="replace") as file:
        text = file.read()
    stages = {}
    loaded = re.findall(r"^loaded .* in ([0-9.]+) s on (\S+)\s*$", text, re.MULTILINE)
    if loaded:
        stages["load"] = float(loaded[-1][0])
        fields["backend"] = loaded[-1][1]
    timing = re.findall(r"^text ([0-9.]+) s, denoise ([0-9.]+) s \(([0-9.]+) s/step\)"
                        r"(?:, decode ([0-9.]+) s, write ([0-9.]+) s)?\s*$", text, re.MULTILINE)
    if not timing:
        print(f"convert_results.py generate-log: {args.log}: no 'text X s, denoise X s ...' line", file=sys.stderr)
        return 1
    text_s, denoise_s, per_step, decode_s, write_s = timing[-1]
    stages.update({"text": float(text_s), "denoise": float(denoise_s), "denoise_per_step_mean": float(per_step)})
    if decode_s:
        stages.update({"vae_decode": float(decode_s), "video_write": float(write_s)})
    stages["wall_end_to_end"] = args.wall_s
    attention = re.findall(r"^attention (\S+): mean block density ([0-9.]+)\s*$", text, re.MULTILINE)
    if attention:
        fields["attention"] = attention[-1][0]
        fields["attention_block_density"] = float(attention[-1][1])
    # Plain progress lines (stderr is a file here): "denoise  42% 21/50 steps  ...  t=981  1.032 s/step".
    steps = {}
    for done, total, seconds in re.findall(r"^denoise\s+\d+% (\d+)/(\d+) steps .*t=-?\d+\s+([0-9.]+) s/step\s*$",
                                           text, re.MULTILINE):
        steps[int(done)] = float(seconds)
    fields["stages_s"] = stages
    fields["stages_note"] = ("load: safetensors to the device (from the 'loaded' line); text: umT5, prompt and "
                             "negative prompt; vae_decode: chunked decode; video_write: MP4 (libx264, CPU); "
                             "wall_end_to_end: the whole process as the script timed it, load included")
    if steps:
        per_step_summary = write_result.summary([steps[step] for step in sorted(steps)])
        del per_step_summary["runs"]
        per_step_summary["steps"] = sorted(steps)
        per_step_summary["note"] = "steps the progress line reported (at most one line a second)"
        fields["denoise_step_s"] = per_step_summary
    path = write_result.write(args.name, fields, samples=[args.wall_s], shape=args.shape_values,
                              directory=args.results_dir, commit_value=args.commit)
    print(f"{path}: " + ", ".join(f"{key} {value:.3f} s" for key, value in stages.items()))
    return 0


def dit_bench(args, fields):
    lines = []
    try:
        with open(args.json, errors="replace") as file:
            lines = [line for line in file if line.lstrip().startswith("{")]
    except OSError as error:
        print(f"convert_results.py dit-bench: {args.json}: {error}", file=sys.stderr)
    if args.exit_status != 0 or not lines:
        print(f"convert_results.py dit-bench: zoetrope-dit-bench exited with status {args.exit_status}, "
              f"{len(lines)} JSON lines in {args.json}; no result written", file=sys.stderr)
        return 1
    measured = json.loads(lines[-1])
    fields.update({
        "warmup": args.warmup,
        "iterations": args.iterations,
        "backend": measured.get("device"),
        "model_config": measured.get("config"),
        "tokens": measured.get("tokens"),
        "layers": measured.get("layers"),
        "tflop": measured.get("tflop"),
        "tflops": measured.get("tflops"),
        "peak_gib": measured.get("peak_gib"),
        "attention": measured.get("attention", "dense"),
        "attention_step": measured.get("step"),
        "attention_block_density": measured.get("block_density"),
        "timed_forward_cuda_mallocs": measured.get("timed_forward_cuda_mallocs"),
        "timing": "synchronised wall clock per forward, each at a new timestep, after the warm-up forwards",
    })
    samples = measured.get("samples_s")
    if samples is None:
        fields.update({"unit": "s", "median": measured["median_s"], "min": measured["min_s"], "max": None,
                       "spread_note": "zoetrope-dit-bench prints the median and the minimum only"})
    if args.baseline:
        try:
            with open(args.baseline) as file:
                baseline = json.load(file)
            median = measured["median_s"]
            ratios = {}
            for label, variant in baseline.get("variants", {}).items():
                if isinstance(variant, dict) and variant.get("median_s"):
                    ratios[f"speedup_vs_pytorch_{label}"] = variant["median_s"] / median
            fields["baseline"] = {"file": args.baseline.rsplit("/", 1)[-1], **ratios}
        except (OSError, ValueError, KeyError) as error:
            fields["baseline"] = {"error": str(error)[:300]}
    path = write_result.write(args.name, fields, samples=samples, shape=args.shape_values, directory=args.results_dir,
                              commit_value=args.commit)
    print(f"{path}: median {measured['median_s']} s, {measured.get('tflops')} TFLOP/s, peak {measured.get('peak_gib')} GiB")
    return 0


def fidelity(args, fields):
    if args.exit_status != 0:
        print(f"convert_results.py fidelity: zoetrope-attention-fidelity exited with status {args.exit_status}; "
              f"no result written (see {args.report})", file=sys.stderr)
        return 1
    with open(args.report) as file:
        report = json.load(file)
    # Reports written before the tool named its backend "backend" called it "device", which is the header's.
    if "device" in report:
        report.setdefault("backend", report.pop("device"))
    fields.update(report)
    path = write_result.write(args.name, fields, shape=args.shape_values, directory=args.results_dir,
                              commit_value=args.commit)
    errors = report["attention_relative_l2"]
    print(f"{path}: block density {report['block_density']:.4f}, worst attention relative L2 {errors['worst']}, "
          f"final latent relative L2 {report['final_latent_relative_l2']}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def common(command):
        command.add_argument("--name", required=True, help="result file name without .json ({gpu} = device tag)")
        command.add_argument("--exit-status", type=int, required=True, help="exit status of the measured process")
        command.add_argument("--shape", action="append", metavar="KEY=VALUE")
        command.add_argument("--field", action="append", metavar="KEY=VALUE")
        command.add_argument("--results-dir", default=None)
        command.add_argument("--commit", default=None)
        return command

    test = common(commands.add_parser("gtest", help="a GoogleTest JSON report"))
    test.add_argument("--gtest-json", required=True)
    test.add_argument("--log", default=None, help="the binary's stdout, for printed 'relative L2' lines")
    test.add_argument("--binary", default="cuda_backend_test")
    generate = common(commands.add_parser("generate-log", help="the stderr of zoetrope generate"))
    generate.add_argument("--log", required=True)
    generate.add_argument("--wall-s", type=float, required=True, help="end-to-end seconds of the process")
    dit = common(commands.add_parser("dit-bench", help="the JSON line of zoetrope-dit-bench"))
    dit.add_argument("--json", required=True)
    dit.add_argument("--warmup", type=int, required=True)
    dit.add_argument("--iterations", type=int, required=True)
    dit.add_argument("--baseline", default=None, help="dit_baseline.py's result of the same shape")
    fidelity_command = common(commands.add_parser("fidelity", help="the report of zoetrope-attention-fidelity"))
    fidelity_command.add_argument("--report", required=True)
    args = parser.parse_args()
    args.shape_values = write_result.parse_pairs(args.shape, "--shape") if args.shape else None
    fields = write_result.parse_pairs(args.field, "--field")
    handler = {"gtest": gtest, "generate-log": generate_log, "dit-bench": dit_bench, "fidelity": fidelity}[args.command]
    return handler(args, fields)


if __name__ == "__main__":
    sys.exit(main())
