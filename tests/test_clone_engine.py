"""The clone files' policy (engine/clone.py) under trio with a fake engine:
what each write sends, what the same descriptor reads back, that a refused
line sends nothing, that a `run` whose start fails leaves nothing, that the
new object is read into the tree, and that a pull's progress is bounded and
read as it comes. The real engine and mount are in test_clone_mount.py."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import pytest
import trio
import trio.testing

from dockerfs_fuse.docker.errors import ApiError, DockerProblem, NotFound
from dockerfs_fuse.engine.clone import CLONE, Cloner, Clones, Replies
from dockerfs_fuse.model.clone import BadLine
from dockerfs_fuse.model.containers import LIVE
from dockerfs_fuse.model.inodes import Changes, InodeTable, Kind

CID = "c0" * 32
IMAGE_ID = "sha256:" + "1d" * 32


def in_trio(fn: Callable[[], Awaitable[None]]) -> Callable[[], None]:
    @functools.wraps(fn)
    def run() -> None:
        trio.run(fn)

    return run


class FakeCreator:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Any]] = []
        self.fail_start: DockerProblem | None = None
        self.progress: list[Mapping[str, Any]] = []
        self.pull_gate: trio.Event | None = None

    async def create_container(self, name: str, body: bytes) -> str:
        self.sent.append(("create", (name, body)))
        return CID

    async def start_container(self, cid: str) -> None:
        self.sent.append(("start", cid))
        if self.fail_start is not None:
            raise self.fail_start

    async def remove_container(self, cid: str) -> None:
        self.sent.append(("rm", cid))

    async def create_volume(self, body: dict[str, Any]) -> str:
        self.sent.append(("volume", body))
        return body["Name"] or "anon"

    async def create_network(self, body: dict[str, Any]) -> str:
        self.sent.append(("network", body))
        return "n" * 64

    async def tag_image(self, ref: str, repo: str, tag: str) -> None:
        self.sent.append(("tag", (ref, repo, tag)))

    async def image_id(self, ref: str) -> str:
        self.sent.append(("image_id", ref))
        return IMAGE_ID

    async def pull(
        self, image: str, tag: str, progress: Callable[[Mapping[str, Any]], None]
    ) -> None:
        self.sent.append(("pull", (image, tag)))
        for message in self.progress:
            progress(message)
            if self.pull_gate is not None:
                await self.pull_gate.wait()
                self.pull_gate = None


class Refreshed:
    def __init__(self) -> None:
        self.containers: list[str] = []
        self.kinds: list[str] = []

    async def container(self, cid: str) -> None:
        self.containers.append(cid)

    async def kind(self, kind: str) -> None:
        self.kinds.append(kind)


def make() -> tuple[Cloner, FakeCreator, Refreshed]:
    creator = FakeCreator()
    refreshed = Refreshed()
    return Cloner("local", creator, refreshed.container, refreshed.kind), creator, refreshed


async def written(cloner: Cloner, kind: str, data: bytes) -> bytes:
    replies = Replies()
    await cloner.write(kind, data, replies)
    return await replies.read(len(data), 4096)


@in_trio
async def test_run_creates_starts_and_reads_the_container_in() -> None:
    cloner, creator, refreshed = make()
    answer = await written(cloner, "containers", b"run --name web -e A=1 busybox sleep 1d\n")
    assert answer == f"{CID}\n".encode()
    (what, (name, body)), start = creator.sent
    assert (what, name, start) == ("create", "web", ("start", CID))
    assert json.loads(body)["Cmd"] == ["sleep", "1d"]
    assert refreshed.containers == [CID]


@in_trio
async def test_create_does_not_start_and_json_goes_as_written() -> None:
    cloner, creator, _ = make()
    await written(cloner, "containers", b"create busybox")
    assert [what for what, _ in creator.sent] == ["create"]
    raw = b'{"Image": "busybox",  "Cmd": ["true"]}'
    await written(cloner, "containers", raw)
    assert creator.sent[-1] == ("create", ("", raw))


@in_trio
async def test_a_bad_line_sends_nothing() -> None:
    cloner, creator, refreshed = make()
    with pytest.raises(BadLine):
        await written(cloner, "containers", b"run --bogus busybox")
    with pytest.raises(BadLine):
        await written(cloner, "volumes", b"create a b")
    assert creator.sent == [] and refreshed.containers == refreshed.kinds == []


@in_trio
async def test_a_run_whose_start_fails_leaves_nothing() -> None:
    cloner, creator, refreshed = make()
    creator.fail_start = NotFound("network nowhere not found")
    with pytest.raises(NotFound):
        await written(cloner, "containers", b"run --network nowhere busybox")
    assert [what for what, _ in creator.sent] == ["create", "start", "rm"]
    assert refreshed.containers == []


@in_trio
async def test_volumes_networks_and_tags_show_in_their_kind() -> None:
    cloner, creator, refreshed = make()
    assert await written(cloner, "volumes", b"create -l a=b v1") == b"v1\n"
    assert await written(cloner, "networks", b"create --internal n1") == b"n" * 64 + b"\n"
    answer = await written(cloner, "images", b"tag busybox 127.0.0.1:5000/bb:1")
    assert answer == IMAGE_ID.removeprefix("sha256:").encode() + b"\n"
    assert ("tag", ("busybox", "127.0.0.1:5000/bb", "1")) in creator.sent
    assert ("image_id", "127.0.0.1:5000/bb:1") in creator.sent
    assert refreshed.kinds == ["volumes", "networks", "images"]


@in_trio
async def test_a_pull_is_read_line_by_line_as_it_comes() -> None:
    cloner, creator, refreshed = make()
    creator.progress = [
        {"status": "Pulling from bb", "id": "1"},
        {"status": "Downloading", "progress": "[=>  ]", "id": "abc"},
        {"status": "Status: Downloaded newer image for 127.0.0.1:5000/bb:1"},
    ]
    creator.pull_gate = trio.Event()
    replies = Replies()
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cloner.write, "images", b"pull 127.0.0.1:5000/bb:1", replies)
        await trio.testing.wait_all_tasks_blocked()
        # The first line is readable while the pull goes on; the next read waits.
        got.append(await replies.read(25, 4096))
        assert got == [b"1: Pulling from bb\n"]
        assert creator.pull_gate is not None
        creator.pull_gate.set()
        while chunk := await replies.read(25 + len(b"".join(got)), 4096):
            got.append(chunk)
    text = b"".join(got).decode()
    assert text.splitlines() == [
        "1: Pulling from bb",
        "abc: Downloading [=> ]",
        "Status: Downloaded newer image for 127.0.0.1:5000/bb:1",
        IMAGE_ID.removeprefix("sha256:"),
    ]
    assert ("pull", ("127.0.0.1:5000/bb", "1")) in creator.sent
    assert refreshed.kinds == ["images"]


@in_trio
async def test_what_a_writer_never_reads_is_bounded() -> None:
    replies = Replies(limit=100)
    replies.begin()
    for n in range(1000):
        replies.line(f"line {n:04}")
    replies.end("done")
    text = (await replies.read(0, 1 << 20)).decode()
    lines = text.splitlines()
    # The newest whole lines, the answer last.
    assert lines[-1] == "done" and lines[-2] == "line 0999"
    assert len(text) <= 100 and all(len(line) == 9 for line in lines[:-1])
    assert await replies.read(len(text) + 5000, 100) == b""  # then EOF until the next write


@in_trio
async def test_reads_count_from_the_first_and_may_seek_back() -> None:
    replies = Replies()
    replies.begin()
    replies.line("first line")
    replies.end("abcdef")
    # bash's `read` takes 128 bytes, keeps a line, and seeks back over the rest.
    assert await replies.read(7, 128) == b"first line\nabcdef\n"
    assert await replies.read(7 + 11, 128) == b"abcdef\n"
    assert await replies.read(7 + 11, 3) == b"abc"
    assert await replies.read(7 + 11 + 7, 100) == b""
    # A new write forgets what the last one left unread; a 9P client reads from 0.
    replies.begin()
    replies.line("x")
    replies.begin()
    replies.end("y")
    assert await replies.read(0, 100) == b"y\n"
    assert await replies.read(2, 100) == b""


@in_trio
async def test_a_refusal_is_an_answer_too() -> None:
    replies = Replies()
    replies.begin()
    replies.end("No such image:\n busybox:nope")
    assert await replies.read(0, 100) == b"No such image: busybox:nope\n"


@in_trio
async def test_a_read_before_any_write_is_eof() -> None:
    assert await Replies().read(0, 100) == b""


def test_clone_links_survive_listings() -> None:
    table = InodeTable()
    containers = table.add_dir("containers")
    volumes = table.add_dir("volumes")
    cloner, _, _ = make()
    clones = Clones(table)
    clones.add(cloner, {"containers": containers, "volumes": volumes})
    table.set_containers([{"Id": CID, "Names": ["/web"], "State": "running"}], containers)
    assert [name for name, _ in table.listed(containers)] == [CLONE, CID]
    link = table.lookup(containers, CLONE)
    assert link is not None and link.kind is Kind.LINK and link.data == b".live/clone"
    live = table.lookup(containers, LIVE)
    assert live is not None and live.unlisted and table.listed(live) == []
    node = table.lookup(live, CLONE)
    assert node is not None and clones.of(node.inode) == (cloner, "containers")
    assert clones.of(link.inode) is None
    # A listing of the kind that has an object named `clone` shows the clone file.
    changes = Changes()
    table.set_objects(volumes, {"clone": (0, {}), "data": (0, {})}, changes)
    assert [name for name, _ in table.listed(volumes)] == [CLONE, "data"]
    assert table.lookup(volumes, CLONE) is not None
    assert table.lookup(volumes, CLONE).kind is Kind.LINK  # type: ignore[union-attr]
    assert not changes.removed


@in_trio
async def test_a_refusal_reaches_the_writer() -> None:
    cloner, creator, refreshed = make()

    async def broken(body: dict[str, Any]) -> str:
        raise ApiError("no space left on device")

    creator.create_volume = broken  # type: ignore[method-assign]
    with pytest.raises(ApiError):
        await written(cloner, "volumes", b"create v")
    assert refreshed.kinds == []
