"""Container logs used as logs are used.

The spool's rules, unit-tested with a fake Docker; then, on a real engine and
a real mount: `tail -f`, `tail -F`, `tail -n 20 -f`, `less +F` and `cat
logs.follow` against a container printing a line every half second; a 50 MB
log streamed with the daemon's memory bounded; and proof that logs.follow
openers at their cap leave the rest of the mount served.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import pyfuse3
import pytest
import trio
import trio.testing
from conftest import WAIT_FOR_GO, Engine, Mount, require, run_held
from support.waiting import wait_until

from dockerfs_fuse.docker.errors import DockerUnavailable, NotFound
from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.engine.logs import (
    FOLLOW_RETRY_INTERVAL,
    LogSpools,
    LogWriter,
    SpoolError,
    TooManyLogs,
)
from dockerfs_fuse.fuse.invalidate import Invalidator
from dockerfs_fuse.fuse.logs import MAX_FOLLOWERS, MAX_FOLLOWERS_PER_PROCESS
from dockerfs_fuse.fuse.operations import DockerFS
from dockerfs_fuse.model.containers import LIVE
from dockerfs_fuse.model.inodes import Node

IMG = "busybox:latest"
# Numbered lines: 25 at once (a history for `tail -n 20` to show), then one
# every half second, for ever.
TICKER = (
    'i=0; while [ $i -lt 25 ]; do echo "tick $i"; i=$((i+1)); done; '
    'while true; do echo "tick $i"; i=$((i+1)); sleep 0.5; done'
)


# -- the spool, with a fake Docker -------------------------------------------------------


class FakeRequest:
    def __init__(self, cid: str, out: LogWriter, follow: bool) -> None:
        self.cid, self.out, self.follow = cid, out, follow
        self.cancelled = False

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeDocker:
    """Records the log requests a spool makes; the test plays Docker's part."""

    def __init__(self, running: bool = True) -> None:
        self.requests: list[FakeRequest] = []
        self.running = running

    def start(self, cid: str, out: LogWriter, follow: bool) -> FakeRequest:
        self.requests.append(FakeRequest(cid, out, follow))
        return self.requests[-1]

    def spools(self, limit: int = 8) -> LogSpools:
        return LogSpools(self.start, lambda cid: self.running, limit)


async def until(check: Callable[[], bool]) -> None:
    """Let trio run the writers' callbacks until check holds (bounded)."""
    with trio.fail_after(10):
        while not check():
            await trio.sleep(0.001)


def run(test: Callable[[], Awaitable[None]]) -> None:
    trio.run(test)


def test_spool_shows_size_0_until_the_log_so_far_is_in_then_grows() -> None:
    async def main() -> None:
        docker = FakeDocker(running=True)
        spools = docker.spools()
        spool = spools.open("c1")
        history = docker.requests[0]
        assert (history.cid, history.follow) == ("c1", False)
        history.out.write(b"one\ntw")
        await until(lambda: spool.size == 6)
        # A partial size would make `tail` take the first part for the whole.
        assert spool.shown_size() == 0 and spools.polled_size("c1") == 0
        assert spool.read(0, 100) == b"one\ntw" and spool.read(4, 1) == b"t"
        assert not spool.at_eof(follow=False)
        history.out.write(b"o\n")
        history.out.finish(None)
        await until(lambda: spool.history_done)
        assert spool.shown_size() == 8 and spool.at_eof(follow=False)
        assert len(docker.requests) == 1  # a one-shot reader costs one request
        # Polling the size (tail -f) is wanting more: follow. Docker replays the
        # log from its start; the replay is skipped.
        assert spools.polled_size("c1") == 8
        follow = docker.requests[1]
        assert follow.follow and not spool.at_eof(follow=True)
        follow.out.write(b"one\n")
        follow.out.write(b"two\nthr")
        follow.out.write(b"ee\n")
        await until(lambda: spool.size == 14)
        assert spool.read(0, 100) == b"one\ntwo\nthree\n"
        assert spools.polled_size("c1") == 14
        follow.out.finish(None)  # the container stopped
        await until(lambda: not spool.following)
        assert spool.at_eof(follow=True)
        # Wanting more again does not replay the log again: only a start event does.
        spool.want_more()
        assert len(docker.requests) == 2
        spools.release(spool)
        assert spool.closed and len(spools) == 0 and spools.polled_size("c1") == 0

    run(main)


def test_a_stopped_container_is_not_followed_until_it_starts() -> None:
    async def main() -> None:
        docker = FakeDocker(running=False)
        spools = docker.spools()
        spool = spools.open("c1")
        spool.want_more()  # a logs.follow is open, say
        docker.requests[0].out.write(b"old\n")
        docker.requests[0].out.finish(None)
        await until(lambda: spool.history_done)
        assert len(docker.requests) == 1 and spool.at_eof(follow=True)
        spools.container_started("c1")  # the event
        assert docker.requests[1].follow and not spool.at_eof(follow=True)
        # Started again while still following (stop and start in quick
        # succession): follow anew when this request ends.
        spools.container_started("c1")
        assert len(docker.requests) == 2
        docker.requests[1].out.write(b"old\nnew\n")
        docker.requests[1].out.finish(None)
        await until(lambda: len(docker.requests) == 3)
        assert docker.requests[2].follow and spool.read(0, 100) == b"old\nnew\n"
        spools.release(spool)

    run(main)


def test_a_follow_cut_short_is_made_again_at_most_once_a_second() -> None:
    """Docker restarted under a follow: the next reader that wants more
    follows again (not more than once a second), as long as the container runs."""

    async def main() -> None:
        docker = FakeDocker(running=True)
        spools = docker.spools()
        spool = spools.open("c1")
        docker.requests[0].out.write(b"old\n")
        docker.requests[0].out.finish(None)
        await until(lambda: spool.history_done)
        spool.want_more()
        docker.requests[1].out.write(b"old\nnew\n")
        await until(lambda: spool.size == 8)
        await trio.sleep(FOLLOW_RETRY_INTERVAL)  # it followed for a while
        docker.requests[1].out.finish(DockerUnavailable("connection reset"))
        await until(lambda: spool.follow_error is not None)
        with pytest.raises(DockerUnavailable):
            spool.at_eof(follow=True)
        spool.want_more()  # a reader wants more: follow again
        assert len(docker.requests) == 3 and docker.requests[2].follow
        assert spool.following and not spool.at_eof(follow=True)
        docker.requests[2].out.finish(DockerUnavailable("still down"))
        await until(lambda: spool.follow_error is not None)
        spool.want_more()
        assert len(docker.requests) == 3  # not again within the interval
        await trio.sleep(FOLLOW_RETRY_INTERVAL)
        spool.want_more()
        assert len(docker.requests) == 4
        docker.requests[3].out.write(b"old\nnew\nnewer\n")  # the replay, skipped
        await until(lambda: spool.size == 14)
        assert spool.read(0, 100) == b"old\nnew\nnewer\n"
        # Cut short again, and the container has stopped meanwhile: no retry.
        docker.requests[3].out.finish(DockerUnavailable("connection reset"))
        await until(lambda: spool.follow_error is not None)
        docker.running = False
        await trio.sleep(FOLLOW_RETRY_INTERVAL)
        spool.want_more()
        assert len(docker.requests) == 4
        spools.release(spool)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class LogsEngine:
    """What DockerFS asks of an engine to open logs: the fake Docker's requests."""

    def __init__(self, docker: FakeDocker) -> None:
        self.requests: dict[str, int] = {}
        self.stream_logs = docker.start

    def stream_archive(self, *args: object) -> None:
        raise AssertionError("a logs test asked for a container's files")


CID = "c" * 64


def log_fs(docker: FakeDocker) -> tuple[DockerFS, Node, Node]:
    """A DockerFS over the fake Docker with one container: it, its logs and logs.follow."""
    invalidator = Invalidator()
    engines = Engines({"local": LogsEngine(docker)}, invalidator.apply)  # type: ignore[dict-item]
    fs = DockerFS(engines, invalidator)
    container = {"Id": CID, "Names": ["/c1"], "State": "running", "Created": 1}
    fs.table.set_containers([container], fs.table.root)
    cdir = fs.table.lookup(fs.table.root, CID)
    assert cdir is not None
    live = fs.table.lookup(cdir, LIVE)  # where the links `logs` and `logs.follow` lead
    assert live is not None
    logs, follow = fs.table.lookup(live, "logs"), fs.table.lookup(live, "logs.follow")
    assert logs is not None and follow is not None
    return fs, logs, follow


def test_a_logs_follow_reader_follows_again_after_docker_went_away() -> None:
    """A follow cut short fails the read at that moment (EIO); the reader's
    next read, a second later, follows again instead of failing for ever."""

    async def main() -> None:
        docker = FakeDocker(running=True)
        fs, _, follow = log_fs(docker)
        fh = (await open_file(fs, follow)).fh
        docker.requests[0].out.finish(None)  # an empty history; the follow begins
        await until(lambda: len(docker.requests) == 2)
        docker.requests[1].out.write(b"one\n")
        assert await fs.read(fh, 0, 100) == b"one\n"
        docker.requests[1].out.finish(DockerUnavailable("connection reset"))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(pyfuse3.FUSEError) as err:
            await fs.read(fh, 0, 100)
        assert err.value.errno == errno.EIO and len(docker.requests) == 2
        await trio.sleep(FOLLOW_RETRY_INTERVAL)
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: read_into(fs, fh, got))
            await until(lambda: len(docker.requests) == 3)
            assert docker.requests[2].follow
            docker.requests[2].out.write(b"one\ntwo\n")
        assert got == [b"two\n"]
        await fs.release(fh)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize("name", ["logs", "logs.follow"])
def test_each_open_of_a_log_has_one_blocked_read_at_most(name: str) -> None:
    """A read waiting for more holds one of pyfuse3's workers: a second read
    on the same open gets EAGAIN, for logs (still loading) as for logs.follow."""

    async def main() -> None:
        docker = FakeDocker(running=True)
        fs, logs, follow = log_fs(docker)
        fh = (await open_file(fs, logs if name == "logs" else follow)).fh
        other = (await open_file(fs, logs if name == "logs" else follow)).fh
        if name == "logs.follow":
            docker.requests[0].out.finish(None)  # followed now, and silent
            await until(lambda: len(docker.requests) == 2)
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: read_into(fs, fh, got))
            await until(lambda: waiting_reads(fs) == 1)
            with pytest.raises(pyfuse3.FUSEError) as err, trio.fail_after(10):
                await fs.read(fh, 0, 100)
            assert err.value.errno == errno.EAGAIN
            nursery.start_soon(lambda: read_into(fs, other, got))  # another open may wait
            await until(lambda: waiting_reads(fs) == 2)
            docker.requests[-1].out.write(b"line\n")
        assert got == [b"line\n", b"line\n"] and waiting_reads(fs) == 0
        await fs.release(fh)
        await fs.release(other)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


@pytest.mark.parametrize(
    ("raised", "seen"),
    [(errno.ENOSPC, errno.ENOSPC), (errno.EMFILE, errno.ENFILE), (errno.EDQUOT, errno.EDQUOT)],
)
def test_a_spool_file_that_cannot_be_made_is_its_errno(
    raised: int, seen: int, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk or the daemon out of descriptors: the open says so (not
    EIO), in one log line without a traceback, and nothing is held."""

    def cannot(*args: object, **kwargs: object) -> None:
        raise OSError(raised, os.strerror(raised))

    async def main() -> None:
        docker = FakeDocker(running=True)
        fs, logs, follow = log_fs(docker)
        with monkeypatch.context() as m:
            m.setattr(tempfile, "TemporaryFile", cannot)
            for node in (logs, follow):
                with pytest.raises(pyfuse3.FUSEError) as err:
                    await fs.open(node.inode, os.O_RDONLY, Context())  # type: ignore[arg-type]
                assert err.value.errno == seen
        assert docker.requests == [] and fs.stats()["logs"]["followers"] == 0
        assert [r.exc_info for r in caplog.records] == [None, None]
        assert os.strerror(raised) in caplog.text
        fh = (await open_file(fs, logs)).fh  # the disk has room again
        assert len(docker.requests) == 1
        await fs.release(fh)

    trio.run(main)


class Context:
    """The part of pyfuse3.RequestContext that open reads."""

    pid = os.getpid()


async def open_file(fs: DockerFS, node: Node) -> pyfuse3.FileInfo:
    return await fs.open(pyfuse3.InodeT(node.inode), pyfuse3.FlagT(os.O_RDONLY), Context())  # type: ignore[arg-type]


def waiting_reads(fs: DockerFS) -> int:
    waiting: int = fs.stats()["logs"]["waiting_reads"]
    return waiting


async def read_into(fs: DockerFS, fh: int, got: list[bytes]) -> None:
    got.append(await fs.read(pyfuse3.FileHandleT(fh), 0, 100))


def test_a_spool_out_of_descriptors_fails_its_readers_not_the_mount(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A follow request begins in a trio callback (the history's end), where
    an exception would crash the daemon: out of descriptors, it fails instead."""

    def no_descriptors(fd: int) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    async def main() -> None:
        docker = FakeDocker(running=True)
        spools = docker.spools()
        spool = spools.open("c1")
        spool.want_more()  # a logs.follow is open
        with monkeypatch.context() as m:
            m.setattr(os, "dup", no_descriptors)
            docker.requests[0].out.finish(None)  # the follow request begins now
            await until(lambda: spool.history_done)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(SpoolError):
                spool.at_eof(follow=True)
            other = spools.open("c2")  # the log so far cannot begin either
            assert other.failed
            with pytest.raises(SpoolError):
                other.at_eof(follow=False)
        assert len(docker.requests) == 1
        spools.release(other)
        spools.release(spool)
        assert len(spools) == 0

    run(main)


def test_readers_wait_for_more_and_wake_on_each_change() -> None:
    async def main() -> None:
        docker = FakeDocker(running=False)
        spools = docker.spools()
        spool = spools.open("c1")
        woken: list[int] = []

        async def reader() -> None:
            while not spool.history_done:
                await spool.changed()
                woken.append(spool.size)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            docker.requests[0].out.write(b"abc")
            await until(lambda: woken[-1:] == [3])
            docker.requests[0].out.finish(None)
        assert spool.history_done and spool.at_eof(follow=False)
        spools.release(spool)

    run(main)


def test_a_failed_log_raises_for_its_readers_and_the_next_open_retries() -> None:
    async def main() -> None:
        docker = FakeDocker()
        spools = docker.spools()
        first = spools.open("c1")
        docker.requests[0].out.write(b"part")
        docker.requests[0].out.finish(NotFound("gone"))
        await until(lambda: first.failed)
        assert first.read(0, 10) == b"part"
        with pytest.raises(NotFound):
            first.at_eof(follow=False)
        second = spools.open("c1")
        assert second is not first and len(docker.requests) == 2
        spools.release(first)  # the failed one's last reader leaves the new one alone
        assert first.closed and not second.closed and spools.polled_size("c1") == 0
        spools.release(second)
        assert second.closed and docker.requests[1].cancelled

    run(main)


def test_the_last_release_cancels_the_request_and_frees_the_file() -> None:
    async def main() -> None:
        docker = FakeDocker()
        spools = docker.spools()
        a = spools.open("c1")
        b = spools.open("c1")
        assert a is b and len(docker.requests) == 1  # one request, shared
        spools.release(a)
        assert not docker.requests[0].cancelled
        spools.release(b)
        assert docker.requests[0].cancelled and a.closed
        # A cancelled producer that still writes (it is unwinding) harms nothing.
        docker.requests[0].out.write(b"late")
        docker.requests[0].out.finish(None)
        await trio.testing.wait_all_tasks_blocked()
        assert a.size == 0

    run(main)


def test_the_number_of_open_logs_is_bounded() -> None:
    async def main() -> None:
        docker = FakeDocker()
        spools = docker.spools(limit=2)
        a, b = spools.open("c1"), spools.open("c2")
        with pytest.raises(TooManyLogs):
            spools.open("c3")
        assert spools.open("c1") is a  # joining is not another one
        spools.release(b)
        c = spools.open("c3")
        for spool in (a, a, c):
            spools.release(spool)
        assert len(spools) == 0

    run(main)


def test_a_writer_on_another_thread_spools_everything_in_order() -> None:
    async def main() -> None:
        docker = FakeDocker(running=False)
        spools = docker.spools()
        spool = spools.open("c1")
        out = docker.requests[0].out
        chunks = [f"{i:06d}\n".encode() * (i % 7 + 1) for i in range(2000)]

        def produce() -> None:  # as the Docker module's thread does
            for chunk in chunks:
                out.write(chunk)
            out.finish(None)
            out.close()

        await trio.to_thread.run_sync(produce)
        await until(lambda: spool.history_done)
        want = b"".join(chunks)
        assert spool.size == len(want) and spool.read(0, len(want)) == want
        spools.release(spool)

    run(main)


# -- a real engine and a real mount -------------------------------------------------------


def demux(raw: bytes) -> bytes:
    out, i = bytearray(), 0
    while i + 8 <= len(raw):
        (length,) = struct.unpack(">L", raw[i + 4 : i + 8])
        out += raw[i + 8 : i + 8 + length]
        i += 8 + length
    return bytes(out)


class Output:
    """A child's output, gathered by a thread as it comes, so a test can wait on it."""

    def __init__(self, stream: IO[bytes] | None) -> None:
        assert stream is not None
        self._data = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._pump, args=(stream,), daemon=True).start()

    def _pump(self, stream: IO[bytes]) -> None:
        while chunk := os.read(stream.fileno(), 65536):
            with self._lock:
                self._data += chunk

    def text(self) -> str:
        with self._lock:
            return self._data.decode(errors="replace")

    def ticks(self) -> list[int]:
        return [int(n) for n in re.findall(r"tick (\d+)", self.text())]


def assert_consecutive(ticks: list[int]) -> None:
    """No line lost and none repeated, across the log so far and what followed."""
    assert ticks, "no lines"
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), ticks


def last_tick(engine: Engine, cid: str) -> int:
    text = demux(engine.api_raw(f"/containers/{cid}/logs?stdout=1&tail=1")).decode()
    found = re.findall(r"tick (\d+)", text)
    return int(found[-1]) if found else -1


def ticker(engine: Engine, at_least: int) -> tuple[str, int]:
    """A running ticker that has printed at least `at_least` + 1 lines; its last line."""
    cid = engine.run(IMG, "sh", "-c", TICKER)
    wait_until(lambda: last_tick(engine, cid) >= at_least, "ticker started", timeout=60)
    return cid, last_tick(engine, cid)


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a tool we started, and what it started (less under script), by PID:
    killing script alone leaves less spinning on a terminal that is gone."""
    for pid in [*descendants(proc.pid), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def descendants(pid: int) -> list[int]:
    """Every process below pid (deepest first), from /proc."""
    found: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return found
    for child in map(int, children):
        found += [*descendants(child), child]
    return found


def stats(m: Mount) -> dict[str, Any]:
    return m.stats()


@pytest.mark.docker
@pytest.mark.fuse
@pytest.mark.parametrize(
    "args",
    [["-f"], ["-F"], ["-n", "20", "-f"]],
    ids=["tail-f", "tail-F", "tail-n20-f"],
)
def test_tail_follows_a_container_log(engine: Engine, mounted: Mount, args: list[str]) -> None:
    cid, seen = ticker(engine, 24)
    shown = int(args[1]) if args[0] == "-n" else 10
    proc = subprocess.Popen(
        ["tail", *args, str(mounted.path / cid / "logs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = Output(proc.stdout), Output(proc.stderr)
        # The last `shown` lines of the log so far, then new lines as they come.
        wait_until(lambda: len(out.ticks()) >= shown + 5, "tail shows new lines", timeout=60)
        ticks = out.ticks()
        assert_consecutive(ticks)
        assert ticks[shown - 1] >= seen  # the log so far was shown whole
        assert proc.poll() is None  # still following
        # No "file truncated" (a size that went back), "Illegal seek" or "replaced".
        assert err.text() == ""
    finally:
        stop(proc)


@pytest.mark.docker
@pytest.mark.fuse
def test_less_F_follows_a_container_log(engine: Engine, mounted: Mount) -> None:
    require(shutil.which("less") is not None, "less missing (Debian less)")
    require(shutil.which("script") is not None, "script missing (Debian bsdutils)")
    cid, seen = ticker(engine, 3)
    command = f"less +F {shlex.quote(str(mounted.path / cid / 'logs'))}"
    env = dict(os.environ, TERM="xterm", LESS="", LESSOPEN="", LESSHISTFILE="-")
    env.update(LINES="24", COLUMNS="80")
    # less needs a terminal: script gives it one and copies the screen to us.
    proc = subprocess.Popen(
        ["script", "-qfc", command, "/dev/null"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        out = Output(proc.stdout)
        wait_until(
            lambda: max(out.ticks(), default=-1) >= seen + 4, "less shows new lines", timeout=60
        )
        # The screen ends at the last line there was; then every new line, in order.
        new = [t for t in out.ticks() if t > seen]
        assert new[0] == seen + 1
        assert_consecutive(new)
        assert "Waiting for data" in out.text()  # in F mode, not at a prompt
    finally:
        stop(proc)


@pytest.mark.docker
@pytest.mark.fuse
def test_cat_logs_follow_streams_until_the_container_stops(engine: Engine, mounted: Mount) -> None:
    cid, seen = ticker(engine, 3)
    proc = subprocess.Popen(
        ["cat", str(mounted.path / cid / "logs.follow")], stdout=subprocess.PIPE
    )
    try:
        out = Output(proc.stdout)
        wait_until(
            lambda: max(out.ticks(), default=-1) >= seen + 4, "cat shows new lines", timeout=60
        )
        engine.docker("stop", "-t", "1", cid)
        assert proc.wait(30) == 0  # the end of the container is the end of the file
        ticks = out.ticks()
        assert ticks[0] == 0
        assert_consecutive(ticks)
    finally:
        stop(proc)


@pytest.mark.docker
@pytest.mark.fuse
def test_logs_is_a_file_that_grows_while_open(engine: Engine, mounted: Mount) -> None:
    cid, _ = ticker(engine, 1)
    path = mounted.path / cid / "logs"
    assert os.stat(path).st_size == 0  # nobody has it open: not known
    fd = os.open(path, os.O_RDONLY)
    try:
        wait_until(lambda: os.fstat(fd).st_size > 0, "the log so far is in", timeout=30)
        first = os.fstat(fd).st_size
        head = os.pread(fd, first, 0)
        assert head.startswith(b"tick 0\ntick 1\n") and head.endswith(b"\n")
        assert os.stat(path).st_size >= first  # by name too: one file
        wait_until(lambda: os.fstat(fd).st_size > first, "the size grows", timeout=30)
        grown = os.fstat(fd).st_size
        more = os.pread(fd, grown - first, first)
        ticks = [int(n) for n in re.findall(rb"tick (\d+)", head + more)]
        assert_consecutive(ticks)
        assert os.pread(fd, 100, grown + 1000) == b""  # beyond the end: EOF, never a wait
    finally:
        os.close(fd)
    wait_until(lambda: stats(mounted)["logs"]["spools"] == 0, "the spool is freed", timeout=30)
    assert os.stat(path).st_size == 0


@pytest.mark.docker
@pytest.mark.fuse
def test_tail_f_of_a_log_empty_when_opened(engine: Engine, mounted: Mount) -> None:
    cid, go = run_held(engine, f"{WAIT_FOR_GO}; " + TICKER)
    path = mounted.path / cid / "logs"
    proc = subprocess.Popen(
        ["tail", "-f", str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = Output(proc.stdout), Output(proc.stderr)

        def tail_has_it_open() -> bool:
            return str(path.resolve()) in open_paths(proc.pid)  # logs is a link

        wait_until(tail_has_it_open, "tail opened the log", timeout=30)
        go.touch()
        wait_until(lambda: len(out.ticks()) >= 4, "tail shows the first lines", timeout=60)
        assert out.ticks()[0] == 0
        assert_consecutive(out.ticks())
        assert err.text() == ""
    finally:
        stop(proc)


@pytest.mark.docker
@pytest.mark.fuse
def test_tail_f_goes_on_across_a_restart(engine: Engine, mounted: Mount) -> None:
    cid, _ = ticker(engine, 1)
    proc = subprocess.Popen(
        ["tail", "-f", str(mounted.path / cid / "logs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = Output(proc.stdout), Output(proc.stderr)
        wait_until(lambda: len(out.ticks()) >= 4, "tail follows", timeout=60)
        engine.docker("stop", "-t", "0", cid)
        final = last_tick(engine, cid)
        wait_until(
            lambda: out.ticks()[-1] == final, "tail shows the log up to the stop", timeout=60
        )
        count = len(out.ticks())
        engine.docker("start", cid)
        # The restarted shell counts from 0 again, in the same log.
        wait_until(
            lambda: out.ticks()[count:][:3] == [0, 1, 2], "new output after start", timeout=60
        )
        assert_consecutive(out.ticks()[:count])
        assert err.text() == ""
    finally:
        stop(proc)


def rss_kb(pid: int) -> dict[str, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


# 495,049 lines of 101 bytes, then "END": 49,999,953 bytes, on stdout only.
BIG_LINE = b"0" * 99 + b"7\n"
BIG_LINES = 495_049
BIG_SCRIPT = f'yes "$(printf %0100d 7)" | head -n {BIG_LINES}; echo END; sleep 1d'


@pytest.mark.docker
@pytest.mark.fuse
def test_a_50_mb_log_streams_with_bounded_memory(engine: Engine, mounted: Mount) -> None:
    want = BIG_LINE * BIG_LINES + b"END\n"
    want_sha = hashlib.sha256(want).hexdigest()
    cid = engine.run(IMG, "sh", "-c", BIG_SCRIPT)
    last = f"/containers/{cid}/logs?stdout=1&tail=1"
    wait_until(
        lambda: demux(engine.api_raw(last)) == b"END\n", "the container wrote it all", timeout=300
    )
    # What Docker itself says, byte for byte (demultiplexed independently of the code under test).
    api = demux(engine.api_raw(f"/containers/{cid}/logs?stdout=1&stderr=1"))
    assert len(api) == len(want) and hashlib.sha256(api).hexdigest() == want_sha
    del api
    path = str(mounted.path / cid / "logs")
    pid = mounted.proc.pid

    # The first bytes without the rest: head ends, and the request with it.
    head = subprocess.run(["head", "-c", "100", path], capture_output=True, timeout=120)
    assert head.returncode == 0 and head.stdout == want[:100]
    wait_until(lambda: stats(mounted)["logs"]["spools"] == 0, "head's spool freed", timeout=30)
    follow = subprocess.run(
        ["head", "-c", "1000000", path + ".follow"], capture_output=True, timeout=120
    )
    assert follow.stdout == want[:1_000_000]

    sha = ["sh", "-c", 'cat "$1" | sha256sum', "sh", path]
    requests = stats(mounted)["requests"]["containers/logs"]
    one = subprocess.run(sha, capture_output=True, timeout=600)
    assert one.stdout.split()[0].decode() == want_sha
    wait_until(lambda: stats(mounted)["logs"]["spools"] == 0, "cat's spool freed", timeout=30)
    # One request: reading to the end once is not following.
    assert stats(mounted)["requests"]["containers/logs"] == requests + 1

    # Twenty at once: slower, but each gets every byte.
    readers = [subprocess.Popen(sha, stdout=subprocess.PIPE) for _ in range(20)]
    results = []
    for proc in readers:
        stdout, _ = proc.communicate(timeout=900)
        results.append((proc.returncode, stdout.split()[0].decode()))
    assert results == [(0, want_sha)] * 20

    wait_until(lambda: stats(mounted)["logs"]["spools"] == 0, "every spool freed", timeout=30)
    rss = rss_kb(pid)
    print(f"\ndaemon RSS after: {rss['VmRSS'] / 1024:.1f} MB, peak {rss['VmHWM'] / 1024:.1f} MB")
    assert rss["VmHWM"] < 150 * 1024  # 20 readers of 50 MB never held it in memory
    assert rss["VmRSS"] < 150 * 1024
    # The spool files are gone with the spools.
    fds = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    assert not [f for f in fds if "dockerfs-log" in f], fds


# A process that opens PATH up to N times, starts a blocking read on each,
# and prints how many opens worked and the errno of the first that failed.
HOLDER = r"""
import os, sys, threading
path, n = sys.argv[1], int(sys.argv[2])
fds, failed = [], 0
for _ in range(n):
    try:
        fds.append(os.open(path, os.O_RDONLY))
    except OSError as exc:
        failed = exc.errno
        break
for fd in fds:
    threading.Thread(target=os.read, args=(fd, 1), daemon=True).start()
print(len(fds), failed, flush=True)
threading.Event().wait()
"""

# The rest of the mount, used by another process while the followers are at their cap.
OTHERS = r"""
import os, sys
mount, cid = sys.argv[1], sys.argv[2]
assert cid in os.listdir(mount)
assert open(f"{mount}/{cid}/Image").read() == "busybox:latest\n"
assert open(f"{mount}/{cid}/logs", "rb").read() == b"hello\n"
os.stat(f"{mount}/{cid}/logs.follow")
print("served")
"""


@pytest.mark.docker
@pytest.mark.fuse
def test_logs_follow_at_its_cap_leaves_the_mount_served(engine: Engine, mounted: Mount) -> None:
    silent = engine.run(IMG, "sleep", "1d")  # every read of its logs.follow blocks
    other = engine.run(IMG, "sh", "-c", "echo hello; sleep 1d")
    wait_until(
        lambda: b"hello" in engine.api_raw(f"/containers/{other}/logs?stdout=1"),
        "hello in the log",
        timeout=30,
    )
    path = str(mounted.path / silent / "logs.follow")
    holders: list[subprocess.Popen[bytes]] = []

    def hold(n: int) -> tuple[int, int]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, path, str(n)], stdout=subprocess.PIPE
        )
        holders.append(proc)
        assert proc.stdout is not None
        opened, failed = proc.stdout.readline().split()
        return int(opened), int(failed)

    try:
        # One process gets its share, no more...
        assert hold(MAX_FOLLOWERS_PER_PROCESS + 1) == (MAX_FOLLOWERS_PER_PROCESS, errno.EMFILE)
        # ...and others still get theirs, up to the cap.
        for _ in range(MAX_FOLLOWERS // MAX_FOLLOWERS_PER_PROCESS - 1):
            assert hold(MAX_FOLLOWERS_PER_PROCESS) == (MAX_FOLLOWERS_PER_PROCESS, 0)
        wait_until(
            lambda: stats(mounted)["logs"]["waiting_reads"] == MAX_FOLLOWERS,
            "every follower blocked in a read",
            timeout=60,
        )
        with pytest.raises(OSError) as err:
            os.close(os.open(path, os.O_RDONLY))
        assert err.value.errno == errno.ENFILE
        # Every follower holds a blocked read, and the rest of the mount is served.
        others = subprocess.run(
            [sys.executable, "-c", OTHERS, str(mounted.path), other],
            capture_output=True,
            timeout=60,
        )
        assert others.returncode == 0 and others.stdout == b"served\n", others.stderr
        assert stats(mounted)["logs"]["waiting_reads"] == MAX_FOLLOWERS
    finally:
        for proc in holders:
            stop(proc)
    # Killed readers give back their slots and the workers their reads held.
    wait_until(
        lambda: stats(mounted)["logs"] == {"spools": 0, "followers": 0, "waiting_reads": 0},
        "followers released",
        timeout=60,
    )
    os.close(os.open(path, os.O_RDONLY))


def open_paths(pid: int) -> set[str]:
    """What a process has open; a descriptor closed while we look is skipped."""
    paths = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            paths.add(os.readlink(fd))
        except FileNotFoundError:
            continue
    return paths
