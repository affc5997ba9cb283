"""The shell channel's command language (pure) and its policy under trio.

The encoding: every byte of a name or a content travels as ASCII that no
quote, newline, `%`, backslash or leading `-` breaks out of, and comes back
byte for byte from busybox's sh, dash and bash. The acknowledgement parser:
split anywhere, output before it kept (bounded), a nonce it does not carry
never taken for one. The channels (engine/channel.py) over a local `sh` as
the container's: one shell for many commands, a dead one dropped and
started again, a lost acknowledgement, idle and bounded closing, and no
channel where no shell answers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from dockerfs_fuse.engine.channel import Channels, LostAck, NoChannel, ShellStream
from dockerfs_fuse.model.shell import (
    OUTPUT_KEPT,
    Ack,
    AckReader,
    escaped,
    framed,
    run_command,
    upload_command,
)

# One by chmod (x and setuid bits), one by the umask at creation.
MODES = (0o4751, 0o640)
SHELLS = [["busybox", "sh"], ["dash"], ["bash"]]
NASTY = [
    b"plain",
    b"-n",
    b"-",
    b"new\nline\n\n",
    b"quote ' double \" back \\ percent % %s %n %% \\c",
    b"$(touch pwned) `touch pwned` ${HOME} ; | & > <",
    "ünïcødé ☃".encode(),
    b"\xff\xfe not utf-8",
    b"\t\r\x01\x7f",
]


def run_shell(shell: list[str], script: bytes, cwd: Path) -> bytes:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"{shell[0]} missing")
    done = subprocess.run(shell, input=script, capture_output=True, cwd=cwd, timeout=60)
    assert done.stderr == b""
    return done.stdout


def test_escaped_is_ascii_without_quotes_or_a_leading_dash() -> None:
    for data in [*NASTY, bytes(range(256))]:
        text = escaped(data)
        assert text.isascii()
        assert "'" not in text and "\n" not in text and "%" not in text
        assert not text.startswith("-")
    assert escaped(b"ab c") == "ab c"
    assert "$(" not in run_command(["mv", "plain/name.txt"])  # plain words quoted, no process
    assert escaped(b"%\\'\n\0\xff") == "\\045\\134\\047\\012\\000\\377"


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_arguments_and_content_come_back_byte_for_byte(shell: list[str], tmp_path: Path) -> None:
    content = bytes(range(256)) * 40 + b"-x\0\n\n"  # several printf chunks
    nonce = "n0nce"
    script = b""
    for i, name in enumerate(NASTY):
        if b"/" in name:
            continue
        target = str(tmp_path).encode() + b"/" + name
        temp = str(tmp_path).encode() + b"/.tmp" + bytes([48 + i])
        command = upload_command(
            temp.decode("utf-8", "surrogateescape"),
            target.decode("utf-8", "surrogateescape"),
            content + name,
            MODES[i % 2],
            os.getuid(),
            os.getgid(),
            1_600_000_000 + i,
        )
        script += framed(command, nonce)
    script += framed(run_command(["printf", "%s|", *NASTY]), nonce)
    acks = AckReader(nonce).feed(run_shell(shell, script, tmp_path))
    assert [a.code for a in acks] == [0] * (len(NASTY) + 1)
    assert acks[-1].output == b"".join(n + b"|" for n in NASTY)
    names = sorted(os.listdir(os.fsencode(tmp_path)))
    assert names == sorted(NASTY)  # no temporary file left, nothing made by a name
    for i, name in enumerate(NASTY):
        path = os.path.join(os.fsencode(tmp_path), name)
        assert Path(os.fsdecode(path)).read_bytes() == content + name
        st = os.stat(path)
        assert (st.st_mode & 0o7777, int(st.st_mtime)) == (MODES[i % 2], 1_600_000_000 + i)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_failed_step_says_why_and_leaves_no_temporary_file(
    shell: list[str], tmp_path: Path
) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_text("in the way")
    command = upload_command(
        f"{tmp_path}/.tmp", f"{tmp_path}/dir", b"data", 0o644, os.getuid(), os.getgid(), None
    )
    script = framed(command, "N") + framed(run_command(["rm", f"{tmp_path}/nothing"]), "N")
    acks = AckReader("N").feed(run_shell(shell, script, tmp_path))
    assert acks[0].code != 0 and b"dir" in acks[0].output
    assert acks[1].code != 0 and b"No such file" in acks[1].output
    assert sorted(os.listdir(tmp_path)) == ["dir"]


def test_ack_reader_split_anywhere() -> None:
    stream = b"said\n\nNONCE 0\n\nNONCE 1\nrm: no\n\nNONCE 127\n"
    for cut in range(len(stream) + 1):
        reader = AckReader("NONCE")
        acks = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert acks == [Ack(0, b"said\n"), Ack(1, b""), Ack(127, b"rm: no\n")]
    one_by_one = AckReader("NONCE")
    got = [a for i in range(len(stream)) for a in one_by_one.feed(stream[i : i + 1])]
    assert [a.code for a in got] == [0, 1, 127]


def test_ack_reader_takes_no_other_nonce_and_bounds_output() -> None:
    reader = AckReader("right")
    assert reader.feed(b"\nwrong 0\n\nright\n\nrightx 0\nright 0x\n") == []
    big = b"x" * (OUTPUT_KEPT * 3)
    (ack,) = reader.feed(big + b"\nright 2\n")
    assert ack.code == 2 and len(ack.output) == OUTPUT_KEPT


# -- the channels, over a local sh ------------------------------------------------------


class LocalShell:
    """A `sh` of this host as a container's shell: stdout as stream 1."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process

    async def read(self) -> list[tuple[int, bytes]] | None:
        assert self.process.stdout is not None
        try:
            data = await self.process.stdout.receive_some(65536)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return None
        return [(1, bytes(data))] if data else None

    async def write(self, data: bytes) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(data)

    def counted(self) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def close(self) -> None:
        self.process.kill()


class LocalOpener:
    def __init__(self, argv: list[str]) -> None:
        self.argv = argv
        self.shells: list[LocalShell] = []

    async def open_shell(self, cid: str) -> ShellStream:
        process = await trio.lowlevel.open_process(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        shell = LocalShell(process)
        self.shells.append(shell)
        return shell


@contextlib.asynccontextmanager
async def serving(channels: Channels) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(channels.run)
        await trio.testing.wait_all_tasks_blocked()
        yield
        nursery.cancel_scope.cancel()


async def _one_shell_for_many_commands_and_a_dead_one_replaced(tmp_path: Path) -> None:
    opener = LocalOpener(["sh"])
    channels = Channels()
    async with serving(channels):
        for i in range(5):
            ack = await channels.command(opener, "c1", run_command(["touch", f"{tmp_path}/{i}"]))
            assert ack.code == 0
        assert len(opener.shells) == 1
        opener.shells[0].process.kill()
        await opener.shells[0].process.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert len(channels) == 0  # dropped as soon as it ended
        ack = await channels.command(opener, "c1", run_command(["touch", f"{tmp_path}/5"]))
        assert ack.code == 0 and len(opener.shells) == 2
    assert sorted(os.listdir(tmp_path)) == [str(i) for i in range(6)]
    assert all(s.process.returncode is not None for s in opener.shells)  # all closed at the end


async def _a_command_without_an_answer_is_a_lost_ack() -> None:
    opener = LocalOpener(["sh"])
    channels = Channels(deadline=0.5)
    async with serving(channels):
        with pytest.raises(LostAck):
            await channels.command(opener, "c1", "sleep 5")
        assert len(channels) == 0
        with pytest.raises(LostAck):
            await channels.command(opener, "c1", "kill -9 $$")


async def _no_shell_is_no_channel_then_not_asked_again() -> None:
    opener = LocalOpener(["true"])
    channels = Channels(deadline=2.0)
    async with serving(channels):
        with pytest.raises(NoChannel):
            await channels.command(opener, "c1", ":")
        with pytest.raises(NoChannel):
            await channels.command(opener, "c1", ":")
        assert len(opener.shells) == 1
        channels.gone("c1")  # a removed container's refusal is forgotten
        with pytest.raises(NoChannel):
            await channels.command(opener, "c1", ":")
        assert len(opener.shells) == 2


async def _not_serving_is_no_channel() -> None:
    with pytest.raises(NoChannel):
        await Channels().command(LocalOpener(["sh"]), "c1", ":")


async def _bounded_and_closed_when_idle() -> None:
    opener = LocalOpener(["sh"])
    channels = Channels(limit=2, idle=0.4)
    async with serving(channels):
        for cid in ("a", "b", "c"):
            assert (await channels.command(opener, cid, ":")).code == 0
        assert len(channels) == 2  # the least recently used was closed
        await opener.shells[0].process.wait()
        while len(channels):
            await trio.sleep(0.05)
        for shell in opener.shells:
            await shell.process.wait()


def test_one_shell_for_many_commands_and_a_dead_one_replaced(tmp_path: Path) -> None:
    trio.run(_one_shell_for_many_commands_and_a_dead_one_replaced, tmp_path)


def test_a_command_without_an_answer_is_a_lost_ack() -> None:
    trio.run(_a_command_without_an_answer_is_a_lost_ack)


def test_no_shell_is_no_channel_then_not_asked_again() -> None:
    trio.run(_no_shell_is_no_channel_then_not_asked_again)


def test_not_serving_is_no_channel() -> None:
    trio.run(_not_serving_is_no_channel)


def test_bounded_and_closed_when_idle() -> None:
    trio.run(_bounded_and_closed_when_idle)


def test_an_upload_without_its_tools_makes_nothing(tmp_path: Path) -> None:
    """A shell with no `mv` (or `chown`...) on its PATH: status 127, the
    caller's cue to upload by PUT, and no temporary file left behind."""
    if shutil.which("dash") is None:
        pytest.skip("dash missing")
    command = upload_command(
        f"{tmp_path}/.tmp", f"{tmp_path}/f", b"data", 0o644, os.getuid(), os.getgid(), None
    )
    done = subprocess.run(
        [shutil.which("dash") or "dash"],
        input=framed(command, "N"),
        capture_output=True,
        env={"PATH": ""},
        timeout=60,
    )
    (ack,) = AckReader("N").feed(done.stdout)
    assert ack.code == 127
    assert os.listdir(tmp_path) == []
