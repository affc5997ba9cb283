"""systemd's readiness protocol (sd_notify(3)), without libsystemd.

A `Type=notify` service sets NOTIFY_SOCKET to a datagram socket, a path or,
when it starts with "@", an abstract one; the service sends newline-separated
KEY=VALUE lines to it: READY=1 once it serves, STATUS=... for `systemctl
status`, STOPPING=1 on the way out. Without NOTIFY_SOCKET every call here is
a no-op, so nothing changes outside systemd.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

ENV = "NOTIFY_SOCKET"
MAX_MESSAGE = 4096  # ample for READY, STATUS and STOPPING; one datagram


class Notifier:
    """Sends to one NOTIFY_SOCKET; a failure is logged once and never raised:
    readiness reporting must not bring the mount down."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._warned = False

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None) -> Notifier:
        """Takes NOTIFY_SOCKET out of the environment (as sd_notify's
        unset_environment does), so that the processes we start (the 9P shim,
        ssh) do not talk to systemd in our name."""
        env = os.environ if environ is None else environ
        return cls(env.pop(ENV, None) or None)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str) -> bool:
        """notify(READY="1", STATUS="...") → "READY=1\\nSTATUS=...". True if sent."""
        if self.address is None:
            return False
        text = "\n".join(f"{k}={_one_line(v)}" for k, v in fields.items())
        data = text.encode()[:MAX_MESSAGE]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(data, _sockaddr(self.address))
        except OSError as exc:
            if not self._warned:
                log.warning("cannot notify systemd at %s: %s", self.address, exc)
                self._warned = True
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY="1", STATUS=status)

    def stopping(self, status: str) -> bool:
        return self.send(STOPPING="1", STATUS=status)


def _sockaddr(address: str) -> str | bytes:
    if address.startswith("@"):
        return b"\0" + address[1:].encode()  # abstract namespace
    return address


def _one_line(value: str) -> str:
    return " ".join(value.split())
