"""ctl parsing and log demultiplexing: pure, no engine."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import aiodocker
import pytest
import trio

from dockerfs_fuse.docker.source import (
    ApiError,
    BadRequest,
    Conflict,
    DockerSource,
    DockerUnavailable,
    NotFound,
    _translate,
)
from dockerfs_fuse.engine.logs import MAX_FRAME, Demuxer
from dockerfs_fuse.model.ctl import MAX_COMMAND_BYTES, BadCommand, Command, parse_command


@pytest.mark.parametrize(
    ("text", "want"),
    [
        (b"start\n", Command("start")),
        (b"stop", Command("stop")),
        (b"stop 3\n", Command("stop", {"t": "3"})),
        (b"restart 0", Command("restart", {"t": "0"})),
        (b"kill", Command("kill")),
        (b"kill KILL", Command("kill", {"signal": "SIGKILL"})),
        (b"kill sigterm", Command("kill", {"signal": "SIGTERM"})),
        (b"kill HUP\n", Command("kill", {"signal": "SIGHUP"})),
        (b"kill 9", Command("kill", {"signal": "9"})),
        (b"  pause  \n", Command("pause")),
        (b"unpause", Command("unpause")),
        (b"rm", Command("rm")),
    ],
)
def test_commands(text: bytes, want: Command) -> None:
    assert parse_command(text) == want


@pytest.mark.parametrize(
    "text",
    [
        b"",
        b"\n",
        b"bogus",
        b"stop soon",
        b"stop -1",
        b"kill NOPE",
        b"kill 0",
        b"kill 999",
        b"pause now",
        b"start\nstop",
        b"rm -f",
        b"\xff",
        b"kill SIG_DFL",
        b"stop 99999999",
    ],
)
def test_bad_commands_are_refused_before_docker(text: bytes) -> None:
    with pytest.raises(BadCommand):
        parse_command(text)


def frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxL", stream, len(data)) + data


def test_demux_joins_frames_across_chunk_boundaries() -> None:
    wire = frame(1, b"out1\n") + frame(2, b"err1\n") + frame(1, b"") + frame(1, b"x" * 70000)
    d = Demuxer()
    out = b"".join(d.feed(wire[i : i + 7]) for i in range(0, len(wire), 7)) + d.flush()
    assert out == b"out1\nerr1\n" + b"x" * 70000


def test_demux_passes_a_tty_stream_through() -> None:
    d = Demuxer()
    assert d.feed(b"hello") == b""
    assert d.feed(b" world, raw\n") == b"hello world, raw\n"
    assert Demuxer("application/vnd.docker.raw-stream").feed(b"\x01\0\0\0ab") == b"\x01\0\0\0ab"
    short = Demuxer()
    assert short.feed(b"hi\n") == b"" and short.flush() == b"hi\n"


def test_demux_buffers_no_more_than_a_frame_can_hold() -> None:
    """A raw stream that looks framed declares up to 4 GiB: beyond MAX_FRAME
    it is raw from that header on, and passes through instead of buffering."""
    biggest = frame(1, b"y" * MAX_FRAME)
    d = Demuxer("application/vnd.docker.multiplexed-stream")
    out = b"".join(d.feed(biggest[i : i + 65536]) for i in range(0, len(biggest), 65536))
    assert out == b"y" * MAX_FRAME  # the largest frame is still a frame
    fake = struct.pack(">BxxxL", 1, MAX_FRAME + 1)
    for content_type in ("", "application/vnd.docker.multiplexed-stream"):
        d = Demuxer(content_type)
        assert d.feed(frame(2, b"err\n") + fake[:6]) == b"err\n"
        assert d.feed(fake[6:] + b"raw text") == fake + b"raw text"
        assert d.feed(b"\x01\0\0\0\0\0\0\x01x") == b"\x01\0\0\0\0\0\0\x01x"  # raw for good
        assert d.flush() == b""
    # The first header: raw from the start.
    d = Demuxer()
    assert d.feed(b"\x01\0\0\0\xff\xff\xff\xff and on") == b"\x01\0\0\0\xff\xff\xff\xff and on"


def test_a_command_longer_than_the_cap_is_refused_whole() -> None:
    # What the kernel hands us first of a 1 MB write: spaces, and no command to run.
    with pytest.raises(BadCommand):
        parse_command(b" " * (1 << 17))
    with pytest.raises(BadCommand):
        parse_command(b" " * MAX_COMMAND_BYTES + b"kill 15\n")
    padded = b"kill 15".ljust(MAX_COMMAND_BYTES)
    assert parse_command(padded) == Command("kill", {"signal": "15"})


# Docker 20.10's answers (daemon/*.go at v20.10.24), status and message as sent.
@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (404, "No such container: f4c5", NotFound),
        (409, "can not get logs from container which is dead or marked for removal", NotFound),
        (409, "container is marked for removal and cannot be started", NotFound),
        (409, "removal of container f4c5 is already in progress", NotFound),
        (
            500,
            "Cannot restart container f4c5: container is marked for removal and cannot be started",
            NotFound,
        ),
        (409, "Container f4c5 is not running", Conflict),
        (409, "Cannot kill container: f4c5: Container f4c5 is not running", Conflict),
        (409, "Container f4c5 is already paused", Conflict),
        (409, "Container f4c5 is restarting, wait until the container is running", Conflict),
        (500, "Container f4c5 is not paused", Conflict),
        (409, "cannot start a paused container, try unpause instead", Conflict),
        (
            409,
            "You cannot remove a running container f4c5. Stop the container before "
            "attempting removal or force remove",
            Conflict,
        ),
        (400, "invalid signal: SIGNOPE", BadRequest),
        (500, "Cannot pause container f4c5: OCI runtime pause failed", ApiError),
        (900, "Cannot connect to Docker", DockerUnavailable),
    ],
)
def test_docker_answers_become_the_right_kind(status: int, message: str, kind: type) -> None:
    got = _translate(aiodocker.DockerError(status, message))
    assert type(got) is kind
    assert str(got) == message


def test_a_bug_of_ours_is_not_taken_for_a_docker_error() -> None:
    """A TypeError (a bad argument) in a request or a stream propagates as it
    is, for the FUSE guard to log with its traceback, not as a Docker warning;
    Docker's own errors still become DockerProblem."""
    source = DockerSource("unix:///nonexistent/docker.sock", timeout=2)
    source.start()
    try:
        with pytest.raises(TypeError):
            source.call_sync("version", lambda d: d.version(42))  # type: ignore[call-arg]
        with pytest.raises(DockerUnavailable):
            source.call_sync("version", lambda d: d.version())

        async def produce(d: aiodocker.Docker, emit: Callable[[Any], None]) -> None:
            emit("first")
            await d.version(42)  # type: ignore[call-arg]

        async def main() -> None:
            stream = source.stream("events", produce)
            assert await stream.get() == "first"
            with pytest.raises(TypeError):
                await stream.get()

        trio.run(main)
    finally:
        source.close()
