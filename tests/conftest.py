"""Shared fixtures: a private dockerd, a real mount, and the rule for missing tools.

Everything a user would see is tested against a real engine and a real
kernel mount. Under CI (CI=true) a missing engine, FUSE device or tool is a
failure, never a skip: a green run must mean the integration tests ran.
"""

from __future__ import annotations

import errno
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from dockerfs_fuse.private_dockerd import IMAGE, DockerdError, PrivateDockerd

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, why: str) -> None:
    """Skip with the reason printed; under CI, fail instead."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required under CI: {why}", pytrace=False)
    pytest.skip(why)


def require_fuse() -> None:
    require(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    require(shutil.which("fusermount3") is not None, "fusermount3 missing (Debian fuse3)")


# -- the Docker API, asked directly (not through the code under test) ---------------


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("docker", timeout=30)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self._path)


@dataclass
class Engine:
    """The private dockerd, plus a direct view of its API for assertions."""

    dockerd: PrivateDockerd
    started: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.dockerd.host

    def api(self, path: str) -> Any:
        conn = _UnixHTTPConnection(str(self.dockerd.socket))
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (path, resp.status, body[:200])
            return json.loads(body)
        finally:
            conn.close()

    def api_raw(self, path: str) -> bytes:
        conn = _UnixHTTPConnection(str(self.dockerd.socket))
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (path, resp.status, body[:200])
            return body
        finally:
            conn.close()

    def containers(self, all: bool = False) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("/containers/json" + ("?all=1" if all else ""))
        return result

    def run(self, *args: str) -> str:
        cid = self.dockerd.run(*args)
        self.started.append(cid)
        return cid

    def docker(self, *args: str, check: bool = True) -> str:
        return self.dockerd.docker(*args, check=check).stdout.decode()

    def remove_started(self) -> None:
        if self.started:
            self.dockerd.docker("rm", "-f", *self.started, check=False)
            self.started.clear()


@pytest.fixture(scope="session")
def dockerd_session() -> Iterator[PrivateDockerd]:
    require(os.geteuid() == 0, "the private dockerd needs root")
    require(shutil.which("dockerd") is not None, "dockerd missing (Debian docker.io)")
    require(shutil.which("busybox") is not None, "busybox missing (Debian busybox-static)")
    d = PrivateDockerd()
    t0 = time.monotonic()
    try:
        d.start()
        d.import_busybox()
    except DockerdError as exc:
        d.cleanup()
        pytest.fail(f"private dockerd: {exc}", pytrace=False)
    print(f"\nprivate dockerd ready with {IMAGE} in {time.monotonic() - t0:.1f}s at {d.base}")
    try:
        yield d
    finally:
        d.cleanup()


@pytest.fixture
def engine(dockerd_session: PrivateDockerd) -> Iterator[Engine]:
    """The session's engine; containers a test starts are removed after it."""
    if dockerd_session.proc is None or dockerd_session.proc.poll() is not None:
        dockerd_session.start()  # a test stopped it; bring it back for the next
    e = Engine(dockerd_session)
    yield e
    if dockerd_session.proc is None:
        dockerd_session.start()
    e.remove_started()


# -- a real mount ------------------------------------------------------------------------


def dockerfs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dockerfs_fuse.cli", *args]


@dataclass
class Mount:
    path: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def unmount(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)

    def wait_exit(self, timeout: float = 15) -> int:
        return self.proc.wait(timeout)


def wait_for_mount(
    path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20
) -> None:
    """Poll until mounted; fail at once if the daemon died (a hang is worse than a failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"dockerfs-fuse exited with {proc.returncode}: {log.read_text(errors='replace')}"
            )
        if os.path.ismount(path):
            return
        time.sleep(0.05)
    raise AssertionError(f"not mounted after {timeout}s: {log.read_text(errors='replace')}")


def start_mount(
    host: str, mountpoint: Path, *extra: str, env: dict[str, str] | None = None
) -> Mount:
    require_fuse()
    mountpoint.mkdir(exist_ok=True)
    log = mountpoint.parent / f"{mountpoint.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            dockerfs_command("-f", "-H", host, *extra, str(mountpoint)),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    wait_for_mount(mountpoint, proc, log)
    return Mount(mountpoint, proc, log)


def stop_mount(m: Mount) -> None:
    """Teardown that cannot hang: lazy unmount, then TERM, then KILL, by PID."""
    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
    if m.proc.poll() is None:
        m.proc.send_signal(signal.SIGTERM)
        try:
            m.proc.wait(10)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait(10)


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[Any]:
    mounts: list[Mount] = []

    def make(host: str, *extra: str, name: str = "mnt") -> Mount:
        m = start_mount(host, tmp_path / name, *extra)
        mounts.append(m)
        return m

    yield make
    for m in mounts:
        stop_mount(m)


@pytest.fixture
def mounted(engine: Engine, mount_factory: Any) -> Mount:
    m: Mount = mount_factory(engine.host)
    return m


def is_enoent(exc: OSError) -> bool:
    return exc.errno == errno.ENOENT
