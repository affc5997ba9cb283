"""The 9P shim as a child of dockerfs-fuse (`--9p`): started once the mount
serves, stopped with it, and asked to exit if its parent dies first."""

from __future__ import annotations

import logging
import select
import subprocess
import threading
import time
from typing import IO

from dockerfs_fuse.ninep.cli import shim_command

log = logging.getLogger(__name__)


class ShimFailed(Exception):
    """The shim exited or stayed silent before listening; the message says why."""


class Shim:
    """The 9P shim as a child process: started once mounted, stopped with the mount.

    It re-exports the mountpoint, so it is a plain client of the FUSE mount;
    if it dies, the mount is unmounted too ("both stop together").
    """

    def __init__(self, dials: list[str], mountpoint: str, allow_control: bool) -> None:
        argv = shim_command(dials[0], mountpoint, allow_control)
        for dial in dials[1:]:
            argv[-1:-1] = ["--listen", dial]
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start and wait for every "listening" line; a failure is a MountError."""
        # stdout too: a caller capturing our output must not wait on the shim.
        # Unbuffered: select() below must see every line not yet read, and a
        # buffered reader would hide a second line that came with the first.
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
            bufsize=0,
        )
        assert self.proc.stderr is not None
        wanted = self.argv.count("--listen")
        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while sum("listening on" in line for line in lines) < wanted:
            remaining = deadline - time.monotonic()
            ready = remaining > 0 and select.select([self.proc.stderr], [], [], remaining)[0]
            line = self.proc.stderr.readline().decode(errors="replace") if ready else ""
            if not line:
                self.stop()
                why = "".join(lines).strip() or f"nothing said within {timeout:.0f}s"
                raise ShimFailed(f"9P shim failed: {why}")
            lines.append(line)
            # Its security warning, too, reaches the user's terminal: see mount.security_warnings.
            log.log(logging.WARNING if "warning:" in line else logging.INFO, "%s", line.strip())
        # From here on its stderr goes to our log, so the pipe never fills.
        threading.Thread(target=self._drain, args=(self.proc.stderr,), daemon=True).start()

    @staticmethod
    def _drain(pipe: IO[bytes]) -> None:
        for line in pipe:
            log.info("9p: %s", line.decode(errors="replace").rstrip())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # by its PID: the one process we started
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                # A thread of it still waits on a file system (ours, being
                # stopped); it ends when that answers.
                log.warning("9P shim (pid %d) still exiting", proc.pid)
