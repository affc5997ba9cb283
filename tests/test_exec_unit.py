"""Exec sessions (docs/exec.md), the parts without an engine: the ctl grammar,
the sessions' policy under trio with a fake engine, and the parser of
Docker's framed exec stream. The rest is on a real mount in test_exec.py.
"""

from __future__ import annotations

import errno
import socket

import pytest
import trio
import trio.testing

from dockerfs_fuse.docker.errors import NotFound
from dockerfs_fuse.docker.exec import ExecState, Frames, SocketChannel
from dockerfs_fuse.docker.framing import MAX_FRAME, FrameSplitter
from dockerfs_fuse.engine.exec import MAX_BUFFER, ExecSessions, SessionError
from dockerfs_fuse.model.ctl import BadCommand
from dockerfs_fuse.model.exec import MAX_LINE_BYTES, ExecSpec, State, parse_line, status_text

# -- the grammar --------------------------------------------------------------------------


def test_exec_lines_split_as_a_shell_splits_words() -> None:
    line = parse_line(b"exec -t -u nobody -w /tmp -e A=1 -e B=x=y -- sh -c 'echo \"a b\"'\n")
    assert line.verb == "exec"
    assert line.spec == ExecSpec(
        ("sh", "-c", 'echo "a b"'), tty=True, user="nobody", workdir="/tmp", env=("A=1", "B=x=y")
    )
    assert parse_line(b"run ls").spec == ExecSpec(("ls",), merged=True)
    assert parse_line(b"kill").signal == "SIGKILL"
    assert parse_line(b"kill hup").signal == "SIGHUP"
    assert parse_line(b"eof\n").verb == "eof"
    assert parse_line(b"killonclose").verb == "killonclose"


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"bogus",
        b"exec",
        b"exec -t",
        b"exec -x ls",
        b"exec -u",
        b"exec -w tmp ls",
        b"exec -e NOEQUALS ls",
        b"exec 'unclosed",
        b"exec ls\nexec ls",
        b"exec a\0b",
        b"kill NOSUCH",
        b"kill 1 2",
        b"eof now",
        b"\xff",
        b"exec " + b"x" * MAX_LINE_BYTES,
    ],
)
def test_bad_lines_are_refused_before_docker_hears(bad: bytes) -> None:
    with pytest.raises(BadCommand):
        parse_line(bad)


def test_status_says_reserved_running_or_exited() -> None:
    assert status_text(State.RESERVED, 0, None) == b"reserved\n"
    assert status_text(State.RUNNING, 42, None) == b"running 42\n"
    assert status_text(State.EXITED, 42, 7) == b"exited 7\n"


# -- the sessions, with a fake engine -----------------------------------------------------


class FakeChannel:
    """A command's stream: `script` is what it writes, then it ends."""

    def __init__(self, script: list[tuple[int, bytes]]) -> None:
        self.script = list(script)
        self.reads = 0
        self.stdin = b""
        self.closed = False
        self.gate = trio.Event()
        self.gate.set()

    async def read(self) -> list[tuple[int, bytes]] | None:
        await self.gate.wait()
        self.reads += 1
        if not self.script:
            return None
        return [self.script.pop(0)]

    async def write(self, data: bytes) -> None:
        self.stdin += data

    async def close_write(self) -> bool:
        return True

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    def __init__(self, script: list[tuple[int, bytes]], code: int = 0, pid: int = 99) -> None:
        self.channel = FakeChannel(script)
        self.code = code
        self.pid = pid
        self.signals: list[str] = []
        self.missing = False
        self.inspects = 0

    async def create(self, cid: str, spec: ExecSpec, mark: str) -> str:
        return "e1"

    async def start(self, exec_id: str, tty: bool) -> FakeChannel:
        return self.channel

    async def inspect(self, exec_id: str) -> ExecState:
        self.inspects += 1
        if self.missing:
            return ExecState(False, 0, 127)
        if self.channel.script:
            return ExecState(True, self.pid, None)
        return ExecState(False, self.pid, self.code)

    async def signal(self, cid: str, pid: int, mark: str, name: str) -> None:
        self.signals.append(name)


def test_output_is_read_from_docker_only_as_fast_as_it_is_read() -> None:
    chunk = b"x" * (MAX_BUFFER // 2)
    backend = FakeBackend([(2, chunk)] * 8 + [(1, b"out")], code=3)
    ended: list[int] = []

    async def main() -> None:
        sessions = ExecSessions(lambda s: ended.append(s.number))
        s = sessions.reserve(("e", "c"), backend)
        sessions.hold(s, True)
        await s.start(ExecSpec(("cmd",)))
        assert s.status() == b"running 99\n"
        # stdout is read: the stream is read until stderr's buffer is full, and no further.
        with trio.move_on_after(1):
            await s.read(1, 10)
        assert s.buffered(2) == MAX_BUFFER and backend.channel.reads == 2
        got = b""
        while data := await s.read(2, 1 << 20):
            got += data
            assert s.buffered(2) <= MAX_BUFFER
            if len(got) == len(chunk) * 8:
                break
        assert got == chunk * 8
        assert await s.read(1, 10) == b"out"
        assert await s.read(1, 10) == b""
        assert await s.wait() == 3
        assert s.status() == b"exited 3\n"
        sessions.let_go(s, True)
        assert sessions.count == 0 and ended == [0]
        assert backend.channel.closed

    trio.run(main)


def test_sessions_are_bounded_and_a_missing_command_is_not_found() -> None:
    async def main() -> None:
        sessions = ExecSessions(lambda s: None, per_container=2, total=3)
        backend = FakeBackend([(1, b"exec: no-such: executable file not found in $PATH")])
        backend.missing = True
        a = sessions.reserve(("e", "c"), backend)
        sessions.reserve(("e", "c"), backend)
        with pytest.raises(SessionError) as err:
            sessions.reserve(("e", "c"), backend)
        assert err.value.errno == errno.EAGAIN
        sessions.reserve(("e", "d"), backend)
        with pytest.raises(SessionError) as err:
            sessions.reserve(("e", "x"), backend)
        assert err.value.errno == errno.EMFILE
        with pytest.raises(NotFound, match="executable file not found"):
            await a.start(ExecSpec(("no-such",)))
        assert a.status() == b"exited -1\n" and await a.read(1, 10) == b""
        with pytest.raises(SessionError) as err:
            await a.start(ExecSpec(("again",)))
        assert err.value.errno == errno.EBUSY

    trio.run(main)


def test_killonclose_kills_at_the_last_ctl_and_the_last_file_kills_too() -> None:
    async def main() -> None:
        backend = FakeBackend([(1, b"a")])
        backend.channel.gate = trio.Event()  # the command runs until told
        sessions = ExecSessions(lambda s: None)
        s = sessions.reserve(("e", "c"), backend)
        sessions.hold(s, True)
        sessions.hold(s, False)  # data
        backend.channel.gate.set()
        await s.start(ExecSpec(("cmd",)))
        backend.channel.gate = trio.Event()
        s.killonclose = True
        sessions.let_go(s, True)
        await trio.testing.wait_all_tasks_blocked()
        assert backend.signals == ["SIGKILL"] and sessions.count == 1
        sessions.let_go(s, False)
        await trio.testing.wait_all_tasks_blocked()
        assert backend.signals == ["SIGKILL", "SIGKILL"] and sessions.count == 0
        assert backend.channel.closed

    trio.run(main)


class ListQueue:
    """What Frames feeds: a list of (stream, bytes)."""

    def __init__(self) -> None:
        self.got: list[tuple[int, bytes]] = []

    def feed_data(self, msg: tuple[int, bytes], size: int) -> None:
        self.got.append((msg[0], msg[1]))


def test_frames_are_split_into_runs_of_one_stream_wherever_the_bytes_break() -> None:
    def frame(kind: int, data: bytes) -> bytes:
        return bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

    stream = frame(1, b"ab") + frame(1, b"cd") + frame(2, b"E") + frame(1, b"") + frame(1, b"f")
    for cut in range(len(stream) + 1):
        queue = ListQueue()
        frames = Frames(queue, tty=False)  # type: ignore[arg-type]
        frames.feed_data(stream[:cut])
        frames.feed_data(stream[cut:])
        joined: dict[int, bytes] = {1: b"", 2: b""}
        for which, data in queue.got:
            joined[which] += data
        assert joined == {1: b"abcdf", 2: b"E"}, cut
        # In order: stdout's "ab" and "cd" before stderr's "E", before "f".
        assert b"".join(data for _, data in queue.got) == b"abcdEf", cut


def test_frames_are_split_the_same_whatever_the_arrivals() -> None:
    def frame(kind: int, data: bytes) -> bytes:
        return bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

    stream = frame(1, b"ab") + frame(2, b"cde") + frame(2, b"") + frame(1, b"f" * 40)
    for cut1 in range(len(stream) + 1):
        for cut2 in range(cut1, len(stream) + 1, 5):
            splitter = FrameSplitter()
            runs = [
                run
                for piece in (stream[:cut1], stream[cut1:cut2], stream[cut2:])
                for run in splitter.feed(piece)
            ]
            assert b"".join(d for k, d in runs if k == 1) == b"ab" + b"f" * 40
            assert b"".join(d for k, d in runs if k == 2) == b"cde"
            assert all(isinstance(d, bytes) for _, d in runs)
            assert not splitter.broken and splitter.rest() == b""


def test_a_header_past_the_largest_frame_breaks_the_stream() -> None:
    splitter = FrameSplitter()
    bad = bytes([1, 0, 0, 0]) + (MAX_FRAME + 1).to_bytes(4, "big")
    assert splitter.feed(bytes([2, 0, 0, 0, 0, 0, 0, 1]) + b"e" + bad[:5]) == [(2, b"e")]
    assert splitter.feed(bad[5:] + b"more") == [] and splitter.broken
    assert splitter.rest() == bad + b"more"


def test_a_short_command_is_known_by_one_ask_once_its_stream_ends() -> None:
    """`true`: its stream ends, Docker is asked once, and wait needs no more."""
    backend = FakeBackend([], code=0)

    async def main() -> None:
        sessions = ExecSessions(lambda s: None)
        s = sessions.reserve(("e", "c"), backend)
        await s.start(ExecSpec(("true",)))
        assert s.status() == b"exited 0\n" and await s.wait() == 0
        assert backend.inspects == 1

    trio.run(main)


def test_a_read_takes_what_several_arrivals_brought() -> None:
    backend = FakeBackend([(1, b"a" * 10), (1, b"b" * 10), (1, b"c" * 10)])

    async def main() -> None:
        sessions = ExecSessions(lambda s: None)
        s = sessions.reserve(("e", "c"), backend)
        await s.start(ExecSpec(("cmd",)))
        assert await s.read(2, 10) == b""  # stderr's end: all of stdout is read from Docker
        assert await s.read(1, 15) == b"a" * 10 + b"b" * 5
        assert await s.read(1, 100) == b"b" * 5 + b"c" * 10
        assert s.buffered(1) == 0

    trio.run(main)


def test_a_session_whose_output_ended_is_not_signalled_when_it_ends() -> None:
    """Its command has ended (one ask says so): no signal, which may cost a second exec."""
    backend = FakeBackend([(1, b"out")], code=0)

    async def main() -> None:
        sessions = ExecSessions(lambda s: None)
        s = sessions.reserve(("e", "c"), backend)
        sessions.hold(s, True)
        await s.start(ExecSpec(("cmd",)))
        assert await s.read(1, 10) == b"out" and await s.read(1, 10) == b""
        sessions.let_go(s, True)
        await trio.testing.wait_all_tasks_blocked()
        assert backend.signals == [] and s.status() == b"exited 0\n"
        assert backend.channel.closed

    trio.run(main)


def test_the_next_output_is_taken_from_docker_while_a_read_hands_over() -> None:
    backend = FakeBackend([(1, b"a"), (1, b"b"), (1, b"c")])

    async def main() -> None:
        sessions = ExecSessions(lambda s: None)
        s = sessions.reserve(("e", "c"), backend)
        await s.start(ExecSpec(("cmd",)))
        assert backend.channel.reads == 1 and s.read_now(1, 10) == b"a"
        await trio.testing.wait_all_tasks_blocked()
        assert backend.channel.reads == 2 and s.buffered(1) == 1  # "b", read ahead
        assert await s.read(1, 10) == b"b"

    trio.run(main)


def test_a_socket_channel_reads_frames_from_what_came_early_on() -> None:
    """The exec stream over a plain socket: what aiohttp read past the 101
    comes first; stdin goes the other way; eof half-closes."""

    def frame(kind: int, data: bytes) -> bytes:
        return bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data

    async def main() -> None:
        ours, docker = socket.socketpair()
        channel = SocketChannel(ours, tty=False, early=frame(1, b"early")[:6])
        try:
            docker.sendall(frame(1, b"early")[6:] + frame(2, b"err") + frame(1, b"x" * 70000))
            got: dict[int, bytes] = {1: b"", 2: b""}
            while len(got[1]) < 5 + 70000:
                runs = await channel.read()
                assert runs is not None
                for which, data in runs:
                    got[which] += data
            assert got == {1: b"early" + b"x" * 70000, 2: b"err"}
            await channel.write(b"in")
            assert docker.recv(10) == b"in"
            assert await channel.close_write()
            assert docker.recv(10) == b""
            docker.close()
            assert await channel.read() is None
        finally:
            channel.close()
            docker.close()

    trio.run(main)
