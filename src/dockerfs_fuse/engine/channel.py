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
- One command at a time per channel (its lock); each command has one
  deadline for its line's sending and its acknowledgement (longer for a
  longer line), past which the channel is dropped. A channel dropped with
  a command sent and not acknowledged has its shell killed, and is waited
  for (up to END_WAIT) until the engine says it ended: a command it read
  but had not run (a paused container's) never runs later. A reader task
  per channel takes its output as it comes, so a shell that dies (killed,
  its container stopped or removed) is dropped at once, not at the next
  command.
- At most CHANNELS_MAX at once, the least recently used closed for a new
  one; each closed after IDLE seconds unused, and all at unmount.

`NoChannel` means nothing was sent: the caller takes today's path.
`LostAck` means a command was sent and its end is unknown (the shell died
or was too slow), but its shell is known to have ended: an upload is redone
by PUT (it is idempotent), a rename or removal is EIO (repeating it could
act twice), logged with the reason. `Unsettled` (a LostAck) means the shell
could not be known to have ended: the command may still run later, so
nothing is redone (EIO).
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
# How long a command's acknowledgement may take (a 64 KiB upload included),
# plus its line's time at SEND_RATE bytes a second (a slow remote engine's).
ACK_DEADLINE = 5.0
SEND_RATE = 64 << 10
# How long a shell dropped with a command unanswered is waited for, once killed.
END_WAIT = 5.0
# A container whose shell could not be started is not asked again for this long.
REFUSED_FOR = 30.0
# Containers remembered as refusing; beyond, all are forgotten at once.
REFUSED_KEPT = 4096
# What is kept of a shell's own stderr (its complaints, not a command's).
STDERR_KEPT = 1024


class NoChannel(Exception):
    """No channel for this container: nothing was sent."""


class LostAck(Exception):
    """A command was sent and its acknowledgement never came: whether it ran
    is unknown, but its shell has ended (it will not run later)."""


class Unsettled(LostAck):
    """As LostAck, but the shell could not be known to have ended: the
    command may still run later, so nothing may be redone in its place."""


class ShellStream(Protocol):
    """A started shell (docker/writes.py's Shell)."""

    async def read(self) -> list[tuple[int, bytes]] | None: ...
    async def write(self, data: bytes) -> None: ...
    def counted(self) -> contextlib.AbstractContextManager[None]: ...
    def close(self) -> None: ...
    async def end(self) -> bool:
        """Kill the shell and wait for the engine to say it ended: whether it did."""
        ...


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
        # Per container, one shell started at a time: never two for one container.
        self._starting: dict[Key, trio.Lock] = {}
        self._opened = trio.Event()  # wakes run

    def __len__(self) -> int:
        return len(self._open)

    async def run(self) -> None:
        """Read each channel's output; close idle ones (asleep while there are
        none); close all when cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                while True:
                    await self._opened.wait()
                    while self._open:
                        await trio.sleep(self.idle / 4)
                        try:
                            self._sweep()
                        except Exception:  # a bug here must not end the daemon's events
                            log.exception("shell channels")
                    self._opened = trio.Event()
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

    def started(self, cid: str) -> None:
        """The container started or was unpaused: a shell refused while it
        was not running is asked for again."""
        for key in [k for k in self._refused if k[1] == cid]:
            del self._refused[key]

    def gone(self, cid: str) -> None:
        """The container was removed: its channels go, and its refusals are forgotten."""
        self.stopped(cid)
        self.started(cid)

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
            starting = self._starting.setdefault(key, trio.Lock())
            try:
                async with starting:
                    channel = self._open.get(key)
                    if channel is None or channel.dead:
                        channel = await self._start(opener, cid, key)
            finally:
                if not starting.locked() and not starting.statistics().tasks_waiting:
                    self._starting.pop(key, None)
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
        """Send one line, await its acknowledgement, both within one deadline.
        Anything but the acknowledgement (an error, the deadline, a
        cancellation) drops the channel (a late one must never answer the
        next command) and ends its shell (see _end)."""
        deadline = self.deadline + len(line) / SEND_RATE
        try:
            with trio.move_on_after(deadline):
                try:
                    await channel.stream.write(line)
                except Exception as exc:
                    raise LostAck(f"writing to the shell: {exc}") from None
                try:
                    return await channel.answers.receive()
                except (trio.EndOfChannel, trio.ClosedResourceError):
                    said = bytes(channel.said).decode(errors="replace").strip()
                    raise LostAck(f"the shell ended{': ' + said if said else ''}") from None
            raise LostAck(f"no answer from the shell within {deadline:g} s")
        except BaseException as exc:
            self._drop(channel)
            ended = await self._end(channel)
            if isinstance(exc, LostAck) and not ended:
                raise Unsettled(f"{exc}; its shell could not be ended") from None
            raise

    async def _end(self, channel: Channel) -> bool:
        """Kill a dropped channel's shell and wait (up to END_WAIT, even when
        cancelled) for the engine to say it ended: a line it read and has not
        run yet (its container paused, a slow engine) then never runs."""
        with trio.CancelScope(shield=True), trio.move_on_after(END_WAIT):
            try:
                if await channel.stream.end():
                    return True
            except Exception as exc:
                log.info("%s: ending a shell channel: %s", channel.key[1][:12], exc)
        log.warning(
            "%s: a shell channel could not be ended: its last command may still run",
            channel.key[1][:12],
        )
        return False

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
        self._opened.set()
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
