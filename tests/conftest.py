"""Shared fixtures: a private dockerd, a real mount, and the rule for missing tools.

Everything a user would see is tested against a real engine and a real
kernel mount. Under CI (CI = 1, true or yes) a missing engine, FUSE device or
tool is a failure, never a skip: a green run must mean the integration tests ran.
`IN_CI` is the one place that decides it; the other helpers import it.

A hang fails the one test that hung, by name: pytest-timeout (configured in
pyproject.toml) raises in the test, and the hooks below end what SIGALRM cannot.
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
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from support.mount_process import (
    MountFailed,
    MountProcess,
    dockerfs_command,
    stop_mount,
    wait_for_mount,
)
from support.mount_process import start_mount as _start_mount
from support.private_dockerd import IMAGE, DockerdError, PrivateDockerd
from support.waiting import wait_until

__all__ = ["dockerfs_command", "stop_mount", "wait_for_mount"]

IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


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


BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"


def run_bench(
    script: str, args: Sequence[str], out: Path, tools: Sequence[str], bound: float
) -> subprocess.CompletedProcess[str]:
    """`bench/SCRIPT ARGS --out OUT`, the real script end to end as `make bench`
    runs it (root, FUSE and `tools` required), within `bound` seconds (a bound
    on a hang, not a speed); it must exit 0."""
    require(os.geteuid() == 0, "the benchmark needs root (private dockerd)")
    require_fuse()
    for tool in tools:
        require(shutil.which(tool) is not None, f"{tool} missing")
    res = subprocess.run(
        [sys.executable, str(BENCH_DIR / script), *args, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=bound,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res


# -- a hang fails the test that hung ------------------------------------------------

# The qemu tests boot a guest under TCG (up to 180 s) before their first check.
QEMU_TIMEOUT = 900.0
# How long past its timeout a test may stay stuck before its mounts are ended.
ABORT_GRACE = 10.0

_mounts_of_this_test: list[MountProcess] = []
_watchdog: threading.Timer | None = None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("qemu") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(QEMU_TIMEOUT))


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> None:
    """Back up pytest-timeout's SIGALRM with a kill of the test's own mounts.

    A syscall waiting on a FUSE daemon that never answers (or a C loop such as
    os.listdir over a listing that never ends) does not return to Python, so
    the SIGALRM handler never runs. Killing the daemon (ours, by PID) aborts
    the connection: the syscall fails with ENOTCONN, the pending SIGALRM
    fails the test by name, and the fixtures tear down as usual.
    """
    global _watchdog
    _mounts_of_this_test.clear()
    if settings.timeout:
        _watchdog = threading.Timer(settings.timeout + ABORT_GRACE, _kill_mounts, (item.nodeid,))
        _watchdog.name = f"mount watchdog for {item.nodeid}"
        _watchdog.daemon = True
        _watchdog.start()
    # None: pytest-timeout's own implementation sets its timer too.


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> None:
    global _watchdog
    if _watchdog is not None:
        _watchdog.cancel()
        _watchdog = None


def _kill_mounts(nodeid: str) -> None:
    for m in list(_mounts_of_this_test):
        if m.proc.poll() is None:
            print(
                f"\n{nodeid}: still stuck {ABORT_GRACE:.0f}s past its timeout; "
                f"killing its dockerfs-fuse (pid {m.proc.pid}) to end a syscall "
                f"waiting on {m.path}; daemon log: {m.log}",
                file=sys.stderr,
            )
            m.proc.send_signal(signal.SIGKILL)


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
        return json.loads(self.api_raw(path))

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

    def send(self, method: str, path: str, body: Any = None) -> Any:
        """A request that changes the engine (POST, DELETE), straight to its API:
        many containers made or removed at once without a CLI process each."""
        conn = _UnixHTTPConnection(str(self.dockerd.socket))
        try:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if data is not None else {}
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            assert resp.status < 300, (method, path, resp.status, raw[:200])
            return json.loads(raw) if raw.strip() else None
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


@pytest.fixture(scope="session", autouse=True)
def state_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A detached daemon with no syslog logs under $XDG_STATE_HOME: the test
    session's own directory, never the user's ~/.local/state."""
    path = tmp_path_factory.mktemp("state")
    before = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = str(path)
    yield path
    if before is None:
        del os.environ["XDG_STATE_HOME"]
    else:
        os.environ["XDG_STATE_HOME"] = before


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
    yield from _engine_of(dockerd_session)


def _engine_of(daemon: Any) -> Iterator[Engine]:
    if daemon.proc is None or daemon.proc.poll() is not None:
        daemon.start()  # a test stopped it; bring it back for the next
    e = Engine(daemon)
    yield e
    if daemon.proc is None:
        daemon.start()
    e.remove_started()


# -- a real mount ------------------------------------------------------------------------

Mount = MountProcess


def wait_for_start_line(m: Mount, host: str) -> None:
    """The daemon's start-up line names the engine and the mountpoint. The
    mountpoint appears when the kernel mounts; the line follows once the
    daemon serves, so it is waited for (a bound, not a timing claim)."""
    line = f"at {host}, mounted at {m.path}"
    wait_until(lambda: line in m.log_text(), line)


def start_mount(host: str, mountpoint: Path, *extra: str) -> Mount:
    require_fuse()
    try:
        m = _start_mount(host, mountpoint, *extra)
    except MountFailed as exc:
        raise AssertionError(str(exc)) from None
    _mounts_of_this_test.append(m)
    return m


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


@pytest.fixture
def view(engine: Engine, mount_factory: Any) -> Mount:
    """The private dockerd mounted with --view=engine."""
    m: Mount = mount_factory(engine.host, "--view=engine")
    return m


@pytest.fixture
def suffix() -> str:
    """A fresh name part, so a test's objects never meet another's."""
    return uuid.uuid4().hex[:8]


def is_enoent(exc: OSError) -> bool:
    return exc.errno == errno.ENOENT


def in_private_mount_namespace(script: str, *args: str) -> list[str]:
    """A command that runs shell SCRIPT (ARGS are $1...) in a mount namespace
    of its own, so that what it mounts is seen by nobody else."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *args]


# A container started by run_held waits at this point until the test says go.
WAIT_FOR_GO = "while [ ! -e /t/go ]; do sleep 0.1; done"


def run_held(engine: Engine, script: str) -> tuple[str, Path]:
    """Run shell SCRIPT in a container whose /t is a fresh directory of ours;
    return its ID and the path whose creation lets it past WAIT_FOR_GO."""
    gate = engine.dockerd.base / f"trigger-{time.monotonic_ns()}"
    gate.mkdir()
    cid = engine.run("-v", f"{gate}:/t", IMAGE, "sh", "-c", script)
    return cid, gate / "go"


# The README's promise: a reader blocked in logs.follow or wait that gets a fatal
# signal is answered EINTR within 0.2 s (how often the daemon looks for one).
# A test signals the reader as soon as it sees it parked, early in a look's
# interval, so what it measures is close to the worst case: a whole interval.
EINTR_PROMISE = 0.2
# What a loaded 2-core machine may add: the daemon's wake-up and reply, the
# kernel waking the reader, its exit and our waitpid (15 to 60 ms at a load of
# 10). A reader the daemon no longer interrupts stays blocked for good, and a
# look every second instead would show too.
EINTR_SLACK = 0.3


def interrupt_blocked_reader(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM a reader blocked in a read on the mount (the caller has seen it
    parked) and return how long it took to end; fail unless the signal ended
    it within EINTR_PROMISE + EINTR_SLACK."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        raise AssertionError("the blocked reader was not interrupted within 30 s") from None
    took = time.monotonic() - t0
    print(f"blocked reader ended {took:.3f}s after SIGTERM")
    assert code == -signal.SIGTERM, code
    assert took < EINTR_PROMISE + EINTR_SLACK, (
        f"the blocked reader ended {took:.3f}s after SIGTERM, not within "
        f"{EINTR_PROMISE}s (+{EINTR_SLACK}s for a loaded machine)"
    )
    return took


def state(engine: Engine, cid: str) -> dict[str, Any]:
    result: dict[str, Any] = engine.api(f"/containers/{cid}/json")["State"]
    return result


def ctl(m: Mount, name: str, command: str) -> None:
    """One open, one write(2), as `echo command > ctl` does (no stdio buffering)."""
    fd = os.open(m.path / name / "ctl", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, command.encode() + b"\n")
    finally:
        os.close(fd)


def ctl_errno(m: Mount, name: str, command: str) -> int:
    with pytest.raises(OSError) as err:
        ctl(m, name, command)
    return err.value.errno or 0


# -- more engines: a Podman service, TLS on TCP, ssh (issue 9) -------------------------

# Imported here, with these fixtures, so that the top of this file stays as it was.
from support.private_engines import PrivatePodman, PrivateSshd, TLSDockerd  # noqa: E402


def _session(daemon: Any, what: str, image: bool = True) -> Iterator[Any]:
    """A session fixture's daemon: started (with IMAGE imported), failing the
    test in one line if it cannot start, and cleaned up either way."""
    try:
        daemon.start()
        if image:
            daemon.import_busybox()
    except DockerdError as exc:
        daemon.cleanup()
        pytest.fail(f"{what}: {exc}", pytrace=False)
    try:
        yield daemon
    finally:
        daemon.cleanup()


@pytest.fixture(scope="session")
def podman_session() -> Iterator[PrivatePodman]:
    require(os.geteuid() == 0, "the private podman service needs root")
    require(shutil.which("podman") is not None, "podman missing (Debian podman)")
    require(shutil.which("docker") is not None, "docker CLI missing (Debian docker.io)")
    require(shutil.which("busybox") is not None, "busybox missing (Debian busybox-static)")
    yield from _session(PrivatePodman(), "private podman service")


@pytest.fixture
def podman_engine(podman_session: PrivatePodman) -> Iterator[Engine]:
    """The Podman service as an Engine (it has the same driving interface)."""
    yield from _engine_of(podman_session)


@pytest.fixture(scope="session")
def tls_dockerd() -> Iterator[TLSDockerd]:
    """A second private dockerd, also on a loopback TCP port with --tlsverify."""
    require(os.geteuid() == 0, "the private dockerd needs root")
    require(shutil.which("dockerd") is not None, "dockerd missing (Debian docker.io)")
    require(shutil.which("openssl") is not None, "openssl missing (Debian openssl)")
    require(shutil.which("busybox") is not None, "busybox missing (Debian busybox-static)")
    yield from _session(TLSDockerd(), "private TLS dockerd")


@pytest.fixture
def tls_engine(tls_dockerd: TLSDockerd) -> Iterator[Engine]:
    e = Engine(tls_dockerd)
    yield e
    e.remove_started()


@pytest.fixture(scope="session")
def sshd_session(dockerd_session: PrivateDockerd) -> Iterator[PrivateSshd]:
    """sshd on loopback in front of the session's dockerd: its url is ssh://root@127.0.0.1:PORT;
    a client needs HOME=client_home (its ~/.ssh has the key and knows the host)."""
    require(
        shutil.which("sshd", path=os.environ.get("PATH", "") + ":/usr/sbin") is not None,
        "sshd missing (Debian openssh-server)",
    )
    require(shutil.which("ssh-keygen") is not None, "ssh-keygen missing (Debian openssh-client)")
    yield from _session(PrivateSshd(dockerd_session.host), "private sshd", image=False)


# -- a private multi-node Swarm (issue 11) -------------------------------------------------

SWARM_NODES = 3


@pytest.fixture(scope="session")
def swarm_session() -> Iterator[Any]:
    """A real 3-node swarm on this host: node1 manages, node2 and node3 work.

    Each node is a private dockerd in a network namespace of its own (see
    private_swarm); needs root, docker.io, busybox-static, iproute2 and util-linux.
    """
    from support.private_swarm import PrivateSwarm

    require(os.geteuid() == 0, "the private swarm needs root")
    for tool, package in (
        ("dockerd", "docker.io"),
        ("busybox", "busybox-static"),
        ("ip", "iproute2"),
        ("nsenter", "util-linux"),
        ("unshare", "util-linux"),
    ):
        require(shutil.which(tool) is not None, f"{tool} missing (Debian {package})")
    swarm = PrivateSwarm(SWARM_NODES)
    try:
        swarm.start()
    except DockerdError as exc:
        pytest.fail(f"private swarm: {exc}", pytrace=False)
    print(f"\nprivate swarm of {SWARM_NODES} ready in {swarm.start_seconds:.1f}s at {swarm.base}")
    try:
        yield swarm
    finally:
        swarm.cleanup()
        print(f"\nprivate swarm stopped in {swarm.stop_seconds:.1f}s")


@pytest.fixture
def swarm(swarm_session: Any) -> Iterator[Any]:
    """The session's swarm, put back after each test: no services, every node
    active, node1 the only manager."""
    yield swarm_session
    swarm_session.reset()
