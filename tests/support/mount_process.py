"""dockerfs-fuse as a child process: how the tests, `make bench` and tools run it.

One place for the habits that keep a harness from hanging: start in the
foreground, poll for the mount while checking the child is alive (fail at
once if it died), and tear down with a lazy unmount, then TERM, then KILL,
always by the PID we started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATS_XATTR = "user.dockerfs.stats"


class MountFailed(RuntimeError):
    """The daemon died before mounting, or did not mount in time."""


def dockerfs_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dockerfs_fuse.lifecycle.cli", *args]


@dataclass
class MountProcess:
    path: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stats(self) -> dict[str, Any]:
        """The daemon's counters (Docker requests by kind), read through the mount."""
        data: dict[str, Any] = json.loads(os.getxattr(self.path, STATS_XATTR))
        return data

    def unmount(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True)

    def wait_exit(self, timeout: float = 15) -> int:
        return self.proc.wait(timeout)


def wait_for_mount(
    path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20
) -> None:
    """Poll until mounted; fail at once if the daemon died (a hang is worse than a failure)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise MountFailed(
                f"dockerfs-fuse exited with {proc.returncode}: {log.read_text(errors='replace')}"
            )
        if os.path.ismount(path):
            return
        time.sleep(0.02)
    raise MountFailed(f"not mounted after {timeout}s: {log.read_text(errors='replace')}")


def start_mount(
    host: str,
    mountpoint: Path,
    *extra: str,
    new_session: bool = False,
    timeout: float = 20,
    env: Mapping[str, str] | None = None,
) -> MountProcess:
    """`dockerfs-fuse -f -H HOST EXTRA... MOUNTPOINT`, logging next to the mountpoint."""
    mountpoint.mkdir(exist_ok=True)
    log = mountpoint.parent / f"{mountpoint.name}.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            dockerfs_command("-f", "-H", host, *extra, str(mountpoint)),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=new_session,
            env=env,
        )
    m = MountProcess(mountpoint, proc, log)
    try:
        wait_for_mount(mountpoint, proc, log, timeout)
    except MountFailed:
        stop_mount(m)
        raise
    return m


def stop_mount(m: MountProcess) -> None:
    """Teardown that cannot hang: lazy unmount, then TERM, then KILL, by PID."""
    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True)
    if m.proc.poll() is None:
        m.proc.send_signal(signal.SIGTERM)
        try:
            m.proc.wait(10)
        except subprocess.TimeoutExpired:
            m.proc.kill()
            m.proc.wait(10)
