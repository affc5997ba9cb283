"""Helpers shared by the 9P tests: run the shim as a child process, and a small
blocking 9P client built on our own codec (the interop tests use clients
nobody here wrote; this one is for poking at edge cases)."""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from conftest import require, require_fuse
from support.waiting import wait_until

from dockerfs_fuse.ninep import codec
from dockerfs_fuse.ninep.codec import Dialect, Message

SRC = str(Path(__file__).resolve().parent.parent / "src")
LISTENING = "dockerfs-9p: listening on "


def shim_env() -> dict[str, str]:
    """The child must import this checkout's package even when not installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def start_shim(
    directory: str | os.PathLike[str],
    *extra_args: str,
    timeout: float = 15.0,
    nofile: int | None = None,
) -> tuple[subprocess.Popen[bytes], str, int]:
    """Start `python -m dockerfs_fuse.ninep.cli --listen tcp!127.0.0.1!0 DIR` and
    return (process, host, port) once it announces its port.  Fails at once if
    the child dies first rather than waiting out the timeout.  `nofile` sets
    the child's descriptor limit (soft and hard)."""
    proc, dial = start_shim_on(
        "tcp!127.0.0.1!0", directory, *extra_args, timeout=timeout, nofile=nofile
    )
    _, host, port = dial.split("!")
    return proc, host, int(port)


def start_shim_on(
    dial: str,
    directory: str | os.PathLike[str],
    *extra_args: str,
    timeout: float = 15.0,
    nofile: int | None = None,
    umask: int | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the shim listening on `dial` and return (process, the dial string it
    announced) once it is accepting connections and handling SIGTERM."""
    argv = [sys.executable, "-m", "dockerfs_fuse.ninep.cli", "--listen", dial, *extra_args]

    def limits() -> None:  # in the child, before exec
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
        if umask is not None:
            os.umask(umask)

    proc = subprocess.Popen(
        [*argv, str(directory)], stderr=subprocess.PIPE, env=shim_env(), preexec_fn=limits
    )
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    deadline = time.monotonic() + timeout
    seen = b""
    network = dial.split("!")[0] + "!"
    while time.monotonic() < deadline:
        seen += proc.stderr.read() or b""
        for line in seen.decode(errors="replace").splitlines():
            if line.startswith(LISTENING + network):
                _drain_in_background(proc, seen)
                return proc, line[len(LISTENING) :]
        if proc.poll() is not None:
            raise RuntimeError(f"dockerfs-9p exited with {proc.returncode}: {seen.decode()!r}")
        time.sleep(0.02)
    stop_shim(proc)
    raise TimeoutError(f"dockerfs-9p did not announce {dial}: {seen.decode()!r}")


_LOGS: dict[int, bytearray] = {}
_LOG_LIMIT = 1 << 20


def shim_log(proc: subprocess.Popen[bytes]) -> str:
    """What the shim wrote to stderr so far (the first MiB), for assertions
    and for failure messages."""
    return _LOGS.get(proc.pid, bytearray()).decode(errors="replace")


def _drain_in_background(proc: subprocess.Popen[bytes], seen: bytes) -> None:
    """Keep reading the child's stderr so a chatty --debug child never blocks."""
    log = _LOGS.setdefault(proc.pid, bytearray(seen))

    def drain() -> None:
        assert proc.stderr is not None
        os.set_blocking(proc.stderr.fileno(), True)
        with contextlib.suppress(OSError, ValueError):
            for line in proc.stderr:
                if len(log) < _LOG_LIMIT:
                    log.extend(line)

    threading.Thread(target=drain, daemon=True).start()


def stop_shim(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM by PID, then SIGKILL if it lingers; returns the exit status.
    A process whose threads wait on a FUSE file system cannot end before that
    file system answers: stop the file system first."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"pid {proc.pid} survives SIGKILL (stuck in FUSE?)") from None
    return proc.returncode


@contextlib.contextmanager
def running_shim(
    directory: str | os.PathLike[str], *extra_args: str
) -> Iterator[tuple[subprocess.Popen[bytes], str, int]]:
    proc, host, port = start_shim(directory, *extra_args)
    try:
        yield proc, host, port
    finally:
        stop_shim(proc)


def require_tool(name: str) -> str:
    """Path of an external tool; missing is a failure under CI, a skip elsewhere."""
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )
    require(path is not None, f"{name} not installed (Debian package: diod)")
    assert path is not None
    return path


# ------------------------------------------------------ the shim as seen by /proc


@dataclass(frozen=True)
class Usage:
    """What a process holds: resident memory now and at its peak (VmHWM),
    threads, open descriptors."""

    rss_mb: float
    peak_mb: float
    threads: int
    fds: int


def usage(pid: int) -> Usage:
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    return Usage(
        rss_mb=int(fields["VmRSS"][0]) / 1024,
        peak_mb=int(fields["VmHWM"][0]) / 1024,
        threads=int(fields["Threads"][0]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
    )


def threads_in_fuse(pid: int, reading: str | None = None) -> int:
    """Threads of `pid` waiting in the kernel for a FUSE file system's answer;
    with `reading`, only those in a read of a file whose path ends so (the
    descriptor is the system call's first argument)."""
    waiting = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid}/task/{task}/wchan") as wchan:
                if wchan.read() != "request_wait_answer":
                    continue
            if reading is not None:
                with open(f"/proc/{pid}/task/{task}/syscall") as syscall:
                    fd = int(syscall.read().split()[1], 16)
                if not os.readlink(f"/proc/{pid}/fd/{fd}").endswith(reading):
                    continue
            waiting += 1
    return waiting


def fds_to(pid: int, name: str) -> int:
    """Descriptors of `pid` open on a path ending in `name`."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/{pid}/fd/{fd}").endswith(name)
    return count


_EPOLLIN = 0x001


def reads_parked(pid: int, name: str) -> int:
    """Descriptors of `pid` open on a path ending in `name` that its event loop
    is waiting to become readable: a FIFO read parked in trio, holding no
    thread.  trio arms a descriptor in epoll one-shot while a task waits on
    it, and the kernel clears the armed events once it reports them, so an
    armed EPOLLIN in the epoll instance's fdinfo is exactly a waiting read."""
    parked = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                for line in info:
                    words = line.split()  # tfd: N events: HEX data: ...
                    if words[:1] != ["tfd:"] or not int(words[3], 16) & _EPOLLIN:
                        continue
                    with contextlib.suppress(OSError):
                        parked += os.readlink(f"/proc/{pid}/fd/{words[1]}").endswith(name)
    return parked


def tcp_queues(port: int) -> list[tuple[int, int]]:
    """(send queue, receive queue) in bytes of every TCP socket whose local port
    is `port`, from /proc/net/tcp: how much a server has not yet read, and
    how much of what it wrote its peer has not read."""
    queues = []
    with open("/proc/net/tcp") as table:
        for line in list(table)[1:]:
            cells = line.split()
            local, state, queue = cells[1], cells[3], cells[4]
            if int(local.split(":")[1], 16) == port and state == "01":  # ESTABLISHED
                tx, rx = (int(x, 16) for x in queue.split(":"))
                queues.append((tx, rx))
    return queues


# ------------------------------------------------- a FUSE file system that blocks

BLOCK_INODE, BLOCK2_INODE, SLOWOPEN_INODE = 2, 3, 4


def blocking_fs_main(mountpoint: str) -> None:
    """A FUSE file system with three files: `block` and `block2`, whose reads
    never return, and `slowopen`, whose opens wait until the process gets
    SIGUSR1.  They
    stand for dockerfs's logs.follow and wait: a thread that reads them is
    stuck in the kernel until the file system answers.  SIGTERM unmounts."""
    import errno
    import signal
    import stat

    import pyfuse3
    import trio

    names = {b"block": BLOCK_INODE, b"block2": BLOCK2_INODE, b"slowopen": SLOWOPEN_INODE}

    class Blocking(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.opens_released = trio.Event()

        async def getattr(
            self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None
        ) -> pyfuse3.EntryAttributes:
            attr = pyfuse3.EntryAttributes()
            if inode == pyfuse3.ROOT_INODE:
                attr.st_mode, attr.st_nlink = stat.S_IFDIR | 0o755, 2
            elif inode in names.values():
                attr.st_mode, attr.st_nlink, attr.st_size = stat.S_IFREG | 0o444, 1, 4096
            else:
                raise pyfuse3.FUSEError(errno.ENOENT)
            attr.st_ino = inode
            attr.st_uid, attr.st_gid = os.getuid(), os.getgid()
            attr.entry_timeout = attr.attr_timeout = 300
            return attr

        async def lookup(
            self, parent: pyfuse3.InodeT, name: bytes, ctx: pyfuse3.RequestContext | None = None
        ) -> pyfuse3.EntryAttributes:
            if parent != pyfuse3.ROOT_INODE or name not in names:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return await self.getattr(pyfuse3.InodeT(names[name]))

        async def opendir(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> int:
            return int(inode)

        async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
            for i, (name, inode) in enumerate(names.items()):
                if i >= start_id:
                    attr = await self.getattr(pyfuse3.InodeT(inode))
                    if not pyfuse3.readdir_reply(token, name, attr, i + 1):
                        return

        async def open(
            self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
        ) -> pyfuse3.FileInfo:
            if inode == SLOWOPEN_INODE:
                await self.opens_released.wait()
            return pyfuse3.FileInfo(fh=int(inode), direct_io=True)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            if fh in (BLOCK_INODE, BLOCK2_INODE):
                await trio.sleep_forever()
            return b"s" * max(0, min(size, 4096 - off))

    fs = Blocking()

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGUSR1, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pyfuse3.main, 1, 2000)
                async for signum in signals:
                    if signum == signal.SIGUSR1:
                        fs.opens_released.set()
                    else:
                        pyfuse3.terminate()
                        nursery.cancel_scope.cancel()

    pyfuse3.init(fs, mountpoint, {"fsname=ninep-blocking", "ro"})
    try:
        trio.run(main)
    finally:
        pyfuse3.close(unmount=True)


@contextlib.contextmanager
def blocking_fuse(mountpoint: Path) -> Iterator[subprocess.Popen[bytes]]:
    """blocking_fs_main mounted at `mountpoint` for the block; unmounted after."""
    require_fuse()
    mountpoint.mkdir(exist_ok=True)
    env = shim_env()
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent) + os.pathsep + env["PYTHONPATH"]
    code = "import sys, ninep_support; ninep_support.blocking_fs_main(sys.argv[1])"
    proc = subprocess.Popen([sys.executable, "-c", code, str(mountpoint)], env=env)
    try:
        wait_until(lambda: os.path.ismount(mountpoint) or proc.poll() is not None, "the FUSE mount")
        assert proc.poll() is None, f"blocking FUSE file system exited with {proc.returncode}"
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
                proc.kill()
                proc.wait()
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


class Client:
    """A blocking 9P client that speaks one message at a time, or many, as the
    test wishes (send and recv are separate for flush and pipelining tests)."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.dialect = Dialect.P2000
        self.splitter = codec.FrameSplitter(1 << 24)
        self.msize = 8192

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, msg: Message) -> None:
        self.sock.sendall(codec.encode(msg, self.dialect))

    def send_raw(self, frame: bytes) -> None:
        self.sock.sendall(frame)

    def recv(self) -> Message:
        while True:
            frame = self.splitter.next_frame()
            if frame is not None:
                return codec.decode(frame, self.dialect)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.splitter.feed(data)

    def rpc(self, msg: Message) -> Message:
        self.send(msg)
        reply = self.recv()
        assert reply.tag == msg.tag, (msg, reply)
        return reply

    def pipeline(self, requests: Iterable[Message], window: int = 200) -> list[Message]:
        """Send every request, with at most `window` unanswered at a time (fewer
        than the shim's outstanding limit, so it never stops reading us); the
        replies in the order they came.  Tags must differ within a window."""
        replies: list[Message] = []
        unanswered = 0
        for msg in requests:
            if unanswered >= window:
                replies.append(self.recv())
                unanswered -= 1
            self.send(msg)
            unanswered += 1
        replies += [self.recv() for _ in range(unanswered)]
        return replies

    def version(self, version: str = "9P2000", msize: int = 8192) -> codec.Rversion:
        reply = self.rpc(codec.Tversion(tag=codec.NOTAG, msize=msize, version=version))
        assert isinstance(reply, codec.Rversion), reply
        if reply.version != "unknown":
            self.dialect = Dialect(reply.version)
        self.msize = reply.msize
        return reply

    def attach(self, fid: int = 0, aname: str = "") -> codec.Qid:
        reply = self.rpc(
            codec.Tattach(tag=1, fid=fid, afid=codec.NOFID, uname="test", aname=aname, n_uname=0)
        )
        assert isinstance(reply, codec.Rattach), reply
        return reply.qid

    @classmethod
    def session(cls, host: str, port: int, version: str = "9P2000", msize: int = 8192) -> Client:
        """A connected client, version negotiated and the root attached as fid 0."""
        client = cls(host, port)
        client.version(version, msize)
        client.attach()
        return client

    def walk(self, path: str, newfid: int, fid: int = 0) -> Message:
        names = tuple(n for n in path.split("/") if n)
        return self.rpc(codec.Twalk(tag=2, fid=fid, newfid=newfid, wnames=names))

    def read_all(self, fid: int, count: int = 4096) -> bytes:
        out = b""
        while True:
            reply = self.rpc(codec.Tread(tag=3, fid=fid, offset=len(out), count=count))
            assert isinstance(reply, codec.Rread), reply
            if not reply.data:
                return out
            out += reply.data

    def cat(self, path: str, fid: int = 100) -> bytes:
        """Walk, open and read a whole file, then clunk it."""
        assert isinstance(self.walk(path, fid), codec.Rwalk)
        if self.dialect is Dialect.L:
            opened = self.rpc(codec.Tlopen(tag=4, fid=fid, flags=0))
        else:
            opened = self.rpc(codec.Topen(tag=4, fid=fid, mode=codec.OREAD))
        assert isinstance(opened, codec.Ropen | codec.Rlopen), opened
        data = self.read_all(fid)
        self.rpc(codec.Tclunk(tag=5, fid=fid))
        return data
