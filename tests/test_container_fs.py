"""Inside a container, on a real engine and a real mount: root/, top, stats, wait.

root/ is compared with what the engine itself exports (`docker export`, read
with Python's tarfile) and copies (`docker cp`), for a container made here
(`docker import` of a tar built below) that holds nested directories,
symlinks (absolute, relative, dangling, looping, climbing above "/", to
paths the host has with other content), an empty directory, a FIFO,
a character device, unicode and space-containing names, a hard link, odd
owners and modes, a 10,000-entry directory and a 200 MB file; then the same
for a stopped container (`-a`), a file written after a listing, links,
nodes and xattrs refused, vanished paths, a silent engine; Podman's export
too. `top` is compared with `docker top`, `stats` with what the container
does, `wait` with the exit code it returns.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import signal
import stat
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount, interrupt_blocked_reader
from support.fs_trees import compare, docker_env, exported, mounted_tree
from support.private_dockerd import BUSYBOX_APPLETS, PrivateDockerd, busybox_binary
from support.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

IMG = "busybox:latest"
INSIDE = "dfs-inside:test"
BIG = "/data/big.bin"
BIG_MB = 200
MANY = "/data/many"
MANY_COUNT = 10_000
APPLETS = (*BUSYBOX_APPLETS, "rm", "mkdir", "sync")
# The engine bind-mounts these over the image's placeholders when the
# container is set up: its archive endpoint shows the container's files
# (what root/ is), its export the placeholders. Compared with `docker cp`.
NETWORK_FILES = ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf")

# (path, kind, content or link target, mode, uid, gid, mtime)
Row = tuple[str, str, str | bytes, int, int, int, int]
# The image's /etc/os-release, unlike the host's.
CONTAINER_OS = b"CONTAINER OS\n"


def big_block(i: int) -> bytes:
    """The i-th MiB of the big file: every MiB different, quick to make."""
    seed = hashlib.sha256(b"dockerfs %d" % i).digest()
    return (seed * ((1 << 20) // len(seed)))[: 1 << 20]


def inside_rows() -> list[Row]:
    t = 1_700_000_000
    rows: list[Row] = [
        ("bin", "dir", b"", 0o755, 0, 0, t),
        ("tmp", "dir", b"", 0o1777, 0, 0, t),
        ("etc", "dir", b"", 0o755, 0, 0, t),
        ("data", "dir", b"", 0o755, 0, 0, t),
        ("data/nested", "dir", b"", 0o750, 0, 0, t),
        ("data/nested/a", "dir", b"", 0o755, 0, 0, t),
        ("data/nested/a/b", "dir", b"", 0o755, 0, 0, t),
        ("data/nested/a/b/c", "dir", b"", 0o755, 0, 0, t),
        ("data/nested/a/b/c/deep.txt", "file", b"deep down\n" * 100, 0o644, 0, 0, t + 1),
        ("data/links", "dir", b"", 0o755, 0, 0, t),
        ("data/links/absolute", "link", "/data/nested/a", 0o777, 0, 0, t),
        ("data/links/relative", "link", "../nested/a/b", 0o777, 0, 0, t),
        ("data/links/dangling", "link", "/no/such/target", 0o777, 0, 0, t),
        ("data/links/loop1", "link", "loop2", 0o777, 0, 0, t),
        ("data/links/loop2", "link", "loop1", 0o777, 0, 0, t),
        ("data/links/self", "link", "self", 0o777, 0, 0, t),
        ("data/links/up", "link", "../../../..", 0o777, 0, 0, t),
        # Links that, followed from the host's "/", would read the host's files.
        ("etc/os-release", "file", CONTAINER_OS, 0o644, 0, 0, t),
        ("data/osr", "link", "/etc/os-release", 0o777, 0, 0, t),
        ("data/out", "dir", b"", 0o755, 0, 0, t),
        ("data/out/osr", "link", "/etc/os-release", 0o777, 0, 0, t),
        ("data/out/climb", "link", "../../../../etc/os-release", 0o777, 0, 0, t),
        ("data/out/above", "link", "/../etc/os-release", 0o777, 0, 0, t),
        ("data/out/mine", "link", "/data/nested/a/b/c/deep.txt", 0o777, 0, 0, t),
        ("data/out/etc", "link", "/etc", 0o777, 0, 0, t),
        ("data/empty", "dir", b"", 0o700, 1000, 1000, t),
        ("data/fifo", "fifo", b"", 0o644, 0, 0, t),
        ("data/null", "char", b"", 0o666, 0, 0, t),
        ("data/ünïcödé ☃ name.txt", "file", "snowman ☃\n".encode(), 0o644, 0, 0, t),
        ("data/with space", "dir", b"", 0o755, 0, 0, t),
        ("data/with space/file name.txt", "file", b"spaced out\n", 0o600, 0, 0, t),
        ("data/hard", "hard", "data/nested/a/b/c/deep.txt", 0o644, 0, 0, t + 1),
        ("data/setuid", "file", b"#!/bin/sh\n", 0o4755, 0, 0, t),
        ("data/owned", "file", b"mine\n", 0o640, 1234, 5678, 1_000_000_000),
        ("data/many", "dir", b"", 0o755, 0, 0, t),
    ]
    rows += [
        (f"data/many/f{i:05}", "file", b"%d\n" % i * (i % 7), 0o644, 0, 0, t)
        for i in range(MANY_COUNT)
    ]
    return rows


def write_inside_tar(path: Path) -> None:
    """The image's root filesystem as a tar (tarfile makes FIFOs, devices, links)."""
    kinds = {
        "dir": tarfile.DIRTYPE,
        "file": tarfile.REGTYPE,
        "link": tarfile.SYMTYPE,
        "hard": tarfile.LNKTYPE,
        "fifo": tarfile.FIFOTYPE,
        "char": tarfile.CHRTYPE,
    }
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, mode, uid, gid, mtime in inside_rows():
            info = tarfile.TarInfo(name)
            info.type = kinds[kind]
            info.mode, info.uid, info.gid, info.mtime = mode, uid, gid, mtime
            body = None
            if kind in ("link", "hard"):
                info.linkname = str(data)
            elif kind == "char":
                info.devmajor, info.devminor = 1, 3
            elif kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                body = io.BytesIO(data)
            tar.addfile(info, body)
        busybox = busybox_binary().read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(busybox), 0o755
        tar.addfile(info, io.BytesIO(busybox))
        for applet in APPLETS:
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
        info = tarfile.TarInfo(BIG.lstrip("/"))
        info.size, info.mode = BIG_MB << 20, 0o644
        tar.addfile(info, BigFile())


class BigFile(io.RawIOBase):
    """The big file's bytes, made as tarfile reads them."""

    def __init__(self) -> None:
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.pos >= BIG_MB << 20:
            return 0
        block = big_block(self.pos >> 20)[self.pos & ((1 << 20) - 1) :]
        n = min(len(b), len(block))
        b[:n] = block[:n]
        self.pos += n
        return n


@pytest.fixture(scope="session")
def inside_image(dockerd_session: PrivateDockerd, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("inside") / "rootfs.tar"
    write_inside_tar(path)
    dockerd_session.docker("import", str(path), INSIDE, timeout=600)
    path.unlink()
    return INSIDE


@pytest.fixture
def inside(engine: Engine, inside_image: str) -> str:
    """A running container of the image above (removed after the test)."""
    return engine.run(inside_image, "sleep", "1d")


# -- what the engine says ------------------------------------------------------------------


def copied(d: PrivateDockerd | Any, cid: str, path: str) -> bytes:
    """`docker cp CID:PATH -`: a tar of that one file; its content."""
    out = subprocess.run(
        ["docker", "cp", f"{cid}:{path}", "-"], capture_output=True, env=docker_env(d), timeout=300
    )
    assert out.returncode == 0, out.stderr
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        (member,) = tar.getmembers()
        f = tar.extractfile(member)
        assert f is not None
        return f.read()


def docker_skip(path: str) -> bool:
    return path in NETWORK_FILES


def root_requests(m: Mount) -> dict[str, int]:
    (engine,) = m.stats()["engines"].values()
    return dict(engine["root"]["requests"])


def test_root_shows_what_docker_export_shows(engine: Engine, inside: str, mounted: Mount) -> None:
    root = mounted.path / inside / "root"
    before = root_requests(mounted)
    got = mounted_tree(root)
    walked = root_requests(mounted)
    want = exported(engine.dockerd, inside)
    compare(got, want, docker_skip)
    assert len([p for p in got if p.startswith(MANY + "/")]) == MANY_COUNT
    # Every kind is there as itself, links never followed; an absolute target
    # relative to the link's directory, back up to root/.
    assert got["/data/links/absolute"][6] == "../../data/nested/a"
    assert got["/data/links/dangling"][6] == "../../no/such/target"
    assert got["/data/links/relative"][6] == "../nested/a/b"
    assert got["/data/links/loop1"][6] == "loop2"
    assert got["/bin/sh"][6] == "busybox"
    assert got["/data/fifo"][0] == "fifo" and got["/data/null"][0] == "char"
    assert got["/data/hard"][7] == got["/data/nested/a/b/c/deep.txt"][7]
    assert got["/data/owned"][1:5] == (0o640, 5, 1234, 5678)
    assert got["/data/setuid"][1] == 0o4755
    assert got["/data/empty"][:5] == ("dir", 0o700, 0, 1000, 1000)
    assert os.stat(root / "data" / "null", follow_symlinks=False).st_rdev == os.makedev(1, 3)
    # The container's own network files: what it reads, as `docker cp` copies them.
    for path in NETWORK_FILES:
        assert (root / path.lstrip("/")).read_bytes() == copied(engine.dockerd, inside, path)
    # A walk asks for the subtree where it starts, not for each directory it opens.
    dirs = sum(1 for v in got.values() if v[0] == "dir")
    listings = walked.get("listing", 0) - before.get("listing", 0)
    assert 1 <= listings < dirs, (listings, dirs)


def test_contents_are_what_docker_cp_copies(engine: Engine, inside: str, mounted: Mount) -> None:
    root = mounted.path / inside / "root"
    for path in (
        "/data/nested/a/b/c/deep.txt",
        "/data/ünïcödé ☃ name.txt",
        "/data/with space/file name.txt",
        "/data/hard",
        "/data/owned",
        "/data/many/f09999",
        "/bin/busybox",
    ):
        assert (root / path.lstrip("/")).read_bytes() == copied(engine.dockerd, inside, path), path
    # Through a symlink the kernel follows, within the mount.
    assert (root / "data/links/relative/c/deep.txt").read_bytes() == b"deep down\n" * 100
    assert (root / "data/links/absolute/b/c/deep.txt").read_bytes() == b"deep down\n" * 100
    # The first bytes of a large file come before the rest (and are the right ones).
    head = subprocess.run(
        ["head", "-c", "100", str(root / BIG.lstrip("/"))], capture_output=True, timeout=60
    )
    assert head.returncode == 0 and head.stdout == big_block(0)[:100]


def rss_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key}")


def test_a_large_file_streams_byte_for_byte_in_bounded_memory(
    engine: Engine, inside: str, mounted: Mount
) -> None:
    path = mounted.path / inside / "root" / BIG.lstrip("/")
    assert path.stat().st_size == BIG_MB << 20
    pid = mounted.proc.pid
    rss_before = rss_kb(pid, "VmRSS")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    growth_mb = (rss_kb(pid, "VmHWM") - rss_before) / 1024
    print(f"\n{BIG_MB} MB read; daemon peak RSS grew {growth_mb:.1f} MB")
    expected = hashlib.sha256(b"".join(big_block(i) for i in range(BIG_MB))).hexdigest()
    assert h.hexdigest() == expected
    cp = subprocess.Popen(
        ["docker", "cp", f"{inside}:{BIG}", "-"],
        stdout=subprocess.PIPE,
        env=docker_env(engine.dockerd),
    )
    assert cp.stdout is not None
    with tarfile.open(fileobj=cp.stdout, mode="r|") as tar:
        for member in tar:
            copied = tar.extractfile(member)
            assert copied is not None
            h2 = hashlib.sha256()
            while chunk := copied.read(1 << 20):
                h2.update(chunk)
            assert h2.hexdigest() == expected
    assert cp.wait(120) == 0
    assert growth_mb < 64, growth_mb


def test_a_stopped_container_with_all(
    engine: Engine, inside_image: str, mount_factory: Any
) -> None:
    cid = engine.run(inside_image, "sh", "-c", "echo bye > /tmp/last-words; rm /data/owned")
    wait_until(
        lambda: engine.api(f"/containers/{cid}/json")["State"]["Status"] == "exited",
        "the container exited",
    )
    m = mount_factory(engine.host, "-a")
    got = mounted_tree(m.path / cid / "root")
    compare(got, exported(engine.dockerd, cid), docker_skip)
    assert got["/tmp/last-words"][0] == "file" and "/data/owned" not in got
    assert (m.path / cid / "root/tmp/last-words").read_bytes() == b"bye\n"
    assert (m.path / cid / "top").read_bytes() == b""  # not running: no processes
    assert (m.path / cid / "stats").read_bytes() == b""  # and no sample


def test_a_directory_is_as_fresh_as_its_last_open(
    engine: Engine, inside: str, mounted: Mount
) -> None:
    tmp = mounted.path / inside / "root" / "tmp"
    assert os.listdir(tmp) == []
    engine.docker("exec", inside, "sh", "-c", "echo new > /tmp/written-later")
    assert os.listdir(tmp) == ["written-later"]  # the very next open
    assert (tmp / "written-later").read_bytes() == b"new\n"
    engine.docker("exec", inside, "rm", "/tmp/written-later")
    assert os.listdir(tmp) == []
    with pytest.raises(FileNotFoundError):
        (tmp / "written-later").read_bytes()
    # A file that grew since the kernel learnt its size is read whole.
    engine.docker("exec", inside, "sh", "-c", "head -c 2000000 /data/big.bin > /tmp/grows")
    assert (tmp / "grows").stat().st_size == 2_000_000
    engine.docker("exec", inside, "sh", "-c", "head -c 1000000 /data/big.bin >> /tmp/grows")
    assert len((tmp / "grows").read_bytes()) == 3_000_000
    # A directory opened while the container changes it lists what it held when
    # opened, each name once, in pages at stable offsets.
    many = mounted.path / inside / "root" / MANY.lstrip("/")
    with os.scandir(many) as it:
        first = [next(it).name for _ in range(100)]
        engine.docker("exec", inside, "sh", "-c", "rm /data/many/f099*; echo > /data/many/zz")
        rest = [e.name for e in it]
    assert sorted(first + rest) == [f"f{i:05}" for i in range(MANY_COUNT)]
    now = os.listdir(many)
    assert "zz" in now and "f09999" not in now and len(now) == MANY_COUNT - 100 + 1


def test_a_walk_that_pauses_goes_on_from_a_snapshot_not_a_request_per_entry(
    inside: str, mounted: Mount
) -> None:
    """A walk whose snapshot expired mid-directory (a pause longer than the
    1 s a snapshot waits: a slow consumer, a starved machine) costs a few
    requests more, not one per remaining entry (minutes for 10,000)."""
    many = mounted.path / inside / "root" / MANY.lstrip("/")
    with os.scandir(many) as it:
        entries = sorted(it, key=lambda e: e.name)
    before = root_requests(mounted)
    for i, e in enumerate(entries[:600]):
        if i == 100:
            time.sleep(2)  # the pause itself: longer than a snapshot's 1 s
        st = e.stat(follow_symlinks=False)
        with open(e.path, "rb") as f:
            assert len(f.read()) == st.st_size == len(b"%d\n" % i) * (i % 7)
    after = root_requests(mounted)
    added = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
    # After the pause: a probe or two, then that directory again (the kernel
    # also re-checks the directories above); before the change, 500 probes.
    assert sum(added.values()) <= 50 and added.get("listing", 0) >= 1, added


def test_tar_sees_no_directory_change(inside: str, mounted: Mount) -> None:
    """Re-reading each directory at each open must not look like a change to
    the tools that check: GNU tar compares a directory's ctime before and
    after reading it (and exits 1 with "file changed as we read it")."""
    data = mounted.path / inside / "root" / "data"
    for _ in range(2):  # the second walk lists every directory anew
        p = subprocess.run(
            ["tar", "-c", "--exclude=./many", "-C", str(data), "."],
            capture_output=True,
            timeout=120,
        )
        assert (p.returncode, p.stderr) == (0, b"")
        with tarfile.open(fileobj=io.BytesIO(p.stdout)) as tar:
            assert tar.getmember("./nested/a/b/c/deep.txt").size == 1000
            # A link as readlink shows it (docs/root.md).
            assert tar.getmember("./links/absolute").linkname == "../../data/nested/a"
            assert tar.getmember("./osr").linkname == "../etc/os-release"


def test_symlinks_lead_only_into_the_container(inside: str, mounted: Mount, tmp_path: Path) -> None:
    """The kernel resolves an absolute target from the reader's root: shown
    verbatim, /etc/os-release would be the host's. Docker resolves them in
    the container (`docker cp`), and so must every tool that follows them."""
    host = Path("/etc/os-release")
    assert not host.exists() or host.read_bytes() != CONTAINER_OS
    root = mounted.path / inside / "root"
    osr = root / "data/osr"
    assert os.readlink(osr) == "../etc/os-release"
    assert os.lstat(osr).st_size == len("../etc/os-release")
    assert subprocess.run(["cat", str(osr)], capture_output=True).stdout == CONTAINER_OS
    out = root / "data/out"
    # `..` beyond "/" stays at "/", as in the container.
    assert os.readlink(out / "climb") == os.readlink(out / "above") == "../../etc/os-release"
    for name in ("osr", "climb", "above", "etc/os-release"):
        assert (out / name).read_bytes() == CONTAINER_OS, name
    assert (out / "mine").read_bytes() == b"deep down\n" * 100  # only the container has it
    # A relative link to "/.." is the container's "/", not the directory holding root/.
    up = root / "data/links/up"
    assert os.readlink(up) == "../.."
    assert sorted(os.listdir(up)) == sorted(os.listdir(root))
    assert (up / "etc/os-release").read_bytes() == CONTAINER_OS
    # The tools that follow links stay in the container too.
    files = [str(out / name) for name in ("osr", "climb", "above", "mine")]
    cp = subprocess.run(["cp", "-L", *files, str(tmp_path)], capture_output=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    for name in ("osr", "climb", "above"):
        assert (tmp_path / name).read_bytes() == CONTAINER_OS, name
    assert (tmp_path / "mine").read_bytes() == b"deep down\n" * 100
    absolute, copy = root / "data/links/absolute", tmp_path / "absolute"
    cp = subprocess.run(["cp", "-rL", str(absolute), str(copy)], capture_output=True, timeout=120)
    assert cp.returncode == 0, cp.stderr
    assert (copy / "b/c/deep.txt").read_bytes() == b"deep down\n" * 100

    def grep(pattern: str) -> set[str]:
        p = subprocess.run(
            ["grep", "-R", "-l", "-s", pattern, str(out)], capture_output=True, timeout=120
        )
        return {str(Path(line).relative_to(out)) for line in p.stdout.decode().splitlines()}

    assert grep("CONTAINER OS") == {"osr", "climb", "above", "etc/os-release"}
    # The container's /etc/mtab leads to its /proc/mounts (empty in its
    # archive), never to the host's, which lists this very mount.
    assert os.readlink(out / "etc/mtab") == "../proc/mounts"
    assert grep("fuse") == set()


def test_a_link_that_loops_is_a_link(inside: str, mounted: Mount) -> None:
    """Docker refuses to stat a link that loops (it resolves the one asked
    for): lstat of it still says what it is, and following it is ELOOP."""
    links = mounted.path / inside / "root/data/links"
    for name, target in (("self", "self"), ("loop1", "loop2")):  # looked up, never listed
        st = os.lstat(links / name)
        assert stat.S_ISLNK(st.st_mode) and st.st_size == len(target), name
        assert os.readlink(links / name) == target
        with pytest.raises(OSError) as err:
            (links / name).read_bytes()
        assert err.value.errno == errno.ELOOP
    assert {"self", "loop1", "loop2", "up"} <= set(os.listdir(links))


def test_what_root_cannot_make_is_refused(inside: str, mounted: Mount) -> None:
    # Writes themselves: test_root_writes.py. Hard links, special files and
    # extended attributes are not made through root/.
    root = mounted.path / inside / "root"
    f = root / "data" / "owned"
    d = root / "data" / "nested"
    attempts: dict[str, Callable[[], object]] = {
        "link": lambda: os.link(f, d / "hard"),
        "mkfifo": lambda: os.mkfifo(d / "fifo"),
    }
    for what, attempt in attempts.items():
        with pytest.raises(OSError) as err:
            attempt()
        assert err.value.errno == errno.EROFS, (what, err.value)
    # No extended attributes to set: ENOTSUP, which `cp -a` passes over.
    with pytest.raises(OSError) as err:
        os.setxattr(f, "user.k", b"v")
    assert err.value.errno == errno.ENOTSUP
    assert f.read_bytes() == b"mine\n"


def test_vanished_paths_are_enoent_and_a_silent_engine_eio(
    engine: Engine, inside: str, mounted: Mount
) -> None:
    root = mounted.path / inside / "root"
    assert "deep.txt" in os.listdir(root / "data/nested/a/b/c")
    engine.docker("exec", inside, "rm", "-r", "/data/nested/a/b/c")
    # Opened again, a directory is asked for again: gone. Where the kernel
    # still knows it (kernel caching: no OPENDIR) its listing fails with
    # ENOENT, which glibc reads as the end of a removed directory: empty.
    with contextlib.suppress(FileNotFoundError):
        assert os.listdir(root / "data/nested/a/b/c") == []
    # What it held is gone with it, though the listing before had it (newer news wins).
    with pytest.raises(FileNotFoundError):
        (root / "data/nested/a/b/c/deep.txt").read_bytes()
    assert os.listdir(root / "data/nested/a/b") == []
    assert not (root / "data/nested/a/b/c").exists()
    # An engine that does not answer: EIO once the usual deadline has passed.
    reader = (root / "data/owned").open("rb")
    dockerd = engine.dockerd.proc
    assert dockerd is not None
    dockerd.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(OSError) as err:
            os.listdir(root / "data")
        assert err.value.errno == errno.EIO
        with pytest.raises(OSError) as err:
            os.stat(root / "data/never-looked-up")
        assert err.value.errno == errno.EIO
        assert reader.read() == b"mine\n"  # what was opened is served without it
    finally:
        dockerd.send_signal(signal.SIGCONT)
        reader.close()
    assert (root / "data/owned").read_bytes() == b"mine\n"


# -- top, stats, wait -------------------------------------------------------------------------


def test_top_is_docker_top(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sh", "-c", "sleep 1d & sleep 2d & wait")

    def same() -> bool:
        printed = engine.docker("top", cid)
        return (mounted.path / cid / "top").read_text() == printed and printed.count("\n") == 4

    wait_until(same, "top as docker top prints it")


def stats_of(path: Path) -> dict[str, int]:
    lines = path.read_text().splitlines()
    pairs = [line.split(" ") for line in lines]
    assert all(len(p) == 2 and p[1].isdigit() for p in pairs), lines
    return {name: int(value) for name, value in pairs}


STATS_NAMES = [
    "cpu_usage_ns",
    "memory_usage_bytes",
    "memory_limit_bytes",
    "pids",
    "network_rx_bytes",
    "network_tx_bytes",
    "block_read_bytes",
    "block_write_bytes",
]


def test_stats_are_numbers_and_memory_grows(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    path = mounted.path / cid / "stats"
    first = stats_of(path)
    assert list(first) == STATS_NAMES
    assert first["pids"] >= 1 and first["memory_limit_bytes"] > 0 and first["cpu_usage_ns"] > 0
    # One API call per open, however small the reads.
    (engine_stats,) = mounted.stats()["engines"].values()
    calls = engine_stats["requests"].get("containers/stats", 0)
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while chunk := os.read(fd, 7):
            chunks.append(chunk)
    finally:
        os.close(fd)
    assert b"".join(chunks).startswith(b"cpu_usage_ns ")
    (engine_stats,) = mounted.stats()["engines"].values()
    assert engine_stats["requests"]["containers/stats"] == calls + 1
    # 40 MB into the container's shared memory (tmpfs: charged to its cgroup).
    engine.docker("exec", cid, "sh", "-c", "head -c 40000000 /dev/zero > /dev/shm/fill")
    wait_until(
        lambda: stats_of(path)["memory_usage_bytes"] >= first["memory_usage_bytes"] + 30_000_000,
        "memory usage grows by the 40 MB written",
    )


def test_wait_answers_the_exit_code(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sh", "-c", "sleep 1; exit 3")
    wait = mounted.path / cid / "wait"
    res = subprocess.run(["cat", str(wait)], capture_output=True, timeout=60)
    assert res.returncode == 0 and res.stdout == b"3\n"
    assert engine.api(f"/containers/{cid}/json")["State"]["Status"] == "exited"
    # Stopped already: at once, again.
    res = subprocess.run(["cat", str(wait)], capture_output=True, timeout=60)
    assert res.stdout == b"3\n"


def test_a_signalled_wait_reader_gets_eintr(engine: Engine, mounted: Mount) -> None:
    cid = engine.run(IMG, "sleep", "1d")
    proc = subprocess.Popen(["cat", str(mounted.path / cid / "wait")], stdout=subprocess.PIPE)
    try:
        wait_until(lambda: mounted.stats()["logs"]["waiting_reads"] == 1, "cat's read parked")
        interrupt_blocked_reader(proc)
    finally:
        proc.kill()
        proc.wait()
    wait_until(
        lambda: mounted.stats()["exit_waits"] == 0 and mounted.stats()["logs"]["followers"] == 0,
        "the wait request cancelled and the reader's slot given back",
    )
    state = engine.api(f"/containers/{cid}/json")["State"]
    assert state["Running"], "a reader's signal must not touch the container"
    assert (mounted.path / cid / "Image").read_text() == f"{IMG}\n"


# -- Podman --------------------------------------------------------------------------------

# Podman's archive of "/" leaves out what it mounts at run time (/dev, /proc,
# /sys) and shows its own files there (/run/.containerenv and the network files).
# Its archive rounds mtimes to the nearest second where its export truncates them.
PODMAN_MOUNTED = ("/dev", "/proc", "/sys", "/run/.containerenv", *NETWORK_FILES)


def podman_skip(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PODMAN_MOUNTED)


def test_podman_root_shows_what_its_export_shows(podman_engine: Engine, mount_factory: Any) -> None:
    cid = podman_engine.run(IMG, "sh", "-c", "mkdir -p /srv/x; echo podman > /srv/x/y; sleep 1d")
    m = mount_factory(podman_engine.host)
    root = m.path / cid / "root"
    wait_until(lambda: (root / "srv/x/y").exists(), "the container's own write")
    compare(mounted_tree(root), exported(podman_engine.dockerd, cid), podman_skip, mtime_slack=1)
    assert (root / "srv/x/y").read_bytes() == b"podman\n"
    assert (root / "bin/busybox").read_bytes() == busybox_binary().read_bytes()
