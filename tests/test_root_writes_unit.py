"""Writes under root/ that need no engine: the tar members uploaded, and the
draft rules of engine/writes.py against a fake engine (test_container_fs_unit's
in-memory filesystem, served as archives) whose uploads extract into that
filesystem and whose tools (mv, rm, rmdir) act on it.
"""

from __future__ import annotations

import errno
import io
import logging
import posixpath
import re
import tarfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.testing
from support.fake_shell import FakeOpener
from test_container_fs_unit import FakeEngine, FakeFile

from dockerfs_fuse.docker.errors import (
    AlreadyExists,
    ApiError,
    Conflict,
    NoSpace,
    NotFound,
    ReadOnlyFs,
)
from dockerfs_fuse.docker.writes import Ran, TarBody, _classified
from dockerfs_fuse.engine import writes as writes_module
from dockerfs_fuse.engine.channel import ShellStream
from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.engine.roots import ContainerRoots
from dockerfs_fuse.engine.writes import (
    CannotChange,
    ChannelLost,
    ContainerGone,
    ContainerWrites,
    Staging,
    ToolFailed,
    errno_of_output,
)
from dockerfs_fuse.fuse import operations  # noqa: F401  (defines every Handle)
from dockerfs_fuse.fuse.handles import NOFLUSH, Handle, file_info
from dockerfs_fuse.fuse.writes import DraftHandle
from dockerfs_fuse.model.containers import LIVE
from dockerfs_fuse.model.files import NotAFile
from dockerfs_fuse.model.inodes import Changes, Node
from dockerfs_fuse.model.tarwrite import (
    END,
    Meta,
    dir_member,
    file_header,
    padding,
    symlink_member,
)

CID = "c" * 64
META = Meta(0o640, 1000, 50, 1_700_000_000)

# -- the members ----------------------------------------------------------------------


def test_members_read_back_as_tarfile_reads_them() -> None:
    long_name = "ünïcödé " + "long-" * 60
    body = b"x" * 1000
    data = (
        file_header(long_name, len(body), META)
        + body
        + padding(len(body))
        + dir_member("d", Meta(0o1777, 0, 0, 5))
        + symlink_member("ln", b"/etc/../" + b"t" * 150, META)
        + END
    )
    assert len(data) % 512 == 0
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        f, d, ln = tar.getmembers()
        extracted = tar.extractfile(f)
        assert extracted is not None and extracted.read() == body
    assert (f.name, f.mode, f.uid, f.gid, f.mtime, f.isfile()) == (
        long_name,
        0o640,
        1000,
        50,
        1_700_000_000,
        True,
    )
    assert d.isdir() and d.mode == 0o1777
    assert ln.issym() and ln.linkname == "/etc/../" + "t" * 150


def test_a_tools_complaint_names_its_errno() -> None:
    said = {
        "rmdir: '/d': Directory not empty": errno.ENOTEMPTY,
        "rm: can't remove '/x': No such file or directory": errno.ENOENT,
        "rm: can't remove '/d': Is a directory": errno.EISDIR,
        "mv: cannot overwrite directory '/d'": errno.EISDIR,
        "mv: can't rename '/a': Read-only file system": errno.EROFS,
        "chown: /f: Operation not permitted": errno.EPERM,
        "sh: 1: cannot create /x/.dockerfs-ab-f: Directory nonexistent": errno.ENOENT,
        "sh: can't create /d/.dockerfs-aa-no space.txt: Permission denied": errno.EACCES,
        "mv: can't rename '/d/.dockerfs-ab-is a directory': Disk quota exceeded": errno.ENOSPC,
        "something else": errno.EIO,
    }
    for text, code in said.items():
        assert errno_of_output(text) == code, text


# -- drafts against a fake engine -------------------------------------------------------


class FakeWrites:
    """Uploads extract into the fake engine's filesystem; tools act on it."""

    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.running = True
        self.gone = False
        self.tools = True
        self.refuse: Exception | None = None
        self.hold: trio.Event | None = None  # uploads wait for it
        self.calls: list[tuple[str, ...]] = []
        self.shell: FakeOpener | None = None  # none: as an image without `sh`
        # How the shell answers an upload, and a tool's run (None: no answer at all).
        self.upload_answer: tuple[int, bytes] | None = (0, b"")
        self.lost_tools: set[str] = set()

    async def put_archive(self, cid: str, directory: str, body: TarBody) -> None:
        data = b"".join(body.chunks())
        assert len(data) == body.size
        self.calls.append(("put", directory))
        if self.hold is not None:
            await self.hold.wait()
        if self.refuse is not None:
            raise self.refuse
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for m in tar.getmembers():
                f = tar.extractfile(m) if m.isfile() else None
                path = posixpath.join(directory, m.name)
                self.engine.fs[path] = FakeFile(
                    m.type, f.read() if f else b"", m.linkname, m.mode, m.uid, m.gid
                )

    async def is_running(self, cid: str) -> bool:
        return self.running

    async def is_gone(self, cid: str) -> bool:
        return self.gone

    async def open_shell(self, cid: str) -> ShellStream:
        if self.shell is None:
            raise Conflict("no shell in the fake engine")
        return await self.shell.open_shell(cid)

    def answer(self, line: bytes) -> tuple[int, bytes] | None:
        """The fake shell's answer to a line: an upload as upload_answer
        says (its content is not decoded), a tool's run (plain names only)
        acting on the filesystem, as an exec would."""
        if b"command -v" in line:
            self.calls.append(("sh", "upload"))
            return self.upload_answer
        argv = [m.decode() for m in re.findall(rb"a\d+='([^']*)'", line)]
        self.calls.append(("sh", *argv))
        if argv[0] in self.lost_tools:
            return None
        ran = self._act(argv)
        return ran.code, ran.output

    async def run(self, cid: str, argv: Sequence[str]) -> Ran:
        if not self.running:
            raise Conflict(f"Container {cid} is not running")
        self.calls.append(tuple(argv))
        return self._act(argv)

    def _act(self, argv: Sequence[str]) -> Ran:
        if not self.tools:
            return Ran(127, b"exec: not found")
        fs = self.engine.fs
        args = [a for a in argv[1:] if not a.startswith("-")]
        if argv[0] == "mv" and args:
            old, new = args
            fs[new] = fs.pop(old)
        elif argv[0] in ("rm", "rmdir"):
            (path,) = args
            if any(p.startswith(path + "/") for p in fs):
                return Ran(1, f"rmdir: '{path}': Directory not empty".encode())
            del fs[path]
        return Ran(0, b"")


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.engine = FakeEngine()
        self.engine.add("/etc/hosts", data=b"127.0.0.1 localhost\n", uid=7, gid=8)
        self.engine.add("/tmp", tarfile.DIRTYPE, mode=0o1777)
        self.backend = FakeWrites(self.engine)
        self.changes: list[Changes] = []
        source = _Source(self.engine)
        engines = Engines({"local": source}, self.changes.append)  # type: ignore[dict-item]
        container = {"Id": CID, "Names": ["/c1"], "State": "running", "Created": 1}
        engines.table.set_containers([container], engines.table.root)
        cdir = engines.table.lookup(engines.table.root, CID)
        live = engines.table.lookup(cdir, LIVE) if cdir is not None else None
        root = engines.table.lookup(live, "root") if live is not None else None
        assert root is not None
        self.root = root
        self.roots = ContainerRoots(engines, self.changes.append)
        self.tmp = tmp_path
        self.writes = ContainerWrites(
            self.roots, lambda cache: self.backend, self.changes.append, Staging(str(tmp_path))
        )

    async def node(self, path: str) -> Node:
        node = self.root
        for name in path.strip("/").split("/"):
            found = await self.roots.lookup(node, name)
            assert found is not None, path
            node = found
        return node

    def archive_requests(self) -> int:
        return len(self.engine.requests)

    def staged(self) -> list[Path]:
        return [p for p in self.tmp.rglob("*") if p.is_file()]


class _Source:
    def __init__(self, engine: FakeEngine) -> None:
        self.requests: dict[str, int] = {}
        self.stream_archive = lambda cid, path, out: engine.start(cid, path, out)

    def stream_logs(self, *args: object) -> None:
        raise AssertionError("asked for logs")


def run(tmp_path: Path, test: Callable[[World], Awaitable[None]]) -> None:
    async def main() -> None:
        await test(World(tmp_path))

    trio.run(main)


def run_with_shell(tmp_path: Path, test: Callable[[World], Awaitable[None]]) -> None:
    """As run, the container's shell a fake one (support/fake_shell.py), its
    deadlines on a MockClock."""

    async def main() -> None:
        w = World(tmp_path)
        w.backend.shell = FakeOpener(w.backend.answer)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(w.roots.engines.channels.run)
            await test(w)
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


def puts(w: World) -> int:
    return sum(call[0] == "put" for call in w.backend.calls)


def test_a_small_upload_goes_through_the_shell_and_by_put_where_the_shell_cannot(
    tmp_path: Path,
) -> None:
    """Through the shell when it can; by PUT after any failure that a PUT
    may not meet (a privilege the container's shell lacks under
    `--cap-drop ALL`, a tool missing or too old); a failure about the
    target itself is the answer."""

    async def test(w: World) -> None:
        tmp = await w.node("/tmp")
        draft = await w.writes.create(tmp, "f", META)
        await w.writes.write(draft, 0, b"one\n", append=False)
        await w.writes.flush(draft)
        assert w.backend.calls == [("sh", "upload")]
        for said in (
            (1, b"chown: /tmp/.dockerfs-ab-f: Operation not permitted"),
            (1, b"sh: can't create /tmp/.dockerfs-ab-f: Permission denied"),
            (1, b"mv: invalid option -- 'T'"),
            (127, b""),
        ):
            w.backend.upload_answer = said
            size = len(w.engine.fs["/tmp/f"].data) if "/tmp/f" in w.engine.fs else 4
            await w.writes.write(draft, size, b"more\n", append=False)
            before = puts(w)
            await w.writes.flush(draft)
            assert puts(w) == before + 1, said
        assert w.engine.fs["/tmp/f"].data == b"one\n" + b"more\n" * 4
        w.backend.upload_answer = (1, b"sh: can't create /tmp/.dockerfs-a-f: Read-only file system")
        await w.writes.write(draft, 0, b"x", append=False)
        with pytest.raises(ToolFailed) as failed:
            await w.writes.flush(draft)
        assert failed.value.errno == errno.EROFS and puts(w) == 4 and draft.dirty
        await w.writes.release(draft)

    run_with_shell(tmp_path, test)


def test_a_lost_upload_is_redone_by_put_only_once_its_shell_has_ended(tmp_path: Path) -> None:
    async def test(w: World) -> None:
        assert w.backend.shell is not None
        tmp = await w.node("/tmp")
        draft = await w.writes.create(tmp, "f", META)
        await w.writes.write(draft, 0, b"one\n", append=False)
        w.backend.upload_answer = None
        await w.writes.flush(draft)
        assert puts(w) == 1 and w.engine.fs["/tmp/f"].data == b"one\n"
        assert w.backend.shell.shells[0].killed
        # A shell that could not be ended may still run the upload later,
        # over a newer version: nothing is redone, the draft stays to send.
        w.backend.shell.ends = False
        await w.writes.write(draft, 0, b"two\n", append=False)
        with pytest.raises(ChannelLost) as lost:
            await w.writes.flush(draft)
        assert lost.value.errno == errno.EIO and puts(w) == 1 and draft.dirty
        w.backend.upload_answer = (0, b"")
        await w.writes.flush(draft)  # the next close sends it
        assert not draft.dirty
        await w.writes.release(draft)

    run_with_shell(tmp_path, test)


def test_a_lost_rename_is_eio_and_a_lost_mode_is_set_again_by_exec(tmp_path: Path) -> None:
    async def test(w: World) -> None:
        w.engine.add("/tmp/a", data=b"a")
        tmp = await w.node("/tmp")
        await w.writes.rename(tmp, "a", tmp, "b")
        assert ("sh", "mv", "-f", "-T", "/tmp/a", "/tmp/b") in w.backend.calls
        assert "/tmp/b" in w.engine.fs and "/tmp/a" not in w.engine.fs
        w.backend.lost_tools = {"mv", "chmod"}
        await w.node("/tmp/b")
        with pytest.raises(ChannelLost) as lost:
            await w.writes.rename(tmp, "b", tmp, "c")
        assert lost.value.errno == errno.EIO
        assert not [c for c in w.backend.calls if c[0] == "mv"]  # never again by exec
        await w.writes.change_meta(await w.node("/tmp/b"), 0o600, None, None, None)
        assert w.backend.calls[-2:] == [
            ("sh", "chmod", "600", "/tmp/b"),
            ("chmod", "600", "/tmp/b"),
        ]

    run_with_shell(tmp_path, test)


def test_a_big_upload_whose_rename_is_lost_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writes_module, "SMALL_UPLOAD", 4)

    async def test(w: World) -> None:
        hosts = await w.node("/etc/hosts")
        draft = await w.writes.open(hosts)
        await w.writes.write(draft, 0, b"10.0.0.1", append=False)
        w.backend.lost_tools = {"mv"}
        with pytest.raises(ChannelLost):
            await w.writes.flush(draft)
        (rm,) = [c for c in w.backend.calls if c[0] == "rm"]
        assert rm[:2] == ("rm", "-f") and ".dockerfs-" in rm[2]
        assert not [p for p in w.engine.fs if ".dockerfs-" in p]
        assert w.engine.fs["/etc/hosts"].data == b"127.0.0.1 localhost\n" and draft.dirty
        w.backend.lost_tools = set()
        await w.writes.release(draft)

    run_with_shell(tmp_path, test)


def test_a_file_is_uploaded_whole_a_changed_one_under_a_temporary_name_then_renamed(
    tmp_path: Path,
) -> None:
    async def test(w: World) -> None:
        tmp = await w.node("/tmp")
        draft = await w.writes.create(tmp, "f", META)
        # Not in the container yet, but found by its name.
        assert w.writes.pending(tmp, "f") is draft.node
        await w.writes.flush(draft)  # a shell's `>` closes a copy before writing
        assert "/tmp/f" not in w.engine.fs and w.backend.calls == []
        await w.writes.write(draft, 0, b"hello ", append=False)
        await w.writes.write(draft, 6, b"world\n", append=False)
        assert await w.writes.read(draft, 0, 100) == b"hello world\n"
        await w.writes.flush(draft)
        # New: under its own name (nothing old to mix with), no tool run.
        assert w.backend.calls == [("put", "/tmp")]
        assert w.engine.fs["/tmp/f"].data == b"hello world\n"
        assert (w.engine.fs["/tmp/f"].mode, w.engine.fs["/tmp/f"].uid) == (0o640, 1000)
        await w.writes.write(draft, 12, b"again\n", append=False)
        await w.writes.flush(draft)
        probe, put, mv = w.backend.calls[1:]
        assert put == ("put", "/tmp") and probe == ("mv", "--help")
        assert mv[:3] == ("mv", "-f", "-T") and mv[-1] == "/tmp/f"
        assert w.engine.fs["/tmp/f"].data == b"hello world\nagain\n"
        assert not [p for p in w.engine.fs if ".dockerfs-" in p]
        await w.writes.flush(draft)  # unchanged since: nothing sent
        assert len(w.backend.calls) == 4
        await w.writes.release(draft)
        assert w.staged() == [] and w.writes.draft_of(draft.node) is None
        assert draft.node.entry is not None and draft.node.entry.size == 18
        assert any(draft.node.inode in c.changed for c in w.changes)
        # A new file nothing was written to is made at its last close.
        draft = await w.writes.create(tmp, "empty", META)
        await w.writes.flush(draft)
        assert "/tmp/empty" not in w.engine.fs
        await w.writes.release(draft)
        assert w.engine.fs["/tmp/empty"].data == b""

    run(tmp_path, test)


def test_append_loads_the_old_content_once_and_truncation_to_zero_never(
    tmp_path: Path,
) -> None:
    async def test(w: World) -> None:
        hosts = await w.node("/etc/hosts")
        draft = await w.writes.open(hosts)
        await w.writes.write(draft, 0, b"10.0.0.1 db\n", append=True)
        loaded = w.archive_requests()
        await w.writes.write(draft, 0, b"10.0.0.2 web\n", append=True)
        assert w.archive_requests() == loaded
        await w.writes.flush(draft)
        await w.writes.release(draft)
        got = w.engine.fs["/etc/hosts"]
        assert got.data == b"127.0.0.1 localhost\n10.0.0.1 db\n10.0.0.2 web\n"
        assert (got.uid, got.gid) == (7, 8)  # the file's owner kept
        hosts = await w.node("/etc/hosts")
        draft = await w.writes.open(hosts)
        before = w.archive_requests()
        await w.writes.truncate(draft, 0)
        await w.writes.write(draft, 0, b"new\n", append=False)
        await w.writes.flush(draft)
        await w.writes.release(draft)
        assert w.archive_requests() == before
        assert w.engine.fs["/etc/hosts"].data == b"new\n"

    run(tmp_path, test)


def test_a_stopped_container_or_one_without_mv_is_written_in_place(tmp_path: Path) -> None:
    async def test(w: World) -> None:
        tmp = await w.node("/tmp")
        hosts = await w.node("/etc/hosts")
        w.backend.running = False
        draft = await w.writes.open(hosts)
        await w.writes.truncate(draft, 0)
        await w.writes.flush(draft)
        await w.writes.release(draft)
        assert w.backend.calls == [("put", "/etc")] and w.engine.fs["/etc/hosts"].data == b""
        with pytest.raises(CannotChange) as refused:
            await w.writes.unlink(tmp, "a")
        assert refused.value.errno == errno.EPERM
        w.backend.running, w.backend.tools = True, False
        w.backend.calls.clear()
        for text in (b"b", b"c"):
            draft = await w.writes.open(hosts)
            await w.writes.write(draft, 0, text, append=False)
            await w.writes.flush(draft)
            await w.writes.release(draft)
        # One probe for the container, then uploads under the file's own name.
        assert w.backend.calls == [("mv", "--help"), ("put", "/etc"), ("put", "/etc")]
        assert w.engine.fs["/etc/hosts"].data == b"c"
        with pytest.raises(CannotChange):
            await w.writes.rename(tmp, "b", tmp, "d")

    run(tmp_path, test)


def test_a_refused_upload_fails_and_keeps_the_staged_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def test(w: World) -> None:
        tmp = await w.node("/tmp")
        w.backend.refuse = ReadOnlyFs("container rootfs is marked read-only")
        draft = await w.writes.create(tmp, "f", META)
        await w.writes.write(draft, 0, b"precious\n", append=False)
        with pytest.raises(ReadOnlyFs):
            await w.writes.flush(draft)
        with caplog.at_level(logging.WARNING):
            await w.writes.release(draft)
        (kept,) = w.staged()
        assert kept.read_bytes() == b"precious\n"
        assert str(kept) in caplog.text
        # Never seen by the container: gone from the table too.
        assert w.writes.pending(tmp, "f") is None and "f" not in (tmp.children or {})

    run(tmp_path, test)


def test_remove_rename_and_make(tmp_path: Path) -> None:
    async def test(w: World) -> None:
        tmp = await w.node("/tmp")
        await w.writes.mkdir(tmp, "d", Meta(0o750, 0, 0, 1))
        assert w.engine.fs["/tmp/d"].kind == tarfile.DIRTYPE
        d = await w.node("/tmp/d")
        await w.writes.symlink(d, "ln", b"/etc/hosts", META)
        assert w.engine.fs["/tmp/d/ln"].link == "/etc/hosts"
        with pytest.raises(ToolFailed) as failed:
            await w.writes.rmdir(tmp, "d")
        assert failed.value.errno == errno.ENOTEMPTY
        await w.writes.rename(d, "ln", tmp, "moved")
        assert "/tmp/moved" in w.engine.fs and "/tmp/d/ln" not in w.engine.fs
        await w.writes.rmdir(tmp, "d")
        await w.writes.unlink(tmp, "moved")
        assert [p for p in w.engine.fs if p.startswith("/tmp/")] == []

    run(tmp_path, test)


def test_an_open_file_unlinked_or_renamed_is_followed(tmp_path: Path) -> None:
    async def test(w: World) -> None:
        tmp = await w.node("/tmp")
        w.backend.running = False  # nothing here needs a tool
        draft = await w.writes.create(tmp, "scratch", META)
        await w.writes.write(draft, 0, b"anonymous", append=False)
        await w.writes.unlink(tmp, "scratch")
        await w.writes.write(draft, 9, b" still", append=False)
        await w.writes.flush(draft)
        await w.writes.release(draft)
        assert w.backend.calls == [] and w.staged() == []
        w.backend.running = True
        draft = await w.writes.create(tmp, "new", META)
        await w.writes.write(draft, 0, b"first\n", append=False)
        await w.writes.rename(tmp, "new", tmp, "final")
        assert w.engine.fs["/tmp/final"].data == b"first\n"
        await w.writes.write(draft, 6, b"second\n", append=False)
        await w.writes.flush(draft)
        await w.writes.release(draft)
        assert w.engine.fs["/tmp/final"].data == b"first\nsecond\n"
        assert "/tmp/new" not in w.engine.fs

    run(tmp_path, test)


def test_an_uploads_refusal_is_classed_by_what_the_engine_says() -> None:
    said = {
        "container rootfs is marked read-only": ReadOnlyFs,
        "write /x: no space left on device": NoSpace,
        'cannot overwrite directory "/tmp/d" with non-directory "/tmp/d"': NotAFile,
        'cannot overwrite non-directory "/tmp/f" with directory "/tmp/f"': AlreadyExists,
        "Could not find the file /nope in container c": NotFound,
        "something else": ApiError,
    }
    for text, kind in said.items():
        got = _classified(NotFound(text) if "find" in text else ApiError(text))
        assert type(got) is kind, text


def test_a_file_closed_for_good_while_its_upload_fails_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def test(w: World) -> None:
        tmp = await w.node("/tmp")
        w.backend.hold = trio.Event()
        w.backend.refuse = NoSpace("no space left on device")
        draft = await w.writes.create(tmp, "f", META)
        await w.writes.write(draft, 0, b"mine\n", append=False)
        failed: list[BaseException] = []

        async def close() -> None:
            try:
                await w.writes.flush(draft)
            except NoSpace as exc:
                failed.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(close)
            await trio.testing.wait_all_tasks_blocked()
            await w.writes.release(draft)  # the last close, while the upload runs
            assert w.writes.draft_of(draft.node) is draft
            with caplog.at_level(logging.WARNING):
                w.backend.hold.set()
        assert failed and w.writes.draft_of(draft.node) is None
        (kept,) = w.staged()
        assert kept.read_bytes() == b"mine\n" and str(kept) in caplog.text

    run(tmp_path, test)


def test_a_write_during_an_upload_waits_and_is_uploaded_next(tmp_path: Path) -> None:
    """Another writer's write while a close uploads waits for the upload's end
    (what is sent is never torn), and the next close sends it."""

    async def test(w: World) -> None:
        hosts = await w.node("/etc/hosts")
        draft = await w.writes.open(hosts)
        await w.writes.write(draft, 0, b"first", append=False)
        w.backend.hold = trio.Event()
        wrote: list[int] = []

        async def second_writer() -> None:
            wrote.append(await w.writes.write(draft, 0, b"SECOND", append=False))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(w.writes.flush, draft)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(second_writer)
            await trio.testing.wait_all_tasks_blocked()
            assert wrote == []  # waiting for the upload
            w.backend.hold.set()
        assert wrote == [6] and draft.dirty
        assert w.engine.fs["/etc/hosts"].data == b"first.0.1 localhost\n"
        w.backend.hold = None
        await w.writes.flush(draft)
        assert w.engine.fs["/etc/hosts"].data == b"SECOND0.1 localhost\n"
        await w.writes.release(draft)

    run(tmp_path, test)


def test_a_container_removed_during_an_upload_is_enoent(tmp_path: Path) -> None:
    """Whatever the engine answered at the step it was at, a container that is
    gone (or going) makes the close ENOENT; the staged file is kept."""

    async def test(w: World) -> None:
        hosts = await w.node("/etc/hosts")
        draft = await w.writes.open(hosts)
        await w.writes.write(draft, 0, b"mine", append=False)
        w.backend.refuse = Conflict("Container c1 is not running: Removal In Progress")
        with pytest.raises(Conflict):
            await w.writes.flush(draft)  # still there: the engine's own answer
        w.backend.gone = True
        with pytest.raises(ContainerGone) as err:
            await w.writes.flush(draft)
        assert err.value.errno == errno.ENOENT and draft.dirty
        await w.writes.release(draft)
        (kept,) = w.staged()
        assert kept.read_bytes() == b"mine0.0.1 localhost\n"

    run(tmp_path, test)


def _subclasses(cls: type[Handle]) -> set[type[Handle]]:
    found: set[type[Handle]] = set(cls.__subclasses__())
    return found.union(*(_subclasses(sub) for sub in found))


def test_only_a_drafts_close_needs_flush() -> None:
    """An open is answered with noflush unless its handle's flush does work
    (handles.file_info): the kernel would never call it. Only a draft's does,
    and WriteView opens a writer's with flush=True. A new handle with work at
    close must be opened with flush=True too, and listed here."""
    flushing = {c for c in _subclasses(Handle) if c.flush is not Handle.flush}
    assert flushing == {DraftHandle}
    fh = pyfuse3.FileHandleT(1)
    assert getattr(file_info(fh, flush=True), "noflush", False) is False
    assert getattr(file_info(fh), "noflush", False) is NOFLUSH
