"""The API: submit, watch (an iterator of JobEvent), get, fetch (resumable, SHA-256 checked), cancel, list;
save_preview writes a live preview event's image to a folder."""

import hashlib
import os

import grpc
from google.protobuf import duration_pb2

from zoetrope.v1 import video_service_pb2 as api
from zoetrope.v1 import video_service_pb2_grpc as api_grpc

TERMINAL_STATES = frozenset({api.JOB_STATE_SUCCEEDED, api.JOB_STATE_FAILED, api.JOB_STATE_CANCELLED,
                             api.JOB_STATE_EXPIRED})

_ENUM_FIELDS = {
    "sampler": ("SAMPLER_", api.Sampler),
    "priority": ("PRIORITY_", api.Priority),
    "output_format": ("OUTPUT_FORMAT_", api.OutputFormat),
}


_PREVIEW_EXTENSIONS = {"image/jpeg": "jpg"}


def save_preview(event, directory):
    """Writes the image of a `preview` JobEvent to DIRECTORY/step-NNN.jpg (created as needed); returns the path.

    The file appears whole (written beside, then renamed), so a viewer polling the folder never sees half.
    """
    preview = event.preview
    os.makedirs(directory, exist_ok=True)
    extension = _PREVIEW_EXTENSIONS.get(preview.media_type, "bin")
    path = os.path.join(directory, f"step-{preview.step:03d}.{extension}")
    with open(path + ".partial", "wb") as file:
        file.write(preview.data)
    os.replace(path + ".partial", path)
    return path


class ChecksumError(Exception):
    """The downloaded result's SHA-256 differs from the one the server reported."""


def _enum_value(field, value):
    if not isinstance(value, str):
        return value
    prefix, enum = _ENUM_FIELDS[field]
    # The command line's short names ("dpm++", "raw") as the C++ CLI spells them.
    aliases = {"SAMPLER_DPMPP": "SAMPLER_DPMPP_2M", "OUTPUT_FORMAT_RAW": "OUTPUT_FORMAT_RAW_SAFETENSORS",
               "OUTPUT_FORMAT_NATIVE": "OUTPUT_FORMAT_UNSPECIFIED"}
    name = prefix + value.upper().replace("+", "P").replace("-", "_")
    name = aliases.get(name, name)
    try:
        return enum.Value(name)
    except ValueError as error:
        raise ValueError(f"{field}: unknown value {value!r}") from error


class Client:
    """One channel to a scheduler's VideoService.

    token: bearer token of a tenant (sent as `authorization: Bearer <token>`); None reads $ZOETROPE_TOKEN.
    tls_ca: PEM file of the CA of the scheduler's certificate; None reads $ZOETROPE_TLS_CA; empty: plaintext.
    timeout: seconds of each call that is not a stream.
    """

    def __init__(self, address, token=None, tls_ca=None, timeout=30.0):
        token = os.environ.get("ZOETROPE_TOKEN", "") if token is None else token
        tls_ca = os.environ.get("ZOETROPE_TLS_CA", "") if tls_ca is None else tls_ca
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if tls_ca:
            with open(tls_ca, "rb") as file:
                credentials = grpc.ssl_channel_credentials(root_certificates=file.read())
            self._channel = grpc.secure_channel(address, credentials)
        else:
            self._channel = grpc.insecure_channel(address)
        self._stub = api_grpc.VideoServiceStub(self._channel)
        self._timeout = timeout

    def close(self):
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def submit(self, prompt, deadline_seconds=None, **fields):
        """Queues a job; fields are SubmitJobRequest fields (sampler/priority/output_format may be names)."""
        return self._stub.SubmitJob(self._request(prompt, deadline_seconds, fields), timeout=self._timeout,
                                    metadata=self._metadata)

    def generate(self, prompt, deadline_seconds=None, timeout=None, **fields):
        """Submits and watches in one call (Generate): yields every JobEvent of the new job from its first
        (queued) on, so no early step or preview is missed; the job's id is in every event's `job`."""
        yield from self._stub.Generate(self._request(prompt, deadline_seconds, fields), timeout=timeout,
                                       metadata=self._metadata)

    def _request(self, prompt, deadline_seconds, fields):
        request = api.SubmitJobRequest(prompt=prompt)
        for name, value in fields.items():
            if value is None:
                continue
            setattr(request, name, _enum_value(name, value) if name in _ENUM_FIELDS else value)
        if deadline_seconds:
            request.deadline.CopyFrom(duration_pb2.Duration(seconds=int(deadline_seconds),
                                                            nanos=int((deadline_seconds % 1) * 1e9)))
        return request

    def get(self, job_id):
        return self._stub.GetJob(api.GetJobRequest(id=job_id), timeout=self._timeout, metadata=self._metadata)

    def watch(self, job_id, timeout=None, previews=True):
        """Yields the job's JobEvents until it finishes (the stream ends after the terminal event).

        A job submitted with `preview_every` also sends `preview` events (event.WhichOneof("kind") ==
        "preview": step, total_steps, frame_count, media_type, data, width, height, columns, rows,
        frame_indices) while it runs; previews=False leaves them out. A slow reader loses previews, never
        other events (the server keeps at most one preview waiting per stream).
        """
        for event in self._stub.WatchJob(api.WatchJobRequest(id=job_id), timeout=timeout, metadata=self._metadata):
            if not previews and event.WhichOneof("kind") == "preview":
                continue
            yield event

    def cancel(self, job_id):
        return self._stub.CancelJob(api.CancelJobRequest(id=job_id), timeout=self._timeout,
                                    metadata=self._metadata)

    def list(self, states=(), model="", page_size=100):
        """Yields every job (following pages), newest first as the server orders them."""
        states = [s if isinstance(s, int) else api.JobState.Value("JOB_STATE_" + s.upper()) for s in states]
        token = ""
        while True:
            response = self._stub.ListJobs(api.ListJobsRequest(states=states, model=model, page_size=page_size,
                                                               page_token=token),
                                           timeout=self._timeout, metadata=self._metadata)
            yield from response.jobs
            token = response.next_page_token
            if not token:
                return

    def fetch(self, job_id, path, progress=None, chunk_size=0):
        """Downloads the result to `path` and returns its SHA-256 (hex).

        Bytes already in `path + ".part"` (an interrupted download) are kept: the download resumes at their
        end. The whole file's SHA-256 is compared with the server's before the file is renamed to `path`;
        a mismatch deletes the partial file and raises ChecksumError. progress(done, total) is called per chunk.
        """
        partial = path + ".part"
        offset = os.path.getsize(partial) if os.path.exists(partial) else 0
        expected = ""
        with open(partial, "ab") as file:
            request = api.FetchResultRequest(id=job_id, offset=offset, chunk_size=chunk_size)
            for chunk in self._stub.FetchResult(request, metadata=self._metadata):
                if chunk.offset != offset:
                    raise IOError(f"result chunk at offset {chunk.offset}, expected {offset}")
                file.write(chunk.data)
                offset += len(chunk.data)
                expected = chunk.sha256
                if progress is not None:
                    progress(offset, chunk.total_size)
                if chunk.last:
                    break
        digest = hashlib.sha256()
        with open(partial, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        actual = digest.hexdigest()
        if expected and actual != expected:
            os.remove(partial)
            raise ChecksumError(f"{path}: SHA-256 {actual} but the server reported {expected}")
        os.replace(partial, path)
        return actual
