"""Helpers shared by the 9P tests: run the shim as a child process, and a small
blocking 9P client built on our own codec (the interop tests use clients
nobody here wrote; this one is for poking at edge cases)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import IN_CI

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
    directory: str | os.PathLike[str], *extra_args: str, timeout: float = 15.0
) -> tuple[subprocess.Popen[bytes], str, int]:
    """Start `python -m dockerfs_fuse.ninep.cli --listen tcp!127.0.0.1!0 DIR` and
    return (process, host, port) once it announces its port.  Fails at once if
    the child dies first rather than waiting out the timeout."""
    proc, dial = start_shim_on("tcp!127.0.0.1!0", directory, *extra_args, timeout=timeout)
    _, host, port = dial.split("!")
    return proc, host, int(port)


def start_shim_on(
    dial: str, directory: str | os.PathLike[str], *extra_args: str, timeout: float = 15.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the shim listening on `dial` and return (process, the dial string it
    announced) once it is accepting connections and handling SIGTERM."""
    argv = [sys.executable, "-m", "dockerfs_fuse.ninep.cli", "--listen", dial, *extra_args]
    proc = subprocess.Popen([*argv, str(directory)], stderr=subprocess.PIPE, env=shim_env())
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
    """SIGTERM by PID, then SIGKILL if it lingers; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
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
    if path is None:
        reason = f"{name} not installed (Debian package: diod)"
        if IN_CI:
            pytest.fail(reason)
        print(f"skipping: {reason}")
        pytest.skip(reason)
    return path


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
