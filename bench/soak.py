#!/usr/bin/env python3
"""Soak benchmark of the scheduler (not a CI test): a real zoetrope-scheduler on 127.0.0.1 holding
`--jobs` queued jobs (1,000) with `--watchers` WatchJob streams (100) open for `--minutes` (10), while a
steady client load (GetJob at `--getjob_rate` per second on random jobs, plus `--churn` submissions and as
many cancellations per second so the queue stays full) runs. No worker is started, so the jobs stay queued:
this measures the scheduler's own state, not generation.

Per minute it records the scheduler's resident memory (VmRSS from /proc, sampled every 5 s: last and max of
the minute) and the GetJob latency p50/p99 (client-side, wall clock, over every call of that minute).
Writes bench/results/<name>.json through bench/write_result.py and prints a Markdown table for bench/README.md.

Needs Debian's /usr/bin/python3 (python3-grpcio, python3-grpc-tools: stubs are generated from proto/).
  nice -n 10 /usr/bin/python3 bench/soak.py --scheduler build/server/zoetrope-scheduler [--minutes 10]
"""

import argparse
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import write_result  # noqa: E402


def generate_stubs(proto_dir, out_dir):
    protos = ["zoetrope/v1/video_service.proto", "zoetrope/v1/worker_service.proto"]
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", "-I/usr/include",
                    f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos], check=True, timeout=120)
    sys.path.insert(0, out_dir)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--getjob_rate", type=float, default=50, help="GetJob calls per second")
    parser.add_argument("--churn", type=float, default=1, help="submissions (and cancellations) per second")
    parser.add_argument("--name", default="soak_scheduler_cpu")
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--proto-dir", default=os.path.join(HERE, "..", "proto"))
    arguments = parser.parse_args()

    workdir = arguments.workdir or tempfile.mkdtemp(prefix="zoetrope-soak-")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(os.path.join(workdir, "stubs"))
    generate_stubs(arguments.proto_dir, os.path.join(workdir, "stubs"))
    import grpc  # noqa: E402
    from zoetrope.v1 import video_service_pb2 as api  # noqa: E402
    from zoetrope.v1 import video_service_pb2_grpc as api_grpc  # noqa: E402

    ready = os.path.join(workdir, "scheduler.ready")
    log = open(os.path.join(workdir, "scheduler.log"), "ab")
    scheduler = subprocess.Popen(
        [arguments.scheduler, "--listen=127.0.0.1:0", f"--db={workdir}/data/jobs.db",
         f"--results_dir={workdir}/data/results", "--metrics_host=127.0.0.1", "--metrics_port=0",
         f"--ready_file={ready}", "--models=tiny", f"--queue_limit={arguments.jobs * 2}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(ready):
            if scheduler.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the scheduler did not start; see " + log.name)
            time.sleep(0.05)
        time.sleep(0.1)
        port = int(open(ready).read().split()[0])
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = api_grpc.VideoServiceStub(channel)

        def submit(index):
            return stub.SubmitJob(api.SubmitJobRequest(model="tiny", prompt=f"soak job {index}", width=128,
                                                       height=128, frames=1, steps=2), timeout=30).id

        started = time.monotonic()
        ids = [submit(index) for index in range(arguments.jobs)]
        fill_seconds = time.monotonic() - started
        rss_after_fill = rss_kib(scheduler.pid)
        lock = threading.Lock()
        stop = threading.Event()
        errors = []

        watch_streams = [0]  # WatchJob calls opened (a stream ends when its job is cancelled by the churn)

        def watch(job_id):
            while not stop.is_set():
                with lock:
                    watch_streams[0] += 1
                try:
                    for _ in stub.WatchJob(api.WatchJobRequest(id=job_id), timeout=30):
                        if stop.is_set():
                            return
                except grpc.RpcError as error:
                    if error.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED) \
                            and not stop.is_set():
                        errors.append(f"WatchJob: {error.code()} {error.details()}")
                        return
                # The churn cancelled the watched job (its stream ended with the final event): watch a job
                # that is still queued, so that `--watchers` streams stay open on live jobs rather than
                # re-reading a finished one in a loop.
                with lock:
                    job_id = random.choice(ids)

        watchers = [threading.Thread(target=watch, args=(ids[-1 - index % len(ids)],), daemon=True)
                    for index in range(arguments.watchers)]
        for thread in watchers:
            thread.start()

        latencies = []  # (minute, seconds) of every GetJob

        def load():
            period = 1.0 / arguments.getjob_rate
            next_call = time.monotonic()
            while not stop.is_set():
                with lock:
                    job_id = random.choice(ids)
                begin = time.monotonic()
                try:
                    stub.GetJob(api.GetJobRequest(id=job_id), timeout=30)
                except grpc.RpcError as error:
                    errors.append(f"GetJob: {error.code()} {error.details()}")
                end = time.monotonic()
                latencies.append((int((end - soak_start) // 60), end - begin))
                next_call += period
                time.sleep(max(0.0, next_call - time.monotonic()))

        def churn():
            counter = arguments.jobs
            while arguments.churn > 0 and not stop.wait(1.0 / arguments.churn):
                try:
                    new_id = submit(counter)
                    counter += 1
                    with lock:
                        old_id = ids.pop(0)
                        ids.append(new_id)
                    stub.CancelJob(api.CancelJobRequest(id=old_id), timeout=30)
                except grpc.RpcError as error:
                    errors.append(f"churn: {error.code()} {error.details()}")

        soak_start = time.monotonic()
        threads = [threading.Thread(target=load, daemon=True), threading.Thread(target=churn, daemon=True)]
        for thread in threads:
            thread.start()
        rss = []  # (minute, KiB)
        total = arguments.minutes * 60
        while time.monotonic() - soak_start < total:
            time.sleep(min(5.0, max(0.0, total - (time.monotonic() - soak_start))))
            if scheduler.poll() is not None:
                raise SystemExit("the scheduler exited during the soak; see " + log.name)
            rss.append((int((time.monotonic() - soak_start - 1e-6) // 60), rss_kib(scheduler.pid)))
        stop.set()
        for thread in threads:
            thread.join(timeout=35)
        queued = sum(1 for job in stub.ListJobs(api.ListJobsRequest(page_size=1000), timeout=30).jobs
                     if job.state == api.JOB_STATE_QUEUED)
    finally:
        if scheduler.poll() is None:
            scheduler.send_signal(signal.SIGKILL)
            scheduler.wait(timeout=10)

    minutes = []
    for minute in range(int(-(-total // 60))):
        minute_latency = [seconds * 1000 for index, seconds in latencies if index == minute]
        minute_rss = [kib for index, kib in rss if index == minute]
        if not minute_latency or not minute_rss:
            continue
        minutes.append({"minute": minute + 1, "getjob_calls": len(minute_latency),
                        "getjob_p50_ms": round(statistics.median(minute_latency), 3),
                        "getjob_p99_ms": round(percentile(minute_latency, 0.99), 3),
                        "rss_mib_last": round(minute_rss[-1] / 1024, 1),
                        "rss_mib_max": round(max(minute_rss) / 1024, 1)})
    fields = {"minutes": minutes, "fill_seconds": round(fill_seconds, 2),
              "rss_mib_after_fill": round(rss_after_fill / 1024, 1), "errors": errors[:20],
              "error_count": len(errors), "queued_first_page_at_end": queued,
              "watch_streams_opened": watch_streams[0],
              "method": "no worker; GetJob on random queued jobs at the given rate; each churn tick submits one job "
                        "and cancels the oldest; a watcher whose job was cancelled watches another queued job "
                        "(watchers start on the newest jobs); RSS = VmRSS of the scheduler every 5 s"}
    shape = {"jobs": arguments.jobs, "watchers": arguments.watchers, "minutes": arguments.minutes,
             "getjob_rate_per_s": arguments.getjob_rate, "churn_per_s": arguments.churn}
    path = write_result.write(arguments.name, fields=fields, shape=shape, directory=arguments.results_dir,
                              samples=[m["getjob_p99_ms"] for m in minutes], unit="ms (GetJob p99 per minute)")
    print(path)
    print("| minute | GetJob calls | p50 ms | p99 ms | RSS MiB (last) | RSS MiB (max) |")
    print("|---|---|---|---|---|---|")
    for m in minutes:
        print(f"| {m['minute']} | {m['getjob_calls']} | {m['getjob_p50_ms']} | {m['getjob_p99_ms']} | "
              f"{m['rss_mib_last']} | {m['rss_mib_max']} |")
    if errors:
        print(f"{len(errors)} errors, first: {errors[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
