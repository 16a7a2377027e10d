"""zoetrope-py: submit, watch (progress bar), get, list, cancel, fetch from the command line.

    zoetrope-py --server HOST:PORT submit --prompt "..." [--watch [--preview DIR]] [--output out.mp4]
    zoetrope-py watch JOB_ID [--preview DIR] | get JOB_ID | cancel JOB_ID | fetch JOB_ID --output FILE | list
Token: --token or $ZOETROPE_TOKEN (prefer the variable: a flag shows in `ps`). TLS: --tls-ca or $ZOETROPE_TLS_CA.
"""

import argparse
import os
import sys

import grpc
from google.protobuf import json_format

from zoetrope.v1 import video_service_pb2 as api
from zoetrope_client.client import TERMINAL_STATES, ChecksumError, Client, save_preview


def _state(job):
    return api.JobState.Name(job.state).removeprefix("JOB_STATE_").lower()


def _bar(done, total, width=30):
    filled = int(width * done / total) if total > 0 else 0
    return "[" + "#" * filled + "." * (width - filled) + "]"


class Progress:
    """One line, redrawn in place on a terminal; one line per change otherwise (logs stay readable)."""

    def __init__(self, stream):
        self.stream = stream
        self.tty = stream.isatty()
        self.last = ""

    def show(self, text):
        if text == self.last:
            return
        self.last = text
        self.stream.write(("\r\x1b[K" + text) if self.tty else text + "\n")
        self.stream.flush()

    def end(self):
        if self.tty and self.last:
            self.stream.write("\n")


def _watch(client, job_id, err, preview_dir=None, events=None):
    """Follows a job (`events`: a stream already open, e.g. Generate's; else WatchJob) until it finishes."""
    progress = Progress(err)
    job = None
    previews = 0
    for event in events if events is not None else client.watch(job_id, previews=bool(preview_dir)):
        job = event.job
        kind = event.WhichOneof("kind")
        if kind == "queued":
            progress.show(f"{job.id}: queued at position {event.queued.position}")
        elif kind == "started":
            progress.show(f"{job.id}: started on {event.started.worker_id}")
        elif kind == "phase_changed":
            progress.show(f"{job.id}: {api.Phase.Name(event.phase_changed.phase).removeprefix('PHASE_').lower()}")
        elif kind == "step":
            step = event.step
            progress.show(f"{job.id}: {_bar(step.step, step.total_steps)} step {step.step}/{step.total_steps}"
                          f"  {step.step_seconds:.2f} s/step  eta {step.eta_seconds:.0f} s")
        elif kind == "preview" and preview_dir:
            save_preview(event, preview_dir)
            previews += 1
        if job.state in TERMINAL_STATES:
            break
    progress.end()
    if preview_dir:
        err.write(f"{job_id}: {previews} preview(s) saved in {preview_dir}\n")
    if job is None:
        job = client.get(job_id)
    err.write(f"{job.id}: {_state(job)}" + (f" ({job.error.code_name}: {job.error.message})"
                                          if job.error.code_name else "") + "\n")
    return job


def _fetch(client, job_id, output, err):
    progress = Progress(err)
    sha = client.fetch(job_id, output, progress=lambda done, total: progress.show(
        f"{job_id}: {_bar(done, total)} {done}/{total} bytes"))
    progress.end()
    err.write(f"{output}: sha256 {sha}\n")


def _print_job(job, as_json, out):
    if as_json:
        out.write(json_format.MessageToJson(job) + "\n")
    else:
        out.write(f"{job.id}  {_state(job):9}  {job.request.prompt[:60]}\n")


def build_parser():
    parser = argparse.ArgumentParser(prog="zoetrope-py", description=__doc__.splitlines()[0])
    parser.add_argument("--server", default=os.environ.get("ZOETROPE_SERVER", "127.0.0.1:50051"),
                        help="scheduler address host:port ($ZOETROPE_SERVER)")
    parser.add_argument("--token", default=None, help="bearer token ($ZOETROPE_TOKEN when not given)")
    parser.add_argument("--tls-ca", default=None, help="PEM CA of the scheduler's certificate ($ZOETROPE_TLS_CA)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call that is not a stream")
    commands = parser.add_subparsers(dest="command", required=True)

    submit = commands.add_parser("submit", help="queue a job")
    submit.add_argument("--prompt", required=True)
    submit.add_argument("--negative-prompt")
    submit.add_argument("--model")
    for name in ("width", "height", "frames", "fps", "steps", "seed"):
        submit.add_argument(f"--{name}", type=int)
    submit.add_argument("--guidance", type=float)
    submit.add_argument("--shift", type=float)
    submit.add_argument("--sampler", help="unipc, dpm++ or euler")
    submit.add_argument("--priority", help="low, normal or high")
    submit.add_argument("--output-format", help="native, mp4 or raw")
    submit.add_argument("--attention", help="sparsity plan preset or YAML text")
    submit.add_argument("--deadline", type=float, help="seconds from submission")
    submit.add_argument("--client-request-id", help="idempotency key")
    submit.add_argument("--preview-every", type=int,
                        help="live previews every this many steps (default 5 with --preview, else none)")
    submit.add_argument("--watch", action="store_true", help="then follow the job with a progress bar")
    submit.add_argument("--preview", metavar="DIR", help="with --watch: save live previews as DIR/step-NNN.jpg")
    submit.add_argument("--output", help="with --watch: then fetch the result to this file")
    submit.add_argument("--json", action="store_true")

    for name, text in (("watch", "follow a job with a progress bar"), ("get", "show a job"),
                       ("cancel", "cancel a job")):
        command = commands.add_parser(name, help=text)
        command.add_argument("job_id")
        if name == "get":
            command.add_argument("--json", action="store_true")
        if name == "watch":
            command.add_argument("--preview", metavar="DIR", help="save live previews as DIR/step-NNN.jpg")
    fetch = commands.add_parser("fetch", help="download a result (resumes FILE.part; checks SHA-256)")
    fetch.add_argument("job_id")
    fetch.add_argument("--output", required=True)
    listing = commands.add_parser("list", help="list jobs")
    listing.add_argument("--state", action="append", default=[], help="queued, running, succeeded, ... (repeat)")
    listing.add_argument("--json", action="store_true")
    return parser


def main(argv=None, out=sys.stdout, err=sys.stderr):
    arguments = build_parser().parse_args(argv)
    try:
        with Client(arguments.server, token=arguments.token, tls_ca=arguments.tls_ca,
                    timeout=arguments.timeout) as client:
            if arguments.command == "submit":
                fields = {name: getattr(arguments, name) for name in (
                    "negative_prompt", "model", "width", "height", "frames", "fps", "steps", "seed", "guidance",
                    "shift", "sampler", "priority", "output_format", "attention", "client_request_id",
                    "preview_every")}
                if arguments.preview and not fields["preview_every"]:
                    # As the C++ CLI: every 5 steps, never more than the job's steps (the API's rule).
                    fields["preview_every"] = max(1, min(5, arguments.steps or 50))
                if arguments.watch:
                    # Submission and events in one call (Generate): no early step or preview is missed.
                    events = client.generate(arguments.prompt, deadline_seconds=arguments.deadline, **fields)
                    first = next(events)
                    _print_job(first.job, arguments.json, out)
                    out.flush()

                    def replay():
                        yield first
                        yield from events

                    job = _watch(client, first.job.id, err, arguments.preview, events=replay())
                    if job.state != api.JOB_STATE_SUCCEEDED:
                        return 1
                    if arguments.output:
                        _fetch(client, job.id, arguments.output, err)
                else:
                    job = client.submit(arguments.prompt, deadline_seconds=arguments.deadline, **fields)
                    _print_job(job, arguments.json, out)
            elif arguments.command == "watch":
                job = _watch(client, arguments.job_id, err, arguments.preview)
                return 0 if job.state == api.JOB_STATE_SUCCEEDED else 1
            elif arguments.command == "get":
                _print_job(client.get(arguments.job_id), arguments.json, out)
            elif arguments.command == "cancel":
                _print_job(client.cancel(arguments.job_id), False, out)
            elif arguments.command == "fetch":
                _fetch(client, arguments.job_id, arguments.output, err)
            elif arguments.command == "list":
                for job in client.list(states=arguments.state):
                    _print_job(job, arguments.json, out)
    except grpc.RpcError as error:
        err.write(f"zoetrope-py {arguments.command}: {error.code().name}: {error.details()}\n")
        return 1
    except (ChecksumError, OSError, ValueError) as error:
        err.write(f"zoetrope-py {arguments.command}: {error}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
