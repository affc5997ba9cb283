"""The engine view's ctl commands: their grammar and a project's plan (pure),
and what each command asks of a fake engine under trio (engine/objects_ctl.py),
a refused project command included. The real engine is in test_objects_ctl.py."""

from __future__ import annotations

import collections
import contextlib
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from dockerfs_fuse.docker.errors import BadRequest, Conflict, NotFound
from dockerfs_fuse.engine.objects import ObjectsCache
from dockerfs_fuse.engine.objects_ctl import control
from dockerfs_fuse.model.ctl import BadCommand, Command
from dockerfs_fuse.model.inodes import InodeTable
from dockerfs_fuse.model.objects_ctl import (
    ObjectCommand,
    Step,
    parse_object_command,
    project_steps,
    split_reference,
)

HEX = "ab" * 32
NET = "ef" * 32


@pytest.mark.parametrize(
    ("kind", "data", "want"),
    [
        ("images", b"tag app:1\n", ObjectCommand("tag", "app:1")),
        ("images", b"tag app", ObjectCommand("tag", "app:latest")),
        ("images", b"tag localhost:5000/t/a:v1\n", ObjectCommand("tag", "localhost:5000/t/a:v1")),
        ("images", b"untag busybox:latest\n", ObjectCommand("untag", "busybox:latest")),
        ("images", b"untag a@sha256:" + b"0" * 64, ObjectCommand("untag", "a@sha256:" + "0" * 64)),
        ("images", b"rm\n", ObjectCommand("rm")),
        ("images", b"rm -f\n", ObjectCommand("rm", force=True)),
        ("volumes", b"rm\n", ObjectCommand("rm")),
        ("volumes", b"  rm   -f \n", ObjectCommand("rm", force=True)),
        ("networks", b"connect web\n", ObjectCommand("connect", "web")),
        ("networks", b"disconnect 3f2a\n", ObjectCommand("disconnect", "3f2a")),
        ("networks", b"rm\n", ObjectCommand("rm")),
        ("projects", b"stop 3\n", Command("stop", {"t": "3"})),
        ("projects", b"kill hup\n", Command("kill", {"signal": "SIGHUP"})),
        ("projects", b"rm\n", Command("rm")),
    ],
)  # fmt: skip
def test_commands_parse(kind: str, data: bytes, want: object) -> None:
    assert parse_object_command(kind, data) == want


@pytest.mark.parametrize(
    ("kind", "data", "why"),
    [
        ("images", b"bogus\n", "unknown command"),
        ("images", b"tag\n", "usage"),
        ("images", b"tag a b\n", "usage"),
        ("images", b"tag App:1\n", "not an image reference"),
        ("images", b"tag app:-x\n", "not an image reference"),
        ("images", b"tag app@sha256:" + b"0" * 64, "not a digest"),
        ("images", b"rm --force\n", "usage"),
        ("images", b"rm -f -f\n", "usage"),
        ("volumes", b"rm now\n", "usage"),
        ("volumes", b"tag a\n", "unknown command"),
        ("networks", b"connect\n", "usage"),
        ("networks", b"connect web db\n", "usage"),
        ("networks", b"connect ../x\n", "not a container"),
        ("networks", b"rm -f\n", "usage"),
        ("projects", b"stop soon\n", "SECONDS"),
        ("projects", b"scale 3\n", "unknown command"),
        ("images", b"rm" + b" " * 300, "at most 256 bytes"),
        ("images", b"rm\0\n", "unknown command"),
        ("images", b"\n", "empty"),
    ],
)  # fmt: skip
def test_bad_commands_are_refused_before_docker(kind: str, data: bytes, why: str) -> None:
    with pytest.raises(BadCommand, match=why):
        parse_object_command(kind, data)


def test_references_as_docker_reads_them() -> None:
    assert split_reference("busybox") == ("busybox", "latest", "")
    assert split_reference("localhost:5000/app") == ("localhost:5000/app", "latest", "")
    assert split_reference("Registry.example:443/a/b:t") == ("Registry.example:443/a/b", "t", "")
    for bad in ("Foo/bar", "a//b", "a:", ":t", "a" * 256, "a@sha256:12", "-a"):
        with pytest.raises(BadCommand):
            split_reference(bad)


def member(
    cid: str, service: str, number: str, state: str, *, depends: str = "", oneoff: bool = False
) -> dict[str, Any]:
    return {
        "Id": cid * 64 if len(cid) == 1 else cid,
        "State": state,
        "Labels": {
            "com.docker.compose.project": "shop",
            "com.docker.compose.service": service,
            "com.docker.compose.container-number": number,
            "com.docker.compose.depends_on": depends,
            "com.docker.compose.oneoff": "True" if oneoff else "False",
        },
    }


SHOP = [
    member("a", "web", "2", "running", depends="db:service_started:false,cache:healthy:true"),
    member("b", "web", "1", "exited", depends="db:service_started:false"),
    member("c", "db", "1", "running"),
    member("d", "cache", "1", "paused"),
    member("e", "web", "3", "exited", oneoff=True),
]  # fmt: skip


def names(command: Command) -> list[str]:
    return [s.name for s in project_steps(SHOP, command)]


def test_a_project_command_touches_what_compose_touches_in_its_order() -> None:
    # Dependencies first: cache and db before web; within web, by number.
    assert names(Command("start")) == ["web/1"]
    assert names(Command("restart")) == ["cache/1", "db/1", "web/1", "web/2"]
    assert names(Command("unpause")) == ["cache/1"]
    # Dependents first; `compose run` containers stopped and killed too.
    assert names(Command("stop")) == ["web/2", "db/1", "cache/1"]
    assert names(Command("kill")) == ["web/2", "db/1", "cache/1"]
    assert names(Command("pause")) == ["web/2", "db/1"]
    # rm leaves running (and paused) containers, as `docker compose rm` does.
    assert names(Command("rm")) == ["web/1"]
    assert all(
        s.command == Command("stop", {"t": "1"})
        for s in project_steps(SHOP, Command("stop", {"t": "1"}))
    )


class FakeDocker:
    """The aiodocker calls docker/objects.py makes, answered from `answers`;
    `refuse` maps a (method, path) to the error it raises."""

    def __init__(self) -> None:
        self.answers: dict[str, Any] = {
            "images/json": [{"Id": f"sha256:{HEX}", "RepoTags": ["app:1", "app:2"]}],
            f"images/{HEX}/json": {"Id": f"sha256:{HEX}", "RepoTags": ["app:1", "app:2"]},
            "volumes": {"Volumes": [{"Name": "data"}]},
            "networks": [{"Name": "backend", "Id": NET}],
            "containers/json": SHOP,
        }
        self.sent: list[tuple[str, str, Any, Any]] = []
        self.refuse: dict[tuple[str, str], Exception] = {}

    async def _query_json(self, path: str, method: str = "GET", params: Any = None) -> Any:
        return copy.deepcopy(self.answers[path])

    @contextlib.asynccontextmanager
    async def _query(
        self, path: str, method: str, params: Any, data: Any, headers: Any
    ) -> AsyncIterator[Any]:
        self.sent.append((method, path, params, data))
        if (method, path) in self.refuse:
            raise self.refuse[method, path]
        yield self

    async def read(self) -> bytes:
        return b""


class FakeSource:
    def __init__(self) -> None:
        self.docker = FakeDocker()
        self.requests: collections.Counter[str] = collections.Counter()
        self.controlled: list[tuple[str, str]] = []
        self.refuse: dict[str, Exception] = {}

    async def call(self, what: str, fn: Any, timeout: Any = None) -> Any:
        self.requests[what] += 1
        return await fn(self.docker)

    async def inspect(self, name: str) -> dict[str, Any]:
        return {"Id": name * 64 if len(name) == 1 else name}

    async def control(self, cid: str, command: Command) -> None:
        if cid in self.refuse:
            raise self.refuse[cid]
        self.controlled.append((cid[:1], command.action))


class FakeContainers:
    def __init__(self) -> None:
        self.refreshed: list[str] = []

    async def refresh_container(self, cid: str) -> None:
        self.refreshed.append(cid[:1])


def make() -> tuple[ObjectsCache, FakeSource]:
    source = FakeSource()
    table = InodeTable()
    cache = ObjectsCache("local", source, table, table.root, lambda _: None)  # type: ignore[arg-type]
    return cache, source


def run(cache: ObjectsCache, kind: str, ref: str, data: bytes, containers: Any = None) -> str:
    async def main() -> str:
        return await control(cache, kind, ref, data, containers)

    return trio.run(main)


def test_each_command_is_one_request_then_its_kind_is_listed_again() -> None:
    cache, source = make()
    run(cache, "images", HEX, b"tag team/app:v2\n")
    run(cache, "images", HEX, b"untag app:2\n")
    run(cache, "images", HEX, b"rm -f\n")
    run(cache, "volumes", "data", b"rm\n")
    containers = FakeContainers()
    run(cache, "networks", NET, b"connect w\n", containers)
    run(cache, "networks", NET, b"disconnect w\n", containers)
    assert containers.refreshed == ["w", "w"]  # its Networks/ changed
    run(cache, "networks", NET, b"rm\n")
    assert source.docker.sent == [
        ("POST", f"images/{HEX}/tag", {"repo": "team/app", "tag": "v2"}, None),
        ("DELETE", "images/app:2", {}, None),
        ("DELETE", f"images/{HEX}", {"force": "1"}, None),
        ("DELETE", "volumes/data", {}, None),
        ("POST", f"networks/{NET}/connect", {}, '{"Container": "w"}'),
        ("POST", f"networks/{NET}/disconnect", {}, '{"Container": "w"}'),
        ("DELETE", f"networks/{NET}", {}, None),
    ]
    assert source.requests["images"] == 3 and source.requests["networks"] == 3
    assert source.requests["volumes"] == 1


def test_untag_takes_only_this_images_own_tags() -> None:
    cache, source = make()
    with pytest.raises(NotFound, match="not a tag or digest of this image"):
        run(cache, "images", HEX, b"untag other:1\n")
    assert source.docker.sent == []


def test_a_refused_line_sends_nothing() -> None:
    cache, source = make()
    with pytest.raises(BadCommand):
        run(cache, "volumes", "data", b"rm --all\n")
    assert source.docker.sent == [] and sum(source.requests.values()) == 0


def test_a_project_command_runs_each_container_and_shows_them_again() -> None:
    cache, source = make()
    containers = FakeContainers()
    assert run(cache, "projects", "shop", b"stop\n", containers) == "stop of 3 of 5 containers"
    assert source.controlled == [("a", "stop"), ("c", "stop"), ("d", "stop")]
    assert containers.refreshed == ["a", "c", "d"]
    assert source.requests["projects"] == 2  # its listing, then the kind's again


def test_a_project_command_stops_at_the_first_refusal_and_says_what_was_done() -> None:
    cache, source = make()
    containers = FakeContainers()
    source.refuse["c" * 64] = Conflict("Container cccc is not running")
    with pytest.raises(Conflict) as err:
        run(cache, "projects", "shop", b"kill\n", containers)
    assert str(err.value) == (
        "db/1 (cccccccccccc): Container cccc is not running; done: web/2; not tried: cache/1"
    )
    assert source.controlled == [("a", "kill")]
    assert containers.refreshed == ["a"]
    # A container removed meanwhile is left out, not a failure.
    source.refuse = {"c" * 64: NotFound("No such container: cccc")}
    run(cache, "projects", "shop", b"kill\n", containers)
    assert source.controlled[-2:] == [("a", "kill"), ("d", "kill")]


def test_a_project_with_no_containers_left_is_enoent() -> None:
    cache, source = make()
    with pytest.raises(NotFound, match="no containers"):
        run(cache, "projects", "gone", b"start\n")
    source.docker.refuse[("DELETE", "volumes/data")] = BadRequest("bad")
    with pytest.raises(BadRequest):
        run(cache, "volumes", "data", b"rm\n")


def test_steps_name_containers_as_services_shows_them() -> None:
    steps = project_steps([member("f", "api", "", "exited")], Command("rm"))
    assert steps == [Step("f" * 64, "api/" + "f" * 12, Command("rm"))]
