"""Writing a container's files through root/, on a real engine and a real mount.

Each change made through the mount is checked inside the container
(`docker exec cat`, `docker cp`) and through the mount again at once: `echo
>`, `echo >>`, `cp` of a file, truncation, `sed -i` (a temporary file and a
rename), `mv`, `rm`, `mkdir`, `rmdir`, `ln -s`, `cp -r` and `tar -x` of a
tree byte for byte; a stopped container (uploads in place; what needs a
tool, EPERM), an image without the tools, a `--read-only` container
(EROFS at close, the staged file kept), `-o ro` (EROFS), another user
(EACCES with allow_other); `vim` saves; Podman; and links planted in the
image that point out of the container never lead a write onto the host.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import io
import os
import shutil
import socket
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount, require, start_mount
from support.fs_trees import docker_env
from support.mount_process import stop_mount
from support.private_dockerd import PrivateDockerd, busybox_binary
from support.private_engines import TLSDockerd
from support.waiting import wait_until

from dockerfs_fuse.fuse import kernel_cache

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

TOOLS = "dfs-tools:test"
NO_TOOLS = "busybox:latest"  # sh, cat, ls... and no mv, rm or rmdir links
NO_SHELL = "dfs-noshell:test"
APPLETS = (
    "sh", "sleep", "cat", "ls", "mv", "rm", "rmdir", "mkdir", "chmod", "chown",
    "touch", "sha256sum", "stat", "wc", "readlink", "find", "sort", "sed",
)  # fmt: skip


def tools_tar(path: Path, marker: Path) -> None:
    """A root filesystem with busybox's tools, and links that point, read on
    the host, at `marker`'s directory or a file beside it."""
    with tarfile.open(path, "w") as tar:

        def add(
            name: str, kind: bytes, data: bytes = b"", link: str = "", mode: int = 0o755
        ) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("bin", "tmp", "etc", "data", "data/sub"):
            add(d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        add("etc/hosts.orig", tarfile.REGTYPE, b"127.0.0.1 localhost\n", mode=0o644)
        add("bin/busybox", tarfile.REGTYPE, busybox_binary().read_bytes())
        for applet in APPLETS:
            add(f"bin/{applet}", tarfile.SYMTYPE, link="busybox")
        # Absolute links to the host's marker: the container's own path of that name.
        add("etc/app.conf", tarfile.SYMTYPE, link=str(marker))
        add("data/abs", tarfile.SYMTYPE, link=str(marker.parent))
        # Relative links climbing far above "/": "/" in the container.
        add("data/up", tarfile.SYMTYPE, link="../../../../.." + str(marker.parent))
        add("data/sub/climb", tarfile.SYMTYPE, link="../../../../../../../tmp")


@pytest.fixture(scope="session")
def marker_dir() -> Iterator[Path]:
    """A directory on the host that no write through the mount may touch."""
    d = Path(tempfile.mkdtemp(prefix="dfs-host-marker-"))
    (d / "crontab").write_bytes(b"host file\n")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def tools_image(
    dockerd_session: PrivateDockerd, marker_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> str:
    path = tmp_path_factory.mktemp("tools") / "rootfs.tar"
    tools_tar(path, marker_dir / "crontab")
    dockerd_session.docker("import", str(path), TOOLS, timeout=300)
    return TOOLS


@pytest.fixture
def box(engine: Engine, tools_image: str) -> str:
    return engine.run(tools_image, "sleep", "1d")


def inside(engine: Engine, cid: str, *argv: str) -> bytes:
    out = subprocess.run(
        ["docker", "exec", cid, *argv],
        capture_output=True,
        env=docker_env(engine.dockerd),
        timeout=60,
    )
    assert out.returncode == 0, (argv, out.stderr)
    return out.stdout


def copied(engine: Engine, cid: str, path: str) -> dict[str, bytes]:
    """`docker cp CID:PATH -`: every regular file of that tree, by its path in the tar."""
    out = subprocess.run(
        ["docker", "cp", f"{cid}:{path}", "-"],
        capture_output=True,
        env=docker_env(engine.dockerd),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    files = {}
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member) if member.isfile() else None
            if f is not None:
                files[member.name] = f.read()
    return files


def archive_status(engine: Engine, cid: str, path: str) -> int:
    """The status of `HEAD /containers/{id}/archive?path=`, asked without a child process."""
    conn = http.client.HTTPConnection("docker", timeout=30)
    conn.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.sock.connect(str(engine.dockerd.socket))
    try:
        conn.request("HEAD", f"/containers/{cid}/archive?path={path}")
        return conn.getresponse().status
    finally:
        conn.close()


def sh(script: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120, **kw)


def errno_of(fn: Any) -> int:
    with pytest.raises(OSError) as err:
        fn()
    return err.value.errno or 0


def test_echo_create_append_truncate_seen_inside_at_once(
    engine: Engine, box: str, mounted: Mount
) -> None:
    root = mounted.path / box / "root"
    f = root / "tmp" / "f"
    assert sh(f"echo hello > {f}").returncode == 0
    assert inside(engine, box, "cat", "/tmp/f") == b"hello\n"
    assert f.read_bytes() == b"hello\n"
    assert sh(f"echo more >> {f}").returncode == 0
    assert inside(engine, box, "cat", "/tmp/f") == b"hello\nmore\n"
    assert f.read_bytes() == b"hello\nmore\n" and f.stat().st_size == 11
    # An existing file of the image, appended to: the old bytes kept.
    hosts = root / "etc" / "hosts.orig"
    assert sh(f"echo '10.0.0.1 db' >> {hosts}").returncode == 0
    want = b"127.0.0.1 localhost\n10.0.0.1 db\n"
    assert inside(engine, box, "cat", "/etc/hosts.orig") == want == hosts.read_bytes()
    # Replaced (open with O_TRUNC), truncated by path, and through a descriptor.
    assert sh(f"echo new > {f}").returncode == 0
    assert inside(engine, box, "cat", "/tmp/f") == b"new\n" == f.read_bytes()
    os.truncate(f, 2)
    assert inside(engine, box, "cat", "/tmp/f") == b"ne" == f.read_bytes()
    with open(f, "r+b") as out:
        out.truncate(1)
        out.seek(0, os.SEEK_END)
        out.write(b"X")
        out.flush()
        os.fsync(out.fileno())  # returns once the container has it
        assert inside(engine, box, "cat", "/tmp/f") == b"nX"
    # Ownership and mode of the image's file kept; a new one is the writer's.
    assert inside(engine, box, "stat", "-c", "%a %u", "/etc/hosts.orig") == b"644 0\n"
    # No temporary upload left behind.
    assert b".dockerfs-" not in inside(engine, box, "ls", "-a", "/tmp", "/etc")
    # A change made inside the container shows on the next open, as before.
    inside(engine, box, "sh", "-c", "echo 'changed inside, longer' > /tmp/f")
    assert f.read_bytes() == b"changed inside, longer\n"


def test_cp_of_a_file_byte_for_byte(
    engine: Engine, box: str, mounted: Mount, tmp_path: Path
) -> None:
    src = tmp_path / "blob"
    src.write_bytes(os.urandom(3 << 20) + b"tail")
    root = mounted.path / box / "root"
    assert sh(f"cp {src} {root}/tmp/blob").returncode == 0
    assert copied(engine, box, "/tmp/blob")["blob"] == src.read_bytes()
    digest = hashlib.sha256(src.read_bytes()).hexdigest().encode()
    assert inside(engine, box, "sha256sum", "/tmp/blob").split()[0] == digest
    assert (root / "tmp" / "blob").read_bytes() == src.read_bytes()


def test_sed_mv_rm_mkdir_rmdir_symlink(engine: Engine, box: str, mounted: Mount) -> None:
    root = mounted.path / box / "root"
    f = root / "tmp" / "conf"
    f.write_bytes(b"color=red\nsize=1\n")
    done = sh(f"sed -i 's/red/blue/' {f}")
    assert done.returncode == 0, done.stderr
    assert inside(engine, box, "cat", "/tmp/conf") == b"color=blue\nsize=1\n" == f.read_bytes()
    os.mkdir(root / "tmp" / "d", 0o750)
    assert inside(engine, box, "stat", "-c", "%F %a", "/tmp/d") == b"directory 750\n"
    os.rename(f, root / "tmp" / "d" / "moved")
    assert inside(engine, box, "cat", "/tmp/d/moved") == b"color=blue\nsize=1\n"
    assert not f.exists() and sorted(os.listdir(root / "tmp" / "d")) == ["moved"]
    os.symlink("moved", root / "tmp" / "d" / "ln")
    assert inside(engine, box, "readlink", "/tmp/d/ln") == b"moved\n"
    assert errno_of(lambda: os.rmdir(root / "tmp" / "d")) == errno.ENOTEMPTY
    os.unlink(root / "tmp" / "d" / "ln")
    os.unlink(root / "tmp" / "d" / "moved")
    os.rmdir(root / "tmp" / "d")
    assert inside(engine, box, "ls", "-a", "/tmp") == b".\n..\n"
    assert os.listdir(root / "tmp") == []
    os.chmod(root / "etc" / "hosts.orig", 0o600)
    assert inside(engine, box, "stat", "-c", "%a", "/etc/hosts.orig") == b"600\n"


def make_tree(top: Path) -> None:
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "one.txt").write_bytes(b"one\n")
    (top / "a" / "b" / "two.bin").write_bytes(os.urandom(70_000))
    (top / "a" / "b" / "empty").write_bytes(b"")
    (top / "top.txt").write_bytes(b"top\n" * 1000)
    (top / "a" / "script").write_bytes(b"#!/bin/sh\n")
    (top / "a" / "script").chmod(0o750)
    os.utime(top / "a" / "script", (1_500_000_000, 1_500_000_000))
    (top / "a" / "link").symlink_to("b/two.bin")


def test_cp_r_and_tar_x_of_a_tree(engine: Engine, box: str, mounted: Mount, tmp_path: Path) -> None:
    src = tmp_path / "tree"
    make_tree(src)
    files = [p for p in src.rglob("*") if p.is_file() and not p.is_symlink()]
    want = {str(p.relative_to(src.parent)): p.read_bytes() for p in files}
    root = mounted.path / box / "root"
    done = sh(f"cp -r {src} {root}/data/")
    assert done.returncode == 0, done.stderr
    assert copied(engine, box, "/data/tree") == want
    os.mkdir(root / "data" / "x")
    done = sh(f"tar -c -C {tmp_path} tree | tar -x -C {root}/data/x")
    assert done.returncode == 0, done.stderr
    assert copied(engine, box, "/data/x/tree") == want
    listed = inside(engine, box, "find", "/data/x").decode().split()
    assert sorted(listed) == sorted(
        ["/data/x", "/data/x/tree", "/data/x/tree/a", "/data/x/tree/a/b", "/data/x/tree/a/link"]
        + [f"/data/x/{name}" for name in want]
    )
    # cp -a keeps modes, times and links; a directory moved whole.
    done = sh(f"cp -a {src} {root}/data/kept && mv {root}/data/kept {root}/data/moved")
    assert done.returncode == 0, done.stderr
    assert copied(engine, box, "/data/moved") == {
        name.replace("tree/", "moved/", 1): data for name, data in want.items()
    }
    st = inside(engine, box, "stat", "-c", "%a %Y", "/data/moved/a/script")
    assert st == b"750 1500000000\n"
    assert inside(engine, box, "readlink", "/data/moved/a/link") == b"b/two.bin\n"


def test_a_stopped_container(engine: Engine, box: str, mount_factory: Any) -> None:
    m = mount_factory(engine.host, "-a")
    root = m.path / box / "root"
    (root / "tmp" / "keep").write_bytes(b"kept\n")
    engine.docker("stop", "-t", "0", box)
    # Uploads work on a stopped container (in place); what needs a tool, EPERM.
    (root / "tmp" / "new").write_bytes(b"written while stopped\n")
    assert sh(f"echo more >> {root}/tmp/keep").returncode == 0
    os.mkdir(root / "tmp" / "dir")
    assert errno_of(lambda: os.unlink(root / "tmp" / "keep")) == errno.EPERM
    assert errno_of(lambda: os.rename(root / "tmp" / "keep", root / "tmp" / "k2")) == errno.EPERM
    assert errno_of(lambda: os.rmdir(root / "tmp" / "dir")) == errno.EPERM
    engine.docker("start", box)
    assert inside(engine, box, "cat", "/tmp/new") == b"written while stopped\n"
    assert inside(engine, box, "cat", "/tmp/keep") == b"kept\nmore\n"
    assert inside(engine, box, "stat", "-c", "%F", "/tmp/dir") == b"directory\n"


def no_shell_tar(path: Path) -> None:
    """A root filesystem of busybox with only `sleep` and `cat`: no sh, mv, rm or rmdir."""
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "tmp"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        data = busybox_binary().read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in ("sleep", "cat"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)


@pytest.fixture(scope="session")
def no_shell_image(
    dockerd_session: PrivateDockerd, tmp_path_factory: pytest.TempPathFactory
) -> str:
    path = tmp_path_factory.mktemp("noshell") / "rootfs.tar"
    no_shell_tar(path)
    dockerd_session.docker("import", str(path), NO_SHELL, timeout=300)
    return NO_SHELL


def test_an_image_without_a_shell_or_tools(
    engine: Engine, no_shell_image: str, mounted: Mount
) -> None:
    """No channel (no sh): files are written in place by PUT, and what needs a tool is EPERM."""
    cid = engine.run(no_shell_image, "sleep", "1d")
    root = mounted.path / cid / "root"
    (root / "tmp" / "f").write_bytes(b"in place\n")
    assert inside(engine, cid, "cat", "/tmp/f") == b"in place\n"
    (root / "tmp" / "f").write_bytes(b"again\n")
    assert inside(engine, cid, "cat", "/tmp/f") == b"again\n"
    assert errno_of(lambda: os.unlink(root / "tmp" / "f")) == errno.EPERM
    assert errno_of(lambda: os.rename(root / "tmp" / "f", root / "tmp" / "g")) == errno.EPERM
    assert "no shell channel" in mounted.log_text()
    assert shell_commands(mounted) == 0
    assert channel_shells(engine, cid) == []


def test_busybox_sh_runs_its_own_applets(engine: Engine, mounted: Mount) -> None:
    """An image with busybox's sh and no `rm` or `mv` link: its shell runs them."""
    cid = engine.run(NO_TOOLS, "sleep", "1d")
    root = mounted.path / cid / "root"
    (root / "tmp" / "f").write_bytes(b"through its shell\n")
    os.rename(root / "tmp" / "f", root / "tmp" / "g")
    assert inside(engine, cid, "cat", "/tmp/g") == b"through its shell\n"
    os.unlink(root / "tmp" / "g")
    assert inside(engine, cid, "ls", "-a", "/tmp").split() == [b".", b".."]


def test_a_read_only_container_is_erofs_and_the_staged_file_kept(
    engine: Engine, tools_image: str, mounted: Mount
) -> None:
    cid = engine.run("--read-only", tools_image, "sleep", "1d")
    root = mounted.path / cid / "root"
    fd = os.open(root / "tmp" / "f", os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"precious\n")
    assert errno_of(lambda: os.fsync(fd)) == errno.EROFS
    assert errno_of(lambda: os.close(fd)) == errno.EROFS
    assert errno_of(lambda: os.mkdir(root / "tmp" / "d")) == errno.EROFS
    line = wait_until(
        lambda: next(
            (x for x in mounted.log_text().splitlines() if "its content is kept in" in x), None
        ),
        "the staged file's location logged",
    )
    kept = Path(line.rsplit("kept in ", 1)[1].strip())
    assert kept.read_bytes() == b"precious\n"
    kept.unlink()


def test_mounted_ro_is_erofs(engine: Engine, box: str, mount_factory: Any) -> None:
    m = mount_factory(engine.host, "-o", "ro")
    root = m.path / box / "root"
    assert errno_of(lambda: (root / "tmp" / "f").write_bytes(b"x")) == errno.EROFS
    assert errno_of(lambda: os.mkdir(root / "tmp" / "d")) == errno.EROFS
    assert errno_of(lambda: os.truncate(root / "etc" / "hosts.orig", 0)) == errno.EROFS
    assert inside(engine, box, "ls", "-a", "/tmp") == b".\n..\n"


def test_another_user_is_refused(engine: Engine, box: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="dfs-shared-"))
    base.chmod(0o755)
    m = start_mount(engine.host, base / "mnt", "-o", "allow_other")
    try:
        root = m.path / box / "root"
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        for script in (
            f"echo x > {root}/tmp/f",  # /tmp is 1777: the kernel lets anyone create
            f"mkdir {root}/tmp/d",
            f"echo x >> {root}/etc/hosts.orig",
        ):
            done = subprocess.run([*nobody, "sh", "-c", script], capture_output=True, text=True)
            assert done.returncode != 0 and "Permission denied" in done.stderr, (script, done)
        assert inside(engine, box, "ls", "-a", "/tmp") == b".\n..\n"
    finally:
        stop_mount(m)
        shutil.rmtree(base, ignore_errors=True)


def test_a_name_that_is_not_utf8_is_einval_and_makes_nothing(
    engine: Engine, box: str, mounted: Mount
) -> None:
    """The engine's archives name paths in UTF-8 (U+FFFD for other bytes):
    such a path could never be read back as itself, so none is made."""
    tmp = mounted.path / box / "root" / "tmp"
    odd = os.fsdecode(b"\xff\xfeodd")
    (tmp / "ok").write_bytes(b"x")
    for attempt in (
        lambda: os.mkdir(tmp / odd),
        lambda: (tmp / odd).write_bytes(b"x"),
        lambda: os.symlink("ok", tmp / odd),
        lambda: os.rename(tmp / "ok", tmp / odd),
    ):
        with pytest.raises(OSError) as err:
            attempt()
        assert err.value.errno == errno.EINVAL
    assert inside(engine, box, "ls", "/tmp") == b"ok\n"


def test_links_out_of_the_container_never_lead_a_write_onto_the_host(
    engine: Engine, box: str, mounted: Mount, marker_dir: Path
) -> None:
    before = {p.name: p.read_bytes() for p in marker_dir.iterdir()}
    root = mounted.path / box / "root"
    writes = {
        f"{root}/etc/app.conf": str(marker_dir / "crontab"),  # absolute link to a file
        f"{root}/data/abs/f": str(marker_dir / "f"),  # absolute link to a directory
        f"{root}/data/up/g": str(marker_dir / "g"),  # relative, climbing past "/"
        f"{root}/data/sub/climb/h": "/tmp/h",
    }
    # The links lead to the container's own path of that name: made there first.
    os.makedirs(root / str(marker_dir).lstrip("/"))
    for path, where_inside in writes.items():
        done = sh(f"echo escaped >> {path}")
        assert done.returncode == 0, (path, done.stderr)
        assert inside(engine, box, "cat", where_inside).endswith(b"escaped\n")
    assert {p.name: p.read_bytes() for p in marker_dir.iterdir()} == before
    assert not Path("/tmp/h").exists() or b"escaped" not in Path("/tmp/h").read_bytes()


def test_a_reader_sees_the_staged_copy_and_its_close_uploads_nothing(
    engine: Engine, box: str, mounted: Mount
) -> None:
    f = mounted.path / box / "root" / "tmp" / "f"
    writer = os.open(f, os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(writer, b"half ")
        assert f.read_bytes() == b"half "  # another open, its close a reader's
        # Asked of the API from here: a child process would inherit the
        # writer's descriptor, and its closing that copy (at exec, for a
        # close-on-exec one) is a close, which uploads.
        assert archive_status(engine, box, "/tmp/f") == 404
        os.write(writer, b"whole\n")
    finally:
        os.close(writer)
    assert inside(engine, box, "cat", "/tmp/f") == b"half whole\n"


def test_only_a_writers_close_is_flushed(engine: Engine, box: str, mounted: Mount) -> None:
    """Every open but a writer's under root/ asks the kernel to send no FLUSH
    at close (patches/pyfuse3/0003), so reading many files costs no FLUSH
    round trip each; a writer's close still uploads. On stock pyfuse3 (or
    DOCKERFS_STOCK_PYFUSE3=1) every close is flushed, as before."""
    noflush = mounted.stats()["flush"]["noflush"]
    assert noflush is kernel_cache.noflush()  # the daemon runs with this env

    def flushes() -> int:
        return int(mounted.stats()["flush"]["requests"])

    container = mounted.path / box
    readable = [container / "State", container / "Image", container / "root" / "etc" / "hosts.orig"]
    before = flushes()
    for _ in range(3):
        for path in readable:
            assert path.read_bytes()
    read = flushes() - before
    assert read == 0 if noflush else read >= 3 * len(readable)

    f = container / "root" / "tmp" / "flushed"
    assert sh(f"echo uploaded at close > {f}").returncode == 0
    assert flushes() > before + read
    assert inside(engine, box, "cat", "/tmp/flushed") == b"uploaded at close\n"
    # A reader of a file being written asks for no FLUSH either.
    writer = os.open(f, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(writer, b"more\n")
        before = flushes()
        assert f.read_bytes() == b"uploaded at close\nmore\n"
        read = flushes() - before
        assert read == 0 if noflush else read >= 1
    finally:
        os.close(writer)
    assert inside(engine, box, "cat", "/tmp/flushed") == b"uploaded at close\nmore\n"


def test_modes_owners_times_and_renames_of_closed_files(
    engine: Engine, box: str, mounted: Mount
) -> None:
    root = mounted.path / box / "root"
    (root / "tmp" / "a").write_bytes(b"a\n")
    (root / "tmp" / "b").write_bytes(b"b\n")
    os.chown(root / "tmp" / "a", 123, 456)  # before chmod: chown clears setuid
    os.chmod(root / "tmp" / "a", 0o4710)
    os.utime(root / "tmp" / "a", (1_600_000_000, 1_600_000_000))
    want = b"4710 123 456 1600000000\n"
    assert inside(engine, box, "stat", "-c", "%a %u %g %Y", "/tmp/a") == want
    st = (root / "tmp" / "a").stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, int(st.st_mtime)) == (
        0o4710,
        123,
        456,
        1_600_000_000,
    )
    # A rename onto an existing file replaces it, as rename(2) does.
    os.rename(root / "tmp" / "a", root / "tmp" / "b")
    assert inside(engine, box, "cat", "/tmp/b") == b"a\n" == (root / "tmp" / "b").read_bytes()
    assert sorted(os.listdir(root / "tmp")) == ["b"]
    # `touch` of a new file: created, then its times set while it is open.
    assert sh(f"touch {root}/tmp/t").returncode == 0
    assert inside(engine, box, "stat", "-c", "%s", "/tmp/t") == b"0\n"


def test_the_new_name_answers_at_once_after_a_rename(
    engine: Engine, box: str, mounted: Mount
) -> None:
    """The kernel moves its cached entry on a rename and asks nothing more:
    a `chmod`, an append or a path below a moved directory, right after `mv`,
    reach what the container now has under the new name."""
    tmp = mounted.path / box / "root" / "tmp"
    (tmp / "a").write_bytes(b"a\n")
    os.rename(tmp / "a", tmp / "b")
    os.chmod(tmp / "b", 0o600)
    assert inside(engine, box, "stat", "-c", "%a", "/tmp/b") == b"600\n"
    os.rename(tmp / "b", tmp / "c")
    with open(tmp / "c", "ab") as f:
        f.write(b"more\n")
    assert inside(engine, box, "cat", "/tmp/c") == b"a\nmore\n" == (tmp / "c").read_bytes()
    (tmp / "d").mkdir()
    (tmp / "d" / "f").write_bytes(b"f\n")
    assert (tmp / "d" / "f").read_bytes() == b"f\n"  # looked up: the kernel holds d/f
    os.rename(tmp / "d", tmp / "e")
    os.chmod(tmp / "e" / "f", 0o640)
    (tmp / "e" / "g").write_bytes(b"g\n")
    assert inside(engine, box, "stat", "-c", "%a", "/tmp/e/f") == b"640\n"
    assert inside(engine, box, "cat", "/tmp/e/f", "/tmp/e/g") == b"f\ng\n"
    assert sorted(os.listdir(tmp)) == ["c", "e"]


def test_a_full_volume_is_enospc_and_a_removed_container_enoent(
    engine: Engine, tools_image: str, mounted: Mount
) -> None:
    volume = "dfs-small-" + os.urandom(4).hex()
    engine.docker(
        "volume", "create", "--driver", "local", "--opt", "type=tmpfs",
        "--opt", "device=tmpfs", "--opt", "o=size=64k", volume,
    )  # fmt: skip
    try:
        cid = engine.run("-v", f"{volume}:/small", tools_image, "sleep", "1d")
        root = mounted.path / cid / "root"
        fd = os.open(root / "small" / "big", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x" * (256 << 10))
        assert errno_of(lambda: os.close(fd)) == errno.ENOSPC
        assert b"big" not in inside(engine, cid, "ls", "-a", "/small")
        # A write racing `docker rm`: the close says the container is gone.
        fd = os.open(root / "tmp" / "late", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"too late\n")
        engine.send("DELETE", f"/containers/{cid}?force=1")  # no child: see above
        assert errno_of(lambda: os.close(fd)) == errno.ENOENT
    finally:
        engine.remove_started()
        engine.docker("volume", "rm", "-f", volume, check=False)


def edit_hosts(engine: Engine, cid: str, root: Path, word: str) -> None:
    """`>>` then `sed -i` of /etc/hosts.orig through the mount, checked in the container."""
    hosts = root / "etc" / "hosts.orig"
    assert sh(f"echo '10.0.0.1 db' >> {hosts}").returncode == 0
    done = sh(f"sed -i 's/localhost/{word}/' {hosts}")
    assert done.returncode == 0, done.stderr
    want = f"127.0.0.1 {word}\n10.0.0.1 db\n".encode()
    assert inside(engine, cid, "cat", "/etc/hosts.orig") == want == hosts.read_bytes()


def test_podman(podman_engine: Engine, mount_factory: Any, tmp_path: Path) -> None:
    tar = tmp_path / "rootfs.tar"
    tools_tar(tar, tmp_path / "nowhere")
    podman_engine.docker("import", str(tar), TOOLS)
    cid = podman_engine.run(TOOLS, "sleep", "1d")
    m = mount_factory(podman_engine.host)
    root = m.path / cid / "root"
    edit_hosts(podman_engine, cid, root, "local")
    os.mkdir(root / "tmp" / "d")
    (root / "tmp" / "d" / "f").write_bytes(b"podman\n")
    assert inside(podman_engine, cid, "cat", "/tmp/d/f") == b"podman\n"
    os.unlink(root / "tmp" / "d" / "f")
    os.rmdir(root / "tmp" / "d")
    assert b"d" not in inside(podman_engine, cid, "ls", "/tmp").split()
    # Podman's exec takes stdin: the changes went through the container's shell.
    assert shell_commands(m) >= 5 and requests_of(m).get("exec/create") == 1
    # Without a shell, by PUT and exec.
    no_shell_tar(tmp_path / "noshell.tar")
    podman_engine.docker("import", str(tmp_path / "noshell.tar"), NO_SHELL)
    bare = podman_engine.run(NO_SHELL, "sleep", "1d")
    sent = shell_commands(m)
    (m.path / bare / "root" / "tmp" / "f").write_bytes(b"by PUT\n")
    assert inside(podman_engine, bare, "cat", "/tmp/f") == b"by PUT\n"
    assert errno_of(lambda: os.unlink(m.path / bare / "root" / "tmp" / "f")) == errno.EPERM
    assert shell_commands(m) == sent


@pytest.mark.parametrize("backupcopy", ["yes", "no"])
def test_vim_saves(engine: Engine, box: str, mounted: Mount, backupcopy: str) -> None:
    require(shutil.which("vim") is not None, "vim missing (Debian vim)")
    f = mounted.path / box / "root" / "etc" / "hosts.orig"
    # backupcopy=yes writes the file in place; =no renames it away and
    # writes a new one; a swap file comes and goes beside it.
    done = subprocess.run(
        ["vim", "-N", "-u", "NONE", "-i", "NONE", "-es",
         "-c", f"set backup backupcopy={backupcopy} swapfile",
         "-c", "%s/localhost/vim/", "-c", "wq", str(f)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done
    assert inside(engine, box, "cat", "/etc/hosts.orig") == b"127.0.0.1 vim\n" == f.read_bytes()
    left = inside(engine, box, "ls", "-a", "/etc").split()
    assert not [name for name in left if name.endswith(b".swp")], left


def test_uploads_over_tcp_go_through_the_client(
    tls_engine: Engine, mount_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over TCP (here with TLS), where the daemon cannot hand the staged file
    to the kernel on a unix socket of its own, an upload goes through the
    client, read a chunk at a time: a file of several chunks arrives byte for
    byte, new and then rewritten (in place: busybox has no mv)."""
    d: TLSDockerd = tls_engine.dockerd  # type: ignore[assignment]
    cid = tls_engine.run(NO_TOOLS, "sleep", "1d")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(d.tls.client_dir))
    m = mount_factory(d.tcp_url)
    target = m.path / cid / "root" / "tmp" / "big"
    data = os.urandom(3 * (1 << 20) + 5)
    target.write_bytes(data)
    got = d.docker("exec", cid, "cat", "/tmp/big").stdout
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
    target.write_bytes(b"again\n")
    assert d.docker("exec", cid, "cat", "/tmp/big").stdout == b"again\n"


# -- the shell channel ----------------------------------------------------------------


def shell_commands(m: Mount) -> int:
    """Commands the daemon sent to containers' shell channels so far."""
    return sum(
        one.get("requests", {}).get("shell command", 0) for one in m.stats()["engines"].values()
    )


def requests_of(m: Mount) -> dict[str, int]:
    counts: dict[str, int] = {}
    for one in m.stats()["engines"].values():
        for kind, n in one.get("requests", {}).items():
            counts[kind] = counts.get(kind, 0) + n
    return counts


def channel_shells(engine: Engine, cid: str) -> list[int]:
    """Host PIDs of the container's `sh` processes (the box itself runs `sleep`)."""
    top = engine.api(f"/containers/{cid}/top")
    pid, cmd = top["Titles"].index("PID"), top["Titles"].index("CMD")
    return [int(p[pid]) for p in top["Processes"] or [] if p[cmd].split()[0] in ("sh", "/bin/sh")]


def pid_inside(host_pid: int) -> int:
    """A host process's PID in its container's namespace."""
    status = Path(f"/proc/{host_pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("NSpid:")).split()[-1])


ODD_NAMES = [
    "new\nline",
    "trailing newlines\n\n",
    "quotes'\"`$(touch pwned)`\\%s%n\\n",
    "-starts-with-a-dash",
    "ünïcødé 日本語 ☃",
    " spaces and\ttabs ",
]
BINARY = bytes(range(256)) * 16 + b"\0\xff\0\n\n"


def test_channel_round_trips_odd_names_and_binary_content(
    engine: Engine, box: str, mounted: Mount
) -> None:
    root = mounted.path / box / "root"
    os.mkdir(root / "tmp" / "chan")
    before = requests_of(mounted)
    for i, name in enumerate(ODD_NAMES):
        (root / "tmp" / "chan" / name).write_bytes(BINARY + name.encode() + bytes([i]))
    want = {f"chan/{n}": BINARY + n.encode() + bytes([i]) for i, n in enumerate(ODD_NAMES)}
    assert copied(engine, box, "/tmp/chan") == want
    os.chmod(root / "tmp" / "chan" / ODD_NAMES[2], 0o640)
    for name in ODD_NAMES:
        os.rename(root / "tmp" / "chan" / name, root / "tmp" / "chan" / (name + "→moved\n"))
    moved = {k + "→moved\n": v for k, v in want.items()}
    assert copied(engine, box, "/tmp/chan") == moved
    mode = inside(engine, box, "stat", "-c", "%a", "/tmp/chan/" + ODD_NAMES[2] + "→moved\n")
    assert mode == b"640\n"
    for name in ODD_NAMES:
        os.unlink(root / "tmp" / "chan" / (name + "→moved\n"))
    assert inside(engine, box, "ls", "-a", "/tmp/chan").split() == [b".", b".."]
    assert b"pwned" not in inside(engine, box, "ls", "/", "/tmp")
    after = requests_of(mounted)
    made = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    # Uploads, renames, a chmod and removals, each a line to the one shell:
    # no PUT, and no exec but the shell's own.
    assert made.get("shell command", 0) >= 3 * len(ODD_NAMES) + 1, made
    assert made.get("containers/archive PUT", 0) == 0, made
    assert made.get("exec/create", 0) <= 1, made


def test_a_container_without_capabilities_still_gets_its_new_files(
    engine: Engine, tools_image: str, mounted: Mount
) -> None:
    """`--cap-drop ALL`: the container's shell (root without
    CAP_DAC_OVERRIDE) cannot create a file in a directory someone else
    owns; the file goes by PUT, as it would without a shell."""
    cid = engine.run("--cap-drop", "ALL", tools_image, "sleep", "1d")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("theirs")
        info.type, info.mode, info.uid, info.gid = tarfile.DIRTYPE, 0o755, 1000, 1000
        tar.addfile(info)
    engine.dockerd.docker("cp", "-a", "-", f"{cid}:/tmp", input=buf.getvalue())
    root = mounted.path / cid / "root"
    (root / "tmp" / "theirs" / "f").write_bytes(b"made\n")
    (root / "tmp" / "mine").write_bytes(b"mine\n")  # a directory it may write: by its shell
    assert copied(engine, cid, "/tmp/theirs/f") == {"f": b"made\n"}
    assert copied(engine, cid, "/tmp/mine") == {"mine": b"mine\n"}
    assert inside(engine, cid, "stat", "-c", "%u %a", "/tmp/theirs/f") == b"0 644\n"


def test_a_file_over_the_bound_goes_by_put(engine: Engine, box: str, mounted: Mount) -> None:
    root = mounted.path / box / "root"
    big = os.urandom((64 << 10) + 1)
    before = requests_of(mounted).get("containers/archive PUT", 0)
    (root / "tmp" / "big").write_bytes(big)
    assert copied(engine, box, "/tmp/big") == {"big": big}
    assert requests_of(mounted).get("containers/archive PUT", 0) == before + 1


def test_a_channel_killed_inside_falls_back_and_loses_nothing(
    engine: Engine, box: str, mounted: Mount
) -> None:
    root = mounted.path / box / "root"
    (root / "tmp" / "first").write_bytes(b"first\n")
    (shell,) = wait_until(lambda: channel_shells(engine, box), "the channel's sh in docker top")
    inside(engine, box, "sh", "-c", f"kill -9 {pid_inside(shell)}")
    # Right after the kill: the channel is found dead, or a command's
    # acknowledgement is lost and the upload goes by PUT.
    for i in range(5):
        (root / "tmp" / f"after{i}").write_bytes(b"after %d\n" % i)
    files = copied(engine, box, "/tmp")
    assert files == {"tmp/first": b"first\n"} | {
        f"tmp/after{i}": b"after %d\n" % i for i in range(5)
    }
    wait_until(lambda: shell not in channel_shells(engine, box), "the killed sh gone")
    os.rename(root / "tmp" / "first", root / "tmp" / "renamed")
    os.unlink(root / "tmp" / "after0")
    assert inside(engine, box, "cat", "/tmp/renamed") == b"first\n"
    assert b"after0" not in inside(engine, box, "ls", "/tmp")
    # Killed in the middle of a writer's run of closes: every file whole.
    writer = subprocess.Popen(
        ["sh", "-c", f'for i in $(seq 40); do echo "line $i" > {root}/tmp/run$i; done'],
    )
    try:
        shells = wait_until(lambda: channel_shells(engine, box), "a new channel")
        subprocess.run(
            [
                "docker",
                "exec",
                box,
                "sh",
                "-c",
                "kill -9 " + " ".join(str(pid_inside(p)) for p in shells),
            ],
            env=docker_env(engine.dockerd),
            capture_output=True,
            timeout=60,
        )
    finally:
        assert writer.wait(120) == 0
    files = copied(engine, box, "/tmp")
    for i in range(1, 41):
        assert files[f"tmp/run{i}"] == f"line {i}\n".encode()


def freezer_state(engine: Engine, cid: str) -> Path:
    """The file that freezes the container's processes behind the engine's
    back (no `pause` event: its channel stays open), cgroup v1 or v2."""
    pid = engine.api(f"/containers/{cid}/json")["State"]["Pid"]
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        number, controllers, path = line.split(":", 2)
        if "freezer" in controllers.split(","):
            return Path("/sys/fs/cgroup/freezer" + path) / "freezer.state"
        if number == "0" and Path("/sys/fs/cgroup/cgroup.freeze").exists():
            return Path("/sys/fs/cgroup" + path) / "cgroup.freeze"
    raise AssertionError("no freezer cgroup")


def test_a_command_lost_to_a_frozen_shell_never_runs_later(
    engine: Engine, box: str, mounted: Mount
) -> None:
    """The container frozen with a command in its shell (as `docker commit`
    pauses it): the command's acknowledgement never comes; its shell is
    killed; the close succeeds by PUT once the engine says the shell ended,
    else is EIO. A newer version written meanwhile stays when it thaws:
    that shell runs nothing more."""
    root = mounted.path / box / "root"
    (root / "tmp" / "f").write_bytes(b"v1\n")
    (shell,) = wait_until(lambda: channel_shells(engine, box), "the channel's sh in docker top")
    state = freezer_state(engine, box)
    v1 = state.name == "freezer.state"
    state.write_text("FROZEN" if v1 else "1")
    try:
        fd = os.open(root / "tmp" / "f", os.O_WRONLY | os.O_TRUNC)
        os.write(fd, b"v2\n")
        try:
            os.close(fd)
            closed = 0
        except OSError as exc:
            closed = exc.errno or 0
        (root / "tmp" / "f").write_bytes(b"v3\n")
    finally:
        state.write_text("THAWED" if v1 else "0")
    # A frozen process killed dies as it thaws (cgroup v1) or at once (v2).
    wait_until(lambda: shell not in channel_shells(engine, box), "the frozen sh gone")
    assert closed in (0, errno.EIO)
    assert inside(engine, box, "cat", "/tmp/f") == b"v3\n"
    assert not [n for n in inside(engine, box, "ls", "-a", "/tmp").split() if b".dockerfs-" in n]
    if closed:  # not redone: kept, its path logged
        assert "could not be ended" in mounted.log_text()
        line = wait_until(
            lambda: next(
                (x for x in mounted.log_text().splitlines() if "its content is kept in" in x),
                None,
            ),
            "the staged file's location logged",
        )
        kept = Path(line.rsplit("kept in ", 1)[1].strip())
        assert kept.read_bytes() == b"v2\n"
        kept.unlink()


def test_the_channel_closes_when_idle_and_at_unmount(
    engine: Engine, box: str, mount_factory: Any
) -> None:
    m = mount_factory(engine.host)
    root = m.path / box / "root"
    (root / "tmp" / "f").write_bytes(b"1\n")
    wait_until(lambda: channel_shells(engine, box), "the channel's sh in docker top")
    wait_until(lambda: not channel_shells(engine, box), "the idle channel closed", timeout=40)
    (root / "tmp" / "f").write_bytes(b"2\n")
    wait_until(lambda: channel_shells(engine, box), "a channel again")
    stop_mount(m)
    wait_until(lambda: not channel_shells(engine, box), "the channel closed at unmount")
    assert inside(engine, box, "cat", "/tmp/f") == b"2\n"


def test_the_channel_ends_with_its_container(engine: Engine, box: str, mounted: Mount) -> None:
    root = mounted.path / box / "root"
    (root / "tmp" / "f").write_bytes(b"1\n")
    wait_until(lambda: channel_shells(engine, box), "the channel's sh in docker top")
    engine.docker("restart", "-t", "0", box)
    (root / "tmp" / "f").write_bytes(b"2\n")  # a new channel, or by PUT
    assert inside(engine, box, "cat", "/tmp/f") == b"2\n"
