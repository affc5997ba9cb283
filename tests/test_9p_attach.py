"""The shim's attach name selects a directory of the export (issue 9):
`9mount -a prod ...` gets `prod` alone, confined there like the whole
export is confined to its root. Checked on a made-up export, and on a real
two-engine dockerfs mount, where an attach name is an engine."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine
from ninep_support import Client, running_shim
from support.waiting import wait_until

from dockerfs_fuse.ninep import codec

Shim = tuple[str, int]


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shim]:
    root = tmp_path_factory.mktemp("export")
    (root / "prod" / "web").mkdir(parents=True)
    (root / "prod" / "web" / "State").write_text("running\n")
    (root / "prod" / "name").symlink_to("web")
    (root / "prod" / "up").symlink_to("../secret")
    (root / "prod" / "out").symlink_to("/etc")
    (root / "dev").mkdir()
    (root / "dev" / "State").write_text("exited\n")
    (root / "secret").write_text("not for prod\n")
    with running_shim(root) as (_, host, port):
        yield host, port


def attached(shim: Shim, aname: str, version: str = "9P2000") -> Client:
    client = Client(*shim)
    client.version(version)
    client.attach(aname=aname)
    return client


def reaches(client: Client, path: str, fid: int) -> bool:
    """Whether a walk gets all the way (walk(5) answers a partial walk with fewer qids)."""
    reply = client.walk(path, newfid=fid)
    names = [n for n in path.split("/") if n]
    return isinstance(reply, codec.Rwalk) and len(reply.qids) == len(names)


def test_an_attach_name_selects_that_directory(shim: Shim) -> None:
    with attached(shim, "prod") as prod, attached(shim, "") as whole:
        assert prod.cat("web/State") == b"running\n"
        assert prod.cat("name/State") == b"running\n"  # a link inside the subtree
        assert whole.cat("prod/web/State") == b"running\n"
        assert whole.cat("dev/State") == b"exited\n"
        assert not reaches(prod, "dev/State", 1)


@pytest.mark.parametrize("version", ["9P2000", "9P2000.L"])
def test_the_subtree_is_confined(shim: Shim, version: str) -> None:
    with attached(shim, "prod", version) as prod:
        top = prod.rpc(codec.Tstat(tag=1, fid=0)) if version == "9P2000" else None
        up = prod.walk("..", newfid=1)
        assert isinstance(up, codec.Rwalk)
        if isinstance(top, codec.Rstat):
            assert up.qids == (top.stat.qid,)  # `..` of the attach point is itself
        assert not reaches(prod, "../secret", 2)
        assert not reaches(prod, "../../secret", 3)
        # Links that point out of the subtree lead nowhere, in it or out of the export.
        assert not reaches(prod, "up/x", 4)
        assert not reaches(prod, "out/passwd", 5)
        if version == "9P2000":  # followed when walked to: refused
            assert not reaches(prod, "up", 6)


@pytest.mark.parametrize("aname", ["nope", "prod/web/State", "prod/out", "prod/up"])
def test_bad_attach_names_are_refused(shim: Shim, aname: str) -> None:
    with Client(*shim) as client:
        client.version()
        reply = client.rpc(
            codec.Tattach(tag=1, fid=0, afid=codec.NOFID, uname="u", aname=aname, n_uname=0)
        )
        assert isinstance(reply, codec.Rerror), reply
        # What an attach name means here, for the user who typed one.
        assert reply.ename.startswith(f"unknown attach name {aname!r} ("), reply.ename
        assert reply.ename.endswith(
            'an attach name is a directory of the export, "" the whole export'
        )


def test_diods_default_attach_name_is_the_whole_export(shim: Shim) -> None:
    """diodls and diodcat attach with "ctl" unless given -a (diod's own
    control file system): here the whole export, since it has no ctl directory."""
    with attached(shim, "ctl") as ctl, attached(shim, "") as whole:
        assert root_names(ctl) == root_names(whole) == ["dev", "prod", "secret"]
        assert ctl.cat("prod/web/State") == b"running\n"


def test_a_ctl_directory_is_what_ctl_attaches_to(tmp_path: Path) -> None:
    (tmp_path / "ctl").mkdir()
    (tmp_path / "ctl" / "inside").write_text("yes\n")
    with running_shim(tmp_path) as (_, host, port), attached((host, port), "ctl") as ctl:
        assert ctl.cat("inside") == b"yes\n"


def test_one_attach_name_per_connection(shim: Shim) -> None:
    with attached(shim, "prod") as client:
        assert isinstance(client.attach(fid=7, aname="prod"), codec.Qid)
        reply = client.rpc(
            codec.Tattach(tag=1, fid=8, afid=codec.NOFID, uname="u", aname="dev", n_uname=0)
        )
        assert isinstance(reply, codec.Rerror), reply
        assert client.cat("web/State") == b"running\n"


def root_names(client: Client, fid: int = 50) -> list[str]:
    """The names a 9P2000 read of the attach point lists."""
    assert isinstance(client.walk("", newfid=fid), codec.Rwalk)
    opened = client.rpc(codec.Topen(tag=1, fid=fid, mode=codec.OREAD))
    assert isinstance(opened, codec.Ropen), opened
    stats = codec.decode_stats(client.read_all(fid), client.dialect)
    client.rpc(codec.Tclunk(tag=5, fid=fid))
    return sorted(s.name for s in stats)


@pytest.mark.docker
@pytest.mark.fuse
def test_an_engine_of_a_dockerfs_mount_by_attach_name(engine: Engine, mount_factory: Any) -> None:
    """`dockerfs-9p` over a mount of two engines (the private dockerd named
    twice): attach name `a` is engine a's directory, its containers at the
    root, and `..` does not lead out of it to b."""
    cid = engine.run("--name=attach-a", "busybox:latest", "sleep", "1d")
    m = mount_factory(f"a={engine.host}", "-H", f"b={engine.host}")
    assert sorted(os.listdir(m.path)) == ["a", "b"]
    wait_until(lambda: cid in os.listdir(m.path / "a"), "a lists the container")
    with running_shim(m.path) as (_, host, port):
        a, whole = attached((host, port), "a"), attached((host, port), "")
        with a, whole:
            assert root_names(a) == sorted(os.listdir(m.path / "a"))
            assert cid in root_names(a) and "a" not in root_names(a)
            assert a.cat(f"{cid}/State") == b"running\n"
            assert a.cat("attach-a/ID") == cid.encode() + b"\n"  # a name link, inside a
            assert whole.cat(f"b/{cid}/State") == b"running\n"  # b is there to reach
            top = a.rpc(codec.Tstat(tag=1, fid=0))
            up = a.walk("..", newfid=1)
            assert isinstance(top, codec.Rstat) and isinstance(up, codec.Rwalk)
            assert up.qids == (top.stat.qid,)  # `..` of the attach point is itself
            assert not reaches(a, f"../b/{cid}/State", 2)
            assert not reaches(a, "../b", 3)
