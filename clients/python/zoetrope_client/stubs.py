"""Generates the zoetrope.v1 Python stubs from proto/ with grpcio-tools (at build/install time)."""

import os
import subprocess
import sys

PROTOS = ("zoetrope/v1/video_service.proto", "zoetrope/v1/worker_service.proto")


def default_proto_dir():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get("ZOETROPE_PROTO_DIR") or os.path.normpath(os.path.join(here, "..", "..", "..", "proto"))


def generate(out_dir, proto_dir=None):
    """Writes zoetrope/v1/*_pb2.py and *_pb2_grpc.py (with package __init__ files) under out_dir."""
    proto_dir = proto_dir or default_proto_dir()
    missing = [name for name in PROTOS if not os.path.isfile(os.path.join(proto_dir, name))]
    if missing:
        raise FileNotFoundError(f"proto files {missing} not found under {proto_dir} (set ZOETROPE_PROTO_DIR)")
    os.makedirs(out_dir, exist_ok=True)
    includes = [f"-I{proto_dir}"]
    # google/protobuf/*.proto: grpcio-tools ships them; Debian's python3-grpc-tools relies on /usr/include.
    try:
        import grpc_tools

        includes.append(f"-I{os.path.join(os.path.dirname(grpc_tools.__file__), '_proto')}")
    except ImportError as error:
        raise RuntimeError("grpcio-tools is needed to generate the stubs") from error
    if os.path.isdir("/usr/include/google/protobuf"):
        includes.append("-I/usr/include")
    command = [sys.executable, "-m", "grpc_tools.protoc", *includes, f"--python_out={out_dir}",
               f"--grpc_python_out={out_dir}", *PROTOS]
    subprocess.run(command, check=True, timeout=300)
    for package in ("zoetrope", os.path.join("zoetrope", "v1")):
        init = os.path.join(out_dir, package, "__init__.py")
        if not os.path.exists(init):
            open(init, "w").close()


if __name__ == "__main__":
    generate(sys.argv[1] if len(sys.argv) > 1 else ".", sys.argv[2] if len(sys.argv) > 2 else None)
