"""dockerfs-fuse as every FUSE filesystem is used: a real fstab line through
mount(8) and mount.fuse3, and systemd's readiness protocol.

mount(8) reads a temporary fstab (`mount -T FILE`), never /etc/fstab, and
finds `dockerfs-fuse` on PATH as it would in /usr/local/bin: mount.fuse3
runs the program named by the type through /bin/sh, with mount's PATH.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Engine, dockerfs_command, require, require_fuse
from support.private_dockerd import IMAGE
from support.waiting import wait_until


def _daemons_under(tmp: Path) -> list[int]:
    """PIDs of dockerfs-fuse processes whose command line names a path under
    this test's private temp directory: only the test's own daemon."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"dockerfs_fuse" in a for a in argv[:3]) and any(
            str(tmp).encode() in a for a in argv
        ):
            found.append(int(entry))
    return found


class Namespace:
    """A private mount namespace whose /usr/local/sbin holds `dockerfs-fuse`.

    mount(8) drops PATH from the environment (util-linux sanitize_env), so
    mount.fuse3's /bin/sh looks in its default PATH, /usr/local/sbin first:
    what `make install` provides in /usr/local/bin. The bind mount, and the
    FUSE mount, exist only in this namespace; commands run in it by nsenter.
    """

    def __init__(self, tmp: Path) -> None:
        bin_dir = tmp / "sbin"
        bin_dir.mkdir()
        program = bin_dir / "dockerfs-fuse"
        # This interpreter: the code under test, in whichever venv runs the tests.
        program.write_text(
            f'#!/bin/sh\nexec {sys.executable} -m dockerfs_fuse.lifecycle.cli "$@"\n'
        )
        program.chmod(0o755)
        self.holder = subprocess.Popen(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                f"mount --bind {bin_dir} /usr/local/sbin && echo ready && exec sleep 3600",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        assert self.holder.stdout.readline().strip() == "ready"

    def run(self, *cmd: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["nsenter", "-t", str(self.holder.pid), "-m", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def close(self) -> None:
        self.holder.kill()
        self.holder.wait(10)


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[Namespace]:
    require_fuse()
    require(os.geteuid() == 0, "mount(8) with an fstab line needs root")
    for tool in ("mount", "unshare", "nsenter", "findmnt"):
        require(shutil.which(tool) is not None, f"{tool} missing (Debian mount, util-linux)")
    require(os.path.exists("/sbin/mount.fuse3"), "mount.fuse3 missing (Debian fuse3)")
    require(os.path.isdir("/usr/local/sbin"), "/usr/local/sbin missing")
    space = Namespace(tmp_path)
    yield space
    pids = _daemons_under(tmp_path)
    space.run("umount", "-l", str(tmp_path / "mnt"))
    for pid in pids:  # ours: started by this test's mount, found by its private paths
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    space.close()


def _not_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.docker
@pytest.mark.fuse
@pytest.mark.parametrize("extra", ["", ",setuid=root", ",drop_privileges"])
def test_fstab_line_mounts_and_umount_ends_the_daemon(
    engine: Engine, ns: Namespace, tmp_path: Path, extra: str
) -> None:
    running = engine.run(IMAGE, "sleep", "1d")
    stopped = engine.run(IMAGE, "true")
    wait_until(lambda: stopped not in {c["Id"] for c in engine.containers()}, "`true` exited")
    mp = tmp_path / "mnt"
    mp.mkdir()
    log = tmp_path / "daemon.log"
    fstab = tmp_path / "fstab"
    fstab.write_text(
        "# a line as the README shows it, with a log file for the test\n"
        f"{engine.host}  {mp}  fuse.dockerfs-fuse  noauto,all,allow_other,log_file={log}{extra}"
        "  0 0\n"
    )
    res = ns.run("mount", "-T", str(fstab), str(mp))
    assert res.returncode == 0, (res.stderr, log.read_text() if log.exists() else "")
    # mount returned once the tree serves: `all` shows the stopped container too
    names = set(ns.run("ls", str(mp)).stdout.split())
    assert {running, stopped} <= names, names
    assert ns.run("cat", str(mp / running / "State")).stdout == "running\n"
    found = ns.run("findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "--mountpoint", str(mp))
    source, fstype, opts = found.stdout.split()
    assert fstype == "fuse.dockerfs-fuse"
    # mount.fuse3 -o drop_privileges mounts by itself, naming the subtype
    assert source == ("dockerfs-fuse" if "drop_privileges" in extra else engine.host)
    assert "allow_other" in opts.split(","), opts
    pids = _daemons_under(tmp_path)
    assert len(pids) == 1, pids
    if "drop_privileges" in extra:
        assert "/dev/fd/" in Path(f"/proc/{pids[0]}/cmdline").read_text()
        status = Path(f"/proc/{pids[0]}/status").read_text()
        assert re.search(r"^CapEff:\s+0+$", status, re.M), status  # no capability left
    res = ns.run("umount", str(mp))
    assert res.returncode == 0, res.stderr
    assert ns.run("findmnt", "--mountpoint", str(mp)).returncode != 0
    wait_until(lambda: not _not_zombie(pids[0]), "the daemon exits after umount", timeout=30)


@pytest.mark.docker
@pytest.mark.fuse
def test_unknown_option_in_fstab_is_one_line_and_nothing_mounted(
    engine: Engine, ns: Namespace, tmp_path: Path
) -> None:
    mp = tmp_path / "mnt"
    mp.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{engine.host} {mp} fuse.dockerfs-fuse noauto,alll 0 0\n")
    res = ns.run("mount", "-T", str(fstab), str(mp))
    assert res.returncode != 0
    assert "dockerfs-fuse: -o alll: unknown option" in res.stderr, res.stderr
    assert ns.run("findmnt", "--mountpoint", str(mp)).returncode != 0


@pytest.mark.docker
@pytest.mark.fuse
def test_systemd_notify_ready_once_serving_then_stopping(engine: Engine, tmp_path: Path) -> None:
    require_fuse()
    mp = tmp_path / "mnt"
    mp.mkdir()
    address = str(tmp_path / "notify")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    systemd.bind(address)
    systemd.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": address}
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            dockerfs_command("-f", engine.host, str(mp)),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        ready = systemd.recv(4096).decode()
        # when systemd hears READY=1 the tree already answers
        assert os.path.ismount(mp)
        listed = os.listdir(mp)
        assert ready.splitlines()[0] == "READY=1", ready
        assert f"STATUS=serving local ({engine.host}) at {mp}" in ready.splitlines(), ready
        assert isinstance(listed, list)
        proc.send_signal(signal.SIGTERM)
        stopping = systemd.recv(4096).decode()
        assert stopping.splitlines()[0] == "STOPPING=1", stopping
        assert proc.wait(30) == 0, log.read_text()
    finally:
        systemd.close()
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], capture_output=True)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
