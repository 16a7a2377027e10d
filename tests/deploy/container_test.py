"""The scheduler image, assembled offline from the build tree (deploy/docker/assemble-offline.py), run
with podman (or docker): it must run as the non-root user, answer grpc.health.v1 on both ports without a
token (what the kubelet's gRPC probes send) while refusing the API without one, and write its store into
the volume. With --worker and --model, the worker image too (on the CPU, in the scheduler's network
namespace): it loads the model and registers with its token. Both drain and exit 0 on SIGTERM.

  container_test.py --assemble deploy/docker/assemble-offline.py --scheduler BIN --workdir DIR
                    [--worker BIN --model TINY_MODEL_DIR]

Exits 77 (ctest skips) when this machine cannot run containers, printing what failed: no engine, or
the engine's own error for every way of starting a trivial container that was tried.
"""

import argparse
import os
import shutil
import subprocess
import sys
import time

import grpc

SKIP = 77
USER_ID = 10001
TOKENS = """tenant default
token  default container-test-client-token-0000
worker         container-test-worker-token-0000
"""


def skip(reason):
    print(f"SKIP: this machine cannot run the scheduler image: {reason}")
    sys.exit(SKIP)


def engine_command():
    if shutil.which("podman"):
        return ["podman"]
    if shutil.which("docker"):
        info = subprocess.run(["docker", "info"], capture_output=True, text=True)
        if info.returncode == 0:
            return ["docker"]
        skip("podman is not installed and docker cannot reach its daemon: " + info.stderr.strip())
    skip("neither podman nor docker is installed (scripts/install-deps.sh installs podman)")


def run_options(engine, image):
    """The first set of `run` options under which a trivial container starts, trying the defaults first.

    As root, podman raises the container's RLIMIT_NOFILE and RLIMIT_NPROC to their maxima, which fails
    without CAP_SYS_RESOURCE (as inside some VMs and containers); crun refuses cgroup v1/v2 hybrid hosts,
    where runc works."""
    limits = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
    candidates = [([], []), ([], limits)]  # (options of the engine, options of `run`)
    if engine[0] == "podman" and shutil.which("runc"):
        candidates.append((["--runtime", "runc"], limits))
    errors = []
    for global_options, local_options in candidates:
        command = engine + global_options + ["run", "--rm", *local_options]
        probe = subprocess.run(command + ["--entrypoint", "/usr/bin/sleep", image, "0"],
                               capture_output=True, text=True, timeout=120)
        if probe.returncode == 0:
            return global_options, local_options
        errors.append(f"`{' '.join(command)}`: " + (probe.stderr.strip() or f"exit {probe.returncode}"))
    skip("a trivial container does not start: " + "; ".join(errors))


def health(address, service=""):
    """The grpc.health.v1 status number of SERVICE (1 = SERVING), spoken as raw protobuf bytes."""
    channel = grpc.insecure_channel(address)
    try:
        check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=lambda raw: raw,
                                    response_deserializer=lambda raw: raw)
        request = b"\x0a" + bytes([len(service)]) + service.encode() if service else b""
        answer = check(request, timeout=5)
        return answer[1] if answer[:1] == b"\x08" else 0
    finally:
        channel.close()


def main():
    parser = argparse.ArgumentParser()
    for name in ("assemble", "scheduler", "workdir"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--worker")
    parser.add_argument("--model")
    arguments = parser.parse_args()
    work = arguments.workdir
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    engine = engine_command()
    tag = f"localhost/zoetrope-scheduler:ctest-{os.getpid()}"
    name = f"zoetrope-ctest-{os.getpid()}"
    subprocess.run([sys.executable, arguments.assemble, "scheduler", "--binary", arguments.scheduler,
                    "--tag", tag, "--engine", engine[0]], check=True, timeout=300)
    try:
        inspect = subprocess.run(engine + ["image", "inspect", "--format", "{{.Config.User}}", tag],
                                 capture_output=True, text=True, check=True).stdout.strip()
        assert inspect == f"{USER_ID}:{USER_ID}", inspect
        global_options, options = run_options(engine, tag)
        tokens = os.path.join(work, "tokens")
        open(tokens, "w").write(TOKENS)
        os.chmod(tokens, 0o644)
        data = os.path.join(work, "data")
        os.makedirs(data)
        if os.geteuid() == 0:
            os.chown(data, USER_ID, USER_ID)
        else:
            os.chmod(data, 0o777)  # rootless: the container's 10001 maps to a subordinate id
        # The image's own CMD (0.0.0.0 listeners, tokens file, store in /data); ports published on loopback.
        subprocess.run(engine + global_options + [
            "run", "-d", "--name", name, *options, "-p", "127.0.0.1::50051", "-p", "127.0.0.1::50052",
            "-v", f"{tokens}:/etc/zoetrope/tokens:ro", "-v", f"{data}:/data", tag], check=True, timeout=120,
            stdout=subprocess.DEVNULL)
        ports = {}
        for port in ("50051", "50052"):
            mapped = subprocess.run(engine + ["port", name, f"{port}/tcp"], capture_output=True, text=True,
                                    check=True).stdout.split()[0]
            ports[port] = mapped
        public, worker = ports["50051"], ports["50052"]

        deadline = time.monotonic() + 30
        while True:
            try:
                status = health(public)
                break
            except grpc.RpcError as error:
                if time.monotonic() > deadline:
                    logs = subprocess.run(engine + ["logs", name], capture_output=True, text=True)
                    raise AssertionError(f"no health answer: {error}\n{logs.stdout}{logs.stderr}")
                time.sleep(0.2)
        assert status == 1, f"health of the public port: {status}, not SERVING"
        assert health(public, "zoetrope.v1.VideoService") == 1
        assert health(worker, "zoetrope.v1.WorkerService") == 1
        # The API itself wants a token: the tokens file was read inside the container.
        channel = grpc.insecure_channel(public)
        list_jobs = channel.unary_unary("/zoetrope.v1.VideoService/ListJobs", request_serializer=lambda raw: raw,
                                        response_deserializer=lambda raw: raw)
        try:
            list_jobs(b"", timeout=5)
            raise AssertionError("ListJobs without a token succeeded")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
        channel.close()

        store = os.path.join(data, "jobs.db")
        assert os.path.exists(store), "no job store in the volume"
        if os.geteuid() == 0:  # rootless engines map the container's 10001 to a subordinate host id
            pid = subprocess.run(engine + ["inspect", "--format", "{{.State.Pid}}", name], capture_output=True,
                                 text=True, check=True).stdout.strip()
            uids = [line.split()[1:] for line in open(f"/proc/{pid}/status") if line.startswith("Uid:")][0]
            assert set(uids) == {str(USER_ID)}, f"the scheduler runs as uid {uids}"
            assert os.stat(store).st_uid == USER_ID, "job store not written by 10001"

        if arguments.worker:
            run_worker(engine, global_options, options, arguments, name, work)

        subprocess.run(engine + ["stop", "-t", "30", name], check=True, timeout=60, stdout=subprocess.DEVNULL)
        exit_code = subprocess.run(engine + ["inspect", "--format", "{{.State.ExitCode}}", name],
                                   capture_output=True, text=True, check=True).stdout.strip()
        logs = subprocess.run(engine + ["logs", name], capture_output=True, text=True)
        assert exit_code == "0", f"exit code {exit_code} after SIGTERM\n{logs.stdout}{logs.stderr}"
        assert "drained" in logs.stdout + logs.stderr, logs.stdout + logs.stderr
        print(f"container: {tag} with {' '.join(engine + global_options)} {' '.join(options)}: uid {USER_ID}, "
              "health SERVING on both ports, API needs a token, store in the volume, drained on SIGTERM"
              + (", worker image registered and drained" if arguments.worker else ""))
    finally:
        for container in (f"{name}-worker", name):
            subprocess.run(engine + ["rm", "-f", container], capture_output=True)
        for image in (tag, tag.replace("scheduler", "worker")):
            subprocess.run(engine + ["rmi", "-f", image], capture_output=True)


def logs_of(engine, container):
    result = subprocess.run(engine + ["logs", container], capture_output=True, text=True)
    return result.stdout + result.stderr


def wait_for_log(engine, container, text, timeout, also=None):
    deadline = time.monotonic() + timeout
    while text not in logs_of(engine, container):
        if time.monotonic() > deadline:
            raise AssertionError(f"no '{text}' in the log of {container} after {timeout} s:\n"
                                 f"{logs_of(engine, container)}" + (f"\n{also}:\n{logs_of(engine, also)}" if also else ""))
        time.sleep(0.2)


def run_worker(engine, global_options, options, arguments, scheduler, work):
    """The worker image on the CPU beside the scheduler container: registers, then drains on SIGTERM."""
    tag = f"localhost/zoetrope-worker:ctest-{os.getpid()}"
    name = f"{scheduler}-worker"
    subprocess.run([sys.executable, arguments.assemble, "worker", "--binary", arguments.worker, "--tag", tag,
                    "--engine", engine[0]], check=True, timeout=300)
    subprocess.run(engine + global_options + [
        "run", "-d", "--name", name, *options, "--network", f"container:{scheduler}",
        "-e", "ZOETROPE_WORKER_TOKEN=container-test-worker-token-0000",
        "-v", f"{os.path.abspath(arguments.model)}:/models/tiny:ro", tag,
        "--scheduler=127.0.0.1:50052", "--model=/models/tiny", "--model_name=tiny", "--device=cpu",
        "--threads=1", "--work_dir=/work", "--metrics_port=-1"], check=True, timeout=120,
        stdout=subprocess.DEVNULL)
    wait_for_log(engine, scheduler, "connected (tiny", 120, also=name)
    subprocess.run(engine + ["stop", "-t", "30", name], check=True, timeout=60, stdout=subprocess.DEVNULL)
    exit_code = subprocess.run(engine + ["inspect", "--format", "{{.State.ExitCode}}", name],
                               capture_output=True, text=True, check=True).stdout.strip()
    assert exit_code == "0", f"worker exit code {exit_code} after SIGTERM\n{logs_of(engine, name)}"
    wait_for_log(engine, scheduler, "disconnected", 30)


if __name__ == "__main__":
    main()
