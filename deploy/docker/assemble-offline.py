#!/usr/bin/env python3
"""Assembles the scheduler or worker image from a build tree without pulling any base image.

  deploy/docker/assemble-offline.py scheduler|worker [--build-dir build] [--binary PATH]
                                    [--tag localhost/zoetrope-scheduler:latest] [--tar OUT.tar]
                                    [--engine auto|podman|docker|none]

The Dockerfiles beside this script build the same images from debian:12-slim (scheduler) and a Debian 12
CUDA runtime (worker), which need a registry. This script makes an equivalent image from what the machine
already has: the binary, every shared library `ldd` resolves for it (copied from this Debian machine, so
the same Debian 12 packages the Dockerfile installs; for a CUDA build also the CUDA, cuBLAS and NCCL
libraries it links), /usr/bin/sleep for the worker's preStop hook, /etc/passwd and /etc/group with the
non-root user `zoetrope` (uid and gid 10001, as in the Dockerfiles and deploy/kubernetes), and the
writable folders owned by it. It writes a root-filesystem tar (built with Python's tarfile, so ownership
and modes are exact without running as root) and imports it with `podman import` or `docker import`,
setting the same USER, ENTRYPOINT, CMD, WORKDIR, EXPOSE and ENV as the Dockerfile.

Not in the offline image: cuDNN (the Dockerfile's CUDA base carries it; the worker does not link it) and
the NVIDIA driver libraries (libcuda, NVML), which the NVIDIA container toolkit mounts at run time.
"""

import argparse
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

USER_ID = 10001
# Driver libraries come from the host through the NVIDIA container toolkit, never from the image.
DRIVER_LIBRARIES = re.compile(r"^lib(cuda|nvidia-ml|nvidia-[a-z-]+)\.so")

IMAGES = {
    "scheduler": {
        "binary": "zoetrope-scheduler",
        "writable": ["/data"],
        "user": f"{USER_ID}:{USER_ID}",
        "workdir": "/data",
        "expose": ["50051", "50052", "9464"],
        "env": {},
        "cmd": ["--listen=0.0.0.0:50051", "--worker_listen=0.0.0.0:50052", "--tokens_file=/etc/zoetrope/tokens",
                "--db=/data/jobs.db", "--results_dir=/data/results", "--metrics_port=9464"],
    },
    "worker": {
        "binary": "zoetrope-worker",
        "writable": ["/work"],
        "user": f"{USER_ID}:{USER_ID}",
        "workdir": "/work",
        "expose": ["9465"],
        # What the NVIDIA container toolkit reads to mount the GPUs and driver libraries.
        "env": {"NVIDIA_VISIBLE_DEVICES": "all", "NVIDIA_DRIVER_CAPABILITIES": "compute,utility"},
        "cmd": ["--scheduler=zoetrope-scheduler:50052", "--model=/models/model", "--device=cuda",
                "--work_dir=/work", "--metrics_port=9465"],
    },
}


def shared_libraries(binary):
    """Absolute paths of the libraries `ldd` resolves for BINARY, the dynamic loader included."""
    output = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    paths, missing = [], []
    for line in output.splitlines():
        line = line.strip()
        found = re.match(r"^(\S+) => (\S+) \(0x", line)
        if found:
            paths.append(found.group(2))
        elif " => not found" in line:
            name = line.split()[0]
            if not DRIVER_LIBRARIES.match(name):
                missing.append(name)
        elif line.startswith("/"):
            paths.append(line.split()[0])  # the loader
    if missing:
        sys.exit(f"assemble-offline: {binary} needs libraries ldd cannot find: {', '.join(missing)}")
    return paths


def image_path(host_path):
    """Where HOST_PATH goes in the image: Debian 12's merged /usr (/lib, /lib64 and /bin are links)."""
    for top in ("/lib/", "/lib64/", "/bin/", "/sbin/"):
        if host_path.startswith(top):
            return "/usr" + host_path
    return host_path


class RootFilesystem:
    """A root-filesystem tar written entry by entry, every entry owned by root unless said otherwise."""

    def __init__(self, path):
        self.tar = tarfile.open(path, "w", format=tarfile.PAX_FORMAT)
        self.folders = set()

    def folder(self, path, mode=0o755, owner=0):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            name = "/".join(parts[:depth])
            if name in self.folders:
                continue
            self.folders.add(name)
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, mode if depth == len(parts) else 0o755
            info.uid = info.gid = owner if depth == len(parts) else 0
            self.tar.addfile(info)

    def link(self, path, target):
        info = tarfile.TarInfo(path.strip("/"))
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        self.tar.addfile(info)

    def text(self, path, content, mode=0o644):
        self.folder(os.path.dirname(path))
        data = content.encode()
        info = tarfile.TarInfo(path.strip("/"))
        info.size, info.mode = len(data), mode
        self.tar.addfile(info, io.BytesIO(data))

    def copy(self, host_path, path, mode=None):
        """HOST_PATH's content (links followed) at PATH."""
        self.folder(os.path.dirname(path))
        info = tarfile.TarInfo(path.strip("/"))
        info.size = os.path.getsize(host_path)
        info.mode = mode if mode is not None else (os.stat(host_path).st_mode & 0o777)
        with open(host_path, "rb") as source:
            self.tar.addfile(info, source)

    def close(self):
        self.tar.close()


def assemble(kind, binary, tar_path, strip=True):
    spec = IMAGES[kind]
    rootfs = RootFilesystem(tar_path)
    for folder in ("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc"):
        rootfs.folder(folder)
    for name in ("bin", "sbin", "lib", "lib64"):
        rootfs.link(name, f"usr/{name}")
    rootfs.folder("tmp", mode=0o1777)
    for folder in spec["writable"]:
        rootfs.folder(folder, mode=0o755, owner=USER_ID)

    executables = {binary: f"/usr/local/bin/{spec['binary']}", shutil.which("sleep"): "/usr/bin/sleep"}
    libraries = set()
    with tempfile.TemporaryDirectory() as scratch:
        for host_path, path in executables.items():
            libraries.update(shared_libraries(host_path))
            if host_path == binary and strip and shutil.which("strip"):
                # As the Dockerfile does: a RelWithDebInfo worker is 5 times larger with its debug info.
                stripped = os.path.join(scratch, os.path.basename(path))
                subprocess.run(["strip", "-o", stripped, host_path], check=True)
                host_path = stripped
            rootfs.copy(host_path, path, mode=0o755)
    for library in sorted(libraries):
        rootfs.copy(library, image_path(library))

    rootfs.text("/etc/passwd", f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
                               f"zoetrope:x:{USER_ID}:{USER_ID}:zoetrope:{spec['workdir']}:/usr/sbin/nologin\n")
    rootfs.text("/etc/group", f"root:x:0:\nzoetrope:x:{USER_ID}:\n")
    rootfs.text("/etc/nsswitch.conf", "passwd: files\ngroup: files\nhosts: files dns\n")
    rootfs.close()
    return len(libraries)


def import_changes(kind):
    spec = IMAGES[kind]
    quoted = lambda words: "[" + ", ".join(f'"{w}"' for w in words) + "]"
    changes = [f"USER {spec['user']}", f"WORKDIR {spec['workdir']}",
               f"ENTRYPOINT {quoted(['/usr/local/bin/' + spec['binary']])}", f"CMD {quoted(spec['cmd'])}"]
    changes += [f"EXPOSE {port}" for port in spec["expose"]]
    changes += [f"ENV {key}={value}" for key, value in spec["env"].items()]
    return changes


def pick_engine(engine):
    if engine != "auto":
        return engine
    if shutil.which("podman"):
        return "podman"
    if shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        return "docker"
    return "none"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=sorted(IMAGES))
    parser.add_argument("--build-dir", default="build", help="build tree holding bin/zoetrope-*")
    parser.add_argument("--binary", help="the binary to package (default: BUILD_DIR/bin/zoetrope-KIND)")
    parser.add_argument("--tag", help="image name (default: localhost/zoetrope-KIND:latest)")
    parser.add_argument("--tar", help="keep the root-filesystem tar here (default: a temporary file)")
    parser.add_argument("--keep-debug-info", action="store_true", help="do not strip the binary")
    parser.add_argument("--engine", choices=("auto", "podman", "docker", "none"), default="auto",
                        help="what imports the tar; none only writes it (then --tar is required)")
    arguments = parser.parse_args()
    binary = arguments.binary or os.path.join(arguments.build_dir, "bin", IMAGES[arguments.kind]["binary"])
    if not os.path.isfile(binary):
        sys.exit(f"assemble-offline: {binary} does not exist: build it first")
    tag = arguments.tag or f"localhost/zoetrope-{arguments.kind}:latest"
    engine = pick_engine(arguments.engine)
    if engine == "none" and not arguments.tar:
        sys.exit("assemble-offline: no podman or running docker found; pass --tar to only write the tar")

    with tempfile.TemporaryDirectory() as scratch:
        tar_path = arguments.tar or os.path.join(scratch, "rootfs.tar")
        count = assemble(arguments.kind, binary, tar_path, strip=not arguments.keep_debug_info)
        print(f"assemble-offline: {tar_path}: {binary} and {count} libraries "
              f"({os.path.getsize(tar_path) / 2**20:.0f} MiB)")
        if engine == "none":
            return
        command = [engine, "import"]
        for change in import_changes(arguments.kind):
            command += ["--change", change]
        if engine == "podman":
            command.append("--quiet")
        subprocess.run(command + [tar_path, tag], check=True, stdout=subprocess.DEVNULL)
        print(f"assemble-offline: imported as {tag} with {engine}")


if __name__ == "__main__":
    main()
