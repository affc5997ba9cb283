"""Control and live views over a real engine: ctl, logs, inspect, names, events."""

from __future__ import annotations

import calendar
import concurrent.futures
import errno
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    WAIT_FOR_GO,
    Engine,
    Mount,
    ctl,
    ctl_errno,
    interrupt_blocked_reader,
    run_held,
    start_mount,
    state,
    stop_mount,
)
from support.waiting import wait_until

from dockerfs_fuse.engine.containers import ATTR_TIMEOUT_ENV

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

IMG = "busybox:latest"


def demux(raw: bytes) -> bytes:
    out, i = b"", 0
    while i + 8 <= len(raw):
        (length,) = struct.unpack(">L", raw[i + 4 : i + 8])
        out += raw[i + 8 : i + 8 + length]
        i += 8 + length
    return out


@pytest.fixture
def all_mounted(engine: Engine, mount_factory: Any) -> Mount:
    m: Mount = mount_factory(engine.host, "--all", name="all")
    return m


def test_stop_start_restart_pause_unpause_kill_rm(engine: Engine, all_mounted: Mount) -> None:
    m = all_mounted
    cid = engine.run("--name=ctl-target", IMG, "sleep", "1d")
    os.listdir(m.path)
    ctl(m, cid, "pause")
    assert state(engine, cid)["Paused"] is True
    ctl(m, cid, "unpause")
    assert state(engine, cid)["Paused"] is False
    ctl(m, cid, "stop 0")
    assert state(engine, cid)["Running"] is False
    assert cid in os.listdir(m.path)  # --all: it stays listed
    assert (m.path / cid / "State").read_text() == "exited\n"
    ctl(m, cid, "stop")  # already stopped: success, as the CLI says
    ctl(m, cid, "start")
    assert state(engine, cid)["Running"] is True
    ctl(m, cid, "start")  # already started: success
    pid_before = state(engine, cid)["Pid"]
    ctl(m, cid, "restart 0")
    assert state(engine, cid)["Running"] and state(engine, cid)["Pid"] != pid_before
    ctl(m, cid, "kill KILL")
    assert state(engine, cid)["Running"] is False and state(engine, cid)["ExitCode"] == 137
    ctl(m, cid, "rm")
    assert cid not in [c["Id"] for c in engine.containers(all=True)]
    assert cid not in os.listdir(m.path)


def test_kill_with_signal_by_name_and_number(engine: Engine, mounted: Mount) -> None:
    # busybox sh as PID 1 ignores TERM, but a trap makes it exit with a known code.
    cid = engine.run(IMG, "sh", "-c", "trap 'exit 42' HUP; while true; do sleep 0.1; done")
    ctl(mounted, cid, "kill HUP")
    wait_until(lambda: not state(engine, cid)["Running"], "the container exited on kill")
    assert state(engine, cid)["ExitCode"] == 42
    cid2 = engine.run(IMG, "sh", "-c", "trap 'exit 43' USR1; while true; do sleep 0.1; done")
    ctl(mounted, cid2, f"kill {int(__import__('signal').SIGUSR1)}")
    wait_until(lambda: not state(engine, cid2)["Running"], "the container exited on USR1")
    assert state(engine, cid2)["ExitCode"] == 43


def test_ctl_errors_reach_the_writer_as_errno(engine: Engine, all_mounted: Mount) -> None:
    m = all_mounted
    cid = engine.run(IMG, "sleep", "1d")
    os.listdir(m.path)
    assert ctl_errno(m, cid, "bogus") == errno.EINVAL
    assert ctl_errno(m, cid, "kill NOSUCHSIG") == errno.EINVAL
    assert ctl_errno(m, cid, "stop soon") == errno.EINVAL
    assert state(engine, cid)["Running"]  # nothing was sent
    ctl(m, cid, "pause")
    assert ctl_errno(m, cid, "pause") == errno.EBUSY  # already paused: a conflict
    ctl(m, cid, "unpause")
    assert ctl_errno(m, cid, "rm") == errno.EBUSY  # running: docker rm refuses too
    ctl(m, cid, "stop 0")
    assert ctl_errno(m, cid, "pause") == errno.EBUSY  # not running
    assert ctl_errno(m, cid, "kill") == errno.EBUSY
    # A container removed behind our back: its ctl (opened before) says ENOENT.
    fd = os.open(m.path / cid / "ctl", os.O_WRONLY)
    try:
        engine.docker("rm", "-f", cid)
        with pytest.raises(OSError) as err:
            os.write(fd, b"start\n")
    finally:
        os.close(fd)
    assert err.value.errno == errno.ENOENT
    assert "No such container" in m.log_text() or "no such container" in m.log_text().lower()


# One line per refused write: when (UTC), the command as written, why.
ERR_LINE = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (.+?): (.+)\n")


def test_err_says_why_the_last_ctl_write_was_refused(engine: Engine, mounted: Mount) -> None:
    """The writer gets EBUSY; `err` keeps Docker's reason, where a user with no
    daemon log (a detached mount, no syslog) can read it."""
    cid = engine.run(IMG, "sleep", "1d")
    err = mounted.path / cid / "err"
    assert err.read_bytes() == b"" and os.stat(err).st_size == 0  # nothing refused yet
    assert os.stat(err).st_mode & 0o777 == 0o444
    ctl(mounted, cid, "pause")
    before = time.time()
    assert ctl_errno(mounted, cid, "pause") == errno.EBUSY
    text = err.read_text()
    match = ERR_LINE.fullmatch(text)
    assert match, text
    stamp = calendar.timegm(time.strptime(match.group(1), "%Y-%m-%dT%H:%M:%SZ"))
    assert before - 1 <= stamp <= time.time() + 1
    assert match.group(2) == "pause"
    assert "already paused" in match.group(3), text
    assert os.stat(err).st_size == len(text.encode())  # `cat` and `stat` agree
    # A success leaves it; the next refusal replaces it, our own refusals included.
    ctl(mounted, cid, "unpause")
    assert err.read_text() == text
    assert ctl_errno(mounted, cid, "kill NOSUCHSIG") == errno.EINVAL
    match = ERR_LINE.fullmatch(err.read_text())
    assert match and match.group(2) == "kill NOSUCHSIG", err.read_text()
    assert "unknown signal" in match.group(3)
    # Each container has its own.
    other = engine.run(IMG, "sleep", "1d")
    assert (mounted.path / other / "err").read_bytes() == b""
    assert "err" in os.listdir(mounted.path / cid)


def test_ctl_is_write_only_and_other_files_refuse_writes(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    st = os.stat(mounted.path / cid / "ctl")
    assert st.st_mode & 0o777 == 0o200
    with pytest.raises(PermissionError):
        (mounted.path / cid / "ctl").read_bytes()
    for name in ("Image", "logs", "inspect.json", "State"):
        with pytest.raises(PermissionError):
            (mounted.path / cid / name).write_text("x")


def test_ctl_by_another_user_is_refused(engine: Engine) -> None:
    # pytest's tmp dirs are private to root: mount where another user can reach.
    base = Path(tempfile.mkdtemp(prefix="dfs-shared-"))
    base.chmod(0o755)
    m = start_mount(engine.host, base / "mnt", "-o", "allow_other")
    try:
        _check_other_user(engine, m)
    finally:
        stop_mount(m)
        shutil.rmtree(base, ignore_errors=True)


def _check_other_user(engine: Engine, m: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    os.listdir(m.path)
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    read = subprocess.run([*nobody, "cat", f"{m.path}/{cid}/Image"], capture_output=True)
    assert read.returncode == 0 and read.stdout == b"busybox:latest\n", read.stderr
    write = subprocess.run(
        [*nobody, "sh", "-c", f"echo stop > {m.path}/{cid}/ctl"], capture_output=True, text=True
    )
    assert write.returncode != 0 and "Permission denied" in write.stderr
    assert state(engine, cid)["Running"]


def test_logs_byte_for_byte_against_the_api(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(
        IMG,
        "sh",
        "-c",
        "echo out1; echo err1 >&2; printf 'partial'; echo ' line'; echo err2 >&2; sleep 1d",
    )
    wait_until(
        lambda: b"err2" in demux(engine.api_raw(f"/containers/{cid}/logs?stdout=1&stderr=1")),
        "err2 in the log",
    )
    api = demux(engine.api_raw(f"/containers/{cid}/logs?stdout=1&stderr=1"))
    got = (mounted.path / cid / "logs").read_bytes()
    assert got == api
    assert b"out1\n" in got and b"err1\n" in got and b"partial line\n" in got
    # tools that seek or read in pieces see all of it
    tail = subprocess.run(["tail", "-c", "5", f"{mounted.path}/{cid}/logs"], capture_output=True)
    assert tail.stdout == api[-5:]
    grep = subprocess.run(["grep", "-c", "err", f"{mounted.path}/{cid}/logs"], capture_output=True)
    assert grep.stdout == b"2\n"


def test_logs_of_a_tty_container_are_raw(engine: Engine, mounted: Mount) -> None:
    cid = engine.run("-t", IMG, "sh", "-c", "echo tty-line; sleep 1d")
    wait_until(
        lambda: b"tty-line" in engine.api_raw(f"/containers/{cid}/logs?stdout=1"),
        "tty-line in the log",
    )
    assert (mounted.path / cid / "logs").read_bytes() == engine.api_raw(
        f"/containers/{cid}/logs?stdout=1&stderr=1"
    )


def test_logs_follow_delivers_a_line_written_after_open(engine: Engine, mounted: Mount) -> None:
    cid, go = run_held(engine, f"echo before; {WAIT_FOR_GO}; echo after; sleep 0.5")
    wait_until(
        lambda: b"before" in engine.api_raw(f"/containers/{cid}/logs?stdout=1"), "before in the log"
    )
    proc = subprocess.Popen(["cat", f"{mounted.path}/{cid}/logs.follow"], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"before\n"
        go.touch()
        assert proc.stdout.readline() == b"after\n"
        # the container exits: the stream ends and cat with it
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_logs_follow_reader_can_be_interrupted(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")  # never prints
    proc = subprocess.Popen(["cat", f"{mounted.path}/{cid}/logs.follow"], stdout=subprocess.PIPE)
    try:
        # cat's read is parked in the daemon, waiting for output, or this would
        # test nothing. Unanswered, it would wait until the container prints: never.
        wait_until(lambda: mounted.stats()["logs"]["waiting_reads"] == 1, "cat's read parked")
        interrupt_blocked_reader(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_inspect_json_equals_the_api(engine: Engine, mounted: Mount) -> None:
    cid = engine.run("--name=inspected", "-l", "k=v", IMG, "sleep", "1d")
    got = (mounted.path / cid / "inspect.json").read_text()
    want = engine.api(f"/containers/{cid}/json")
    assert json.loads(got) == want
    assert got.startswith("{\n    ") and got.endswith("}\n")  # pretty-printed


def test_names_and_prefixes_are_symlinks_not_listed(engine: Engine, mounted: Mount) -> None:
    cid = engine.run("--name=webby", IMG, "sleep", "1d")
    m = mounted.path
    assert (m / "webby" / "State").read_text() == "running\n"
    assert os.readlink(m / "webby") == cid
    assert (m / cid[:6] / "ID").read_text() == cid + "\n"
    assert os.path.realpath(m / cid[:12]) == str(m / cid)
    ctl(mounted, "webby", "pause")
    assert state(engine, cid)["Paused"]
    ctl(mounted, cid[:8], "unpause")
    assert not state(engine, cid)["Paused"]
    assert os.listdir(m) == [c["Id"] for c in engine.containers()]
    with pytest.raises(FileNotFoundError):
        os.stat(m / cid[:3])  # fewer than 4 hex digits


def test_unknown_prefix_is_enoent(engine: Engine, mounted: Mount) -> None:
    listed = os.listdir(mounted.path)
    free = next(
        p for p in (f"{i:04x}" for i in range(65536)) if not any(c.startswith(p) for c in listed)
    )
    with pytest.raises(FileNotFoundError):
        os.stat(mounted.path / free)
    with pytest.raises(FileNotFoundError):
        os.stat(mounted.path / "no-such-name")


def test_ambiguous_prefix_is_enoent(engine: Engine, all_mounted: Mount) -> None:
    """Create containers until two IDs share 4 hex digits (the birthday bound
    says ~320 on average; 2000 without a pair has odds below 1e-13)."""
    seen: dict[str, str] = {}
    pair: tuple[str, str] | None = None

    def create(_: int) -> str:
        return engine.dockerd.docker("create", IMG, "true").stdout.decode().strip()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while pair is None:
            assert len(seen) < 2000, "no two IDs shared a 4-digit prefix"
            for cid in pool.map(create, range(64)):
                engine.started.append(cid)
                if cid[:4] in seen:
                    pair = (seen[cid[:4]], cid)
                seen.setdefault(cid[:4], cid)
    a, b = pair
    common = a[: next(i for i in range(64) if a[i] != b[i])]
    print(f"\n{len(engine.started)} containers until {a[:12]} and {b[:12]} shared {common!r}")
    assert os.listdir(all_mounted.path)  # a listing, so both are known
    with pytest.raises(FileNotFoundError):
        os.stat(all_mounted.path / common)
    for cid in (a, b):  # one more digit tells them apart
        unique = cid[: len(common) + 1]
        assert os.readlink(all_mounted.path / unique) == cid


def test_all_lists_stopped_containers(engine: Engine, all_mounted: Mount) -> None:
    created = engine.dockerd.docker("create", IMG, "true").stdout.decode().strip()
    engine.started.append(created)
    running = engine.run(IMG, "sleep", "1d")
    listed = os.listdir(all_mounted.path)
    assert created in listed and running in listed
    assert listed == [c["Id"] for c in engine.containers(all=True)]
    assert (all_mounted.path / created / "State").read_text() == "created\n"
    ctl(all_mounted, created, "start")
    assert created in os.listdir(all_mounted.path)


def requests_of(m: Mount, kind: str) -> int:
    """Docker requests the daemon made: "containers/json" is a full listing,
    "containers/json?filters" a re-read of one container (or a lookup's query)."""
    return int(m.stats()["requests"].get(kind, 0))


def wait_for_events(engine: Engine, m: Mount) -> None:
    """Wait until the daemon follows Docker's events (it subscribes after mounting):
    a container started now is re-read with nobody asking for it."""
    deadline = time.monotonic() + 60
    while True:
        reads = requests_of(m, "containers/json?filters")
        engine.run(IMG, "sleep", "1d")  # missed if the stream is not up yet: try again
        try:
            wait_until(
                lambda: requests_of(m, "containers/json?filters") > reads,  # noqa: B023 - called at once
                "a re-read after an event",
                timeout=5,
            )
            return
        except AssertionError:
            assert time.monotonic() < deadline, "no event was followed for 60 s"


# The daemon's attribute and entry timeout in the test below (ATTR_TIMEOUT_ENV;
# with kernel caching they are longer still): what the kernel caches stays
# until an invalidation comes or this runs out.
PUSH_TEST_ATTR_TIMEOUT = 120.0


def pushed_before_the_kernel_timeout(asked: float, check: Callable[[], bool], what: str) -> float:
    """Wait for `check`, which looks at something the kernel caches (a size, an
    entry) and last asked the daemon about at `asked`, and return when it held.

    The kernel trusts what it cached for PUSH_TEST_ATTR_TIMEOUT; a change seen
    before that ran out can only have been pushed (an invalidation). The bound
    is many times what an event takes on a loaded machine.
    """
    while True:
        t = time.monotonic()
        if check():
            return t
        assert t < asked + PUSH_TEST_ATTR_TIMEOUT - 1, (
            f"{what}: not seen {t - asked:.1f}s after the kernel cached it; no "
            f"invalidation reached the kernel before its {PUSH_TEST_ATTR_TIMEOUT}s timeout"
        )
        time.sleep(0.02)


def test_state_changes_and_removals_are_pushed_by_events(
    engine: Engine, mount_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Docker's events, not listings, keep what `cat` and `stat` show fresh.

    Every wait is generous (an event can take seconds on a loaded machine); what
    shows the events did it is that no listing is made, and that what the kernel
    caches changes long before the kernel would have asked again by itself.
    """
    monkeypatch.setenv(ATTR_TIMEOUT_ENV, str(PUSH_TEST_ATTR_TIMEOUT))
    mounted = mount_factory(engine.host)
    wait_for_events(engine, mounted)
    listings = requests_of(mounted, "containers/json")
    cid = engine.run(IMG, "sleep", "1d")
    state_file = mounted.path / cid / "State"
    status_file = mounted.path / cid / "Status"
    assert state_file.read_text() == "running\n"
    # Status's size is cached by the kernel from here on. (Its size is watched,
    # not State's: a read marks the file's atime stale, so a stat after reading
    # asks the daemon anyway; State is what is read.)
    asked = time.monotonic()
    size = status_file.stat().st_size
    engine.docker("pause", cid)
    t0 = time.monotonic()
    wait_until(lambda: state_file.read_text() == "paused\n", "State reads paused")
    took = time.monotonic() - t0
    pushed_before_the_kernel_timeout(
        asked, lambda: status_file.stat().st_size != size, "Status's new size"
    )
    status = status_file.read_text()
    assert status.endswith(" (Paused)\n") and status_file.stat().st_size == len(status)
    asked = time.monotonic()
    size = status_file.stat().st_size
    engine.docker("unpause", cid)
    wait_until(lambda: state_file.read_text() == "running\n", "State reads running")
    pushed_before_the_kernel_timeout(
        asked, lambda: status_file.stat().st_size != size, "Status's size after unpause"
    )
    assert not status_file.read_text().endswith(" (Paused)\n")
    asked = time.monotonic()
    assert (mounted.path / cid).is_dir()  # the kernel caches the entry
    engine.docker("rm", "-f", cid)
    gone = pushed_before_the_kernel_timeout(
        asked, lambda: not (mounted.path / cid).exists(), "the removed container's entry"
    )
    print(f"pause seen after {took:.3f}s, removal {gone - asked:.3f}s after the lookup")
    # A container started after mount is known from its events alone: once they
    # are handled (its re-reads come 0.05 s and 0.45 s after an event: wait for
    # one, then for 2 s without a request), reaching it by path asks Docker nothing.
    reads = requests_of(mounted, "containers/json?filters")
    new = engine.run("--name=fresh", IMG, "sleep", "1d")
    wait_until(lambda: requests_of(mounted, "containers/json?filters") > reads, "a re-read")
    settled = mounted.stats()["requests"]
    quiet_since = deadline = time.monotonic()
    while time.monotonic() - quiet_since < 2:
        assert time.monotonic() - deadline < 60, "the daemon kept asking Docker for 60 s"
        time.sleep(0.1)
        now = mounted.stats()["requests"]
        if now != settled:
            settled, quiet_since = now, time.monotonic()
    assert (mounted.path / new / "State").read_text() == "running\n"
    assert (mounted.path / "fresh" / "ID").read_text() == new + "\n"
    assert mounted.stats()["requests"] == settled
    assert requests_of(mounted, "containers/json") == listings  # and never a listing
