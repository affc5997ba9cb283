"""One long-lived `sh` per running container, for small changes to its files.

An exec costs the engine a create, a start and an inspect (~50 ms, most of
it runc's), and an upload a PUT (~45 ms whatever its size). A shell started
once, its stdin attached, runs a rename, a removal or a small file's
upload as one line written and one acknowledgement read: a few ms. So the
write path (engine/writes.py) sends its small operations here first, and
takes today's path (a PUT, an exec) when there is no channel.

- A channel is started at the first command for its container: `sh` as
  root, stdin attached, no TTY (model/shell.py has the command language).
  Its first line is a hello; no acknowledgement within the deadline (no
  `sh` in the image, a container not running, an engine whose exec cannot
  take stdin) means no channel for that container for REFUSED_FOR seconds.
- One command at a time per channel (its lock); each acknowledgement has a
  deadline, past which the channel is dropped (the shell is left to read
  the end of its stdin and exit). A reader task per channel takes its
  output as it comes, so a shell that dies (killed, its container stopped
  or removed) is dropped at once, not at the next command.
- At most CHANNELS_MAX at once, the least recently used closed for a new
  one; each closed after IDLE seconds unused, and all at unmount.

`NoChannel` means nothing was sent: the caller takes today's path.
`LostAck` means a command was sent and its end is unknown (the shell died
or was too slow): an upload is redone by PUT (it is idempotent), a rename
or removal is EIO (repeating it could act twice), logged with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

import trio

from dockerfs_fuse.model.shell import Ack, AckReader, framed, hello

log = logging.getLogger(__name__)

# Channels open at once, over every engine of the mount.
CHANNELS_MAX = 16
# A channel unused this long is closed (and its shell leaves the container's `ps`).
IDLE = 10.0
# How long a command's acknowledgement may take (a 64 KiB upload included).
ACK_DEADLINE = 5.0
# A container whose shell could not be started is not asked again for this long.
REFUSED_FOR = 30.0
# Containers remembered as refusing; beyond, all are forgotten at once.
REFUSED_KEPT = 4096
# What is kept of a shell's own stderr (its complaints, not a command's).
STDERR_KEPT = 1024


class NoChannel(Exception):
    """No channel for this container: nothing was sent."""


class LostAck(Exception):
    """A command was sent and its acknowledgement never came: whether it ran is unknown."""


class ShellStream(Protocol):
    """A started shell (docker/writes.py's Shell)."""

    async def read(self) -> list[tuple[int, bytes]] | None: ...
    async def write(self, data: bytes) -> None: ...
    def counted(self) -> contextlib.AbstractContextManager[None]: ...
    def close(self) -> None: ...


class ShellOpener(Protocol):
    """Who starts a container's shell (docker/writes.py's DockerWrites)."""

    async def open_shell(self, cid: str) -> ShellStream: ...


Key = tuple[object, str]


@dataclass(eq=False)
class Channel:
    """One container's shell."""

    key: Key
    stream: ShellStream
    nonce: str
    acks: trio.MemorySendChannel[Ack]
    answers: trio.MemoryReceiveChannel[Ack]
    last_used: float
    lock: trio.Lock = field(default_factory=trio.Lock)
    dead: bool = False
    said: bytearray = field(default_factory=bytearray)  # the shell's own stderr


class Channels:
    """Every container's channel, bounded; `run` is their task (in the main nursery)."""

    def __init__(
        self,
        *,
        limit: int = CHANNELS_MAX,
        idle: float = IDLE,
        deadline: float = ACK_DEADLINE,
    ) -> None:
        self.limit = limit
        self.idle = idle
        self.deadline = deadline
        self._open: OrderedDict[Key, Channel] = OrderedDict()
        self._refused: dict[Key, float] = {}
        self._nursery: trio.Nursery | None = None
        self._starting = trio.Lock()  # one shell started at a time: never two for one container

    def __len__(self) -> int:
        return len(self._open)

    async def run(self) -> None:
        """Read each channel's output; close idle ones; close all when cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                while True:
                    await trio.sleep(self.idle / 4)
                    self._sweep()
        finally:
            self._nursery = None
            self.close()

    def _sweep(self) -> None:
        now = trio.current_time()
        for channel in list(self._open.values()):
            if not channel.lock.locked() and now - channel.last_used >= self.idle:
                log.debug("%s: shell channel idle: closed", channel.key[1][:12])
                self._drop(channel)

    def close(self) -> None:
        """Close every channel (at unmount): each shell reads its end and exits."""
        for channel in list(self._open.values()):
            self._drop(channel)

    def stopped(self, cid: str) -> None:
        """The container stopped or was paused: its channels go (a paused
        one's shell would answer nothing)."""
        for key, channel in list(self._open.items()):
            if key[1] == cid:
                self._drop(channel)

    def gone(self, cid: str) -> None:
        """The container was removed: its channels go, and its refusals are forgotten."""
        for key, channel in list(self._open.items()):
            if key[1] == cid:
                self._drop(channel)
        for key in [k for k in self._refused if k[1] == cid]:
            del self._refused[key]

    def _drop(self, channel: Channel) -> None:
        channel.dead = True
        if self._open.get(channel.key) is channel:
            del self._open[channel.key]
        channel.acks.close()
        channel.stream.close()

    async def command(self, opener: ShellOpener, cid: str, command: str) -> Ack:
        """Run `command` in the container's shell: its status and what it said.
        NoChannel: nothing was sent. LostAck: sent, its end unknown."""
        key: Key = (opener, cid)
        channel = self._open.get(key)
        if channel is None or channel.dead:
            async with self._starting:
                channel = self._open.get(key)
                if channel is None or channel.dead:
                    channel = await self._start(opener, cid, key)
        if self._open.get(key) is channel:
            self._open.move_to_end(key)
        async with channel.lock:
            if channel.dead:  # died while this command waited for the one before
                raise NoChannel("the shell ended")
            try:
                with channel.stream.counted():
                    return await self._round_trip(channel, framed(command, channel.nonce))
            finally:
                channel.last_used = trio.current_time()

    async def _round_trip(self, channel: Channel, line: bytes) -> Ack:
        """Send one line, await its acknowledgement. Anything but the
        acknowledgement (an error, the deadline, a cancellation) drops the
        channel: a late one must never answer the next command."""
        try:
            try:
                await channel.stream.write(line)
            except Exception as exc:
                raise LostAck(f"writing to the shell: {exc}") from None
            with trio.move_on_after(self.deadline):
                try:
                    return await channel.answers.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    said = bytes(channel.said).decode(errors="replace").strip()
                    raise LostAck(f"the shell ended{': ' + said if said else ''}") from None
            raise LostAck(f"no answer from the shell within {self.deadline:g} s")
        except BaseException:
            self._drop(channel)
            raise

    async def _start(self, opener: ShellOpener, cid: str, key: Key) -> Channel:
        nursery = self._nursery
        if nursery is None:
            raise NoChannel("not serving")
        now = trio.current_time()
        until = self._refused.get(key)
        if until is not None and now < until:
            raise NoChannel("its shell was refused a moment ago")
        self._make_room()
        try:
            stream = await opener.open_shell(cid)
        except Exception as exc:
            self._refuse(key, f"no shell: {exc}")
            raise NoChannel(str(exc)) from None
        acks, answers = trio.open_memory_channel[Ack](16)
        channel = Channel(key, stream, secrets.token_hex(16), acks, answers, now)
        self._open[key] = channel
        nursery.start_soon(self._read, channel)
        try:
            async with channel.lock:
                await self._round_trip(channel, hello(channel.nonce))
        except LostAck as exc:
            self._refuse(key, str(exc))
            raise NoChannel(str(exc)) from None
        except BaseException:
            self._drop(channel)
            raise
        log.debug("%s: shell channel open", cid[:12])
        return channel

    def _make_room(self) -> None:
        """Close the least recently used idle channel if the bound is reached."""
        if len(self._open) < self.limit:
            return
        for channel in self._open.values():
            if not channel.lock.locked():
                self._drop(channel)
                return
        raise NoChannel(f"{self.limit} shells busy")

    def _refuse(self, key: Key, why: str) -> None:
        if key not in self._refused:
            log.info("%s: no shell channel (%s): changes go by exec and upload", key[1][:12], why)
        if len(self._refused) >= REFUSED_KEPT:
            self._refused.clear()
        self._refused[key] = trio.current_time() + REFUSED_FOR

    async def _read(self, channel: Channel) -> None:
        """The shell's output as it comes: acknowledgements passed on, its own
        complaints kept; at its end the channel is dropped."""
        reader = AckReader(channel.nonce)
        try:
            while True:
                runs = await channel.stream.read()
                if runs is None:
                    break
                for fd, data in runs:
                    if fd == 2:
                        channel.said += data[: max(0, STDERR_KEPT - len(channel.said))]
                        continue
                    for ack in reader.feed(data):
                        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                            channel.acks.send_nowait(ack)
        except Exception as exc:
            log.debug("%s: shell channel: %s", channel.key[1][:12], exc)
        finally:
            if not channel.dead:
                log.debug("%s: shell channel ended", channel.key[1][:12])
            self._drop(channel)
