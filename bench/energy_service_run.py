#!/usr/bin/env python3
"""Jobs through a real Zoetrope service on the GPU machine, for the energy check and the scaling study
(issue 13; scripts/device/check-energy.sh and scripts/device/bench-energy-scaling.sh run this).

Starts `zoetrope serve --embedded` (scheduler and one CUDA worker in one process), submits jobs with the
CLI and reads each finished job's measurements and estimate (`zoetrope get --json`). Standard library only
(the GPU machine has no matplotlib: bench/energy_scaling_plot.py draws the plots from the JSON here).

  check    one warm-up job, then jobs whose GPU energy (NVML energy counter, read by the worker) is compared
           with an independent reading: `nvidia-smi --query-gpu=power.draw.instant` sampled every 20 ms by
           another process and integrated (trapezoids) over the worker's part of the job, [start,
           end − upload]. Passes when every job agrees within --tolerance (2 %). Also checks that the
           per-GPU counter on /metrics moved by the jobs' energy. -> energy_check_<gpu>.json
  scaling  latency and energy against frames, resolution and steps, with the estimate made at submission
           and its error. -> energy_scaling_<gpu>.json

  energy_service_run.py MODE --zoetrope BIN --model DIR [--gpu 0] [--tolerance 0.02]
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import write_result  # noqa: E402


def parse_time(text):
    """RFC 3339 (the protobuf JSON of a Timestamp, nanoseconds allowed) -> seconds since the epoch."""
    match = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z", text)
    if not match:
        raise ValueError(f"not a timestamp: {text!r}")
    whole = datetime.datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.timezone.utc)
    fraction = float("0." + match.group(2)) if match.group(2) else 0.0
    return whole.timestamp() + fraction


class Service:
    def __init__(self, zoetrope, model, workdir, device="cuda", attention="dense"):
        self.zoetrope = zoetrope
        shutil.rmtree(workdir, ignore_errors=True)
        os.makedirs(workdir)
        self.log_path = os.path.join(workdir, "serve.log")
        self.process = subprocess.Popen(
            [zoetrope, "serve", "--embedded", "--device", device, "--model", model, "--listen", "127.0.0.1:0",
             "--metrics_port", "0", "--data_dir", os.path.join(workdir, "data"), "--attention", attention],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            log = open(self.log_path).read()
            found = re.search(r"model (\S+), listening on port (\d+)(?:, /metrics on port (\d+))?", log)
            if found:
                self.model = found.group(1)
                self.port, self.metrics_port = int(found.group(2)), int(found.group(3) or 0)
                return
            if self.process.poll() is not None:
                raise SystemExit("zoetrope serve exited:\n" + log)
            time.sleep(0.2)
        raise SystemExit("zoetrope serve did not start in 300 s:\n" + open(self.log_path).read())

    def run(self, width, height, frames, steps, seed=0, timeout=600):
        """Submits one job and returns (the job at submission, the finished job)."""
        submitted = subprocess.run(
            [self.zoetrope, "submit", "--server", f"127.0.0.1:{self.port}", "--model", self.model, "--prompt", "energy", "--width",
             str(width), "--height", str(height), "--frames", str(frames), "--steps", str(steps), "--seed",
             str(seed), "--json"], capture_output=True, timeout=60)
        if submitted.returncode != 0:
            raise SystemExit(f"submit failed: {submitted.stderr.decode()}")
        job = json.loads(submitted.stdout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = subprocess.run([self.zoetrope, "get", job["id"], "--server", f"127.0.0.1:{self.port}", "--json"],
                                 capture_output=True, timeout=60)
            if got.returncode == 0:
                try:
                    final = json.loads(got.stdout)
                except ValueError:
                    final = {}
                if final.get("state") not in (None, "JOB_STATE_QUEUED", "JOB_STATE_RUNNING"):
                    if final["state"] != "JOB_STATE_SUCCEEDED":
                        raise SystemExit(f"job failed: {json.dumps(final)}\n" + open(self.log_path).read()[-4000:])
                    return job, final
            time.sleep(0.25)
        raise SystemExit(f"job {job['id']} did not finish in {timeout} s")

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            return response.read().decode()

    def close(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()


class PowerSampler:
    """nvidia-smi in its own process, sampling one GPU's power every 20 ms. Each sample carries nvidia-smi's
    own timestamp (local time of this machine, millisecond resolution), so buffering of its output pipe
    cannot shift the samples in time."""

    def __init__(self, gpu):
        field = "power.draw.instant"
        probe = subprocess.run(["nvidia-smi", "-i", str(gpu), f"--query-gpu={field}", "--format=csv,noheader,nounits"],
                               capture_output=True, text=True)
        if probe.returncode != 0 or not re.match(r"^\s*[\d.]+\s*$", probe.stdout):
            field = "power.draw"  # older drivers: the averaged reading
        self.field = field
        self.samples = []
        self.process = subprocess.Popen(
            ["nvidia-smi", "-i", str(gpu), f"--query-gpu=timestamp,{field}", "--format=csv,noheader,nounits",
             "-lms", "20"],
            stdout=subprocess.PIPE, text=True, bufsize=1)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        for line in self.process.stdout:
            stamp, _, watts = line.strip().rpartition(",")
            try:
                when = datetime.datetime.strptime(stamp.strip(), "%Y/%m/%d %H:%M:%S.%f").timestamp()
                self.samples.append((when, float(watts)))
            except ValueError:
                pass  # "[N/A]" or a header

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)
        self.thread.join(timeout=10)

    def integrate(self, start, end):
        """Joules between two wall-clock times, linear between samples."""
        points = self.samples
        total = 0.0
        for (t0, p0), (t1, p1) in zip(points, points[1:]):
            lo, hi = max(t0, start), min(t1, end)
            if hi <= lo:
                continue
            slope = (p1 - p0) / (t1 - t0) if t1 > t0 else 0.0
            total += (p0 + slope * (lo - t0) + p0 + slope * (hi - t0)) / 2 * (hi - lo)
        return total

    def interval(self):
        gaps = [b[0] - a[0] for a, b in zip(self.samples, self.samples[1:])]
        return sorted(gaps)[len(gaps) // 2] if gaps else None


def gpu_counter(metrics_text, gpu):
    match = re.search(r'^zoetrope_worker_gpu_energy_joules_total\{gpu="%s"\} (\S+)$' % gpu, metrics_text, re.M)
    return float(match.group(1)) if match else 0.0


def job_row(submitted, finished):
    request, measured, estimate = finished["request"], finished.get("measurements", {}), submitted.get("estimate", {})
    run, energy = measured.get("run_seconds", 0.0), measured.get("gpu_energy_joules", 0.0)
    row = {
        "width": request["width"], "height": request["height"], "frames": request["frames"],
        "steps": request["steps"],
        "tokens": ((request["frames"] - 1) // 4 + 1) * (request["height"] // 16) * (request["width"] // 16),
        "run_s": run, "gpu_energy_j": energy, "energy_source": measured.get("energy_source"),
        "text_s": measured.get("text_seconds", 0.0), "denoise_s": measured.get("denoise_seconds", 0.0),
        "decode_s": measured.get("decode_seconds", 0.0), "video_encode_s": measured.get("video_encode_seconds", 0.0),
        "upload_s": measured.get("upload_seconds", 0.0),
        "text_j": measured.get("text_energy_joules", 0.0), "denoise_j": measured.get("denoise_energy_joules", 0.0),
        "decode_j": measured.get("decode_energy_joules", 0.0),
        "video_encode_j": measured.get("video_encode_energy_joules", 0.0),
        "estimate_run_s": estimate.get("run_seconds", 0.0), "estimate_energy_j": estimate.get("gpu_energy_joules", 0.0),
        "estimate_tflop": estimate.get("tera_flops", 0.0), "calibration_jobs": estimate.get("calibration_jobs", 0),
    }
    row["run_error"] = (row["estimate_run_s"] - run) / run if run > 0 else None
    row["energy_error"] = (row["estimate_energy_j"] - energy) / energy if energy > 0 else None
    return row


def check(arguments, service):
    service.run(832, 480, 17, 4, seed=1)  # warm-up: kernels, allocator, the estimator's first calibration
    sampler = PowerSampler(arguments.gpu)
    time.sleep(1.0)
    counter_before = gpu_counter(service.metrics(), arguments.gpu)
    rows = []
    try:
        for index, (width, height, frames, steps) in enumerate(arguments.check_jobs):
            submitted, finished = service.run(width, height, frames, steps, seed=10 + index)
            measured = finished["measurements"]
            start = parse_time(finished["start_time"])
            end = parse_time(finished["end_time"]) - measured.get("upload_seconds", 0.0)
            time.sleep(0.5)  # let the sampler pass the end of the window
            independent = sampler.integrate(start, end)
            row = job_row(submitted, finished)
            row.update(window_s=end - start, independent_j=independent,
                       relative_difference=(row["gpu_energy_j"] - independent) / independent if independent else None)
            row["phase_energy_sum_j"] = row["text_j"] + row["denoise_j"] + row["decode_j"] + row["video_encode_j"]
            rows.append(row)
            print(f"{width}x{height}x{frames}, {steps} steps: job {row['gpu_energy_j']:.1f} J "
                  f"({row['energy_source']}), nvidia-smi {independent:.1f} J over {end - start:.2f} s: "
                  f"{100 * (row['relative_difference'] or 0):+.2f} %", flush=True)
    finally:
        sampler.stop()
    counter_after = gpu_counter(service.metrics(), arguments.gpu)
    job_sum = sum(row["gpu_energy_j"] for row in rows)
    passed = all(row["energy_source"] == "nvml_energy_counter" and row["relative_difference"] is not None and
                 abs(row["relative_difference"]) <= arguments.tolerance for row in rows)
    # The exposition prints a limited number of digits: agree to 1e-4.
    counter_ok = job_sum > 0 and abs((counter_after - counter_before) - job_sum) <= 1e-4 * job_sum + 1e-3
    path = write_result.write(
        "energy_check_{gpu}",
        {"jobs": rows, "independent_reading": f"nvidia-smi --query-gpu={sampler.field} every 20 ms (another process), "
                                             "trapezoids over [start_time, end_time - upload_seconds]",
         "sample_interval_s": sampler.interval(), "tolerance": arguments.tolerance, "passed": passed,
         "metrics_gpu_counter_delta_j": counter_after - counter_before, "metrics_counter_matches_jobs": counter_ok,
         "weights": "random bf16 1.3B (zoetrope-mkweights)"},
        shape={"model": "wan2.1-t2v-1.3b", "gpu": arguments.gpu})
    print(path)
    return 0 if passed and counter_ok else 1


def scaling(arguments, service):
    rows = []
    seen = set()
    if arguments.smoke:
        sweeps = {"frames": [(64, 64, frames, 2) for frames in (1, 5)], "steps": [(64, 64, 5, steps) for steps in (2, 4)],
                  "resolution": [(64, 64, 1, 2), (128, 64, 1, 2)]}
    else:
        service.run(832, 480, 17, 4, seed=1)  # warm-up
        sweeps = {
            "frames": [(832, 480, frames, 10) for frames in (17, 33, 49, 81)],
            "steps": [(832, 480, 33, steps) for steps in (10, 20, 40)],
            "resolution": [(480, 272, 17, 10), (832, 480, 17, 10), (1280, 720, 17, 10)],
        }
    for sweep, jobs in sweeps.items():
        for index, shape in enumerate(jobs):
            submitted, finished = service.run(*shape, seed=100 + index)
            row = job_row(submitted, finished)
            row["sweep"] = sweep
            row["repeat"] = shape in seen
            seen.add(shape)
            rows.append(row)
            print(f"{sweep}: {shape[0]}x{shape[1]}x{shape[2]}, {shape[3]} steps: {row['run_s']:.2f} s, "
                  f"{row['gpu_energy_j']:.0f} J; estimate {row['estimate_run_s']:.2f} s / "
                  f"{row['estimate_energy_j']:.0f} J from {row['calibration_jobs']} jobs", flush=True)
    path = write_result.write(
        "energy_scaling_{gpu}", {"jobs": rows, "weights": "random bf16 1.3B (zoetrope-mkweights)",
                                 "note": "estimates are per configuration and calibrate as the sweep goes: "
                                         "calibration_jobs says how many finished jobs each quote had"},
        shape={"model": "wan2.1-t2v-1.3b", "attention": "dense", "guidance": 5})
    print(path)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("check", "scaling"))
    parser.add_argument("--zoetrope", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--workdir", default="/tmp/zoetrope-energy")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true",
                        help="scaling: tiny shapes, for checking this script on the CPU with the tiny model")
    arguments = parser.parse_args()
    # Jobs of about 10-30 s on an H200, so that the edges of the window (tens of ms) stay far below 2 %.
    arguments.check_jobs = [(832, 480, 33, 20), (832, 480, 49, 30)]
    service = Service(arguments.zoetrope, arguments.model, arguments.workdir, arguments.device)
    try:
        return check(arguments, service) if arguments.mode == "check" else scaling(arguments, service)
    finally:
        service.close()


if __name__ == "__main__":
    sys.exit(main())
