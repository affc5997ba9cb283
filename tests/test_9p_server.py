"""The shim as a real process over a temporary tree, driven by our own small
client so that each edge of the protocol can be hit on purpose."""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ninep_support import (
    Client,
    running_shim,
    shim_env,
    shim_log,
    start_shim,
    start_shim_on,
    stop_shim,
)

from dockerfs_fuse.ninep import codec
from dockerfs_fuse.ninep.cli import Dial, parse_dial, shim_command
from dockerfs_fuse.ninep.codec import Dialect

Shim = tuple[str, int]


def make_tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("hello\n")
    (root / "sub" / "b.txt").write_text("world\n")
    (root / "big").write_bytes(bytes(range(256)) * 200)
    for i in range(40):
        (root / "sub" / "deeper" / f"file{i:02}").write_text(str(i))
    (root / "link").symlink_to("a.txt")
    (root / "escape").symlink_to("/etc")
    (root / "ctl").write_text("")
    (root / "ro").write_text("frozen")
    (root / "ro").chmod(0o444)
    os.mkfifo(root / "fifo")
    (root / "ancient").write_text("")
    os.utime(root / "ancient", (-86400, -86400))  # before 1970: unsigned on the wire
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tree(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def shim(tree: Path) -> Iterator[Shim]:
    with running_shim(tree) as (_, host, port):
        yield host, port


@pytest.fixture
def client9(shim: Shim) -> Iterator[Client]:
    with Client.session(*shim, version="9P2000") as client:
        yield client


@pytest.fixture
def clientL(shim: Shim) -> Iterator[Client]:
    with Client.session(*shim, version="9P2000.L", msize=65536) as client:
        yield client


def errno_of(reply: codec.Message) -> int:
    if isinstance(reply, codec.Rlerror):
        return reply.ecode
    assert isinstance(reply, codec.Rerror), reply
    return reply.errno


# ------------------------------------------------------------------ version


@pytest.mark.parametrize(
    ("asked", "answered"),
    [
        ("9P2000", "9P2000"),
        ("9P2000.u", "9P2000.u"),
        ("9P2000.L", "9P2000.L"),
        ("9P2000.nonsense", "9P2000"),
        ("bogus", "unknown"),
    ],
)
def test_version_picks_the_dialect(shim: Shim, asked: str, answered: str) -> None:
    with Client(*shim) as client:
        assert client.version(asked).version == answered


def test_msize_is_negotiated_down(shim: Shim) -> None:
    with Client(*shim) as client:
        assert client.version("9P2000", 8192).msize == 8192
        assert client.version("9P2000", 1 << 30).msize == 256 * 1024  # the documented cap


def test_auth_is_not_required(shim: Shim) -> None:
    with Client(*shim) as client:
        client.version("9P2000")
        reply = client.rpc(codec.Tauth(tag=1, afid=5, uname="u", aname=""))
        assert isinstance(reply, codec.Rerror)
        assert reply.ename == "no authentication required"
        client.version("9P2000.L")
        reply = client.rpc(codec.Tauth(tag=1, afid=5, uname="u", aname="", n_uname=0))
        assert reply == codec.Rlerror(tag=1, ecode=errno.ENOENT)


# ----------------------------------------------------------- walk and read


def test_cat_in_every_dialect(shim: Shim, tree: Path) -> None:
    for version in ("9P2000", "9P2000.u", "9P2000.L"):
        with Client.session(*shim, version=version) as client:
            assert client.cat("a.txt") == b"hello\n"
            assert client.cat("sub/b.txt") == b"world\n"
            assert client.cat("big") == (tree / "big").read_bytes()


def test_walk_partial_and_failures(client9: Client) -> None:
    partial = client9.walk("sub/nope/x", newfid=7)
    assert isinstance(partial, codec.Rwalk) and len(partial.qids) == 1
    assert isinstance(client9.rpc(codec.Tclunk(tag=1, fid=7)), codec.Rerror)  # not created
    first = client9.walk("nope", newfid=7)
    assert isinstance(first, codec.Rerror) and first.ename == "file does not exist"
    too_many = client9.rpc(codec.Twalk(tag=1, fid=0, newfid=8, wnames=("sub",) * 17))
    assert isinstance(too_many, codec.Rerror)
    sixteen = client9.rpc(codec.Twalk(tag=1, fid=0, newfid=8, wnames=("sub", "..") * 8))
    assert isinstance(sixteen, codec.Rwalk) and len(sixteen.qids) == 16


def test_qids_are_stable_and_dotdot_stops_at_root(client9: Client) -> None:
    one = client9.walk("sub/b.txt", newfid=1)
    two = client9.walk("sub/deeper/../b.txt", newfid=2)
    assert isinstance(one, codec.Rwalk) and isinstance(two, codec.Rwalk)
    assert one.qids[-1] == two.qids[-1]
    assert one.qids[0].type == codec.QTDIR and one.qids[-1].type == codec.QTFILE
    root = client9.rpc(codec.Tstat(tag=1, fid=0))
    up = client9.walk("..", newfid=3)
    assert isinstance(root, codec.Rstat) and isinstance(up, codec.Rwalk)
    assert up.qids == (root.stat.qid,)


def test_symlinks_cannot_leave_the_root(client9: Client) -> None:
    escaped = client9.walk("escape/passwd", newfid=1)
    assert isinstance(escaped, codec.Rerror)
    assert client9.cat("link") == b"hello\n"  # 9P2000 follows links inside the root


def read_dir_9p(client: Client, fid: int, count: int) -> list[codec.Stat]:
    client.rpc(codec.Topen(tag=1, fid=fid, mode=codec.OREAD))
    data = b""
    while True:
        reply = client.rpc(codec.Tread(tag=2, fid=fid, offset=len(data), count=count))
        assert isinstance(reply, codec.Rread), reply
        if not reply.data:
            return codec.decode_stats(data, client.dialect)
        codec.decode_stats(reply.data, client.dialect)  # whole records in every read
        data += reply.data


def test_directory_read_as_stat_records(shim: Shim, tree: Path) -> None:
    with Client.session(*shim, version="9P2000") as client:
        client.walk("sub/deeper", newfid=1)
        stats = read_dir_9p(client, 1, count=200)  # several reads, offsets chained
        assert [s.name for s in stats] == sorted(os.listdir(tree / "sub" / "deeper"))
        assert all(s.length == len(str(int(s.name[4:]))) for s in stats)
        bad = client.rpc(codec.Tread(tag=3, fid=1, offset=17, count=200))
        assert isinstance(bad, codec.Rerror)
        # Linux tops up its buffer with a read of exactly the count the last
        # read left unused: a record that does not fit is then an empty read,
        # and the same offset works later with a full count.
        first = client.rpc(codec.Tread(tag=3, fid=1, offset=0, count=100))
        assert (
            isinstance(first, codec.Rread)
            and len(codec.decode_stats(first.data, client.dialect)) == 1
        )
        end = len(first.data)
        top_up = codec.Tread(tag=3, fid=1, offset=end, count=100 - end)
        assert client.rpc(top_up) == codec.Rread(tag=3, data=b"")
        again = client.rpc(codec.Tread(tag=3, fid=1, offset=end, count=100))
        assert isinstance(again, codec.Rread) and codec.decode_stats(again.data, client.dialect)
        # Any other read too small for the next record is an error, not an
        # empty read that a client would take for the end of the listing.
        short = client.rpc(codec.Tread(tag=3, fid=1, offset=end, count=10))
        assert (
            isinstance(short, codec.Rerror)
            and short.ename == "directory entry larger than the read count"
        )
    with Client.session(*shim, version="9P2000.u") as client:
        client.walk("", newfid=1)
        by_name = {s.name: s for s in read_dir_9p(client, 1, count=4096)}
        assert by_name["link"].mode & codec.DMSYMLINK and by_name["link"].extension == "a.txt"
        assert by_name["sub"].mode & codec.DMDIR and by_name["sub"].qid.type == codec.QTDIR
        assert by_name["a.txt"].n_uid == os.getuid()
        assert "escape" in by_name and "fifo" in by_name


def test_linux_getattr_readdir_statfs_readlink(clientL: Client, tree: Path) -> None:
    c = clientL
    c.walk("sub/deeper", newfid=1)
    attr = c.rpc(codec.Tgetattr(tag=1, fid=1, request_mask=codec.GETATTR_ALL))
    assert isinstance(attr, codec.Rgetattr)
    assert attr.qid.type == codec.QTDIR and attr.mode == os.stat(tree / "sub/deeper").st_mode
    c.rpc(codec.Tlopen(tag=1, fid=1, flags=os.O_RDONLY))
    names: list[str] = []
    offset = 0
    while True:  # a small count forces many Treaddir calls resuming at cookies
        reply = c.rpc(codec.Treaddir(tag=1, fid=1, offset=offset, count=100))
        assert isinstance(reply, codec.Rreaddir)
        entries = codec.decode_dirents(reply.data)
        if not entries:
            break
        names += [e.name for e in entries]
        offset = entries[-1].offset
    assert names == [".", "..", *sorted(os.listdir(tree / "sub" / "deeper"))]
    fs = c.rpc(codec.Tstatfs(tag=1, fid=0))
    assert isinstance(fs, codec.Rstatfs) and fs.type == 0x01021997
    c.walk("link", newfid=2)
    assert c.rpc(codec.Treadlink(tag=1, fid=2)) == codec.Rreadlink(tag=1, target="a.txt")
    c.walk("ancient", newfid=4)
    old = c.rpc(codec.Tgetattr(tag=1, fid=4, request_mask=codec.GETATTR_ALL))
    assert isinstance(old, codec.Rgetattr) and old.mtime_sec == 0
    xattr = c.rpc(codec.Txattrwalk(tag=1, fid=0, newfid=3, name="user.x"))
    assert xattr == codec.Rlerror(tag=1, ecode=errno.EOPNOTSUPP)


# -------------------------------------------------------------- policy


def test_read_only_refusals_9p2000(client9: Client) -> None:
    c = client9
    for mode in (codec.OWRITE, codec.ORDWR, codec.OREAD | codec.OTRUNC, codec.ORCLOSE):
        c.walk("ctl", newfid=1)
        reply = c.rpc(codec.Topen(tag=1, fid=1, mode=mode))
        assert isinstance(reply, codec.Rerror) and reply.ename == "permission denied"
        c.rpc(codec.Tclunk(tag=1, fid=1))
    create = c.rpc(codec.Tcreate(tag=1, fid=0, name="new", perm=0o644, mode=codec.OWRITE))
    assert isinstance(create, codec.Rerror) and create.ename == "permission denied"
    c.walk("a.txt", newfid=2)
    wstat = c.rpc(codec.Twstat(tag=1, fid=2, stat=codec.Stat(name="renamed")))
    assert isinstance(wstat, codec.Rerror) and wstat.ename == "permission denied"
    remove = c.rpc(codec.Tremove(tag=1, fid=2))
    assert isinstance(remove, codec.Rerror) and remove.ename == "permission denied"
    assert isinstance(c.rpc(codec.Tclunk(tag=1, fid=2)), codec.Rerror)  # remove clunked it


def test_read_only_refusals_linux(clientL: Client, tree: Path) -> None:
    c = clientL
    c.walk("ctl", newfid=1)
    assert errno_of(c.rpc(codec.Tlopen(tag=1, fid=1, flags=os.O_WRONLY))) == errno.EPERM
    times = {"atime_sec": 0, "atime_nsec": 0, "mtime_sec": 0, "mtime_nsec": 0}
    setattr_ = codec.Tsetattr(
        tag=1, fid=1, valid=codec.SETATTR_SIZE, mode=0, uid=0, gid=0, size=0, **times
    )
    refused: list[codec.Message] = [
        setattr_,
        codec.Tlcreate(tag=1, fid=0, name="n", flags=os.O_WRONLY, mode=0o644, gid=0),
        codec.Tmkdir(tag=1, dfid=0, name="d", mode=0o755, gid=0),
        codec.Tsymlink(tag=1, fid=0, name="s", symtgt="a.txt", gid=0),
        codec.Tunlinkat(tag=1, dirfid=0, name="a.txt", flags=0),
        codec.Trenameat(tag=1, olddirfid=0, oldname="a.txt", newdirfid=0, newname="z"),
        codec.Tlink(tag=1, dfid=0, fid=1, name="hard"),
    ]
    for msg in refused:
        assert errno_of(c.rpc(msg)) == errno.EPERM, msg
    untouched = ["a.txt", "sub", "big", "link", "escape", "ctl", "ro", "fifo", "ancient"]
    assert sorted(os.listdir(tree)) == sorted(untouched)


def test_allow_control_lets_writes_through(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    with (
        running_shim(tree, "--allow-control") as (_, host, port),
        Client.session(host, port, "9P2000.L") as c,
    ):
        c.walk("ctl", newfid=1)
        assert isinstance(c.rpc(codec.Tlopen(tag=1, fid=1, flags=os.O_WRONLY)), codec.Rlopen)
        assert c.rpc(codec.Twrite(tag=1, fid=1, offset=0, data=b"stop")) == codec.Rwrite(
            tag=1, count=4
        )
        assert (tree / "ctl").read_bytes() == b"stop"
        c.walk("ro", newfid=2)
        assert errno_of(c.rpc(codec.Tlopen(tag=1, fid=2, flags=os.O_WRONLY))) == errno.EPERM
        create = codec.Tlcreate(tag=1, fid=0, name="n", flags=1, mode=0o644, gid=0)
        assert errno_of(c.rpc(create)) == errno.EPERM


# --------------------------------------------------- concurrency and flush


def test_slow_read_blocks_nobody(shim: Shim, tree: Path) -> None:
    """A read stuck on a FIFO leaves the same connection and others answering."""
    writer = os.open(tree / "fifo", os.O_RDWR | os.O_NONBLOCK)
    try:
        with Client.session(*shim, version="9P2000.L") as c, Client.session(*shim) as other:
            c.walk("fifo", newfid=1)
            c.rpc(codec.Tlopen(tag=1, fid=1, flags=os.O_RDONLY))
            c.send(codec.Tread(tag=50, fid=1, offset=0, count=100))
            started = time.monotonic()
            assert c.cat("a.txt") == b"hello\n"  # same connection, other tags
            assert other.cat("sub/b.txt") == b"world\n"
            assert time.monotonic() - started < 5
            os.write(writer, b"late")
            assert c.recv() == codec.Rread(tag=50, data=b"late")
    finally:
        os.close(writer)


def test_flushed_read_is_never_answered(shim: Shim, tree: Path) -> None:
    writer = os.open(tree / "fifo", os.O_RDWR | os.O_NONBLOCK)
    try:
        with Client.session(*shim, version="9P2000.L") as c:
            c.walk("fifo", newfid=1)
            c.rpc(codec.Tlopen(tag=1, fid=1, flags=os.O_RDONLY))
            c.send(codec.Tread(tag=60, fid=1, offset=0, count=100))
            time.sleep(0.2)
            assert c.rpc(codec.Tflush(tag=61, oldtag=60)) == codec.Rflush(tag=61)
            os.write(writer, b"too late")
            time.sleep(0.3)
            # Reusing the flushed tag is legal now; the next reply must be its own.
            c.walk("a.txt", newfid=2)
            assert c.rpc(codec.Tclunk(tag=60, fid=2)) == codec.Rclunk(tag=60)
            assert c.rpc(codec.Tflush(tag=62, oldtag=999)) == codec.Rflush(tag=62)
    finally:
        os.close(writer)


def test_stuck_reads_starve_nobody(shim: Shim, tree: Path) -> None:
    """More stuck reads than trio has default threads: walks, stats and other
    reads still get through, and flushing the stuck ones answers at once."""
    writer = os.open(tree / "fifo", os.O_RDWR | os.O_NONBLOCK)
    try:
        with Client.session(*shim, version="9P2000.L") as c, Client.session(*shim) as other:
            c.walk("fifo", newfid=1)
            c.rpc(codec.Tlopen(tag=1, fid=1, flags=os.O_RDONLY))
            stuck = range(100, 145)
            for tag in stuck:
                c.send(codec.Tread(tag=tag, fid=1, offset=0, count=10))
            time.sleep(0.2)
            assert other.cat("sub/b.txt") == b"world\n"
            assert c.cat("a.txt") == b"hello\n"
            for tag in stuck:
                assert c.rpc(codec.Tflush(tag=1000 + tag, oldtag=tag)) == codec.Rflush(
                    tag=1000 + tag
                )
    finally:
        os.close(writer)  # every parked reader thread now sees end of file
    still_serves(shim)


def test_tversion_starts_a_new_session(client9: Client) -> None:
    client9.walk("a.txt", newfid=3)
    client9.version("9P2000.L")
    assert errno_of(client9.rpc(codec.Tgetattr(tag=1, fid=3, request_mask=1))) == errno.EBADF
    assert errno_of(client9.rpc(codec.Tgetattr(tag=1, fid=0, request_mask=1))) == errno.EBADF


def test_many_outstanding_tags(clientL: Client) -> None:
    c = clientL
    c.walk("big", newfid=1)
    c.rpc(codec.Tlopen(tag=1, fid=1, flags=os.O_RDONLY))
    for tag in range(200):
        c.send(codec.Tread(tag=tag, fid=1, offset=tag * 10, count=10))
    replies = [c.recv() for _ in range(200)]
    assert sorted(r.tag for r in replies) == list(range(200))
    assert all(isinstance(r, codec.Rread) and len(r.data) == 10 for r in replies)


# ------------------------------------------------------------- bad input


def still_serves(shim: Shim) -> None:
    with Client.session(*shim) as fresh:
        assert fresh.cat("a.txt") == b"hello\n"


def closed_by_server(client: Client) -> bool:
    try:
        client.recv()
    except (EOFError, ConnectionResetError):
        return True
    return False


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"\x03\x00\x00\x00\x00\x00\x00", id="shorter-than-header"),
        pytest.param(struct.pack("<IBH", 1 << 24, 116, 1), id="larger-than-msize"),
    ],
)
def test_unframeable_input_closes_only_that_connection(shim: Shim, frame: bytes) -> None:
    with Client.session(*shim) as bystander, Client.session(*shim) as bad:
        bad.send_raw(frame)
        assert closed_by_server(bad)
        assert bystander.cat("a.txt") == b"hello\n"
    still_serves(shim)


def test_bad_messages_get_errors(client9: Client, shim: Shim) -> None:
    c = client9
    c.send_raw(struct.pack("<IBH", 7, 250, 9))
    assert c.recv().tag == 9  # unknown type → Rerror
    c.send_raw(struct.pack("<IBHIH", 13, 110, 10, 0, 40))  # string runs off the end
    assert isinstance(c.recv(), codec.Rerror)
    assert isinstance(c.rpc(codec.Tread(tag=11, fid=4242, offset=0, count=1)), codec.Rerror)
    c.walk("a.txt", newfid=5)
    c.rpc(codec.Tclunk(tag=12, fid=5))
    assert isinstance(c.rpc(codec.Tstat(tag=13, fid=5)), codec.Rerror)  # fid after clunk
    assert isinstance(c.rpc(codec.Rread(tag=14, data=b"")), codec.Rerror)  # a reply as request
    assert isinstance(c.rpc(codec.Tgetattr(tag=15, fid=0, request_mask=0)), codec.Rerror)
    c.walk("a.txt", newfid=6)
    c.rpc(codec.Topen(tag=16, fid=6, mode=codec.OREAD))
    huge = c.rpc(codec.Tread(tag=17, fid=6, offset=2**64 - 1, count=10))
    assert isinstance(huge, codec.Rerror) and huge.ename == "invalid argument"
    still_serves(shim)


def test_reused_tag_closes_the_connection(shim: Shim, tree: Path) -> None:
    writer = os.open(tree / "fifo", os.O_RDWR | os.O_NONBLOCK)
    try:
        with Client.session(*shim, version="9P2000.L") as c:
            c.walk("fifo", newfid=1)
            c.rpc(codec.Tlopen(tag=1, fid=1, flags=os.O_RDONLY))
            c.send(codec.Tread(tag=70, fid=1, offset=0, count=10))
            c.send(codec.Tstatfs(tag=70, fid=0))
            assert closed_by_server(c)
    finally:
        os.close(writer)
    still_serves(shim)


def fuzz_frames(rng: random.Random) -> Iterator[bytes]:
    """Valid requests, mutated ones, random bodies and the odd broken size
    field, each with a fresh tag so that most of them reach the handlers
    instead of tripping the reused-tag rule."""
    seeds = [
        codec.Tversion(tag=codec.NOTAG, msize=8192, version="9P2000.L"),
        codec.Tversion(tag=codec.NOTAG, msize=8192, version="9P2000.u"),
        codec.Tversion(tag=codec.NOTAG, msize=8192, version="9P2000"),
        codec.Tcreate(tag=1, fid=0, name="new", perm=0o644, mode=1),
        codec.Tattach(tag=1, fid=0, afid=codec.NOFID, uname="u", aname="", n_uname=0),
        codec.Tauth(tag=1, afid=9, uname="u", aname="", n_uname=0),
        codec.Twalk(tag=2, fid=0, newfid=1, wnames=("sub", "b.txt")),
        codec.Twalk(tag=2, fid=0, newfid=2, wnames=("sub", "deeper", "..", "nope")),
        codec.Tlopen(tag=3, fid=1, flags=0),
        codec.Topen(tag=3, fid=1, mode=0),
        codec.Tread(tag=4, fid=1, offset=0, count=4096),
        codec.Treaddir(tag=5, fid=0, offset=0, count=4096),
        codec.Tgetattr(tag=6, fid=0, request_mask=codec.GETATTR_ALL),
        codec.Tflush(tag=7, oldtag=4),
        codec.Tclunk(tag=8, fid=1),
        codec.Tstat(tag=9, fid=0),
        codec.Twstat(tag=10, fid=0, stat=codec.Stat(name="x")),
        codec.Tstatfs(tag=11, fid=0),
        codec.Treadlink(tag=12, fid=1),
        codec.Txattrwalk(tag=13, fid=0, newfid=3, name="user.a"),
        codec.Twrite(tag=14, fid=1, offset=0, data=b"data"),
        codec.Tsetattr(
            tag=15,
            fid=1,
            valid=codec.SETATTR_SIZE,
            mode=0,
            uid=0,
            gid=0,
            size=0,
            atime_sec=0,
            atime_nsec=0,
            mtime_sec=0,
            mtime_nsec=0,
        ),
        codec.Tlock(tag=16, fid=1, type=0, flags=0, start=0, length=0, proc_id=1, client_id="c"),
        codec.Tgetlock(tag=17, fid=1, type=0, start=0, length=0, proc_id=1, client_id="c"),
        codec.Tfsync(tag=18, fid=1, datasync=0),
        codec.Tlcreate(tag=19, fid=0, name="n", flags=1, mode=0o644, gid=0),
    ]
    frames = [codec.encode(m, Dialect.L) for m in seeds]
    for tag in itertools.cycle(range(60000)):
        choice = rng.random()
        if choice < 0.01:
            yield struct.pack("<IBH", rng.choice([0, 3, 1 << 30]), 100, tag)
            continue
        if choice < 0.1:
            body = rng.randbytes(rng.randint(0, 40))
            yield struct.pack("<IBH", 7 + len(body), rng.randrange(256), tag) + body
            continue
        frame = bytearray(rng.choice(frames))
        if frame[4] != 100:
            frame[5:7] = struct.pack("<H", tag)
        if choice < 0.55:
            for _ in range(rng.randint(1, 3)):
                frame[rng.randrange(4, len(frame))] = rng.randrange(256)
        yield bytes(frame)


def test_fuzz_never_takes_the_server_down(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    (tree / "fifo").unlink()  # a fuzzer that opens it would only park threads
    proc, host, port = start_shim(tree)
    sent, answered = [0], [0]

    def hammer(seed: int) -> None:
        rng = random.Random(seed)
        frames = fuzz_frames(rng)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            with socket.create_connection((host, port)) as sock:
                drain = threading.Thread(target=_count_replies, args=(sock, answered))
                drain.start()
                with contextlib.suppress(OSError):  # the server may hang up: fair
                    for _ in range(rng.randint(10, 3000)):
                        sock.sendall(next(frames))
                        sent[0] += 1
                    sock.shutdown(socket.SHUT_WR)
                drain.join(10)

    try:
        workers = [threading.Thread(target=hammer, args=(i,)) for i in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        print(f"fuzz: {sent[0]} frames sent, {answered[0]} replies")
        assert answered[0] > 5000
        assert proc.poll() is None
        still_serves((host, port))
    finally:
        assert stop_shim(proc) == 0
    log = shim_log(proc)
    assert "Traceback" not in log, log[log.index("Traceback") - 200 :][:3000]


def _count_replies(sock: socket.socket, answered: list[int]) -> None:
    """Reads replies until the server closes, counting whole frames."""
    splitter = codec.FrameSplitter(1 << 24)
    with contextlib.suppress(OSError, codec.FrameError):
        while data := sock.recv(65536):
            splitter.feed(data)
            while splitter.next_frame() is not None:
                answered[0] += 1


# ------------------------------------------------------------- lifecycle


def test_sigterm_closes_connections_and_exits_zero(tmp_path: Path) -> None:
    tree = make_tree(tmp_path)
    writer = os.open(tree / "fifo", os.O_RDWR | os.O_NONBLOCK)
    proc, host, port = start_shim(tree)
    try:
        c = Client.session(host, port, "9P2000.L")
        c.walk("fifo", newfid=1)
        c.rpc(codec.Tlopen(tag=1, fid=1, flags=os.O_RDONLY))
        c.send(codec.Tread(tag=5, fid=1, offset=0, count=10))  # parked in a thread
        time.sleep(0.2)
        assert stop_shim(proc) == 0
        assert closed_by_server(c)
    finally:
        os.close(writer)
        stop_shim(proc)


def test_dial_strings_and_shim_command() -> None:
    assert parse_dial("tcp!localhost!9999") == Dial("tcp", "127.0.0.1", 9999)
    assert parse_dial("tcp!*!564") == Dial("tcp", "0.0.0.0", 564)
    assert parse_dial("tcp!10.0.0.1!0") == Dial("tcp", "10.0.0.1", 0)
    assert parse_dial("unix!/run/9p.sock") == Dial("unix", "/run/9p.sock")
    for bad in ("tcp!host", "tcp!h!port", "udp!h!1", "unix!", "tcp!h!70000", ""):
        with pytest.raises(ValueError):
            parse_dial(bad)
    argv = shim_command("tcp!localhost!9999", "/n/dockerfs", allow_control=True)
    want = "-m dockerfs_fuse.ninep.cli --exit-with-parent --listen tcp!localhost!9999"
    assert argv[1:] == [*want.split(), "--allow-control", "/n/dockerfs"]


def test_bad_command_lines_exit_nonzero(tmp_path: Path) -> None:
    for args in (
        [str(tmp_path / "missing")],
        ["--listen", "bogus", str(tmp_path)],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "dockerfs_fuse.ninep.cli", *args],
            env=shim_env(),
            capture_output=True,
            timeout=20,
            check=False,
        )
        assert done.returncode == 2 and b"dockerfs-9p:" in done.stderr


def test_unix_socket_listener(tmp_path: Path) -> None:
    path = tmp_path / "9p.sock"
    proc, announced = start_shim_on(f"unix!{path}", make_tree(tmp_path / "t"))
    try:
        assert announced == f"unix!{path}"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(path))
            c = Client.__new__(Client)
            c.sock, c.dialect, c.splitter = sock, Dialect.P2000, codec.FrameSplitter(1 << 20)
            c.version("9P2000")
            c.attach()
            assert c.cat("a.txt") == b"hello\n"
    finally:
        assert stop_shim(proc) == 0
    assert not path.exists()
