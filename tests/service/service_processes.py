"""Shared pieces of the Python service tests: free ports, bounded waits, and a scheduler plus worker
running as real processes on 127.0.0.1 (every wait has a timeout; processes are killed on exit)."""

import os
import signal
import socket
import subprocess
import time
import urllib.request


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


class Cluster:
    """zoetrope-scheduler and zoetrope-worker processes in `workdir`."""

    def __init__(self, scheduler_binary, worker_binary, model, workdir, scheduler_flags=()):
        self.workdir = workdir
        self.processes = []
        os.makedirs(workdir, exist_ok=True)
        self.port = free_port()
        ready = os.path.join(workdir, "scheduler.ready")
        self.scheduler_log = os.path.join(workdir, "scheduler.log")
        self.scheduler = self._start(
            [scheduler_binary, f"--listen=127.0.0.1:{self.port}", f"--db={workdir}/data/jobs.db",
             f"--results_dir={workdir}/data/results", "--metrics_host=127.0.0.1", "--metrics_port=0",
             f"--ready_file={ready}", "--models=tiny", "--heartbeat_interval=200ms", "--worker_timeout=3s",
             *scheduler_flags],
            self.scheduler_log)
        wait_for(lambda: os.path.exists(ready) or self.scheduler.poll() is not None, 20, "the scheduler")
        if self.scheduler.poll() is not None:
            raise AssertionError("scheduler exited:\n" + open(self.scheduler_log).read())
        with open(ready) as file:
            self.port, self.metrics_port = (int(value) for value in file.read().split())
        self.worker_log = os.path.join(workdir, "worker.log")
        self.worker = self._start(
            [worker_binary, f"--scheduler=127.0.0.1:{self.port}", f"--model={model}", "--model_name=tiny",
             "--worker_id=python-test-worker", f"--work_dir={workdir}/work", "--threads=1",
             "--metrics_host=127.0.0.1", "--metrics_port=0"],
            self.worker_log)
        wait_for(lambda: "worker python-test-worker connected" in open(self.scheduler_log).read()
                 or self.worker.poll() is not None, 30, "the worker to connect")
        if self.worker.poll() is not None:
            raise AssertionError("worker exited:\n" + open(self.worker_log).read())
        marker = "/metrics on port "
        log = open(self.worker_log).read()
        self.worker_metrics_port = int(log[log.index(marker) + len(marker):].split()[0].rstrip(";"))

    def _start(self, argv, log_path):
        log = open(log_path, "ab")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        return process

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(timeout=10)

    def __enter__(self):
        return self

    def __exit__(self, *exception):
        self.close()
