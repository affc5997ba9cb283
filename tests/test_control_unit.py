"""ctl parsing and log demultiplexing: pure, no engine."""

from __future__ import annotations

import struct

import pytest

from dockerfs_fuse.control import MAX_COMMAND_BYTES, BadCommand, Command, parse_command
from dockerfs_fuse.docker_source import (
    Demuxer,
)


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


def test_a_command_longer_than_the_cap_is_refused_whole() -> None:
    # What the kernel hands us first of a 1 MB write: spaces, and no command to run.
    with pytest.raises(BadCommand):
        parse_command(b" " * (1 << 17))
    with pytest.raises(BadCommand):
        parse_command(b" " * MAX_COMMAND_BYTES + b"kill 15\n")
    padded = b"kill 15".ljust(MAX_COMMAND_BYTES)
    assert parse_command(padded) == Command("kill", {"signal": "15"})
