"""The parts of `/<id>/root/`, `top`, `stats` and `wait` that need no engine.

The tar reader against archives Python's tarfile writes (ustar, PAX, GNU), fed
in pieces of every size; the snapshot rules of container_fs against a fake
engine that serves tars of an in-memory filesystem and counts its requests;
and the top/stats/wait renderers against answers a real engine gave.
"""

from __future__ import annotations

import io
import os
import posixpath
import stat
import tarfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
import trio
from trio.testing import MockClock, wait_all_tasks_blocked

from dockerfs_fuse.docker.errors import ApiError, NotFound
from dockerfs_fuse.engine import archive
from dockerfs_fuse.engine import files as container_fs
from dockerfs_fuse.engine.archive import ArchiveWriter, Fetch
from dockerfs_fuse.engine.files import ContainerFiles
from dockerfs_fuse.model.files import (
    Entry,
    NotADir,
    NotAFile,
    NotThere,
    TooManyStreams,
    contained_target,
    covers,
    member_path,
)
from dockerfs_fuse.model.render import render_stats, render_top, render_wait, tabwriter
from dockerfs_fuse.model.tar import Member, TarError, TarReader

# -- the tar reader ---------------------------------------------------------------------


@dataclass
class Collected:
    members: list[Member] = field(default_factory=list)
    bodies: dict[bytes, bytes] = field(default_factory=dict)
    stop_after: int | None = None

    def member(self, m: Member) -> bool:
        self.members.append(m)
        self.bodies[m.name] = b""
        return self.stop_after is None or len(self.members) < self.stop_after

    def body(self, data: memoryview) -> None:
        name = self.members[-1].name
        self.bodies[name] += bytes(data)


def sample_tar(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:

        def add(name: str, kind: bytes, data: bytes = b"", **kw: object) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.size = len(data)
            for k, v in kw.items():
                setattr(info, k, v)
            tar.addfile(info, io.BytesIO(data) if data else None)

        add("d", tarfile.DIRTYPE, mode=0o755, mtime=1_700_000_000)
        add("d/file", tarfile.REGTYPE, b"hello\n" * 200, mode=0o4750, uid=1000, gid=50)
        add("d/empty", tarfile.REGTYPE, mode=0o600)
        add("d/" + "long-name-" * 20, tarfile.REGTYPE, b"x" * 513)
        add("d/unicodé ünd space", tarfile.REGTYPE, b"u")
        add("d/link", tarfile.SYMTYPE, linkname="../" + "t" * 150)
        add("d/hard", tarfile.LNKTYPE, linkname="d/file")
        add("d/fifo", tarfile.FIFOTYPE, mode=0o644)
        add("d/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
        add("d/big-uid", tarfile.REGTYPE, b"b", uid=3_000_000, gid=70_000_000)
    return buf.getvalue()


FORMATS = {"ustar+gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}


@pytest.mark.parametrize("fmt", FORMATS.values(), ids=FORMATS.keys())
@pytest.mark.parametrize("piece", [1, 7, 511, 512, 513, 4096, 1 << 20])
def test_tar_reader_sees_what_tarfile_wrote_whatever_the_pieces(fmt: int, piece: int) -> None:
    data = sample_tar(fmt)
    got = Collected()
    reader = TarReader(got)
    for i in range(0, len(data), piece):
        reader.feed(data[i : i + piece])
    reader.finish()
    assert reader.done
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = tar.getmembers()
    # tarfile drops the "/" it writes after a directory name
    assert [m.name.decode().rstrip("/") for m in got.members] == [t.name for t in expected]
    for m, t in zip(got.members, expected, strict=True):
        assert (m.mode, m.uid, m.gid, m.size, m.mtime) == (t.mode, t.uid, t.gid, t.size, t.mtime)
        assert m.linkname.decode() == t.linkname
        assert (m.devmajor, m.devminor) == (t.devmajor, t.devminor)
        assert m.type == t.type
    assert got.bodies[b"d/file"] == b"hello\n" * 200
    assert got.bodies[("d/" + "long-name-" * 20).encode()] == b"x" * 513
    assert got.bodies["d/unicodé ünd space".encode()] == b"u"
    assert got.bodies[b"d/hard"] == b""


def test_tar_reader_stops_where_the_sink_says() -> None:
    data = sample_tar(tarfile.PAX_FORMAT)
    got = Collected(stop_after=2)
    reader = TarReader(got)
    reader.feed(data)
    assert reader.done and len(got.members) == 2


def test_a_cut_or_damaged_tar_is_an_error() -> None:
    data = sample_tar(tarfile.PAX_FORMAT)
    cut = TarReader(Collected())
    cut.feed(data[:1500])  # inside d/file's body
    with pytest.raises(TarError):
        cut.finish()
    damaged = bytearray(data)
    damaged[600] ^= 0xFF  # a header byte of the second member: its checksum fails
    with pytest.raises(TarError):
        TarReader(Collected()).feed(bytes(damaged))


def test_member_paths_follow_the_engines_naming() -> None:
    # Docker names the tar of "/" "/" and "/bin/sh"; Podman "/" and "bin/sh" or "/bin".
    assert member_path("/", b"/") == "/"
    assert member_path("/", b"/bin/sh") == "/bin/sh"
    assert member_path("/", b"bin/sh") == "/bin/sh"
    assert member_path("/", b"./bin/") == "/bin"
    # A subtree is named from its last component.
    assert member_path("/etc", b"etc") == "/etc"
    assert member_path("/etc", b"etc/hosts") == "/etc/hosts"
    assert member_path("/usr/lib", b"lib/x/y") == "/usr/lib/x/y"
    assert member_path("/etc", b"other/x") is None
    assert member_path("/etc", b"etc/../../x") is None
    assert member_path("/", b"\xff\xfe") == os.fsdecode(b"/\xff\xfe")


# -- snapshots, against a fake engine ----------------------------------------------------


@dataclass
class FakeFile:
    kind: bytes
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


class FakeRequest:
    def __init__(self, path: str) -> None:
        self.path = path
        self.cancelled = False

    def cancel(self) -> bool:
        self.cancelled = True
        return True


class FakeEngine:
    """Serves `GET archive` from an in-memory filesystem, as Docker names members,
    in pieces, from a task of its own; counts requests; can be told to hold them."""

    def __init__(self) -> None:
        self.fs: dict[str, FakeFile] = {"/": FakeFile(tarfile.DIRTYPE, mode=0o755)}
        self.requests: list[FakeRequest] = []
        self.hold = False
        self.piece = 700
        self.delay = 0.0  # before each request answers (a slow engine)

    def add(
        self, path: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", **kw: object
    ) -> None:
        parent = os.path.dirname(path)
        if parent not in self.fs:
            self.add(parent, tarfile.DIRTYPE, mode=0o755)
        self.fs[path] = FakeFile(kind, data, **kw)  # type: ignore[arg-type]

    def remove(self, path: str) -> None:
        for p in [p for p in self.fs if p == path or p.startswith(path + "/")]:
            del self.fs[p]

    def tar_of(self, path: str) -> bytes | None:
        if path not in self.fs:
            return None
        base = os.path.dirname(path)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for p in sorted(self.fs):
                if not covers(path, p):
                    continue
                f = self.fs[p]
                name = p if path == "/" else os.path.relpath(p, base)
                info = tarfile.TarInfo(name)
                info.type = f.kind
                info.mode, info.uid, info.gid, info.mtime = f.mode, f.uid, f.gid, 1000
                info.linkname = f.link
                info.size = len(f.data) if f.kind == tarfile.REGTYPE else 0
                tar.addfile(info, io.BytesIO(f.data) if info.size else None)
        return buf.getvalue()

    def start(self, cid: str, path: str, out: ArchiveWriter) -> FakeRequest:
        request = FakeRequest(path)
        self.requests.append(request)
        trio.lowlevel.spawn_system_task(self._serve, request, out)
        return request

    async def _serve(self, request: FakeRequest, out: ArchiveWriter) -> None:
        while self.hold and not request.cancelled:
            await trio.sleep(0.001)
        await trio.sleep(self.delay)
        if self._loops(request.path):
            out.finish(ApiError(f"evalSymlinksInScope: too many links in {request.path}"))
            return
        data = self.tar_of(request.path)
        if data is None:
            out.finish(NotFound(f"no such path {request.path}"))
            return
        for i in range(0, len(data), self.piece):
            await trio.sleep(0)
            if request.cancelled or not out.write(data[i : i + self.piece]):
                break
        if not request.cancelled:
            out.finish(None)
        out.close()

    def _loops(self, path: str) -> bool:
        """Whether a path is a symlink that never ends (Docker resolves the one asked for)."""
        seen = set()
        while path in self.fs and self.fs[path].kind == tarfile.SYMTYPE:
            if path in seen:
                return True
            seen.add(path)
            path = posixpath.normpath(posixpath.join(posixpath.dirname(path), self.fs[path].link))
        return False

    def files(self, streams: int = 8) -> ContainerFiles:
        return ContainerFiles(self.start, streams=streams, is_gone=gone, is_refused=refused)

    def kinds(self, files: ContainerFiles) -> dict[str, int]:
        return {k: v for k, v in files.requests.items() if v}


def gone(exc: Exception) -> bool:
    return isinstance(exc, NotFound | NotThere)


def refused(exc: Exception) -> bool:
    return isinstance(exc, ApiError)


def run(test: Callable[[], Awaitable[None]], clock: trio.abc.Clock | None = None) -> None:
    trio.run(test, clock=clock)


def engine_with_a_tree() -> FakeEngine:
    e = FakeEngine()
    e.add("/bin/busybox", data=b"\x7fELF" + b"b" * 5000, mode=0o755)
    e.add("/bin/sh", tarfile.SYMTYPE, link="busybox", mode=0o777)
    e.add("/etc/hosts", data=b"127.0.0.1 localhost\n")
    e.add("/etc/mtab", tarfile.SYMTYPE, link="/proc/mounts", mode=0o777)
    e.add("/etc/zhard", tarfile.LNKTYPE, link="etc/hosts")
    e.add("/tmp/fifo", tarfile.FIFOTYPE)
    e.add("/empty", tarfile.DIRTYPE, mode=0o700, uid=1000, gid=1000)
    e.add("/data/ünï cödé/x y", data=b"spaced\n", uid=1000, gid=100)
    return e


def names(entries: list[Entry]) -> list[str]:
    return [e.name for e in entries]


def test_a_walk_costs_one_request_and_a_second_open_reads_again() -> None:
    async def main() -> None:
        e = engine_with_a_tree()
        files = e.files()
        assert names(await files.listing("c", "/")) == ["bin", "data", "empty", "etc", "tmp"]
        # The walk goes on: every directory below comes from that one request.
        assert names(await files.listing("c", "/etc")) == ["hosts", "mtab", "zhard"]
        assert names(await files.listing("c", "/bin")) == ["busybox", "sh"]
        assert await files.listing("c", "/empty") == []
        assert names(await files.listing("c", "/data/ünï cödé")) == ["x y"]
        assert e.kinds(files) == {"listing": 1}
        # Opening a directory again reads it again: what the container wrote since shows.
        e.add("/etc/new", data=b"n")
        assert names(await files.listing("c", "/etc")) == ["hosts", "mtab", "new", "zhard"]
        assert e.requests[-1].path == "/etc" and e.kinds(files) == {"listing": 2}
        e.remove("/etc/hosts")
        assert "hosts" not in names(await files.listing("c", "/etc"))
        assert e.kinds(files) == {"listing": 3}

    run(main)


def test_entries_carry_types_modes_owners_and_contained_link_targets() -> None:
    async def main() -> None:
        e = engine_with_a_tree()
        files = e.files()
        await files.listing("c", "/")
        etc = {x.name: x for x in await files.listing("c", "/etc")}
        mtab = etc["mtab"]
        assert stat.S_ISLNK(mtab.mode) and mtab.link == b"../proc/mounts"
        assert mtab.size == len(b"../proc/mounts")  # as lstat says of what readlink shows
        hard = etc["zhard"]
        assert stat.S_ISREG(hard.mode) and hard.size == etc["hosts"].size
        (fifo,) = await files.listing("c", "/tmp")
        assert stat.S_ISFIFO(fifo.mode)
        top = {x.name: x for x in await files.listing("c", "/")}
        assert stat.S_IMODE(top["empty"].mode) == 0o700 and top["empty"].uid == 1000
        assert top["bin"].is_dir and top["bin"].size == 0
        bins = {x.name: x for x in await files.listing("c", "/bin")}
        assert stat.S_IMODE(bins["busybox"].mode) == 0o755 and bins["busybox"].size == 5004

    run(main)


def test_file_contents_come_from_the_walk_once_then_by_a_request_of_their_own() -> None:
    async def main() -> None:
        e = engine_with_a_tree()
        files = e.files()
        await files.listing("c", "/")
        reader = await files.open("c", "/etc/hosts")
        assert await reader.read(0, 100) == b"127.0.0.1 localhost\n"
        assert await reader.read(4, 3) == b"0.0" and await reader.read(100, 10) == b""
        hard = await files.open("c", "/etc/zhard")  # a hard link: the same body
        assert await hard.read(0, 100) == b"127.0.0.1 localhost\n"
        assert e.kinds(files) == {"listing": 1}
        again = await files.open("c", "/etc/hosts")
        assert await again.read(0, 9) == b"127.0.0.1"
        assert e.kinds(files) == {"listing": 1, "file": 1}
        for r in (reader, hard, again):
            r.close()
        with pytest.raises(NotAFile):
            await files.open("c", "/etc")
        with pytest.raises(NotFound):
            await files.open("c", "/etc/nothing")

    run(main)


def test_bodies_beyond_the_budget_are_not_kept_by_a_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "SPOOL_TOTAL_MAX", 1000)

    async def main() -> None:
        e = engine_with_a_tree()
        files = e.files()
        await files.listing("c", "/bin")
        reader = await files.open("c", "/bin/busybox")  # 5004 bytes: fetched by itself
        assert await reader.read(0, 10_000) == b"\x7fELF" + b"b" * 5000
        assert await reader.read(5000, 100) == b"bbbb"
        assert e.kinds(files) == {"listing": 1, "file": 1}
        reader.close()

    run(main)


def test_a_walk_keeps_large_bodies_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A copying walk (tar -c) must not fetch a large file a second time: its
    body came with the walk's request. Only what exceeds the budget is fetched."""
    monkeypatch.setattr(archive, "SPOOL_TOTAL_MAX", 6 << 20)

    async def main() -> None:
        e = engine_with_a_tree()
        large = bytes(range(256)) * (5 << 12)  # 5 MiB: more than a small file
        e.add("/bin/large", data=large)
        e.add("/bin/zz", data=b"z" * (2 << 20))  # after it in the tar: over the budget
        files = e.files()
        await files.listing("c", "/bin")
        reader = await files.open("c", "/bin/large")
        assert await reader.read(0, len(large) + 1) == large
        assert e.kinds(files) == {"listing": 1}
        late = await files.open("c", "/bin/zz")
        assert await late.read(0, 10) == b"z" * 10
        assert e.kinds(files) == {"listing": 1, "file": 1}
        reader.close()
        late.close()

    run(main)


@pytest.mark.parametrize(
    ("path", "target", "shown"),
    [
        # Absolute: up to root/, then the path from the container's "/".
        ("/data/osr", "/etc/os-release", "../etc/os-release"),
        ("/osr", "/etc/os-release", "etc/os-release"),
        ("/data/links/abs", "/data/nested/a", "../../data/nested/a"),
        ("/a/b/l", "/", "../.."),
        ("/l", "/", "."),
        ("/a/l", "/etc/", "../etc/"),
        # `..` at "/" stays at "/", as in the container.
        ("/data/x", "/../etc/os-release", "../etc/os-release"),
        ("/data/x", "/..", ".."),
        ("/data/x", "../../../../etc/os-release", "../etc/os-release"),
        ("/l", "..", "."),
        ("/data/links/up", "../../..", "../.."),
        # `..` after a name (a link to "/", perhaps) is resolved here, never left to the kernel.
        ("/a/b/l", "x/../../y", "../../a/y"),
        ("/a/b/l", "../../x/../../../etc", "../../etc"),
        # Relative targets that only climb to root/ at most, then descend: verbatim.
        ("/bin/sh", "busybox", "busybox"),
        ("/data/links/rel", "../nested/a/b", "../nested/a/b"),
        ("/a/b/l", "./../../x/./y/", "./../../x/./y/"),
        ("/data/self", "self", "self"),
        ("/d/\udcff", "/\udcfe/x", "../\udcfe/x"),
    ],
)
def test_link_targets_stay_inside_the_container(path: str, target: str, shown: str) -> None:
    got = contained_target(path, os.fsencode(target))
    assert got == os.fsencode(shown)
    # Followed from the link's directory, it never climbs above root/.
    depth = path.count("/") - 1
    for part in got.split(b"/"):
        depth += -1 if part == b".." else 0 if part in (b"", b".") else 1
        assert depth >= 0


def test_a_link_that_loops_is_found_in_its_parents_listing() -> None:
    async def main() -> None:
        e = engine_with_a_tree()
        e.add("/data/loop", tarfile.SYMTYPE, link="loop", mode=0o777)
        e.add("/data/ping", tarfile.SYMTYPE, link="/data/pong", mode=0o777)
        e.add("/data/pong", tarfile.SYMTYPE, link="ping", mode=0o777)
        files = e.files()
        loop = await files.stat("c", "/data/loop")
        assert stat.S_ISLNK(loop.mode) and loop.link == b"loop" and loop.size == 4
        assert e.kinds(files) == {"probe": 1, "listing": 1}
        # That listing serves on: an open of the directory, the other links.
        assert names(await files.listing("c", "/data")) == ["loop", "ping", "pong", "ünï cödé"]
        ping = await files.stat("c", "/data/ping")
        assert ping.link == b"../data/pong"
        assert e.kinds(files) == {"probe": 1, "listing": 1}
        # What the engine refuses about a path that is not there stays its answer.
        with pytest.raises(NotFound):
            await files.stat("c", "/data/none")

    run(main)


def test_lookups_use_a_live_listing_and_otherwise_probe() -> None:
    async def main() -> None:
        e = engine_with_a_tree()
        files = e.files()
        await files.listing("c", "/")
        assert (await files.stat("c", "/etc/hosts")).size == 20
        assert e.kinds(files) == {"listing": 1}
        e.add("/etc/later", data=b"later\n")
        # Not in the listing: it may be new, so ask.
        later = await files.stat("c", "/etc/later")
        assert later.size == 6 and e.kinds(files) == {"listing": 1, "probe": 1}
        # A probe keeps a small body: the open that follows costs nothing more.
        reader = await files.open("c", "/etc/later")
        assert await reader.read(0, 100) == b"later\n"
        assert e.kinds(files) == {"listing": 1, "probe": 1}
        reader.close()
        with pytest.raises(NotFound):
            await files.stat("c", "/etc/none")

    run(main)


def test_a_listing_goes_stale_after_a_pause_in_the_walk() -> None:
    clock = MockClock()  # time passes only when the test says

    async def main() -> None:
        e = engine_with_a_tree()
        files = e.files()
        await files.listing("c", "/")
        clock.jump(container_fs.WALK_IDLE / 2)
        await files.listing("c", "/etc")
        assert e.kinds(files) == {"listing": 1}
        clock.jump(container_fs.WALK_IDLE * 2)
        await files.listing("c", "/bin")  # never opened, but that walk is over
        assert e.kinds(files) == {"listing": 2} and e.requests[-1].path == "/bin"
        clock.jump(container_fs.MAX_AGE + 1)
        await files.stat("c", "/bin/sh")
        assert e.kinds(files) == {"listing": 2, "probe": 1}

    run(main, clock)


def test_a_walk_that_paused_snapshots_a_directory_again_not_each_file() -> None:
    clock = MockClock()  # time passes only when the test says

    async def main() -> None:
        e = engine_with_a_tree()
        for name in ("a", "b", "c", "d"):
            e.add(f"/etc/{name}", data=name.encode())
        files = e.files()
        await files.listing("c", "/")
        await files.listing("c", "/etc")
        clock.jump(container_fs.WALK_IDLE * 2)  # the walk's consumer was slow
        for name in ("a", "b", "c", "d"):
            reader = await files.open("c", f"/etc/{name}", size_hint=1)
            assert await reader.read(0, 10) == name.encode()
            reader.close()
        # One file by itself; at the second, the directory again; the rest from there.
        assert e.kinds(files) == {"listing": 2, "file": 1}
        # Without a size (never looked up) or a large one: the file by itself.
        clock.jump(container_fs.WALK_IDLE * 2)
        for name in ("a", "b"):
            (await files.open("c", f"/etc/{name}")).close()
        assert e.kinds(files) == {"listing": 2, "file": 3}

    run(main, clock)


def test_a_walk_that_paused_on_a_slow_engine_is_not_a_request_per_entry() -> None:
    """The walk's snapshot expired (it paused), and every request now takes
    longer than WALK_IDLE (a starved machine): the walk still goes on from a
    snapshot of the directory, whether it looks entries up or only opens them."""

    async def main() -> None:
        e = engine_with_a_tree()
        for i in range(40):
            e.add(f"/looked/f{i:02}", data=b"%d" % i)
            e.add(f"/opened/f{i:02}", data=b"%d" % i)
        files = e.files()
        await files.listing("c", "/")
        await files.listing("c", "/looked")
        await files.listing("c", "/opened")
        e.delay = container_fs.WALK_IDLE * 1.5
        await trio.sleep(container_fs.WALK_IDLE * 2)  # the walk's consumer was starved
        for i in range(40):
            path = f"/looked/f{i:02}"
            entry = await files.stat("c", path)
            reader = await files.open("c", path, size_hint=entry.size)
            assert await reader.read(0, 10) == b"%d" % i
            reader.close()
        # Two probes; at the third entry the directory again; the rest from there.
        assert e.kinds(files) == {"listing": 2, "probe": 2}
        assert e.requests[-1].path == "/looked"
        await trio.sleep(container_fs.WALK_IDLE * 2)
        for i in range(40):  # the kernel still knew each entry: opens only
            reader = await files.open("c", f"/opened/f{i:02}", size_hint=1)
            assert await reader.read(0, 10) == b"%d" % i
            reader.close()
        assert e.kinds(files) == {"listing": 3, "probe": 2, "file": 1}
        assert e.requests[-1].path == "/opened"

    run(main, MockClock(autojump_threshold=0))


def test_vanished_and_wrong_kinds_of_paths() -> None:
    async def main() -> None:
        e = engine_with_a_tree()
        files = e.files()
        await files.listing("c", "/")
        e.remove("/etc")
        # /etc is in the snapshot of "/" that is still fresh, and has not been
        # opened from it: it is listed from there.
        assert "hosts" in names(await files.listing("c", "/etc"))
        with pytest.raises(NotFound):
            await files.listing("c", "/etc")  # opened again: asked again, and gone
        with pytest.raises(NotADir):
            await files.listing("c", "/bin/busybox")
        e.add("/newdir/x")
        # Not in the walk's snapshot (new since): a snapshot of its own.
        assert names(await files.listing("c", "/newdir")) == ["x"]
        e.remove("/newdir")
        with pytest.raises((NotFound, NotThere)):
            await files.listing("c", "/newdir")

    run(main)


def test_newer_news_wins_over_an_older_snapshot() -> None:
    async def main() -> None:
        e = engine_with_a_tree()
        files = e.files()
        await files.listing("c", "/")
        e.remove("/etc/hosts")
        # The walk's snapshot still has it: a walk sees one moment, once.
        reader = await files.open("c", "/etc/hosts")
        reader.close()
        assert names(await files.listing("c", "/bin")) == ["busybox", "sh"]  # the walk
        e.remove("/bin")
        with pytest.raises(NotFound):
            await files.listing("c", "/bin")  # opened again: asked again, and gone
        # The failed listing is news: the older snapshot no longer answers for /bin.
        with pytest.raises(NotFound):
            await files.stat("c", "/bin/sh")
        with pytest.raises(NotFound):
            await files.open("c", "/bin/busybox")
        # A newer listing of /etc supersedes the walk's view of it, claimed or not.
        e.add("/etc/fresh", data=b"f")
        await files.listing("c", "/etc")
        assert (await files.stat("c", "/etc/fresh")).size == 1
        with pytest.raises(NotFound):
            await files.open("c", "/etc/hosts")

    run(main)


def test_a_capped_index_still_lists_the_directory_it_was_taken_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(archive, "INDEX_MAX", 3)

    async def main() -> None:
        e = engine_with_a_tree()
        for i in range(10):
            e.add(f"/many/{i:02}", data=b"%d" % i)
        files = e.files()
        assert names(await files.listing("c", "/")) == [
            "bin",
            "data",
            "empty",
            "etc",
            "many",
            "tmp",
        ]
        assert len(await files.listing("c", "/many")) == 10
        assert e.kinds(files) == {"listing": 2} and e.requests[-1].path == "/many"

    run(main)


def test_a_reader_that_gives_up_cancels_the_request() -> None:
    async def main() -> None:
        e = engine_with_a_tree()
        e.hold = True
        files = e.files()
        with trio.move_on_after(0.05):
            await files.listing("c", "/")
        assert e.requests[0].cancelled
        assert files.stats()["streams"] == 0
        e.hold = False
        assert names(await files.listing("c", "/tmp")) == ["fifo"]

    run(main)


def test_too_many_requests_in_flight_is_enfile_not_a_hang(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(container_fs, "STREAM_WAIT", 0.05)

    async def main() -> None:
        e = engine_with_a_tree()
        e.hold = True
        files = e.files(streams=1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(files.listing, "c", "/")
            await wait_all_tasks_blocked()  # its request holds the one stream
            with pytest.raises(TooManyStreams):
                await files.listing("another", "/etc")
            e.hold = False
        assert names(await files.listing("c", "/tmp")) == ["fifo"]

    run(main)


def test_snapshots_are_freed_when_idle() -> None:
    async def main() -> None:
        e = engine_with_a_tree()
        files = e.files()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(files.run_sweeper)
            await files.listing("c", "/")
            reader = await files.open("c", "/etc/hosts")
            assert files.stats()["snapshots"] == 1
            await trio.sleep(container_fs.WALK_IDLE * 2.5)
            assert files.stats()["snapshots"] == 0
            nursery.cancel_scope.cancel()
        # A reader keeps the body it opened, even after its snapshot retired.
        assert await reader.read(0, 9) == b"127.0.0.1"
        spool = reader.spool
        reader.close()
        assert spool.closed

    run(main, MockClock(autojump_threshold=0))


def test_probe_kinds_and_file_kinds_never_list() -> None:
    assert {k.value for k in Fetch} == {"listing", "probe", "file"}


# -- top, stats, wait ---------------------------------------------------------------------------

# dockerd 20.10's answer for a `sleep 1d` container, and what `docker top` printed for it.
TOP_ANSWER = {
    "Processes": [["root", "25794", "25772", "0", "00:42", "?", "00:00:00", "sleep 1d"]],
    "Titles": ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"],
}
TOP_PRINTED = (
    "UID                 PID                 PPID                C                   "
    "STIME               TTY                 TIME                CMD\n"
    "root                25794               25772               0                   "
    "00:42               ?                   00:00:00            sleep 1d\n"
)


def test_top_is_laid_out_as_docker_top_prints_it() -> None:
    assert render_top(TOP_ANSWER).decode() == TOP_PRINTED
    assert render_top({"Titles": [], "Processes": []}) == b""


def test_tabwriter_widens_a_column_past_its_minimum() -> None:
    rows = [["A", "B", "C"], ["x" * 25, "y", "z z"]]
    assert tabwriter(rows, 20, 3) == ("A" + " " * 27 + "B" + " " * 19 + "C\n") + (
        "x" * 25 + "   " + "y" + " " * 19 + "z z\n"
    )


STATS_ANSWER = {
    "read": "2026-11-28T00:46:02.686077155Z",
    "pids_stats": {"current": 3},
    "cpu_stats": {"cpu_usage": {"total_usage": 26830841}},
    "memory_stats": {"usage": 299008, "limit": 25276502016},
    "networks": {"eth0": {"rx_bytes": 10, "tx_bytes": 20}, "eth1": {"rx_bytes": 1, "tx_bytes": 2}},
    "blkio_stats": {
        "io_service_bytes_recursive": [
            {"major": 8, "minor": 0, "op": "Read", "value": 4096},
            {"major": 8, "minor": 0, "op": "Write", "value": 8192},
            {"major": 8, "minor": 16, "op": "read", "value": 1},
            {"major": 8, "minor": 0, "op": "Total", "value": 12288},
        ]
    },
}


def test_stats_are_name_value_lines_of_numbers() -> None:
    assert render_stats(STATS_ANSWER).decode().splitlines() == [
        "cpu_usage_ns 26830841",
        "memory_usage_bytes 299008",
        "memory_limit_bytes 25276502016",
        "pids 3",
        "network_rx_bytes 11",
        "network_tx_bytes 22",
        "block_read_bytes 4097",
        "block_write_bytes 8192",
    ]
    # No network, no block I/O accounted (--network=none, cgroup v1 without blkio): zeros.
    bare = {k: v for k, v in STATS_ANSWER.items() if k not in ("networks", "blkio_stats")}
    assert b"network_rx_bytes 0\n" in render_stats(bare)
    # A container that is not running: Docker sends a zero sample; the file is empty.
    assert render_stats({"read": "0001-01-01T00:00:00Z", "pids_stats": {}}) == b""


def test_wait_is_the_exit_code_and_a_newline() -> None:
    assert render_wait(3) == b"3\n" and render_wait(137) == b"137\n"


def test_names_looked_up_before_they_are_made_never_list_their_directory() -> None:
    """`tar -x` and `cp -r` look up each name before creating it: a probe that
    finds nothing is no step of a walk, so however many come in a row, each
    stays one probe (a 404, cheap for the engine), never a listing of the
    directory (a tar of all of it, growing with each file made)."""

    async def main() -> None:
        e = engine_with_a_tree()
        e.add("/new/.keep", data=b"")
        files = e.files()
        for i in range(10):
            path = f"/new/f{i}"
            with pytest.raises(NotFound):
                await files.stat("c", path)
            e.add(path, data=b"%d" % i)  # what the upload after the create makes
            files.wrote("c", path)
        assert e.kinds(files) == {"probe": 10}

    run(main)


def test_an_upload_leaves_probes_of_other_paths_answering() -> None:
    """After we upload one file, a probe of its sibling still says what that
    sibling is (`sed -i` looks its file up again before the rename); the
    file we wrote, and its directory's listing, are asked anew."""

    async def main() -> None:
        e = engine_with_a_tree()
        files = e.files()
        probed = (await files.stat("c", "/etc/mtab")).size
        assert e.kinds(files) == {"probe": 1}
        e.add("/etc/sedXYZ", data=b"new\n")
        files.wrote("c", "/etc/sedXYZ")
        assert (await files.stat("c", "/etc/mtab")).size == probed  # that probe answers
        assert e.kinds(files) == {"probe": 1}
        assert (await files.stat("c", "/etc/sedXYZ")).size == 4
        assert "sedXYZ" in names(await files.listing("c", "/etc"))
        assert e.kinds(files) == {"probe": 2, "listing": 1}

    run(main)


def test_a_small_directory_probed_answers_its_names_lookups_and_opens() -> None:
    """`sed -i root/etc/hosts` cold: the lookup of `etc` reads it whole, and
    the lookup and open of `hosts` that follow ask nothing more; a
    directory's open still reads it anew, and a new name is still asked."""

    async def main() -> None:
        e = engine_with_a_tree()
        files = e.files()
        assert (await files.stat("c", "/etc")).is_dir
        assert (await files.stat("c", "/etc/hosts")).size == 20
        reader = await files.open("c", "/etc/hosts")
        assert await reader.read(0, 100) == b"127.0.0.1 localhost\n"
        reader.close()
        assert e.kinds(files) == {"probe": 1}
        e.add("/etc/new", data=b"n")
        assert names(await files.listing("c", "/etc")) == ["hosts", "mtab", "new", "zhard"]
        assert e.kinds(files) == {"probe": 1, "listing": 1}
        e.add("/etc/newer", data=b"n")
        assert (await files.stat("c", "/etc/newer")).size == 1
        assert e.kinds(files) == {"probe": 2, "listing": 1}

    run(main)


def test_a_big_directory_probed_is_one_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(archive, "PROBE_DIR_ENTRIES", 2)

    async def main() -> None:
        e = engine_with_a_tree()
        files = e.files()
        assert (await files.stat("c", "/etc")).is_dir
        assert (await files.stat("c", "/etc/mtab")).is_link
        assert e.kinds(files) == {"probe": 2}

    run(main)


def test_a_small_directory_probed_answers_its_names_only_just_after() -> None:
    """`cat root/etc/hosts` probes `etc` whole; something keeps reading in
    the container (`tail -f`, a loop of lookups of `hosts`); the container
    rewrites /etc/conf. Minutes later `cat root/etc/conf` reads the new
    content: the probe answered for `conf` only within WALK_IDLE of its end,
    and neither use nor reads elsewhere extended that."""
    clock = MockClock()  # time passes only when the test says

    async def main() -> None:
        e = engine_with_a_tree()
        e.add("/etc/conf", data=b"old\n")
        files = e.files()
        assert (await files.stat("c", "/etc")).is_dir
        assert (await files.stat("c", "/etc/hosts")).size == 20
        reader = await files.open("c", "/etc/hosts")
        assert await reader.read(0, 100) == b"127.0.0.1 localhost\n"
        await wait_all_tasks_blocked()  # the probe has read `etc` to its end
        assert e.kinds(files) == {"probe": 1}
        e.add("/etc/conf", data=b"new content\n")
        for _ in range(600):  # 300 s of reads and lookups, each well within WALK_IDLE
            clock.jump(container_fs.WALK_IDLE / 2)
            files.touch("c")
            await files.stat("c", "/etc/hosts")
        reader.close()
        assert (await files.stat("c", "/etc/conf")).size == len(b"new content\n")
        conf = await files.open("c", "/etc/conf")
        assert await conf.read(0, 100) == b"new content\n"
        conf.close()

    run(main, clock)


def test_a_change_never_starts_from_a_directory_probe() -> None:
    """The content a write loads (`>>`, `sed -i`) is read anew, even just
    after a lookup probed its directory whole."""
    clock = MockClock()

    async def main() -> None:
        e = engine_with_a_tree()
        e.add("/etc/conf", data=b"old\n")
        files = e.files()
        assert (await files.stat("c", "/etc")).is_dir
        assert (await files.stat("c", "/etc/conf")).size == 4
        await wait_all_tasks_blocked()
        assert e.kinds(files) == {"probe": 1}
        e.add("/etc/conf", data=b"new content\n")
        reader = await files.open("c", "/etc/conf", to_change=True)
        assert await reader.read(0, 100) == b"new content\n"
        reader.close()
        assert e.kinds(files) == {"probe": 1, "file": 1}

    run(main, clock)
