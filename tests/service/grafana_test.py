"""The Grafana dashboard (deploy/grafana/dashboards/zoetrope.json) against a real service and a real
Prometheus (Debian package `prometheus`): jobs run through a scheduler and a CPU worker on 127.0.0.1, then
every target of every panel is evaluated through Prometheus's query API with the dashboard's variables
substituted. Each must parse, and each must return series, except the panels whose description says
"(GPU workers only)": they are checked to parse (a CPU worker measures no GPU energy and runs no
sequence-parallel group). Also checks the estimate and the energy fields of the jobs (issue 13).

  grafana_test.py --scheduler BIN --worker BIN --model DIR --workdir DIR --dashboard FILE
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from service_processes import Cluster, free_port, wait_for  # noqa: E402

GPU_ONLY = "(GPU workers only)"


def query(port, expression):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as error:  # 400: the expression does not parse; 503: not ready yet
        body = error.read().decode(errors="replace")
        try:
            answer = json.loads(body)
        except ValueError:
            answer = {"status": "error", "error": f"HTTP {error.code}: {body[:200]}"}
    return answer


def substitute(expression):
    # What Grafana puts in: every model, and a rate window that spans several 1 s scrapes.
    return expression.replace("$__rate_interval", "1m").replace('"$model"', '".*"')


def main():
    parser = argparse.ArgumentParser()
    for flag in ("--scheduler", "--worker", "--model", "--workdir", "--dashboard"):
        parser.add_argument(flag, required=True)
    arguments = parser.parse_args()
    if shutil.which("prometheus") is None:
        raise SystemExit("prometheus not found: apt-get install prometheus (scripts/install-deps.sh)")
    shutil.rmtree(arguments.workdir, ignore_errors=True)
    os.makedirs(arguments.workdir)
    dashboard = json.load(open(arguments.dashboard))
    cli = os.path.join(os.path.dirname(arguments.worker), "zoetrope")

    with Cluster(arguments.scheduler, arguments.worker, arguments.model, os.path.join(arguments.workdir, "cluster"),
                 scheduler_flags=("--price_per_gpu_hour=2.5", "--price_per_kwh=0.2", "--pue=1.3")) as cluster:
        port = free_port()
        config = os.path.join(arguments.workdir, "prometheus.yml")
        with open(config, "w") as file:
            file.write(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                "scrape_configs:\n"
                f"  - job_name: zoetrope-scheduler\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{cluster.metrics_port}']\n"
                f"  - job_name: zoetrope-worker\n    static_configs:\n"
                f"      - targets: ['127.0.0.1:{cluster.worker_metrics_port}']\n")
        log = open(os.path.join(arguments.workdir, "prometheus.log"), "wb")
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={arguments.workdir}/tsdb",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            def both_up():
                try:
                    up = query(port, "up").get("data", {}).get("result", [])
                except OSError:
                    return False
                return len(up) == 2 and all(sample["value"][1] == "1" for sample in up)
            wait_for(both_up, 60, "Prometheus to scrape both targets")

            # Two jobs while Prometheus watches, so that counters and histograms move inside the rate window;
            # the second is quoted from the first's calibration.
            jobs = []
            for seed in ("1", "2"):
                submitted = subprocess.run(
                    [cli, "submit", "--server", cluster.address, "--model", "tiny", "--prompt", "a dashboard",
                     "--width", "128", "--height", "128", "--frames", "5", "--steps", "3", "--seed", seed, "--json"],
                    capture_output=True, timeout=60)
                assert submitted.returncode == 0, submitted.stderr.decode()
                job = json.loads(submitted.stdout)
                estimate = job.get("estimate", {})
                assert estimate.get("run_seconds", 0) > 0 and estimate.get("tera_flops", 0) > 0, job
                assert estimate.get("configuration", "").startswith("tiny|cpu|dense|"), estimate

                def finished(job_id=job["id"]):
                    got = subprocess.run([cli, "get", job_id, "--server", cluster.address, "--json"],
                                         capture_output=True, timeout=30)
                    try:
                        final = json.loads(got.stdout) if got.returncode == 0 else {}
                    except ValueError:  # a partial answer while the job changes: ask again
                        final = {}
                    if final.get("state") in ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED"):
                        jobs.append(final)
                        return True
                    return False
                wait_for(finished, 120, f"job {job['id']}")
            for job in jobs:
                assert job["state"] == "JOB_STATE_SUCCEEDED", job
                measured = job["measurements"]
                # A CPU worker has no energy counter: it says so instead of reporting 0 J as a measurement.
                assert measured.get("energy_source") == "unavailable", measured
                assert measured.get("text_seconds", 0) > 0 and measured.get("decode_seconds", 0) > 0, measured
                assert measured.get("upload_seconds", 0) > 0, measured
                # gpus is 0 on the CPU backend, so GPU time costs nothing and energy is not billed.
                assert measured.get("cost_usd", 0) == 0, measured
            assert jobs[0]["estimate"].get("calibration_jobs", 0) == 0, jobs[0]["estimate"]
            assert jobs[1]["estimate"].get("calibration_jobs") == 1, jobs[1]["estimate"]

            def rate_window_has_jobs():
                result = query(port, 'sum(increase(zoetrope_jobs_finished_total{state="succeeded"}[1m]))')
                samples = result.get("data", {}).get("result", [])
                return samples and float(samples[0]["value"][1]) > 0
            wait_for(rate_window_has_jobs, 60, "the finished jobs in Prometheus")

            # Each scrape target is sampled on its own schedule: give every query a few scrapes to see the jobs
            # (a rate needs two samples of a series), then report what still fails.
            def evaluate():
                problems, count = [], 0
                for panel in dashboard["panels"]:
                    for target in panel["targets"]:
                        expression = substitute(target["expr"])
                        answer = query(port, expression)
                        count += 1
                        if answer.get("status") != "success":
                            problems.append(f"{panel['title']}: does not evaluate: {answer.get('error')}\n  {expression}")
                        elif not answer["data"]["result"] and GPU_ONLY not in panel["description"]:
                            problems.append(f"{panel['title']}: no series\n  {expression}")
                return problems, count
            try:
                wait_for(lambda: not evaluate()[0], 20, "every panel query to return series")
            except AssertionError:
                pass
            problems, checked = evaluate()
            assert not problems, "\n".join(problems)
        finally:
            prometheus.terminate()
            try:
                prometheus.wait(timeout=20)
            except subprocess.TimeoutExpired:
                prometheus.kill()
    print(f"grafana: {checked} queries of {len(dashboard['panels'])} panels evaluated against a live Prometheus")


if __name__ == "__main__":
    main()
