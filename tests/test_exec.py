"""Exec sessions (docs/exec.md): a container's exec/clone and N/{ctl,data,stderr,status,wait}.

The grammar and the sessions' policy are in test_exec_unit.py; here
everything a user does is done on a real mount over the private dockerd:
output, stdin and eof, stderr apart, -t, exit codes, a command that does
not exist, a stopped container, 64 sessions at once, a reader that stops
reading, a signalled reader, killonclose, another user, -o ro, 100 MB each
way checked by hash, the 9P shim, and the same core on Podman, tcp+TLS and
ssh://.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from conftest import Engine, Mount, start_mount, stop_mount, wait_for_start_line
from ninep_support import Client
from support.private_engines import PrivateSshd, TLSDockerd
from support.waiting import wait_until

from dockerfs_fuse.docker import exec as docker_exec
from dockerfs_fuse.docker.exec import ExecState
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.model.exec import ExecSpec
from dockerfs_fuse.ninep import codec
from dockerfs_fuse.ninep.codec import Message

IMG = "busybox:latest"


# -- on a real mount ----------------------------------------------------------------------


class Opened:
    """A reserved session: the clone descriptor (its ctl), its number and directory."""

    def __init__(self, m: Mount, cid: str) -> None:
        self.fd = os.open(m.path / cid / "exec" / "clone", os.O_RDWR)
        self.n = int(os.read(self.fd, 32))
        self.dir = m.path / cid / "exec" / str(self.n)

    def ctl(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def read(self, name: str) -> bytes:
        return (self.dir / name).read_bytes()

    def close(self) -> None:
        os.close(self.fd)


def run_session(m: Mount, cid: str, line: str) -> Opened:
    s = Opened(m, cid)
    s.ctl(line)
    return s


def ctl_errno(s: Opened, line: str) -> int:
    with pytest.raises(OSError) as err:
        s.ctl(line)
    return err.value.errno or 0


@pytest.mark.docker
@pytest.mark.fuse
def test_exec_runs_a_command_and_reads_its_output_and_exit_code(
    engine: Engine, mounted: Mount
) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    s = run_session(mounted, cid, "exec ls -l /bin/busybox /bin/sh")
    try:
        assert os.readlink(mounted.path / cid / "exec") == ".live/exec"
        want = engine.docker("exec", cid, "ls", "-l", "/bin/busybox", "/bin/sh")
        assert s.read("data") == want.encode()
        assert s.read("wait") == b"0\n"
        assert s.read("status") == b"exited 0\n"
        assert sorted(os.listdir(mounted.path / cid / "exec")) == sorted(["clone", str(s.n)])
        assert sorted(os.listdir(s.dir)) == ["ctl", "data", "status", "stderr", "wait"]
    finally:
        s.close()
    # Its files all closed, the session is gone (the kernel releases after close returns).
    gone = lambda: os.listdir(mounted.path / cid / "exec") == ["clone"]  # noqa: E731
    wait_until(gone, "the session's directory gone")
    assert not s.dir.exists()


@pytest.mark.docker
@pytest.mark.fuse
def test_exit_codes_stderr_apart_and_a_tty(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    s = run_session(mounted, cid, "exec sh -c 'echo out; echo err >&2; exit 7'")
    try:
        assert s.read("data") == b"out\n"
        assert s.read("stderr") == b"err\n"
        assert s.read("wait") == b"7\n"
    finally:
        s.close()
    s = run_session(mounted, cid, "exec -t sh -c 'tty; echo err >&2'")
    try:
        data = s.read("data")
        assert data.startswith(b"/dev/pts/") and data.endswith(b"err\r\n"), data
        assert s.read("stderr") == b""
        assert s.read("wait") == b"0\n"
    finally:
        s.close()
    s = run_session(mounted, cid, "exec -u 65534 -w /tmp -e A=b=c -- sh -c 'id -u; pwd; echo $A'")
    try:
        assert s.read("data") == b"65534\n/tmp\nb=c\n"
    finally:
        s.close()


@pytest.mark.docker
@pytest.mark.fuse
def test_stdin_with_eof(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    s = run_session(mounted, cid, 'exec sh -c "grep x"')
    try:
        fd = os.open(s.dir / "data", os.O_RDWR)
        try:
            assert os.write(fd, b"a\nx\n") == 4
            s.ctl("eof")
            got = b""
            while chunk := os.read(fd, 4096):
                got += chunk
        finally:
            os.close(fd)
        assert got == b"x\n"
        assert s.read("wait") == b"0\n"
        with pytest.raises(BrokenPipeError):
            (s.dir / "data").write_bytes(b"late\n")
    finally:
        s.close()


@pytest.mark.docker
@pytest.mark.fuse
def test_kill_a_command_not_there_and_a_bad_line(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    s = run_session(mounted, cid, "exec sleep 4242")
    try:
        status = s.read("status").split()
        assert status[0] == b"running" and int(status[1]) > 0
        s.ctl("kill")
        assert s.read("wait") == b"137\n"
        assert s.read("status") == b"exited 137\n"
        assert s.read("data") == b""
        assert ctl_errno(s, "exec true") == errno.EBUSY  # one command per session
    finally:
        s.close()
    s = Opened(mounted, cid)
    try:
        assert ctl_errno(s, "exec no-such-command") == errno.ENOENT
        why = os.read(s.fd, 4096).decode()
        assert why.startswith("error: ") and "no-such-command" in why, why
        assert s.read("status") == b"exited -1\n"
    finally:
        s.close()
    s = Opened(mounted, cid)
    try:
        for bad in ("bogus", "exec", "exec -x ls", "exec 'unclosed", "kill NOSIG", "eof now"):
            assert ctl_errno(s, bad) == errno.EINVAL, bad
        assert os.read(s.fd, 4096).startswith(b"error: ")
        assert s.read("status") == b"reserved\n"
    finally:
        s.close()


@pytest.mark.docker
@pytest.mark.fuse
def test_a_stopped_or_paused_container_is_ebusy(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    engine.docker("pause", cid)
    s = Opened(mounted, cid)
    try:
        assert ctl_errno(s, "exec true") == errno.EBUSY
        assert b"paused" in os.read(s.fd, 4096)
    finally:
        s.close()
    engine.docker("unpause", cid)
    engine.docker("stop", "-t", "0", cid)
    s = Opened(mounted, cid)
    try:
        assert ctl_errno(s, "exec true") == errno.EBUSY
        assert b"not running" in os.read(s.fd, 4096)
    finally:
        s.close()


@pytest.mark.docker
@pytest.mark.fuse
def test_a_container_that_stops_ends_its_sessions(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    s = run_session(mounted, cid, "exec sh -c 'echo started; sleep 1000'")
    try:
        fd = os.open(s.dir / "data", os.O_RDONLY)
        try:
            assert os.read(fd, 100) == b"started\n"
            engine.docker("kill", cid)
            assert os.read(fd, 100) == b""
        finally:
            os.close(fd)
        assert s.read("wait") == b"137\n"
    finally:
        s.close()


@pytest.mark.docker
@pytest.mark.fuse
def test_64_sessions_at_once(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    results: dict[int, tuple[bytes, bytes]] = {}

    def one(i: int) -> None:
        s = run_session(mounted, cid, f"exec sh -c 'sleep 1; echo {i}'")
        try:
            results[i] = (s.read("data"), s.read("wait"))
        finally:
            s.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == {i: (f"{i}\n".encode(), b"0\n") for i in range(64)}
    wait_until(lambda: mounted.stats()["exec"]["sessions"] == 0, "every session ended")
    # The bound per container: the 65th is EAGAIN.
    held = [Opened(mounted, cid) for _ in range(64)]
    try:
        with pytest.raises(OSError) as err:
            Opened(mounted, cid)
        assert err.value.errno == errno.EAGAIN
    finally:
        for s in held:
            s.close()


@pytest.mark.docker
@pytest.mark.fuse
def test_a_reader_that_stops_reading_stops_the_command(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    pid = mounted.proc.pid
    s = run_session(mounted, cid, "exec sh -c 'head -c 300000000 /dev/zero; echo done >&2'")
    try:
        fd = os.open(s.dir / "data", os.O_RDONLY)
        try:
            assert len(os.read(fd, 65536)) > 0
            # Nobody reads on: the command blocks, and the daemon holds a bounded part.
            before = _rss_kb(pid)
            time.sleep(3)  # a span in which an unpaced stream would have grown by GBs
            assert s.read("status").startswith(b"running ")
            assert _rss_kb(pid) < before + 20 * 1024
            total = 0
            while chunk := os.read(fd, 1 << 20):
                total += len(chunk)
        finally:
            os.close(fd)
        assert total + 65536 >= 300_000_000 - 65536
        assert s.read("stderr") == b"done\n"
        assert s.read("wait") == b"0\n"
    finally:
        s.close()


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.docker
@pytest.mark.fuse
def test_a_blocked_reader_is_interrupted(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    s = run_session(mounted, cid, "exec sleep 4343")
    try:
        for name in ("data", "wait"):
            proc = subprocess.Popen(["cat", str(s.dir / name)], stdout=subprocess.PIPE)
            try:
                wait_until(lambda: mounted.stats()["exec"]["blocked"] == 1, "cat's read parked")
                t0 = time.monotonic()
                proc.send_signal(signal.SIGINT)
                assert proc.wait(30) == -signal.SIGINT
                took = time.monotonic() - t0
                assert took < 0.5, f"{name}: {took:.3f}s after SIGINT"
            finally:
                proc.kill()
                proc.wait()
        assert s.read("status").startswith(b"running ")
    finally:
        s.close()


def _sleeping(arg: str) -> bool:
    """Whether a `sleep ARG` runs on this host (the private dockerd's containers do)."""
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if (p / "cmdline").read_bytes() == f"sleep\0{arg}\0".encode():
                    return True
            except OSError:
                pass
    return False


@pytest.mark.docker
@pytest.mark.fuse
def test_closing_kills_with_killonclose_at_the_ctl(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    # killonclose: the ctl's close kills it, though data is still open.
    s = run_session(mounted, cid, "exec sh -c 'echo up; exec sleep 4444'")
    s.ctl("killonclose")
    data = os.open(s.dir / "data", os.O_RDONLY)
    try:
        assert os.read(data, 10) == b"up\n"
        wait_until(lambda: _sleeping("4444"), "sh has become sleep")
        s.close()
        wait_until(lambda: not _sleeping("4444"), "the command killed at the ctl's close")
        assert os.read(data, 10) == b""
    finally:
        os.close(data)
    # Without it, the command lives while any of its files is open, and no longer.
    s = run_session(mounted, cid, "exec sh -c 'echo up; exec sleep 4545'")
    data = os.open(s.dir / "data", os.O_RDONLY)
    assert os.read(data, 10) == b"up\n"
    wait_until(lambda: _sleeping("4545"), "sh has become sleep")
    s.close()
    wait_until(lambda: mounted.stats()["exec"]["sessions"] == 1, "the ctl released")
    assert _sleeping("4545")
    os.close(data)
    wait_until(lambda: not _sleeping("4545"), "the command killed with its last file")
    wait_until(lambda: mounted.stats()["exec"]["sessions"] == 0, "the session ended")


@pytest.mark.docker
@pytest.mark.fuse
def test_only_the_mounting_user_and_never_under_ro(engine: Engine, mount_factory: Any) -> None:
    base = Path(tempfile.mkdtemp(prefix="dfs-shared-"))
    base.chmod(0o755)
    m = start_mount(engine.host, base / "mnt", "-o", "allow_other")
    try:
        cid = engine.run(IMG, "sleep", "1d")
        s = run_session(m, cid, "exec sleep 4646")
        try:
            st = os.stat(m.path / cid / "exec" / "clone")
            assert st.st_mode & 0o777 == 0o600 and st.st_uid == os.getuid()
            assert os.stat(s.dir).st_mode & 0o777 == 0o700
            nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            for path in (m.path / cid / "exec" / "clone", s.dir / "data", s.dir / "status"):
                res = subprocess.run([*nobody, "cat", str(path)], capture_output=True, text=True)
                assert res.returncode != 0 and "Permission denied" in res.stderr, res
        finally:
            s.close()
    finally:
        stop_mount(m)
        shutil.rmtree(base, ignore_errors=True)
    ro = mount_factory(engine.host, "-o", "ro", name="ro")
    with pytest.raises(OSError) as err:
        os.open(ro.path / cid / "exec" / "clone", os.O_RDWR)
    assert err.value.errno == errno.EROFS


BIG = 100_000_000


@pytest.mark.docker
@pytest.mark.fuse
def test_100_mb_each_way_byte_for_byte(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    engine.docker("exec", cid, "sh", "-c", f"head -c {BIG} /dev/urandom > /big")
    want = engine.docker("exec", cid, "busybox", "sha256sum", "/big").split()[0]
    s = run_session(mounted, cid, "exec cat /big")
    try:
        digest = hashlib.sha256()
        size = 0
        with open(s.dir / "data", "rb", buffering=0) as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
                size += len(chunk)
        assert (size, digest.hexdigest()) == (BIG, want)
        assert s.read("wait") == b"0\n"
    finally:
        s.close()
    s = run_session(mounted, cid, "exec sh -c 'cat > /in'")
    try:
        digest = hashlib.sha256()
        block = os.urandom(1 << 20)
        with open(s.dir / "data", "wb", buffering=0) as f:
            sent = 0
            while sent < BIG:
                piece = block[: min(len(block), BIG - sent)]
                piece = piece[sent % 7 :] + piece[: sent % 7]  # not one block repeated
                f.write(piece)
                digest.update(piece)
                sent += len(piece)
        s.ctl("eof")
        assert s.read("wait") == b"0\n"
    finally:
        s.close()
    got = engine.docker("exec", cid, "busybox", "sha256sum", "/in").split()[0]
    assert got == digest.hexdigest()


@pytest.mark.docker
@pytest.mark.fuse
def test_the_one_line_form_reads_the_output_on_the_same_descriptor(
    engine: Engine, mounted: Mount
) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    clone = mounted.path / cid / "exec" / "clone"
    res = subprocess.run(
        ["sh", "-c", '(echo \'run sh -c "echo out; echo err >&2"\' >&0; cat) <>"$1"', "sh", clone],
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0 and sorted(res.stdout.splitlines()) == [b"err", b"out"], res


@pytest.mark.docker
@pytest.mark.fuse
def test_a_walk_never_opens_a_session(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    found = subprocess.run(["find", str(mounted.path)], capture_output=True, text=True, timeout=60)
    assert f"{cid}/exec\n" in found.stdout and "clone" not in found.stdout
    grep = subprocess.run(["grep", "-r", "x", str(mounted.path)], capture_output=True, timeout=60)
    assert grep.returncode in (0, 1)
    assert mounted.stats()["exec"]["sessions"] == 0


@pytest.mark.docker
@pytest.mark.fuse
def test_the_engine_view_has_exec_too(engine: Engine, mount_factory: Any) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    m = mount_factory(engine.host, "--view=engine", name="ev")
    s = Opened(m, f"containers/{cid}")
    try:
        s.ctl("exec echo hi")
        assert s.read("data") == b"hi\n"
    finally:
        s.close()


def _mount_with_9p(mount_factory: Any, host: str, *extra: str) -> tuple[Mount, int]:
    m: Mount = mount_factory(host, "--9p", "tcp!127.0.0.1!0", *extra, name="9p" + "".join(extra))
    found: list[int] = []

    def announced() -> bool:
        match = re.search(r"listening on tcp!127\.0\.0\.1!(\d+)", m.log_text())
        if match:
            found.append(int(match.group(1)))
        return bool(match)

    wait_until(announced, "the 9P shim's port")
    return m, found[0]


def _open9(client: Client, path: str, fid: int, mode: int) -> Message:
    assert isinstance(client.walk(path, fid), codec.Rwalk), path
    return client.rpc(codec.Topen(tag=4, fid=fid, mode=mode))


@pytest.mark.docker
@pytest.mark.fuse
def test_a_session_over_9p_with_control_allowed(engine: Engine, mount_factory: Any) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    _, port = _mount_with_9p(mount_factory, engine.host, "--9p-allow-control")
    with Client.session("127.0.0.1", port) as client:
        assert isinstance(_open9(client, f"{cid}/exec/clone", 10, codec.ORDWR), codec.Ropen)
        n = int(client.read_all(10).decode())
        line = b"exec sh -c 'read x; echo got $x; echo err >&2; exit 5'"
        wrote = client.rpc(codec.Twrite(tag=6, fid=10, offset=0, data=line))
        assert isinstance(wrote, codec.Rwrite), wrote
        assert isinstance(_open9(client, f"{cid}/exec/{n}/data", 11, codec.ORDWR), codec.Ropen)
        wrote = client.rpc(codec.Twrite(tag=6, fid=11, offset=0, data=b"hello\n"))
        assert isinstance(wrote, codec.Rwrite), wrote
        assert client.read_all(11) == b"got hello\n"
        assert client.cat(f"{cid}/exec/{n}/stderr") == b"err\n"
        assert client.cat(f"{cid}/exec/{n}/wait") == b"5\n"
        for fid in (10, 11):
            client.rpc(codec.Tclunk(tag=5, fid=fid))
    wait_until(lambda: not _sessions_of(engine, cid), "the session gone")
    # Without --9p-allow-control, no session opens.
    _, port = _mount_with_9p(mount_factory, engine.host)
    with Client.session("127.0.0.1", port) as client:
        assert isinstance(_open9(client, f"{cid}/exec/clone", 10, codec.ORDWR), codec.Rerror)


def _sessions_of(engine: Engine, cid: str) -> list[str]:
    """Execs Docker still runs in the container (its ExecIDs)."""
    ids = engine.api(f"/containers/{cid}/json").get("ExecIDs") or []
    return [e for e in ids if engine.api(f"/exec/{e}/json")["Running"]]


# -- the same on Podman and on remote engines ----------------------------------------------

ENGINES = ("docker", "podman", "tls", "ssh")


@pytest.fixture(params=ENGINES)
def where(
    request: pytest.FixtureRequest, mount_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[Engine, Mount, str]:
    """An engine (the private dockerd, Podman, a dockerd over tcp+TLS or over
    ssh://) and a mount of it; the name says which."""
    kind: str = request.param
    if kind == "podman":
        e: Engine = request.getfixturevalue("podman_engine")
        return e, mount_factory(e.host), kind
    if kind == "tls":
        e = request.getfixturevalue("tls_engine")
        d: TLSDockerd = e.dockerd  # type: ignore[assignment]
        monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
        monkeypatch.setenv("DOCKER_CERT_PATH", str(d.tls.client_dir))
        m = mount_factory(d.tcp_url)
        wait_for_start_line(m, d.tcp_url)
        return e, m, kind
    e = request.getfixturevalue("engine")
    if kind == "ssh":
        sshd: PrivateSshd = request.getfixturevalue("sshd_session")
        monkeypatch.setenv("HOME", str(sshd.client_home))
        m = mount_factory(sshd.url)
        wait_for_start_line(m, sshd.url)
        return e, m, kind
    return e, mount_factory(e.host), kind


@pytest.mark.docker
@pytest.mark.fuse
def test_sessions_on_every_engine(where: tuple[Engine, Mount, str]) -> None:
    engine, m, kind = where
    cid = engine.run(IMG, "sleep", "1d")
    s = run_session(m, cid, "exec sh -c 'echo out; echo err >&2; exit 7'")
    try:
        assert (s.read("data"), s.read("stderr"), s.read("wait")) == (b"out\n", b"err\n", b"7\n")
    finally:
        s.close()
    s = run_session(m, cid, "exec -t sh -c 'echo tty'")
    try:
        assert s.read("data") == b"tty\r\n" and s.read("wait") == b"0\n"
    finally:
        s.close()
    s = run_session(m, cid, "exec sh -c 'read x; echo got $x; cat'")
    try:
        fd = os.open(s.dir / "data", os.O_RDWR)
        try:
            os.write(fd, b"one\n")
            assert os.read(fd, 100) == b"got one\n"
            if kind == "tls":
                # A TLS connection cannot end stdin alone: documented, EOPNOTSUPP.
                assert ctl_errno(s, "eof") == errno.EOPNOTSUPP
                s.ctl("kill TERM")
                assert s.read("wait") == b"143\n"
            else:
                s.ctl("eof")
                assert os.read(fd, 100) == b""
                assert s.read("wait") == b"0\n"
        finally:
            os.close(fd)
    finally:
        s.close()
    s = run_session(m, cid, "exec sleep 4747")
    try:
        assert s.read("status").startswith(b"running ")
        s.ctl("kill")
        assert s.read("wait") == b"137\n"
    finally:
        s.close()
    s = Opened(m, cid)
    try:
        assert ctl_errno(s, "exec no-such-command") == errno.ENOENT
        assert b"no-such-command" in os.read(s.fd, 4096)
    finally:
        s.close()
    engine.docker("stop", "-t", "0", cid)
    s = Opened(m, cid)
    try:
        assert ctl_errno(s, "exec true") == errno.EBUSY, os.read(s.fd, 4096)
    finally:
        s.close()


@pytest.mark.docker
def test_a_signal_from_inside_the_container_where_the_host_cannot_send_one(
    engine: Engine,
) -> None:
    """A remote engine's exec PID is not a process here: a second exec finds
    the marked process in the container's /proc and signals it."""
    cid = engine.run(IMG, "sleep", "1d")
    source = DockerSource(engine.host)
    source.start()

    async def main() -> ExecState:
        exec_id = await docker_exec.create(source, cid, ExecSpec(("sleep", "4949")), "mark1")
        channel = await docker_exec.start(source, exec_id, False)
        try:
            with trio.fail_after(30):
                while not (await docker_exec.inspect(source, exec_id)).running:
                    await trio.sleep(0.01)
                # PID 0: no process of this host, as with a remote engine.
                await docker_exec.signal(source, cid, 0, "mark1", "SIGTERM")
                assert await channel.read() is None
                while (state := await docker_exec.inspect(source, exec_id)).running:
                    await trio.sleep(0.01)
            return state
        finally:
            channel.close()

    try:
        state = trio.run(main)
    finally:
        source.close()
    assert state.exit_code == 143
    assert source.requests["exec/create"] == 2  # the command's, and the killer's
