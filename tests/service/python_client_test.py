"""A client written in Python against a real scheduler and worker: Debian's python3-grpcio, with stubs
generated from proto/ at test time by python3-grpc-tools. Goes through submit, watch, cancel (queued and
running) and fetch (whole and resumed), plus errors, health and reflection.

Run by ctest with Debian's /usr/bin/python3:
  python_client_test.py --scheduler BIN --worker BIN --model DIR --workdir DIR [--proto-dir DIR]
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from service_processes import Cluster, wait_for  # noqa: E402


def generate_stubs(proto_dir, out_dir):
    os.makedirs(out_dir, exist_ok=True)
    protos = ["zoetrope/v1/video_service.proto", "zoetrope/v1/worker_service.proto"]
    command = [sys.executable, "-m", "grpc_tools.protoc", f"-I{proto_dir}", "-I/usr/include",
               f"--python_out={out_dir}", f"--grpc_python_out={out_dir}", *protos]
    subprocess.run(command, check=True, timeout=120)
    sys.path.insert(0, out_dir)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scheduler", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--proto-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                            "proto"))
    parser.add_argument("--workdir", required=True)
    arguments = parser.parse_args()
    shutil.rmtree(arguments.workdir, ignore_errors=True)
    os.makedirs(arguments.workdir)
    generate_stubs(arguments.proto_dir, os.path.join(arguments.workdir, "stubs"))

    import grpc  # noqa: E402
    from zoetrope.v1 import video_service_pb2 as api  # noqa: E402
    from zoetrope.v1 import video_service_pb2_grpc as api_grpc  # noqa: E402

    def small(steps=2, prompt="a paper boat", **fields):
        request = api.SubmitJobRequest(model="tiny", prompt=prompt, width=128, height=128, frames=1, steps=steps)
        for name, value in fields.items():
            setattr(request, name, value)
        return request

    with Cluster(arguments.scheduler, arguments.worker, arguments.model,
                 os.path.join(arguments.workdir, "cluster")) as cluster:
        channel = grpc.insecure_channel(cluster.address)
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = api_grpc.VideoServiceStub(channel)

        # A slow job occupies the worker, so the jobs after it wait in the queue.
        slow = stub.SubmitJob(small(steps=200, width=256, height=256, frames=17, prompt="slow"), timeout=10)
        wait_for(lambda: stub.GetJob(api.GetJobRequest(id=slow.id), timeout=10).progress.step >= 1, 60,
                 "the slow job's first step")
        job = stub.SubmitJob(small(steps=3, prompt="a python boat"), timeout=10)
        assert job.id.startswith("job-") and job.state == api.JOB_STATE_QUEUED and job.queue_position == 1, job
        queued = stub.SubmitJob(small(prompt="never runs"), timeout=10)
        assert queued.queue_position == 2, queued

        # Watch the waiting job from a thread while the others are cancelled.
        events = []
        watcher = threading.Thread(
            target=lambda: events.extend(stub.WatchJob(api.WatchJobRequest(id=job.id), timeout=120)))
        watcher.start()
        wait_for(lambda: len(events) >= 1, 10, "the first event")
        assert events[0].WhichOneof("kind") == "queued" and events[0].queued.position == 1, events[0]

        # Cancel the queued job (at once) and the running one (at its next step).
        assert stub.CancelJob(api.CancelJobRequest(id=queued.id), timeout=10).state == api.JOB_STATE_CANCELLED
        answer = stub.CancelJob(api.CancelJobRequest(id=slow.id), timeout=10)
        assert answer.state == api.JOB_STATE_RUNNING and answer.cancel_requested, answer
        final = list(stub.WatchJob(api.WatchJobRequest(id=slow.id), timeout=60))[-1]
        assert final.finished.state == api.JOB_STATE_CANCELLED, final
        assert final.job.progress.step < 200
        try:
            stub.CancelJob(api.CancelJobRequest(id=slow.id), timeout=10)
            raise AssertionError("cancelled twice")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.FAILED_PRECONDITION

        # The watched job ran next: queued, started, every step in order, finished.
        watcher.join(timeout=120)
        assert not watcher.is_alive()
        kinds = [event.WhichOneof("kind") for event in events]
        steps = [event.step.step for event in events if event.HasField("step")]
        assert steps == [1, 2, 3], kinds
        assert "started" in kinds and kinds.index("started") < kinds.index("step"), kinds
        assert kinds[-1] == "finished" and events[-1].finished.state == api.JOB_STATE_SUCCEEDED, events[-1]
        done = stub.GetJob(api.GetJobRequest(id=job.id), timeout=10)
        assert done.state == api.JOB_STATE_SUCCEEDED and done.result_media_type == "video/mp4", done
        assert done.measurements.run_seconds > 0 and done.measurements.queue_seconds > 0, done

        # Fetch whole, then resume from the middle.
        chunks = list(stub.FetchResult(api.FetchResultRequest(id=job.id), timeout=30))
        data = b"".join(chunk.data for chunk in chunks)
        assert len(data) == done.result_size_bytes and chunks[-1].last
        assert all(len(chunk.data) <= 64 * 1024 for chunk in chunks)
        assert hashlib.sha256(data).hexdigest() == chunks[0].sha256
        assert data[4:8] == b"ftyp", data[:16]
        middle = len(data) // 2
        tail = b"".join(c.data for c in stub.FetchResult(api.FetchResultRequest(id=job.id, offset=middle), timeout=30))
        assert tail == data[middle:]

        # Errors carry the field and the rule.
        for request, field in ((small(width=100), "width:"), (small(frames=18), "frames:"),
                               (small(prompt=""), "prompt:"), (small(model="nope"), "model:")):
            try:
                stub.SubmitJob(request, timeout=10)
                raise AssertionError(f"{field} accepted")
            except grpc.RpcError as error:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
                assert error.details().startswith(field), error.details()
        try:
            stub.GetJob(api.GetJobRequest(id="job-nope"), timeout=10)
            raise AssertionError("unknown job found")
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND

        # Generate: submit and watch in one call.
        generated = list(stub.Generate(small(steps=2, prompt="generated"), timeout=120))
        assert generated[-1].finished.state == api.JOB_STATE_SUCCEEDED

        # Listing with a state filter.
        listed = stub.ListJobs(api.ListJobsRequest(states=[api.JOB_STATE_CANCELLED]), timeout=10)
        assert sorted(j.id for j in listed.jobs) == sorted([queued.id, slow.id]), listed

        # grpc.health.v1 and server reflection, spoken as raw bytes (no extra packages needed).
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
        assert check(b"", timeout=10) == b"\x08\x01", "SERVING"
        reflection = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                           request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
        answer = b"".join(reflection(iter([b"\x3a\x00"]), timeout=10))  # list_services: ""
        assert b"zoetrope.v1.VideoService" in answer and b"grpc.health.v1.Health" in answer, answer
        channel.close()
    print("python client: submit, watch, fetch, resume, errors, cancel queued and running, generate, list, "
          "health, reflection: ok")


if __name__ == "__main__":
    main()
