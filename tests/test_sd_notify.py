"""sd_notify against a datagram socket standing in for systemd."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from dockerfs_fuse.lifecycle.sd_notify import Notifier


def test_without_notify_socket_nothing_is_sent() -> None:
    env: dict[str, str] = {}
    n = Notifier.from_environ(env)
    assert not n.enabled and not n.ready("x")


def test_path_socket(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(tmp_path / "notify"))
        env = {"NOTIFY_SOCKET": str(tmp_path / "notify")}
        n = Notifier.from_environ(env)
        assert "NOTIFY_SOCKET" not in env  # children do not inherit it
        assert n.ready("serving local at /m\nsecond line")
        assert systemd.recv(4096) == b"READY=1\nSTATUS=serving local at /m second line"
        assert n.stopping("bye")
        assert systemd.recv(4096) == b"STOPPING=1\nSTATUS=bye"


def test_abstract_socket() -> None:
    name = f"dockerfs-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(b"\0" + name.encode())
        assert Notifier("@" + name).send(READY="1")
        assert systemd.recv(4096) == b"READY=1"


def test_a_missing_socket_is_not_fatal(tmp_path: Path) -> None:
    assert Notifier(str(tmp_path / "gone")).ready("x") is False
