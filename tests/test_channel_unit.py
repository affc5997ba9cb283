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
import errno
import os
import shutil
import struct
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing
from support.fake_shell import FakeOpener
from trio.testing import MockClock

from dockerfs_fuse.engine.channel import Channels, LostAck, NoChannel, ShellStream, Unsettled
from dockerfs_fuse.engine.writes import errno_of_output
from dockerfs_fuse.model.shell import (
    OUTPUT_KEPT,
    Ack,
    AckReader,
    escaped,
    framed,
    run_command,
    upload_command,
)

# One with x and setuid bits, one within rw-rw-rw-.
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


def default_acl_granting_group_rw(directory: Path) -> None:
    """user::rw- group::rw- other::r-- as the directory's default ACL (no setfacl needed)."""
    entries = ((0x01, 6), (0x04, 6), (0x20, 4))  # USER_OBJ, GROUP_OBJ, OTHER
    acl = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, 0xFFFFFFFF) for t, p in entries)
    os.setxattr(directory, "system.posix_acl_default", acl)


@pytest.mark.parametrize("shell", SHELLS, ids=lambda s: s[0])
def test_a_default_acl_never_widens_an_uploads_mode(shell: list[str], tmp_path: Path) -> None:
    default_acl_granting_group_rw(tmp_path)
    for i, mode in enumerate((0o600, 0o640, 0o755)):
        command = upload_command(
            f"{tmp_path}/.t{i}", f"{tmp_path}/f{i}", b"x", mode, os.getuid(), os.getgid(), None
        )
        (ack,) = AckReader("N").feed(run_shell(shell, framed(command, "N"), tmp_path))
        assert ack.code == 0, ack.output
        assert os.stat(tmp_path / f"f{i}").st_mode & 0o7777 == mode


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
    assert acks[0].code != 0 and errno_of_output(acks[0].output.decode()) == errno.EISDIR
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
        """As the engine's: the end of its stdin, which it reads once it has
        run what it read before."""
        assert self.process.stdin is not None
        trio.lowlevel.spawn_system_task(self.process.stdin.aclose)

    async def end(self) -> bool:
        self.process.kill()
        await self.process.wait()
        return True


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
    for shell in opener.shells:  # all closed at the end: each reads its end and exits
        await shell.process.wait()


async def _a_command_without_an_answer_is_a_lost_ack_and_never_runs_later(
    tmp_path: Path,
) -> None:
    """The shell blocks in a command past its deadline (as a paused
    container's would): LostAck, and its shell is killed, so the rest of
    that command (or one it read and had not run) never runs later."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    opener = LocalOpener(["sh"])
    channels = Channels(deadline=60.0)  # a loaded machine's shell still says hello
    async with serving(channels):
        assert (await channels.command(opener, "c1", ":")).code == 0
        channels.deadline = 0.5
        with pytest.raises(LostAck):
            await channels.command(opener, "c1", f"read x <{fifo}; touch {tmp_path}/late")
        assert len(channels) == 0
        with pytest.raises(OSError) as no_reader:  # the shell that waited to read it is gone
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        assert no_reader.value.errno == errno.ENXIO
        channels.deadline = 60.0
        with pytest.raises(LostAck):
            await channels.command(opener, "c1", "kill -9 $$")
    assert not (tmp_path / "late").exists()


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
    opener = FakeOpener()
    channels = Channels(limit=2, idle=10.0)
    async with serving(channels):
        for cid in ("a", "b"):
            assert (await channels.command(opener, cid, ":")).code == 0
        await trio.sleep(4.0)
        assert (await channels.command(opener, "a", ":")).code == 0  # b is now the oldest
        assert (await channels.command(opener, "c", ":")).code == 0
        assert [s.closed for s in opener.shells] == [False, True, False]  # LRU, not idle
        await trio.sleep(channels.idle + channels.idle / 4 + 0.1)
        assert len(channels) == 0 and all(s.closed for s in opener.shells)  # idle


async def _a_lost_command_whose_shell_cannot_be_ended_is_unsettled() -> None:
    opener = FakeOpener(lambda line: None)
    channels = Channels()
    async with serving(channels):
        with pytest.raises(LostAck) as lost:
            await channels.command(opener, "c1", ":")
        assert not isinstance(lost.value, Unsettled) and opener.shells[0].killed
        opener.ends = False
        with pytest.raises(Unsettled):
            await channels.command(opener, "c1", ":")
        assert opener.shells[1].killed


async def _a_stalled_send_is_a_lost_ack_within_its_deadline() -> None:
    opener = FakeOpener()
    opener.stalls = True
    channels = Channels()
    async with serving(channels):
        with trio.fail_after(60), pytest.raises(LostAck):
            await channels.command(opener, "c1", ":" * (256 << 10))
        assert opener.shells[0].killed and len(channels) == 0


async def _a_slow_start_holds_up_no_other_container() -> None:
    opener = FakeOpener()
    opener.hold["slow"] = trio.Event()
    channels = Channels()
    async with serving(channels), trio.open_nursery() as nursery:
        nursery.start_soon(channels.command, opener, "slow", ":")
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(1):
            assert (await channels.command(opener, "fast", ":")).code == 0
        opener.hold["slow"].set()


async def _a_refusal_is_forgotten_when_its_container_starts() -> None:
    opener = FakeOpener()
    opener.refuse = RuntimeError("Container c1 is not running")
    channels = Channels()
    async with serving(channels):
        with pytest.raises(NoChannel):
            await channels.command(opener, "c1", ":")
        opener.refuse = None
        with pytest.raises(NoChannel):  # refused a moment ago: not asked
            await channels.command(opener, "c1", ":")
        channels.started("c1")
        assert (await channels.command(opener, "c1", ":")).code == 0


def test_one_shell_for_many_commands_and_a_dead_one_replaced(tmp_path: Path) -> None:
    trio.run(_one_shell_for_many_commands_and_a_dead_one_replaced, tmp_path)


def test_a_command_without_an_answer_is_a_lost_ack_and_never_runs_later(tmp_path: Path) -> None:
    trio.run(_a_command_without_an_answer_is_a_lost_ack_and_never_runs_later, tmp_path)


def test_no_shell_is_no_channel_then_not_asked_again() -> None:
    trio.run(_no_shell_is_no_channel_then_not_asked_again)


def test_not_serving_is_no_channel() -> None:
    trio.run(_not_serving_is_no_channel)


def test_bounded_and_closed_when_idle() -> None:
    trio.run(_bounded_and_closed_when_idle, clock=MockClock(autojump_threshold=0))


def test_a_lost_command_whose_shell_cannot_be_ended_is_unsettled() -> None:
    trio.run(
        _a_lost_command_whose_shell_cannot_be_ended_is_unsettled,
        clock=MockClock(autojump_threshold=0),
    )


def test_a_stalled_send_is_a_lost_ack_within_its_deadline() -> None:
    trio.run(
        _a_stalled_send_is_a_lost_ack_within_its_deadline, clock=MockClock(autojump_threshold=0)
    )


def test_a_slow_start_holds_up_no_other_container() -> None:
    trio.run(_a_slow_start_holds_up_no_other_container, clock=MockClock(autojump_threshold=0))


def test_a_refusal_is_forgotten_when_its_container_starts() -> None:
    trio.run(
        _a_refusal_is_forgotten_when_its_container_starts, clock=MockClock(autojump_threshold=0)
    )


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
