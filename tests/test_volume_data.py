"""A volume's files (`--view=engine`: volumes/<name>/data) on a real mount over
the private dockerd: what a container that mounts the volume sees, read and
written through a helper container made with the volume mounted and never
started, labelled as ours, reused while in use, removed when idle, at
unmount and at the next mount after a killed daemon; EIO (logged, nothing
pulled) on an engine with no image; EROFS under `-o ro`; EPERM for what only
a tool in a running container could do (rm, rmdir, mv), while modes,
owners and times are uploads (`tar -x`, `cp -r` byte for byte); a walk of
the mount makes no helper; and the same on Podman."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount, start_mount, stop_mount
from support.fs_trees import compare, docker_copied, docker_env, mounted_tree
from support.private_dockerd import IMAGE, PrivateDockerd
from support.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

HELPER_LABEL = "dockerfs.helper"
OF_LABEL = "dockerfs.helper.of"
# Where a helper has the volume (engine/volume_data.py).
MOUNT_AT = "/dockerfs-volume"
# The daemon removes a helper nobody held for this long (engine/helpers.py).
IDLE = 10.0
# A bound on the wait for that removal; it does not time it.
IDLE_BOUND = 60.0
# A bound for a walk of a small engine: it ends a walk that blocks, it does not time one.
WALK_BOUND = 60.0
BIG = bytes(range(256)) * 1200  # larger than one archive read


def helpers_of(engine: Engine, volume: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = engine.api(
        '/containers/json?all=1&filters={"label":["' + HELPER_LABEL + '"]}'
    )
    return [h for h in found if h["Labels"].get(OF_LABEL) == volume]


def in_volume(engine: Engine, volume: str, *argv: str) -> bytes:
    """What a container that mounts the volume at /v says."""
    out = subprocess.run(
        ["docker", "run", "--rm", "-v", f"{volume}:/v", IMAGE, *argv],
        capture_output=True,
        env=docker_env(engine.dockerd),
        timeout=60,
    )
    assert out.returncode == 0, (argv, out.stderr)
    return out.stdout


def volume_tree(engine: Engine, volume: str) -> dict[str, Any]:
    """`docker cp` of the volume from a container that mounts it: every path in it."""
    cid = engine.docker("create", "-v", f"{volume}:/v", IMAGE, "true").strip()
    try:
        tree = docker_copied(engine.dockerd, cid, "/v")
    finally:
        engine.docker("rm", "-f", cid)
    return {path.removeprefix("/v"): v for path, v in tree.items() if path != "/v"}


@pytest.fixture
def volume(engine: Engine, suffix: str, tmp_path: Path) -> Iterator[str]:
    """A volume holding a small tree, put there as `docker cp` puts one."""
    name = f"vd-{suffix}"
    src = tmp_path / "src"
    (src / "sub" / "deep").mkdir(parents=True)
    (src / "empty").mkdir()
    (src / "f").write_text("top\n")
    (src / "sub" / "a").write_text("hello\n")
    (src / "sub" / "deep" / "big").write_bytes(BIG)
    (src / "secret").write_text("s\n")
    (src / "secret").chmod(0o600)
    (src / "link").symlink_to("sub/a")
    # A link that leads out of the volume in a container that mounts it.
    (src / "sub" / "abs").symlink_to("/f")
    # What the kernel lets anyone change: only our own check refuses others.
    (src / "open").mkdir()
    (src / "open" / "w").write_text("anyone\n")
    (src / "open").chmod(0o1777)
    (src / "open" / "w").chmod(0o666)
    engine.docker("volume", "create", name)
    cid = engine.docker("create", "-v", f"{name}:/v", IMAGE, "true").strip()
    try:
        engine.docker("cp", f"{src}/.", f"{cid}:/v/")
        # One that climbs above it: put from "/", as `docker cp` refuses it below.
        escape = tarfile.TarInfo("v/escape")
        escape.type, escape.linkname = tarfile.SYMTYPE, "../ctl"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.addfile(escape)
        engine.dockerd.docker("cp", "-", f"{cid}:/", input=buf.getvalue())
    finally:
        engine.docker("rm", "-f", cid)
    yield name
    # Set up before the test's mounts, torn down after them: their helpers are
    # gone by now, but for one a daemon killed in teardown could not remove.
    left = [h["Id"] for h in helpers_of(engine, name)]
    if left:
        engine.docker("rm", "-f", *left, check=False)
    engine.docker("volume", "rm", "-f", name, check=False)


def data_of(m: Mount, volume: str) -> Path:
    return m.path / "volumes" / volume / "data"


def errno_of(fn: Any) -> int:
    with pytest.raises(OSError) as err:
        fn()
    return err.value.errno or 0


def test_data_is_a_link_into_the_unlisted_live_directory(
    engine: Engine, volume: str, view: Mount
) -> None:
    d = view.path / "volumes" / volume
    names = os.listdir(d)
    assert "data" in names and ".live" not in names
    assert os.readlink(d / "data") == ".live/data"
    # Listing a volume makes no helper: only entering its data/ does.
    assert helpers_of(engine, volume) == []


def test_data_shows_what_a_container_that_mounts_the_volume_sees(
    engine: Engine, volume: str, view: Mount
) -> None:
    data = data_of(view, volume)
    got = mounted_tree(data)
    (helper,) = helpers_of(engine, volume)
    assert helper["Labels"][HELPER_LABEL] == "volume-data"
    assert helper["State"] == "created"  # never started
    (mount,) = helper["Mounts"]
    assert (mount["Type"], mount["Name"], mount["Destination"]) == ("volume", volume, MOUNT_AT)
    # Made from an image the engine has, the same one each time: the smallest.
    images = engine.api("/images/json")
    assert helper["ImageID"] == min((i["Size"], i["Id"]) for i in images)[1]
    compare(got, volume_tree(engine, volume), lambda path: False)
    assert (data / "sub" / "a").read_text() == in_volume(engine, volume, "cat", "/v/sub/a").decode()
    listed = in_volume(engine, volume, "ls", "-A", "/v/sub").decode().split()
    assert sorted(os.listdir(data / "sub")) == sorted(listed)
    assert (data / "link").read_text() == "hello\n"  # a link within the volume is followed
    # Reading it again reuses the helper while it serves.
    assert (data / "sub" / "deep").is_dir()
    assert [h["Id"] for h in helpers_of(engine, volume)] == [helper["Id"]]


def test_files_written_through_data_are_what_a_second_container_reads(
    engine: Engine, volume: str, view: Mount
) -> None:
    data = data_of(view, volume)
    (data / "new").write_bytes(b"written\n")
    with open(data / "f", "a") as f:
        f.write("more\n")
    os.mkdir(data / "made")
    (data / "made" / "big").write_bytes(BIG * 3)
    os.truncate(data / "sub" / "a", 2)
    assert in_volume(engine, volume, "cat", "/v/new", "/v/f", "/v/sub/a") == (
        b"written\ntop\nmore\nhe"
    )
    copied = in_volume(engine, volume, "cat", "/v/made/big")
    assert hashlib.sha256(copied).digest() == hashlib.sha256(BIG * 3).digest()
    # The mount agrees at once, and so does a fresh look through it (a
    # directory's mtime, which each change in it moves, from a listing up to
    # a walk's snapshot old: engine/files.py).
    assert (data / "f").read_text() == "top\nmore\n"
    assert sorted(os.listdir(data / "made")) == ["big"]
    compare(mounted_tree(data), volume_tree(engine, volume), lambda path: False, mtime_slack=2)
    # Every change went through one helper, still never started.
    (helper,) = helpers_of(engine, volume)
    assert helper["State"] == "created"


def test_what_only_a_running_containers_tools_can_do_is_eperm(
    engine: Engine, volume: str, view: Mount
) -> None:
    data = data_of(view, volume)
    assert errno_of(lambda: os.unlink(data / "f")) == errno.EPERM
    assert errno_of(lambda: os.rmdir(data / "empty")) == errno.EPERM
    assert errno_of(lambda: os.rename(data / "f", data / "g")) == errno.EPERM
    assert errno_of(lambda: os.chown(data / "link", 5, 5, follow_symlinks=False)) == errno.EPERM
    assert in_volume(engine, volume, "cat", "/v/f") == b"top\n"


def test_a_directorys_mode_owner_and_time_are_uploads_a_files_eperm(
    engine: Engine, volume: str, view: Mount
) -> None:
    data = data_of(view, volume)
    before = volume_tree(engine, volume)
    with pytest.raises(OSError) as err:
        os.chmod(data / "f", 0o640)  # a file's would be a replacement: EPERM
    assert err.value.errno == errno.EPERM
    os.chown(data / "sub", 12, 34)
    os.utime(data / "sub", (1_500_000_000, 1_500_000_000))
    os.chmod(data / "empty", 0o700)
    after = volume_tree(engine, volume)
    assert after["/f"] == before["/f"]
    assert after["/sub"][3:6] == (12, 34, 1_500_000_000)
    assert after["/empty"][:2] == ("dir", 0o700)
    assert after["/sub/a"] == before["/sub/a"]  # a directory's contents stay
    # The mount says so at once.
    st = os.stat(data / "sub")
    assert (st.st_uid, st.st_gid, int(st.st_mtime)) == (12, 34, 1_500_000_000)


def test_cp_r_and_tar_x_of_a_tree_byte_for_byte(
    engine: Engine, volume: str, view: Mount, tmp_path: Path
) -> None:
    data = data_of(view, volume)
    src = tmp_path / "tree"
    (src / "a" / "b").mkdir(parents=True)
    for i in range(12):
        (src / "a" / f"f{i}").write_bytes(os.urandom(700 * i))
    (src / "a" / "b" / "c").write_text("c\n")
    (src / "a" / "b").chmod(0o750)
    os.utime(src / "a", (1_600_000_000, 1_600_000_000))
    archive = tmp_path / "tree.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(src), "."], check=True)
    done = subprocess.run(["cp", "-r", str(src), str(data / "copied")], capture_output=True)
    assert done.returncode == 0, done.stderr
    os.mkdir(data / "untarred")
    done = subprocess.run(
        ["tar", "-xf", str(archive), "-C", str(data / "untarred")], capture_output=True
    )
    assert done.returncode == 0, done.stderr
    want = mounted_tree(src)
    got = volume_tree(engine, volume)
    for top in ("/copied", "/untarred"):
        there = {p.removeprefix(top): v for p, v in got.items() if p.startswith(top + "/")}
        assert {p: v[7] for p, v in there.items()} == {p: v[7] for p, v in want.items()}
    untarred = {p.removeprefix("/untarred"): v for p, v in got.items()}
    # tar -x sets modes and times, directories' too.
    assert untarred["/a"][5] == 1_600_000_000
    assert untarred["/a/b"][1] == 0o750


def test_mounted_ro_is_erofs(engine: Engine, volume: str, mount_factory: Any) -> None:
    m = mount_factory(engine.host, "--view=engine", "-o", "ro")
    data = data_of(m, volume)
    assert (data / "f").read_text() == "top\n"
    assert errno_of(lambda: (data / "new").write_bytes(b"x")) == errno.EROFS
    assert errno_of(lambda: (data / "f").write_bytes(b"x")) == errno.EROFS
    assert errno_of(lambda: os.mkdir(data / "d")) == errno.EROFS
    assert in_volume(engine, volume, "cat", "/v/f") == b"top\n"


def test_a_walk_of_the_mount_makes_no_helper(engine: Engine, volume: str, view: Mount) -> None:
    found = subprocess.run(
        ["find", str(view.path)], capture_output=True, timeout=WALK_BOUND, check=True
    )
    paths = set(found.stdout.decode().splitlines())
    assert str(view.path / "volumes" / volume / "data") in paths  # the link, not followed
    assert str(view.path / "volumes" / volume / "data" / "f") not in paths
    subprocess.run(
        ["grep", "-r", "-q", "never-there", str(view.path)], timeout=WALK_BOUND, check=False
    )
    assert helpers_of(engine, volume) == []


def test_a_helper_goes_when_idle_and_an_open_file_holds_it(
    engine: Engine, volume: str, view: Mount
) -> None:
    with open(data_of(view, volume) / "new", "w") as f:
        f.write("held\n")
        (held,) = helpers_of(engine, volume)
        # A file being written holds it: past the idle bound (and a sweep), it is still there.
        os.fsync(f.fileno())
        time.sleep(IDLE + IDLE / 2)
        assert [h["Id"] for h in helpers_of(engine, volume)] == [held["Id"]]
    wait_until(lambda: helpers_of(engine, volume) == [], "the idle helper removed", IDLE_BOUND)
    assert held["Id"] not in {c["Id"] for c in engine.containers(all=True)}
    assert in_volume(engine, volume, "cat", "/v/new") == b"held\n"
    # The next read makes a new one.
    assert (data_of(view, volume) / "new").read_text() == "held\n"
    assert len(helpers_of(engine, volume)) == 1


def test_unmount_removes_the_helper(engine: Engine, volume: str, view: Mount) -> None:
    assert (data_of(view, volume) / "f").read_text() == "top\n"
    assert len(helpers_of(engine, volume)) == 1
    view.unmount()
    assert view.wait_exit() == 0
    assert helpers_of(engine, volume) == []
    # The volume is the user's: it stays, as it was.
    assert in_volume(engine, volume, "cat", "/v/f") == b"top\n"


def test_a_killed_daemons_helper_is_removed_at_the_next_mount(
    engine: Engine, volume: str, mount_factory: Any
) -> None:
    first: Mount = mount_factory(engine.host, "--view=engine", name="first")
    assert (data_of(first, volume) / "f").read_text() == "top\n"
    (left,) = helpers_of(engine, volume)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    stop_mount(first)
    assert [h["Id"] for h in helpers_of(engine, volume)] == [left["Id"]]  # left behind
    second: Mount = mount_factory(engine.host, "--view=engine", name="second")
    wait_until(lambda: helpers_of(engine, volume) == [], "the left helper removed")
    assert "removing helper container" in second.log_text()


@pytest.fixture
def bare_engine() -> Iterator[Engine]:
    """A private dockerd of its own with no image at all (none can be pulled)."""
    d = PrivateDockerd()
    try:
        d.start()
        yield Engine(d)
    finally:
        d.cleanup()


def test_no_image_on_the_engine_is_eio_and_nothing_is_pulled(
    bare_engine: Engine, suffix: str, mount_factory: Any
) -> None:
    name = f"vd-bare-{suffix}"
    bare_engine.docker("volume", "create", name)
    m = mount_factory(bare_engine.host, "--view=engine")
    d = m.path / "volumes" / name
    assert (d / "Name").read_text() == name + "\n"
    assert errno_of(lambda: os.listdir(d / "data")) == errno.EIO
    assert errno_of(lambda: (d / "data" / "f").write_bytes(b"x")) == errno.EIO
    wait_until(lambda: "no image on the engine" in m.log_text(), "the reason logged")
    assert bare_engine.api("/images/json") == []
    assert bare_engine.containers(all=True) == []


def test_a_volume_in_use_by_its_helper_is_refused_removal_then_goes(
    engine: Engine, volume: str, view: Mount
) -> None:
    d = view.path / "volumes" / volume
    assert (d / "data" / "f").read_text() == "top\n"
    (helper,) = helpers_of(engine, volume)
    assert helper["Id"] in os.listdir(d / "UsedBy")
    with pytest.raises(OSError) as err, open(d / "ctl", "w") as f:
        f.write("rm\n")
    assert err.value.errno == errno.EBUSY
    assert "in use" in (d / "err").read_text()
    wait_until(lambda: helpers_of(engine, volume) == [], "the idle helper removed", IDLE_BOUND)
    with open(d / "ctl", "w") as f:
        f.write("rm\n")
    assert volume not in engine.docker("volume", "ls", "-q").split()


def test_a_volume_removed_since_listed_is_enoent_and_not_made_again(
    engine: Engine, volume: str, view: Mount
) -> None:
    d = view.path / "volumes" / volume
    assert (d / "Name").read_text() == volume + "\n"
    engine.docker("volume", "rm", volume)
    assert errno_of(lambda: (d / "data" / "f").read_text()) == errno.ENOENT
    # A directory's ENOENT is, to readdir(3), its end (glibc): an empty listing.
    assert os.listdir(d / "data") == []
    assert volume not in engine.docker("volume", "ls", "-q").split()
    assert helpers_of(engine, volume) == []


def test_another_user_is_refused(engine: Engine, volume: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="dfs-shared-"))
    base.chmod(0o755)
    m = start_mount(engine.host, base / "mnt", "--view=engine", "-o", "allow_other")
    try:
        shared = data_of(m, volume) / "open"
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        read = subprocess.run([*nobody, "cat", f"{shared}/w"], capture_output=True, text=True)
        assert read.returncode == 0 and read.stdout == "anyone\n", read
        # The modes (1777, 0666) let anyone: the mount refuses all but its user.
        for script in (f"echo x >> {shared}/w", f"mkdir {shared}/d", f"echo x > {shared}/new"):
            done = subprocess.run([*nobody, "sh", "-c", script], capture_output=True, text=True)
            assert done.returncode != 0, (script, done)
            assert "Permission denied" in done.stderr, (script, done)
        assert in_volume(engine, volume, "ls", "-A", "/v/open") == b"w\n"
        assert in_volume(engine, volume, "cat", "/v/open/w") == b"anyone\n"
    finally:
        stop_mount(m)
        shutil.rmtree(base, ignore_errors=True)


def test_podman(podman_engine: Engine, suffix: str, mount_factory: Any) -> None:
    name = f"vd-podman-{suffix}"
    podman_engine.docker("volume", "create", name)
    try:
        in_volume(podman_engine, name, "sh", "-c", "echo from-podman > /v/f")
        m = mount_factory(podman_engine.host, "--view=engine")
        data = data_of(m, name)
        assert (data / "f").read_text() == "from-podman\n"
        (data / "new").write_bytes(b"through data/\n")
        os.mkdir(data / "d")
        (data / "d" / "g").write_bytes(b"g\n")
        assert in_volume(podman_engine, name, "cat", "/v/new", "/v/d/g") == b"through data/\ng\n"
        assert errno_of(lambda: os.unlink(data / "f")) == errno.EPERM
        (helper,) = helpers_of(podman_engine, name)
        assert helper["State"] in ("created", "configured")  # never started
        m.unmount()
        assert m.wait_exit() == 0
        assert helpers_of(podman_engine, name) == []
    finally:
        podman_engine.docker("volume", "rm", "-f", name, check=False)


def test_links_never_lead_out_of_data(engine: Engine, volume: str, view: Mount) -> None:
    data = data_of(view, volume)
    # An absolute target leads from the volume's top; `..` stops there.
    assert os.readlink(data / "sub" / "abs") == "../f"
    assert (data / "sub" / "abs").read_text() == "top\n"
    assert os.readlink(data / "escape") == "ctl"
    # A write through the link lands in the volume, never on the volume's ctl beside data/.
    (data / "escape").write_text("rm\n")
    assert in_volume(engine, volume, "cat", "/v/ctl") == b"rm\n"
    assert volume in engine.docker("volume", "ls", "-q").split()
    assert (view.path / "volumes" / volume / "err").read_text() == ""
