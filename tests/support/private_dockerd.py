"""A throwaway Docker engine of our own, for tests, `make demo` and `make bench`.

The tests must never see or touch the user's containers, so they run a
dockerd with its own data root, exec root, pidfile and socket inside a
temporary directory, and its own containerd namespace (a system containerd,
if one runs, is shared by namespace only). No registry is reachable, so the
one image is made locally with `docker import` from Debian's busybox-static.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Self

IMAGE = "busybox:latest"
BUSYBOX_APPLETS = (
    "sh",
    "sleep",
    "echo",
    "cat",
    "ls",
    "true",
    "false",
    "printf",
    "yes",
    "env",
    "head",
)


class DockerdError(RuntimeError):
    """The private engine could not be started or driven."""


def busybox_binary() -> Path:
    """Debian's busybox-static installs a static binary as /bin/busybox."""
    found = shutil.which("busybox")
    if found is None:
        raise DockerdError("busybox not found (Debian package busybox-static)")
    return Path(found)


def busybox_rootfs_tar() -> bytes:
    """A root filesystem holding only busybox and its applet links, as a tar."""
    data = busybox_binary().read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("bin", "tmp"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(data)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in BUSYBOX_APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
    return buf.getvalue()


class PrivateProcess:
    """One daemon we started, logging into a temporary directory of its own.

    Subclasses say what to run and when it is ready; starting it, failing fast
    when it dies, stopping it by PID and removing its directory are the same
    for every daemon the tests start.
    """

    name = "process"  # what error messages call it

    def __init__(self, base: Path, log_name: str) -> None:
        self.base = base
        self.log_path = self.base / log_name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        raise NotImplementedError

    def spawn(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        """Run ARGS in a session of its own, its output going to our log."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )

    def wait_ready_while_alive(
        self, ready: Callable[[], bool], timeout: float, failure: str
    ) -> None:
        """Poll READY; fail at once, with the log's tail, if the process dies
        first, and stop it if READY never holds within TIMEOUT."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise DockerdError(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            if ready():
                return
            time.sleep(0.1)
        self.stop()
        raise DockerdError(f"{failure}: {self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM our process by PID, then SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])


class PrivateEngine(PrivateProcess):
    """A daemon of ours serving Docker's API on a unix socket in its directory,
    driven with the docker CLI as users drive it."""

    def __init__(self, base: Path, socket_name: str, log_name: str) -> None:
        super().__init__(base, log_name)
        self.socket = self.base / socket_name
        self.host = f"unix://{self.socket}"

    def answers(self) -> bool:
        return self.socket.exists() and self.docker("version", check=False).returncode == 0

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = self.host
        env.pop("DOCKER_CONTEXT", None)
        return env

    def docker(
        self, *args: str, input: bytes | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[bytes]:
        docker = shutil.which("docker")
        if docker is None:
            raise DockerdError("docker CLI not found (Debian package docker.io)")
        res = subprocess.run(
            [docker, *args],
            input=input,
            capture_output=True,
            env=self.env(),
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise DockerdError(f"docker {' '.join(args)}: {res.stderr.decode(errors='replace')}")
        return res

    def run(self, *args: str) -> str:
        """`docker run -d ARGS`; return the full container ID."""
        res = self.docker("run", "-d", "--network=none", *args)
        return res.stdout.decode().strip()


class PrivateDockerd(PrivateEngine):
    """One dockerd process we started, and everything it needs, in one temp dir."""

    name = "dockerd"

    def __init__(self, base: Path | None = None) -> None:
        # Short paths: containerd puts unix sockets under the exec root.
        super().__init__(
            Path(base or tempfile.mkdtemp(prefix="dfs-")), "docker.sock", "dockerd.log"
        )

    # -- lifecycle --------------------------------------------------------

    def command(self) -> list[str]:
        dockerd = shutil.which("dockerd")
        if dockerd is None:
            raise DockerdError("dockerd not found (Debian package docker.io)")
        # containerd namespaces allow [A-Za-z0-9] runs joined by single [._-].
        ns = "dfs" + re.sub(r"[^A-Za-z0-9]", "", self.base.name)
        return [
            dockerd,
            f"--data-root={self.base / 'data'}",
            f"--exec-root={self.base / 'exec'}",
            f"--pidfile={self.base / 'dockerd.pid'}",
            f"--host={self.host}",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--userland-proxy=false",
            "--shutdown-timeout=1",
            f"--containerd-namespace={ns}",
            f"--containerd-plugins-namespace={ns}-plugins",
            "--log-level=warn",
        ]

    def start(self, timeout: float = 30.0) -> None:
        """Start dockerd and wait until its API answers; fail fast if it dies."""
        if os.geteuid() != 0:
            raise DockerdError("a private dockerd needs root")
        self.spawn(self.command())
        self.wait_ready_while_alive(
            self.answers, timeout, f"dockerd did not answer within {timeout}s"
        )

    def cleanup(self) -> None:
        self.stop()
        subprocess.run(["umount", "-R", "-l", str(self.base / "exec")], capture_output=True)
        super().cleanup()

    # -- driving it with the docker CLI -----------------------------------

    def import_busybox(self, changes: Sequence[str] = ()) -> str:
        """Make IMAGE from busybox-static; return its ID."""
        args = ["import"]
        for change in changes:
            args += ["--change", change]
        res = self.docker(*args, "-", IMAGE, input=busybox_rootfs_tar())
        return res.stdout.decode().strip()
