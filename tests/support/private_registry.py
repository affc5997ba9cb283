"""A throwaway image registry on loopback, for the tests of `pull` and `tag`.

Debian's docker-registry (distribution 2.8), run with a config and storage
of its own in a temporary directory, on a free 127.0.0.1 port, with no auth:
dockerd trusts registries on 127.0.0.0/8 without TLS, so the private dockerd
pushes to it and pulls from it as from any registry, and nothing reaches the
internet. Stopped by PID.
"""

from __future__ import annotations

import http.client
import shutil
import socket
import tempfile
from pathlib import Path

from support.private_dockerd import DockerdError, PrivateProcess


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateRegistry(PrivateProcess):
    name = "docker-registry"

    def __init__(self) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="dfs-registry-")), "registry.log")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def config(self) -> str:
        return (
            "version: 0.1\n"
            "log:\n  level: warn\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.base / 'data'}\n"
            f"http:\n  addr: {self.address}\n"
        )

    def answers(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/v2/")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def start(self, timeout: float = 30.0) -> None:
        registry = shutil.which("docker-registry")
        if registry is None:
            raise DockerdError("docker-registry not found (Debian package docker-registry)")
        config = self.base / "config.yml"
        config.write_text(self.config())
        self.spawn([registry, "serve", str(config)])
        self.wait_ready_while_alive(
            self.answers, timeout, f"docker-registry did not answer within {timeout}s"
        )
