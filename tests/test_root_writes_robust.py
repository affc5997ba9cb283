"""Writing through root/ when things go wrong or happen at once, and with more tools.

On the private dockerd and a real mount, each result checked inside the
container (`docker exec sha256sum`, `docker cp`, `docker export`): the
daemon SIGKILLed in the middle of a large upload (the container's file old
or new, never partial); two writers of one file; a reader in the container
during repeated uploads (old or new bytes only); a write racing `docker rm
-f`; `rsync -r` and a `nano` save; a 2,000-file `tar -x`; and the core of
writing over the ssh:// and TLS tcp:// engines.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import pty
import select
import shutil
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import test_root_writes as base
from conftest import Engine, Mount, require, wait_for_start_line
from support.fs_trees import docker_env, exported
from support.private_engines import PrivateSshd, TLSDockerd
from support.waiting import wait_until
from test_root_writes import TOOLS, copied, edit_hosts, inside, sh

# The image with busybox's tools, and what it needs, as test_root_writes makes them.
marker_dir = base.marker_dir
tools_image = base.tools_image
box = base.box

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

# How often a condition that must be caught while it lasts (an upload in
# flight) is looked at: an upload of BIG takes a second or more here.
TIGHT_POLL = 0.002
BIG = 200 << 20


def poll_tight(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """wait_until's loop, looking every TIGHT_POLL s: for a state that passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout:g}s for: {what}")
        time.sleep(TIGHT_POLL)


def upper_dir(engine: Engine, cid: str) -> Path:
    """The container's writable layer on this host (overlay2's upper directory):
    looked at without a child process, as often as TIGHT_POLL."""
    data = engine.api(f"/containers/{cid}/json")["GraphDriver"]
    assert data["Name"] == "overlay2", data
    return Path(data["Data"]["UpperDir"])


def landing(directory: Path) -> Callable[[], Path | None]:
    """A check: an upload's temporary file in `directory` with bytes in it."""

    def check() -> Path | None:
        for p in directory.iterdir() if directory.is_dir() else ():
            try:
                if p.name.startswith(".dockerfs-") and p.stat().st_size > 0:
                    return p
            except FileNotFoundError:
                pass  # renamed into place meanwhile
        return None

    return check


def staged_files(pid: int) -> list[Path]:
    """The daemon's staged files, by its open descriptors (an upload in
    flight holds a second descriptor of its file)."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = Path(os.readlink(fd))
            if target.parent.name.startswith("dockerfs-writes-"):
                found.add(target)
    return sorted(found)


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).hexdigest().encode()


def random_file(path: Path, size: int) -> bytes:
    """A file of `size` random bytes; its sha256 (hex)."""
    h = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(size >> 20):
            block = os.urandom(1 << 20)
            h.update(block)
            out.write(block)
    return h.hexdigest().encode()


def test_sigkill_in_the_middle_of_a_large_upload_leaves_old_or_new(
    engine: Engine, tools_image: str, mount_factory: Any, tmp_path: Path
) -> None:
    cid = engine.run(tools_image, "sleep", "1d")
    m = mount_factory(engine.host)
    f = m.path / cid / "root" / "tmp" / "big"
    old = os.urandom(1 << 20)
    f.write_bytes(old)
    assert inside(engine, cid, "sha256sum", "/tmp/big").split()[0] == sha(old)
    new = tmp_path / "new"
    new_sha = random_file(new, BIG)
    writer = subprocess.Popen(["cp", str(new), str(f)], stderr=subprocess.PIPE)
    # The close is uploading: the temporary file grows in the container.
    temp = poll_tight(landing(upper_dir(engine, cid) / "tmp"), "the upload landing")
    staged = staged_files(m.proc.pid)
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(30)
    _, err = writer.communicate(timeout=30)
    assert writer.returncode != 0 and b"connection abort" in err, err
    subprocess.run(["fusermount3", "-u", "-z", str(m.path)], capture_output=True, check=True)
    # Killed mid-upload: the temporary file is partial; the file itself is the old one.
    assert 0 < temp.stat().st_size < BIG
    assert inside(engine, cid, "sha256sum", "/tmp/big").split()[0] == sha(old)
    assert copied(engine, cid, "/tmp/big")["big"] == old
    # The new content is still staged on this host, whole.
    assert len(staged) == 1, staged
    with open(staged[0], "rb") as kept:
        assert hashlib.file_digest(kept, "sha256").hexdigest().encode() == new_sha
    staged[0].unlink()
    with contextlib.suppress(OSError):
        staged[0].parent.rmdir()


# -- at once ---------------------------------------------------------------------------

ROUNDS = 20
BLOCK = 4096


def label(who: str, round_: int) -> bytes:
    """One writer's content in one round: BLOCK bytes naming both."""
    word = f"{who}{round_:03d}.".encode()
    return (word * (BLOCK // len(word) + 1))[:BLOCK]


def test_two_writers_of_one_file(engine: Engine, tools_image: str, mounted: Mount) -> None:
    """Two writers share one staged copy, as on a local disk; each close
    uploads it whole. Every close succeeds, and at the end the container, the
    mount and the last write agree."""
    cid = engine.run(tools_image, "sleep", "1d")
    f = mounted.path / cid / "root" / "tmp" / "shared"
    f.write_bytes(b"start\n")
    failures: list[BaseException] = []

    def writer(who: str) -> None:
        try:
            for i in range(ROUNDS):
                fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
                try:
                    assert os.write(fd, label(who, i)) == BLOCK
                finally:
                    os.close(fd)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(who,)) for who in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
        assert not t.is_alive(), "a writer hung"
    assert not failures, failures
    # The last write was some writer's last round, whole (each is one write call).
    final = {label(who, ROUNDS - 1) for who in "AB"}
    got = copied(engine, cid, "/tmp/shared")["shared"]
    assert got in final, got[:40]
    assert f.read_bytes() == got
    assert b".dockerfs-" not in inside(engine, cid, "ls", "-a", "/tmp")


def closed_in_background(
    f: Path, content: bytes
) -> tuple[threading.Thread, list[BaseException | None]]:
    """`f` made to hold "old", then `content` written over it on a descriptor
    closed in a thread (the close uploads): the list gets None or its OSError."""
    f.write_bytes(b"old\n")
    fd = os.open(f, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, content)
    result: list[BaseException | None] = []

    def close() -> None:
        try:
            os.close(fd)
            result.append(None)
        except OSError as exc:
            result.append(exc)

    closing = threading.Thread(target=close)
    closing.start()
    return closing, result


def test_a_write_during_another_writers_upload_goes_with_the_next_close(
    engine: Engine, tools_image: str, mounted: Mount
) -> None:
    """One writer's close is uploading a large file when a second writes the
    first bytes and closes: that write waits for the upload, and the second
    close sends the file with it (never the first upload's copy alone)."""
    cid = engine.run(tools_image, "sleep", "1d")
    f = mounted.path / cid / "root" / "tmp" / "f"
    first = os.urandom(32 << 20)
    closing, closed = closed_in_background(f, first)
    poll_tight(landing(upper_dir(engine, cid) / "tmp"), "the first close's upload landing")
    second = os.open(f, os.O_WRONLY)
    try:
        assert os.write(second, b"B" * BLOCK) == BLOCK
    finally:
        os.close(second)
    closing.join(120)
    assert closed == [None]
    want = b"B" * BLOCK + first[BLOCK:]
    assert inside(engine, cid, "sha256sum", "/tmp/f").split()[0] == sha(want)
    with open(f, "rb") as back:
        assert hashlib.file_digest(back, "sha256").hexdigest().encode() == sha(want)


def test_a_reader_in_the_container_sees_old_or_new_only(
    engine: Engine, tools_image: str, mounted: Mount
) -> None:
    """A reader looping in the container while the file is replaced through the
    mount again and again: every read is one whole version, never a mix."""
    cid = engine.run(tools_image, "sleep", "1d")
    f = mounted.path / cid / "root" / "tmp" / "f"
    versions = [os.urandom(64 << 10) + bytes([i]) * i for i in range(ROUNDS)]
    f.write_bytes(versions[0])
    reader = subprocess.Popen(
        ["docker", "exec", cid, "sh", "-c",
         "while [ ! -e /tmp/stop ]; do sha256sum /tmp/f || echo FAILED; done"],
        stdout=subprocess.PIPE, env=docker_env(engine.dockerd),
    )  # fmt: skip
    try:
        assert reader.stdout is not None
        first = reader.stdout.readline()  # reading before the writes begin
        for v in versions[1:]:
            f.write_bytes(v)
    finally:
        (mounted.path / cid / "root" / "tmp" / "stop").write_bytes(b"")
        out, _ = reader.communicate(timeout=60)
    reads = [first, *out.splitlines(keepends=True)]
    digests = {sha(v) for v in versions}
    seen = [line.split()[0] for line in reads if line.strip()]
    print(f"{len(seen)} reads in the container, {len(set(seen))} versions seen")
    assert not [s for s in seen if s not in digests], "a read that is no version"
    assert len(set(seen)) > 1, "the reader saw no upload happen"
    assert inside(engine, cid, "sha256sum", "/tmp/f").split()[0] == sha(versions[-1])


@pytest.mark.parametrize("when", ["during the upload", "as the close begins"])
def test_a_write_racing_docker_rm(
    engine: Engine, tools_image: str, mounted: Mount, when: str
) -> None:
    """`docker rm -f` while a close uploads: the close succeeds or is ENOENT,
    never hangs; on ENOENT the staged copy is kept and its place logged."""
    cid = engine.run(tools_image, "sleep", "1d")
    f = mounted.path / cid / "root" / "tmp" / "f"
    content = os.urandom(32 << 20)
    closing, result = closed_in_background(f, content)
    if when == "during the upload":
        poll_tight(landing(upper_dir(engine, cid) / "tmp"), "the upload landing")
    engine.send("DELETE", f"/containers/{cid}?force=1")  # no child: it would inherit fd
    closing.join(120)
    assert not closing.is_alive(), "the close hung"
    [exc] = result
    print(when, "close:", exc)
    if exc is None:
        return  # the engine had it before the container went
    assert isinstance(exc, OSError) and exc.errno == errno.ENOENT, exc
    line = wait_until(
        lambda: next(
            (x for x in mounted.log_text().splitlines() if "its content is kept in" in x), None
        ),
        "the staged file's location logged",
    )
    kept = Path(line.rsplit("kept in ", 1)[1].strip())
    assert kept.read_bytes() == content
    kept.unlink()


# -- more tools --------------------------------------------------------------------------


def tree_files(top: Path, under: str) -> dict[str, bytes]:
    """Every regular file below `top`, by its path as `docker cp` of `under` names it."""
    return {
        str(Path(under) / p.relative_to(top)): p.read_bytes()
        for p in top.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


@pytest.mark.parametrize("options", ["-r", "-a"])
def test_rsync_into_root_round_trips(
    engine: Engine, box: str, mounted: Mount, tmp_path: Path, options: str
) -> None:
    require(shutil.which("rsync") is not None, "rsync missing (Debian rsync)")
    src = tmp_path / "tree"
    base.make_tree(src)
    root = mounted.path / box / "root"
    os.mkdir(root / "data" / "r")
    done = sh(f"rsync {options} {src}/ {root}/data/r/")
    assert done.returncode == 0, done.stderr
    assert copied(engine, box, "/data/r") == tree_files(src, "r")
    # rsync's temporary files (.NAME.XXXXXX), renamed into place, none left.
    listed = inside(engine, box, "find", "/data/r").decode().split()
    assert not [p for p in listed if "/." in p], listed
    if options == "-a":
        assert inside(engine, box, "stat", "-c", "%a %Y", "/data/r/a/script") == b"750 1500000000\n"
        assert inside(engine, box, "readlink", "/data/r/a/link") == b"b/two.bin\n"
    # Again: nothing changed, nothing sent; then one file changed, that one replaced.
    (src / "a" / "one.txt").write_bytes(b"one, changed\n")
    done = sh(f"rsync {options} {src}/ {root}/data/r/")
    assert done.returncode == 0, done.stderr
    assert inside(engine, box, "cat", "/data/r/a/one.txt") == b"one, changed\n"
    assert copied(engine, box, "/data/r") == tree_files(src, "r")


class Pty:
    """A program under a pseudo-terminal of 24x80, what it shows kept."""

    def __init__(self, argv: list[str]) -> None:
        self.fd, tty = pty.openpty()
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        env = {**os.environ, "TERM": "xterm", "LANG": "C.UTF-8"}
        # Spawned, not forked: this process has threads (the timeout's watchdog).
        self.proc = subprocess.Popen(
            argv, stdin=tty, stdout=tty, stderr=tty, env=env, start_new_session=True
        )
        os.close(tty)
        self.screen = b""

    def _read(self) -> None:
        if select.select([self.fd], [], [], 0.1)[0]:
            with contextlib.suppress(OSError):  # EIO: the program has ended
                self.screen += os.read(self.fd, 65536)

    def wait_for(self, text: bytes, timeout: float = 60.0) -> None:
        """Read until `text` has been shown since the last wait."""
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"waited for {text!r}; the screen: {self.screen[-2000:]!r}")
            self._read()
        self.screen = self.screen[self.screen.index(text) + len(text) :]

    def send(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    def wait_exit(self, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"still running; the screen: {self.screen[-2000:]!r}")
            self._read()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        os.close(self.fd)


@pytest.mark.parametrize("options", [[], ["--backup"], ["--locking"]])
def test_nano_saves(engine: Engine, box: str, mounted: Mount, options: list[str]) -> None:
    """Real nano under a pty: type at the top, ^O Enter (write out), ^X (exit).
    Plain nano writes the file in place; --backup copies it to NAME~ first;
    --locking keeps a .NAME.swp beside it while it edits."""
    require(shutil.which("nano") is not None, "nano missing (Debian nano)")
    f = mounted.path / box / "root" / "etc" / "hosts.orig"
    nano = Pty(["nano", "--ignorercfiles", *options, str(f)])
    try:
        nano.wait_for(b"hosts.orig")
        nano.send(b"# edited by nano\r")
        nano.send(b"\x0f")  # ^O
        nano.wait_for(b"File Name to Write")
        nano.send(b"\r")
        nano.wait_for(b"Wrote 2 lines")
        nano.send(b"\x18")  # ^X
        assert nano.wait_exit() == 0
    finally:
        nano.close()
    want = b"# edited by nano\n127.0.0.1 localhost\n"
    assert inside(engine, box, "cat", "/etc/hosts.orig") == want == f.read_bytes()
    left = inside(engine, box, "ls", "-a", "/etc").split()
    assert not [n for n in left if n.endswith(b".swp") or n.startswith(b".dockerfs-")], left
    if "--backup" in options:
        assert inside(engine, box, "cat", "/etc/hosts.orig~") == b"127.0.0.1 localhost\n"


MANY = 2000
# The 2,000-file tar -x makes some 5,000 requests of the engine.
LONG_TIMEOUT = 1200


def many_files(top: Path) -> None:
    """MANY small files in 20 directories, of sizes 0 to about 3 KiB."""
    for i in range(MANY):
        d = top / f"d{i % 20:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}").write_bytes(os.urandom(i * 37 % 3000))


@pytest.mark.slow
@pytest.mark.timeout(LONG_TIMEOUT)
def test_tar_x_of_2000_files_round_trips(
    engine: Engine, box: str, mounted: Mount, tmp_path: Path
) -> None:
    """An upload per file (a new file has no old content to keep), and a
    lookup of each new name asked of the engine: minutes on a loaded 2-CPU
    machine (see bench/ for its speed against `docker cp`)."""
    src = tmp_path / "many"
    many_files(src)
    root = mounted.path / box / "root"
    os.mkdir(root / "data" / "t")
    t0 = time.monotonic()
    done = subprocess.run(
        ["sh", "-c", f"tar -c -C {tmp_path} many | tar -x -C {root}/data/t"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(f"tar -x of {MANY} files: {time.monotonic() - t0:.1f}s")
    assert done.returncode == 0, done.stderr
    assert copied(engine, box, "/data/t/many") == tree_files(src, "many")
    # The mount agrees with the container at once.
    assert sorted(os.listdir(root / "data" / "t" / "many" / "d07")) == sorted(
        os.listdir(src / "d07")
    )


# -- remote engines ----------------------------------------------------------------------


@pytest.fixture(params=["ssh", "tls"])
def remote(
    request: pytest.FixtureRequest,
    engine: Engine,
    tools_image: str,
    marker_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> tuple[Engine, str]:
    """An engine reached remotely, with the tools image: ssh:// to the
    session's dockerd (its sshd in front), or the TLS dockerd on tcp://."""
    if request.param == "ssh":
        sshd: PrivateSshd = request.getfixturevalue("sshd_session")
        # The client's ~/.ssh holds the key and knows the host, as a user's would.
        monkeypatch.setenv("HOME", str(sshd.client_home))
        return engine, sshd.url
    tls: Engine = request.getfixturevalue("tls_engine")
    d: TLSDockerd = tls.dockerd  # type: ignore[assignment]
    if TOOLS not in tls.docker("images", "--format", "{{.Repository}}:{{.Tag}}"):
        tar = tmp_path / "rootfs.tar"
        base.tools_tar(tar, marker_dir / "crontab")
        tls.docker("import", str(tar), TOOLS)
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(d.tls.client_dir))
    return tls, d.tcp_url


def test_writes_over_a_remote_engine(remote: tuple[Engine, str], mount_factory: Any) -> None:
    """The core of writing over ssh:// and tcp:// with TLS: `>>`, `sed -i`,
    `mkdir`, `rm`, each checked in the container; and `docker export` agrees."""
    engine, url = remote
    cid = engine.run(TOOLS, "sleep", "1d")
    m = mount_factory(url, name="remote")
    wait_for_start_line(m, url)
    root = m.path / cid / "root"
    edit_hosts(engine, cid, root, "remote")
    os.mkdir(root / "tmp" / "d")
    content = os.urandom(300_000)
    (root / "tmp" / "d" / "f").write_bytes(content)
    assert inside(engine, cid, "stat", "-c", "%F", "/tmp/d") == b"directory\n"
    assert inside(engine, cid, "sha256sum", "/tmp/d/f").split()[0] == sha(content)
    tree = exported(engine.dockerd, cid)
    assert tree["/tmp/d/f"][-1] == sha(content).decode()
    assert (
        tree["/etc/hosts.orig"][-1]
        == hashlib.sha256(b"127.0.0.1 remote\n10.0.0.1 db\n").hexdigest()
    )
    os.unlink(root / "tmp" / "d" / "f")
    os.rmdir(root / "tmp" / "d")
    assert inside(engine, cid, "ls", "-a", "/tmp") == b".\n..\n"
    assert os.listdir(root / "tmp") == []
    # The small changes went through the container's shell, over this connection too.
    assert base.shell_commands(m) >= 5
