"""A real Prometheus (Debian package `prometheus`) scrapes the /metrics of a scheduler and a worker on
127.0.0.1 after a job ran; `promtool check metrics` lints both expositions (naming, units, types, help).

  prometheus_test.py --scheduler BIN --worker BIN --model DIR --workdir DIR
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from service_processes import Cluster, free_port, scrape, wait_for  # noqa: E402


def promtool_check(exposition, what):
    result = subprocess.run(["promtool", "check", "metrics"], input=exposition.encode(), capture_output=True,
                            timeout=60)
    problems = (result.stdout + result.stderr).decode().strip()
    assert result.returncode == 0 and not problems, f"promtool check metrics ({what}):\n{problems}"


def query(port, expression):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expression})
    with urllib.request.urlopen(url, timeout=5) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--workdir", required=True)
    arguments = parser.parse_args()
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found: apt-get install prometheus (scripts/install-deps.sh)")
    shutil.rmtree(arguments.workdir, ignore_errors=True)
    os.makedirs(arguments.workdir)

    with Cluster(arguments.scheduler, arguments.worker, arguments.model,
                 os.path.join(arguments.workdir, "cluster")) as cluster:
        # One job through the service so every family has samples.
        submitted = subprocess.run(
            [os.path.join(os.path.dirname(arguments.worker), "zoetrope"), "submit", "--server", cluster.address,
             "--model", "tiny", "--prompt", "metrics", "--width", "128", "--height", "128", "--frames", "1",
             "--steps", "3", "--watch"], capture_output=True, timeout=120)
        assert submitted.returncode == 0, submitted.stderr.decode()

        scheduler_metrics = scrape(cluster.metrics_port)
        worker_metrics = scrape(cluster.worker_metrics_port)
        promtool_check(scheduler_metrics, "scheduler")
        promtool_check(worker_metrics, "worker")
        assert "job-" not in scheduler_metrics + worker_metrics, "job ids must not be labels"

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
        checked = subprocess.run(["promtool", "check", "config", config], capture_output=True, timeout=60)
        assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
        log = open(os.path.join(arguments.workdir, "prometheus.log"), "wb")
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={arguments.workdir}/tsdb",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT)
        try:
            def both_up():
                try:
                    up = query(port, "up")
                except OSError:
                    return False
                return len(up) == 2 and all(sample["value"][1] == "1" for sample in up)
            wait_for(both_up, 60, "Prometheus to scrape both targets")

            def value(expression):
                samples = query(port, expression)
                return float(samples[0]["value"][1]) if samples else None
            wait_for(lambda: value('zoetrope_jobs_finished_total{state="succeeded"}') == 1.0, 30,
                     "zoetrope_jobs_finished_total in Prometheus")
            assert value('zoetrope_worker_jobs_total{status="succeeded"}') == 1.0
            assert value("sum(zoetrope_queue_depth)") == 0.0
            assert value("zoetrope_job_run_duration_seconds_count") == 1.0
            assert value("zoetrope_worker_step_duration_seconds_count") == 3.0
            assert value('zoetrope_workers{state="idle"}') == 1.0
            quantile = value("histogram_quantile(0.5, sum by (le) (zoetrope_job_end_to_end_duration_seconds_bucket))")
            assert quantile is not None and 0 < quantile <= 3600, quantile
            # Every method x code series is exported from zero, so ask for the ones that counted.
            labels = query(port, 'zoetrope_api_requests_total{method="Generate"} > 0')  # submit --watch
            assert labels and labels[0]["metric"]["code"] == "OK", labels
        finally:
            prometheus.terminate()
            try:
                prometheus.wait(timeout=20)
            except subprocess.TimeoutExpired:
                prometheus.kill()
    print("prometheus: both targets scraped, series present, promtool check metrics clean")


if __name__ == "__main__":
    main()
