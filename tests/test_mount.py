"""The core mount against a real private dockerd and a real FUSE mount.

Each expectation is computed from what the Docker API says (asked directly,
not through the code under test), then compared with what the kernel shows.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import stat
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Engine,
    Mount,
    dockerfs_command,
    in_private_mount_namespace,
    require_fuse,
    start_mount,
    stop_mount,
)
from support.waiting import wait_until

from dockerfs_fuse.docker.source import DEFAULT_TIMEOUT

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

IMG = "busybox:latest"


def expected_files(c: dict[str, Any]) -> dict[str, bytes]:
    """The contract, written out independently of src/dockerfs_fuse/tree.py."""

    def line(v: Any) -> bytes:
        if isinstance(v, bool):
            v = "true" if v else "false"
        return f"{v}\n".encode()

    def esc(k: str) -> str:
        return k.replace("%", "%25").replace("/", "%2F")

    files = {
        "ID": line(c["Id"]),
        "Image": line(c["Image"]),
        "ImageID": line(c["ImageID"]),
        "Command": line(c["Command"]),
        "Created": line(c["Created"]),
        "State": line(c["State"]),
        "Status": line(c["Status"]),
    }
    for i, name in enumerate(c["Names"]):
        files[f"Names/{i}"] = line(name)
    for k, v in (c.get("Labels") or {}).items():
        files[f"Labels/{esc(k)}"] = line(v)
    # The API's order of these changes between answers; the tree sorts them.
    ordered = {
        "Ports": sorted(c.get("Ports") or [], key=lambda p: (p["PrivatePort"], p["Type"])),
        "Mounts": sorted(c.get("Mounts") or [], key=lambda m: m["Destination"]),
    }
    for group, entries in ordered.items():
        for i, entry in enumerate(entries):
            for k, v in entry.items():
                if v is not None:
                    files[f"{group}/{i}/{k}"] = line(v)
    for net, fields in (c["NetworkSettings"]["Networks"] or {}).items():
        for k, v in fields.items():
            if v is not None and v != "" and not isinstance(v, dict | list):
                files[f"Networks/{esc(net)}/{k}"] = line(v)
    return files


# Made on open or write, not from the list answer: tested in test_control.py
# and test_container_fs.py.
LIVE_FILES = {"ctl", "err", "logs", "logs.follow", "inspect.json", "top", "stats", "wait"}
# The container's own filesystem: tested in test_container_fs.py.
ROOT_DIR = "root"


def tree_files(root: Path) -> dict[str, bytes]:
    """The core tree of one container directory, as paths and contents."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        if dirpath == str(root):
            dirs.remove(ROOT_DIR)
        for n in names:
            if dirpath == str(root) and n in LIVE_FILES:
                continue
            p = Path(dirpath) / n
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.fixture
def three(engine: Engine) -> list[str]:
    return [
        engine.run(
            "--name=web", "-l", "com.example/tier=front", "-l", "100%=yes", IMG, "sleep", "1d"
        ),
        engine.run(
            "--name=db",
            "-v",
            "dbdata:/data",
            "-v",
            f"{engine.dockerd.base}:/host:ro",
            IMG,
            "sleep",
            "1d",
        ),
        engine.run("--name=plain", IMG, "sh", "-c", "sleep 100000"),
    ]


def test_root_lists_running_containers_by_full_id_in_api_order(
    engine: Engine, three: list[str], mounted: Mount
) -> None:
    engine.dockerd.docker("create", "--name=notrunning", IMG, "true")
    engine.started.append(engine.docker("inspect", "-f", "{{.Id}}", "notrunning").strip())
    api_ids = [c["Id"] for c in engine.containers()]
    assert set(three) <= set(api_ids)
    assert os.listdir(mounted.path) == api_ids
    assert all(len(i) == 64 for i in api_ids)


def statuses(api: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(c["Id"], c["Status"]) for c in api]


def test_every_file_matches_the_api_content_and_size(
    engine: Engine, three: list[str], mounted: Mount
) -> None:
    # Status text ("Up 3 seconds") changes every second in a container's first
    # minute, so the API is asked before and after the mount is listed and read,
    # and the two answers are compared with the mount only when no Status moved
    # in between: then the listing, made in between, must show exactly that.
    # (At worst that waits for "Up About a minute", which holds for a minute.)
    deadline = time.monotonic() + 120
    while True:
        before = engine.containers()
        os.listdir(mounted.path)  # the listing refreshes the tree
        got = {c["Id"]: tree_files(mounted.path / c["Id"]) for c in before}
        sizes = {
            cid: {rel: os.stat(mounted.path / cid / rel) for rel in files}
            for cid, files in got.items()
        }
        after = engine.containers()
        if statuses(after) == statuses(before):
            break
        assert time.monotonic() < deadline, "Status changed during every attempt for 120 s"
    for c in after:
        cid = c["Id"]
        assert got[cid] == expected_files(c), cid
        for rel, data in got[cid].items():
            st = sizes[cid][rel]
            assert st.st_size == len(data), rel
            assert stat.S_IMODE(st.st_mode) == 0o444
            assert st.st_mtime == c["Created"] and st.st_ctime == c["Created"]
            assert st.st_uid == os.getuid()
        for dirpath, dirs, _f in os.walk(mounted.path / cid):
            if dirpath == str(mounted.path / cid):
                dirs.remove(ROOT_DIR)  # the container's own directories, their own modes
            st = os.stat(dirpath)
            assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o555


def test_find_shows_the_whole_tree(engine: Engine, three: list[str], mounted: Mount) -> None:
    out = subprocess.run(
        ["find", str(mounted.path)], capture_output=True, text=True, timeout=30, check=True
    ).stdout.splitlines()
    web = three[0]
    for rel in (
        "ID",
        "Names/0",
        "Image",
        "Labels/com.example%2Ftier",
        "Labels/100%25",
        "Networks/none/NetworkID",
    ):
        assert f"{mounted.path}/{web}/{rel}" in out
    db = mounted.path / three[1]
    # Sorted by destination: /data (the volume) before /host (the bind).
    assert (db / "Mounts/0/Type").read_text() == "volume\n"
    assert (db / "Mounts/0/RW").read_text() == "true\n"
    assert (db / "Mounts/1/Type").read_text() == "bind\n"
    assert (db / "Mounts/1/RW").read_text() == "false\n"


def test_killed_container_disappears_on_next_listing(
    engine: Engine, three: list[str], mounted: Mount
) -> None:
    victim = three[2]
    assert victim in os.listdir(mounted.path)
    assert (mounted.path / victim / "State").read_text() == "running\n"
    engine.docker("kill", victim)
    assert victim not in os.listdir(mounted.path)
    # Not listed, still reachable by its ID, as Docker resolves it.
    assert (mounted.path / victim / "State").read_text() == "exited\n"


def test_new_container_reachable_by_path_before_any_listing(engine: Engine, mounted: Mount) -> None:
    os.listdir(mounted.path)
    cid = engine.run(IMG, "sleep", "1d")
    assert (mounted.path / cid / "ID").read_text() == cid + "\n"


def test_inode_numbers_are_stable(engine: Engine, three: list[str], mounted: Mount) -> None:
    def inodes() -> dict[str, int]:
        return {
            p: os.stat(mounted.path / p).st_ino
            for cid in three[:2]
            for p in (cid, f"{cid}/Status", f"{cid}/Names/0", f"{cid}/Labels")
        }

    before = inodes()
    assert len(set(before.values())) == len(before)
    extra = engine.run(IMG, "sleep", "1d")
    os.listdir(mounted.path)
    engine.docker("rm", "-f", extra)
    os.listdir(mounted.path)
    assert inodes() == before


def _getdents(fd: int, bufsize: int) -> list[str]:
    """One getdents64 call with a small buffer, to read a listing in pieces."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(bufsize)
    sys_getdents64 = {"x86_64": 217, "aarch64": 61}[os.uname().machine]
    n = libc.syscall(sys_getdents64, fd, buf, bufsize)
    if n < 0:
        raise OSError(ctypes.get_errno(), "getdents64")
    names, off = [], 0
    raw = buf.raw[:n]
    while off < n:
        reclen = int.from_bytes(raw[off + 16 : off + 18], "little")
        name = raw[off + 19 : off + reclen].split(b"\0", 1)[0].decode()
        names.append(name)
        off += reclen
    return names


def test_listing_in_progress_is_a_consistent_snapshot(engine: Engine, mounted: Mount) -> None:
    first = [engine.run(IMG, "sleep", "1d") for _ in range(12)]
    fd = os.open(mounted.path, os.O_RDONLY | os.O_DIRECTORY)  # opendir: the snapshot
    try:
        at_open = [c["Id"] for c in engine.containers()]
        seen: list[str] = []
        chunk = _getdents(fd, 300)  # about three entries per call
        added: list[str] = []
        # Bounded: a listing that never ends (an offset that does not advance)
        # fails here, by name, instead of growing `seen` until the timeout.
        for _ in range(100):
            if not chunk:
                break
            seen += chunk
            # Containers come and go between the pieces of one listing.
            if len(added) < 3:
                added.append(engine.run(IMG, "sleep", "1d"))
                engine.docker("rm", "-f", first.pop())
            chunk = _getdents(fd, 300)
        else:
            raise AssertionError(f"getdents64 still returning entries after 100 calls: {chunk}")
    finally:
        os.close(fd)
    assert len(seen) == len(set(seen)), "an entry was repeated"
    assert not set(added) & set(seen), "an entry created after opendir leaked in"
    removed_during = set(at_open) - set(seen)
    assert set(seen) | removed_during == set(at_open), "an entry was skipped"
    assert [s for s in at_open if s in seen] == seen, "order changed"
    # and the next listing sees the new state
    now = set(os.listdir(mounted.path))
    assert set(added) <= now and not (removed_during & now)


def _statx_forced(fd: int) -> tuple[int, int]:
    """(inode, size) of an open file, asked of the daemon (AT_STATX_FORCE_SYNC),
    not answered from the kernel's attribute cache as fstat would be."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    sys_statx = {"x86_64": 332, "aarch64": 291}[os.uname().machine]
    at_empty_path, at_statx_force_sync, statx_basic_stats = 0x1000, 0x2000, 0x7FF
    flags = at_empty_path | at_statx_force_sync
    if libc.syscall(sys_statx, fd, b"", flags, statx_basic_stats, buf) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    ino, size = struct.unpack_from("<QQ", buf.raw, 32)  # stx_ino, stx_size
    return int(ino), int(size)


def _evict_unused_inodes() -> None:
    """The kernel drops every unused dentry and inode, and so sends FORGET for ours."""
    Path("/proc/sys/vm/drop_caches").write_text("2\n")


def test_forget_drops_only_what_the_kernel_no_longer_holds(engine: Engine, mounted: Mount) -> None:
    live = engine.run(IMG, "sleep", "1d")
    os.listdir(mounted.path)
    image = mounted.path / live / "Image"
    image_ino = os.stat(image).st_ino
    inodes_with_live_only = mounted.stats()["inodes"]
    gone = engine.run("--name=forgotten", IMG, "sleep", "1d")
    os.listdir(mounted.path)
    fd = os.open(mounted.path / gone / "Names" / "0", os.O_RDONLY)
    try:
        assert (mounted.path / gone / "Image").read_text() == "busybox:latest\n"
        engine.docker("rm", "-f", gone)
        assert gone not in os.listdir(mounted.path)
        # The kernel forgets what nothing holds (Image, and the live container's
        # nodes); Names/0 is held open, so the daemon must still answer for it.
        _evict_unused_inodes()
        assert _statx_forced(fd) == (os.fstat(fd).st_ino, len(b"/forgotten\n"))
        assert os.read(fd, 100) == b"/forgotten\n"
    finally:
        os.close(fd)
    # Now nothing holds the removed container: every node of it is let go
    # (and those of the live one the kernel forgot, but for their numbers).
    _evict_unused_inodes()
    eventually_inodes = time.monotonic() + 30
    while mounted.stats()["inodes"] > inodes_with_live_only:
        assert time.monotonic() < eventually_inodes, (
            f"{mounted.stats()['inodes']} inodes, more than {inodes_with_live_only}, "
            "after the kernel forgot the removed container"
        )
        _evict_unused_inodes()
        time.sleep(0.1)
    # and what the kernel forgot of a live container comes back with its number
    assert image.read_text() == "busybox:latest\n"
    assert os.stat(image).st_ino == image_ino


def test_reads_at_offsets_and_writes_are_refused(
    engine: Engine, three: list[str], mounted: Mount
) -> None:
    f = mounted.path / three[0] / "ImageID"
    data = f.read_bytes()
    with f.open("rb") as fh:
        fh.seek(7)
        assert fh.read(5) == data[7:12]
        assert fh.read() == data[12:]
    for attempt in (
        lambda: f.open("wb"),
        lambda: os.mkdir(mounted.path / "x"),
        lambda: os.rename(f, f.with_name("y")),
        lambda: os.unlink(f),
        lambda: os.chmod(f, 0o666),
        lambda: os.setxattr(f, "user.x", b"1"),
    ):
        with pytest.raises(OSError) as err:
            attempt()
        assert err.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS), err.value
    assert f.read_bytes() == data  # and the mount still serves


def test_sigterm_unmounts_cleanly_and_exits_0(engine: Engine, mounted: Mount) -> None:
    os.listdir(mounted.path)
    mounted.proc.send_signal(signal.SIGTERM)
    assert mounted.wait_exit() == 0, mounted.log_text()
    assert not os.path.ismount(mounted.path)
    assert os.listdir(mounted.path) == []  # not ENOTCONN: the plain directory again


def test_fusermount_u_ends_the_daemon_with_0(engine: Engine, mounted: Mount) -> None:
    os.listdir(mounted.path)
    mounted.unmount()
    assert mounted.wait_exit() == 0, mounted.log_text()
    assert not os.path.ismount(mounted.path)


def test_daemon_that_does_not_answer_gives_eio_not_a_hang(
    engine: Engine, three: list[str], mounted: Mount
) -> None:
    known = three[0]
    os.listdir(mounted.path)
    image = (mounted.path / known / "Image").read_bytes()
    proc = engine.dockerd.proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGSTOP)  # our own dockerd, by PID: it stops answering
    try:
        t0 = time.monotonic()
        with pytest.raises(OSError) as err:
            os.listdir(mounted.path)
        took = time.monotonic() - t0
        print(f"\nls with dockerd stopped failed with {err.value.strerror} after {took:.2f}s")
        assert err.value.errno == errno.EIO
        # The daemon gives up by itself (after DEFAULT_TIMEOUT); a bound this
        # generous tells that from a hang without racing a loaded machine.
        assert took < DEFAULT_TIMEOUT + 30, took
        assert (mounted.path / known / "Image").read_bytes() == image  # cached tree still serves
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert known in os.listdir(mounted.path)  # and it recovers with no remount


def test_detaches_once_mounted_and_returns_0(engine: Engine, tmp_path: Path) -> None:
    require_fuse()
    mp = tmp_path / "bg"
    mp.mkdir()
    cid = engine.run(IMG, "sleep", "1d")
    # Relative paths, as a user types them: the daemon leaves its directory.
    res = subprocess.run(
        dockerfs_command("-H", engine.host, "--log-file", "bg.log", "bg"),
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    try:
        assert res.returncode == 0, res.stderr
        assert os.path.ismount(mp)  # ready the moment the command returns
        assert cid in os.listdir(mp)
        fd = os.open(mp / cid / "ctl", os.O_WRONLY)
        with pytest.raises(OSError):
            os.write(fd, b"bogus\n")
        os.close(fd)
        assert "unknown command 'bogus'" in (tmp_path / "bg.log").read_text()
    finally:
        subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
    wait_until(lambda: not os.path.ismount(mp), "the unmount")


def _fails_with_one_line(args: list[str], *, want: str, env: dict[str, str] | None = None) -> str:
    res = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and want in lines[0], res.stderr
    return lines[0]


def test_error_missing_mountpoint(engine: Engine, tmp_path: Path) -> None:
    _fails_with_one_line(
        dockerfs_command("-H", engine.host, str(tmp_path / "nope")), want="does not exist"
    )


def test_error_already_mounted(engine: Engine, mounted: Mount) -> None:
    _fails_with_one_line(
        dockerfs_command("-H", engine.host, str(mounted.path)), want="already a mount point"
    )
    assert os.path.ismount(mounted.path)


@pytest.mark.parametrize("foreground", [True, False])
@pytest.mark.parametrize(
    ("socket_file", "why"),
    [
        (False, "no such socket (is dockerd running? set -H or DOCKER_HOST)"),
        (True, "connection refused: no daemon behind the socket (is dockerd running?"),
    ],
)
def test_error_unreachable_docker(
    tmp_path: Path, foreground: bool, socket_file: bool, why: str
) -> None:
    """The cause in a user's words, with what to try: no library's wording
    ("Cannot connect to unix socket ... ssl:default [...]")."""
    require_fuse()
    mp = tmp_path / "m"
    mp.mkdir()
    path = tmp_path / "no.sock"
    if socket_file:  # a socket file nobody listens on: a dockerd that died
        with socket.socket(socket.AF_UNIX) as dead:
            dead.bind(str(path))
    flags = ["-f"] if foreground else []
    line = _fails_with_one_line(
        dockerfs_command(*flags, "-H", f"unix://{path}", str(mp)),
        want=f"dockerfs-fuse: cannot reach Docker at unix://{path}: {why}",
    )
    assert "ssl:default" not in line and "Cannot connect" not in line
    assert not os.path.ismount(mp)


def test_error_bad_endpoint(tmp_path: Path) -> None:
    require_fuse()
    mp = tmp_path / "m"
    mp.mkdir()
    _fails_with_one_line(
        dockerfs_command("-f", "-H", "bogus://nowhere", str(mp)), want="bad Docker endpoint"
    )
    assert not os.path.ismount(mp)


def test_error_missing_dev_fuse(engine: Engine, tmp_path: Path) -> None:
    require_fuse()
    mp = tmp_path / "m"
    mp.mkdir()
    # A private mount namespace whose /dev is an empty tmpfs: no /dev/fuse there.
    script = 'mount -t tmpfs none /dev && exec "$@"'
    _fails_with_one_line(
        in_private_mount_namespace(script, *dockerfs_command("-f", "-H", engine.host, str(mp))),
        want="/dev/fuse",
    )
    assert not os.path.ismount(mp)


def test_debug_logs_every_request(engine: Engine, tmp_path: Path) -> None:
    m = start_mount(engine.host, tmp_path / "dbg", "-d")
    try:
        os.listdir(m.path)
    finally:
        stop_mount(m)
    log = m.log_text()
    assert "OPENDIR" in log or "opendir" in log, log[-2000:]


def test_version_and_help() -> None:
    v = subprocess.run(dockerfs_command("--version"), capture_output=True, text=True, check=True)
    assert v.stdout.startswith("dockerfs-fuse ")
    h = subprocess.run(dockerfs_command("--help"), capture_output=True, text=True, check=True)
    for flag in ("--foreground", "--debug", "--host", "-o", "MOUNTPOINT"):
        assert flag in h.stdout
