"""The engine view's ctl files on a real mount over the private dockerd: each
verb of images, volumes, networks and compose projects checked in Docker's
API, each refusal's errno and `err` line, nothing changed by a refused line,
and the tree showing each effect when the write returns."""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount, start_mount, stop_mount
from support.private_dockerd import IMAGE

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

ERR_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (.+?): (.+)\n")


def write(d: Path, line: bytes) -> None:
    """One open, one write(2), as `echo line > d/ctl` does."""
    fd = os.open(d / "ctl", os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def refused(d: Path, line: bytes) -> tuple[int, str, str]:
    """The errno of a refused write, and the command and reason `err` then shows."""
    with pytest.raises(OSError) as caught:
        write(d, line)
    text = (d / "err").read_text()
    match = ERR_LINE.fullmatch(text)
    assert match, text
    return caught.value.errno or 0, match.group(1), match.group(2)


def image_of(engine: Engine, ref: str) -> dict[str, Any] | None:
    found = [i for i in engine.api("/images/json") if ref in (i["Id"], *(i["RepoTags"] or ()))]
    return found[0] if found else None


@pytest.fixture
def image(engine: Engine, suffix: str) -> Iterator[str]:
    """An image of its own (not the session's busybox), by its 64-hex ID."""
    cid = engine.run(IMAGE, "true")
    engine.docker("commit", "--change", f"LABEL made={suffix}", cid, f"oc-{suffix}:1")
    engine.docker("rm", "-f", cid)
    full: str = engine.api(f"/images/oc-{suffix}:1/json")["Id"]
    yield full.removeprefix("sha256:")
    engine.docker("rmi", "-f", full, check=False)


def test_every_object_has_a_write_only_ctl_link_and_an_empty_err(
    engine: Engine, view: Mount, image: str, suffix: str
) -> None:
    engine.docker("volume", "create", f"oc-{suffix}")
    try:
        for d in (view.path / "images" / image, view.path / "volumes" / f"oc-{suffix}",
                  view.path / "networks" / "none"):  # fmt: skip
            assert {"ctl", "err"} <= set(os.listdir(d)) and ".live" not in os.listdir(d)
            assert os.readlink(d / "ctl") == ".live/ctl"
            assert os.stat(d / "ctl").st_mode & 0o777 == 0o200
            assert os.stat(d / "err").st_mode & 0o777 == 0o444
            assert (d / "err").read_bytes() == b"" and os.stat(d / "err").st_size == 0
            with pytest.raises(PermissionError):
                (d / "ctl").read_bytes()
    finally:
        engine.docker("volume", "rm", f"oc-{suffix}", check=False)


def test_image_tag_untag_and_rm(engine: Engine, view: Mount, image: str, suffix: str) -> None:
    d = view.path / "images" / image
    write(d, f"tag oc-{suffix}/two:v2\n".encode())
    assert f"oc-{suffix}/two:v2" in engine.api(f"/images/{image}/json")["RepoTags"]
    # The tree shows it when the write returns: no listing asked for.
    tags = {p.read_text() for p in (d / "RepoTags").iterdir()}
    assert tags == {f"oc-{suffix}:1\n", f"oc-{suffix}/two:v2\n"}
    assert os.readlink(view.path / "images" / f"oc-{suffix}%2Ftwo:v2") == image
    write(d, f"untag oc-{suffix}:1\n".encode())
    assert engine.api(f"/images/{image}/json")["RepoTags"] == [f"oc-{suffix}/two:v2"]
    assert [p.read_text() for p in (d / "RepoTags").iterdir()] == [f"oc-{suffix}/two:v2\n"]
    write(d, b"rm\n")
    assert image_of(engine, f"sha256:{image}") is None
    assert image not in os.listdir(view.path / "images")
    assert not d.exists()


def test_image_refusals_change_nothing(
    engine: Engine, view: Mount, image: str, suffix: str
) -> None:
    d = view.path / "images" / image
    before = engine.api(f"/images/{image}/json")["RepoTags"]
    for line, why in [
        (b"bogus\n", "unknown command"),
        (b"tag\n", "usage: tag REF"),
        (b"tag Upper:1\n", "not an image reference"),
        (b"rm" + b" " * (1 << 20), "a command is at most 256 bytes"),
        (b"rm\0\n", "unknown command"),
        (b"rm --force\n", "usage"),
    ]:
        code, command, reason = refused(d, line)
        assert code == errno.EINVAL, (line[:20], code)
        assert why in reason, reason
    code, _, reason = refused(d, b"untag busybox:latest\n")  # another image's tag
    assert code == errno.ENOENT and "not a tag or digest of this image" in reason
    # In use by a container: refused without -f, whatever its state.
    cid = engine.run(f"oc-{suffix}:1", "sleep", "1d")
    code, command, reason = refused(d, b"rm\n")
    assert code == errno.EBUSY and command == "rm" and "running container" in reason, reason
    code, command, reason = refused(d, b"rm -f\n")  # Docker: "cannot be forced"
    assert code == errno.EBUSY and command == "rm -f" and "cannot be forced" in reason, reason
    assert engine.api(f"/images/{image}/json")["RepoTags"] == before
    engine.docker("stop", "-t", "0", cid)
    code, _, reason = refused(d, b"rm\n")
    assert code == errno.EBUSY and "must be forced" in reason, reason
    write(d, b"rm -f\n")
    assert image_of(engine, f"sha256:{image}") is None
    assert image not in os.listdir(view.path / "images")


def test_volume_rm_and_its_refusals(engine: Engine, view: Mount, suffix: str) -> None:
    name = f"oc-vol-{suffix}"
    engine.docker("volume", "create", name)
    d = view.path / "volumes" / name
    cid = engine.run("-v", f"{name}:/v", IMAGE, "sleep", "1d")
    assert refused(d, b"rm -r\n")[0] == errno.EINVAL
    code, _, reason = refused(d, b"rm\n")
    assert code == errno.EBUSY and "volume is in use" in reason, reason
    code, _, reason = refused(d, b"rm -f\n")
    assert code == errno.EBUSY and cid in reason, reason
    assert engine.api(f"/volumes/{name}")["Name"] == name
    engine.docker("rm", "-f", cid)
    write(d, b"rm\n")
    assert name not in engine.docker("volume", "ls", "-q").split()
    assert name not in os.listdir(view.path / "volumes") and not d.exists()
    # One removed behind the ctl's back (opened before): ENOENT.
    engine.docker("volume", "create", name)
    os.listdir(view.path / "volumes")
    fd = os.open(d / "ctl", os.O_WRONLY)
    try:
        engine.docker("volume", "rm", name)
        with pytest.raises(OSError) as caught:
            os.write(fd, b"rm\n")
    finally:
        os.close(fd)
    assert caught.value.errno == errno.ENOENT
    assert not d.exists()  # the refusal listed volumes again


def test_network_connect_disconnect_rm(engine: Engine, view: Mount, suffix: str) -> None:
    name, home = f"oc-net-{suffix}", f"oc-home-{suffix}"
    # The private dockerd has no default bridge: the container gets a network of its own.
    engine.docker("network", "create", name)
    engine.docker("network", "create", home)
    try:
        _check_network(engine, view, name, suffix)
    finally:
        engine.remove_started()
        engine.docker("network", "rm", name, home, check=False)


def _check_network(engine: Engine, view: Mount, name: str, suffix: str) -> None:
    d = view.path / "networks" / name
    run = ["run", "-d", f"--name=oc-web-{suffix}", f"--network=oc-home-{suffix}"]
    cid = engine.docker(*run, IMAGE, "sleep", "1d").strip()
    engine.started.append(cid)

    def members() -> set[str]:
        return set(engine.api(f"/networks/{name}")["Containers"] or {})

    networks = view.path / "containers" / cid / "Networks"
    assert os.listdir(networks) == [f"oc-home-{suffix}"]
    write(d, f"connect oc-web-{suffix}\n".encode())  # by name
    assert members() == {cid}
    # The container's own tree shows it when the write returns.
    assert sorted(os.listdir(networks)) == [f"oc-home-{suffix}", name]
    code, command, reason = refused(d, f"connect {cid}\n".encode())
    assert code == errno.EEXIST and command == f"connect {cid[:53]}...", (code, command)
    assert "already exists" in reason
    code, _, reason = refused(d, b"connect oc-nosuch\n")
    assert code == errno.ENOENT and "No such container: oc-nosuch" in reason, reason
    assert refused(d, b"connect\n")[0] == errno.EINVAL
    assert refused(d, b"connect a/b\n")[0] == errno.EINVAL
    code, _, reason = refused(d, b"rm\n")
    assert code == errno.EBUSY and "active endpoints" in reason, reason
    write(d, f"disconnect {cid[:12]}\n".encode())  # by prefix
    assert members() == set()
    assert os.listdir(networks) == [f"oc-home-{suffix}"]
    code, _, reason = refused(d, f"disconnect {cid[:12]}\n".encode())
    assert code == errno.EBUSY and "is not connected" in reason, reason
    write(d, b"rm\n")
    assert name not in engine.docker("network", "ls", "--format", "{{.Name}}").split()
    assert name not in os.listdir(view.path / "networks") and not d.exists()
    code, _, reason = refused(view.path / "networks" / "host", b"rm\n")
    assert code == errno.EPERM and "pre-defined" in reason, reason


# -- compose projects -------------------------------------------------------------------


def compose_container(
    engine: Engine, project: str, service: str, number: int, *cmd: str, create: bool = False
) -> str:
    """A container labelled as `docker compose` labels one (docs/engine.md)."""
    labels = {
        "com.docker.compose.project": project,
        "com.docker.compose.service": service,
        "com.docker.compose.container-number": str(number),
        "com.docker.compose.oneoff": "False",
        "com.docker.compose.depends_on": "db:service_started:false" if service == "web" else "",
        "com.docker.compose.project.working_dir": f"/srv/{project}",
    }
    body = {"Image": IMAGE, "Cmd": list(cmd or ("sleep", "1d")), "Labels": labels}
    cid: str = engine.send("POST", f"/containers/create?name={project}-{service}-{number}", body)[
        "Id"
    ]
    engine.started.append(cid)
    if not create:
        engine.send("POST", f"/containers/{cid}/start")
    return cid


def states(engine: Engine, *cids: str) -> list[str]:
    return [engine.api(f"/containers/{c}/json")["State"]["Status"] for c in cids]


def tree_states(view: Mount, *cids: str) -> list[str]:
    return [(view.path / "containers" / c / "State").read_text().strip() for c in cids]


def test_project_verbs_act_on_every_container(engine: Engine, view: Mount, suffix: str) -> None:
    project = f"oc{suffix}"
    db = compose_container(engine, project, "db", 1)
    web1 = compose_container(engine, project, "web", 1)
    web2 = compose_container(engine, project, "web", 2)
    every = (db, web1, web2)
    d = view.path / "projects" / project
    for c in every:  # the kernel holds each, so its State is what it shows now
        assert tree_states(view, c) == ["running"]
    write(d, b"pause\n")
    assert states(engine, *every) == tree_states(view, *every) == ["paused"] * 3
    write(d, b"unpause\n")
    assert states(engine, *every) == tree_states(view, *every) == ["running"] * 3
    write(d, b"stop 0\n")
    assert states(engine, *every) == tree_states(view, *every) == ["exited"] * 3
    write(d, b"start\n")
    assert states(engine, *every) == tree_states(view, *every) == ["running"] * 3
    pid = engine.api(f"/containers/{db}/json")["State"]["Pid"]
    write(d, b"restart 0\n")
    assert states(engine, *every) == ["running"] * 3
    assert engine.api(f"/containers/{db}/json")["State"]["Pid"] != pid
    write(d, b"kill KILL\n")
    assert states(engine, *every) == tree_states(view, *every) == ["exited"] * 3
    assert {engine.api(f"/containers/{c}/json")["State"]["ExitCode"] for c in every} == {137}
    write(d, b"rm\n")
    assert not {c["Id"] for c in engine.containers(all=True)} & set(every)
    assert project not in os.listdir(view.path / "projects") and not d.exists()


def test_a_project_with_one_container_stopped(engine: Engine, view: Mount, suffix: str) -> None:
    """As `docker compose`: kill, pause and stop touch the running ones and
    succeed; rm removes the stopped ones only and leaves the running."""
    project = f"oc{suffix}"
    db = compose_container(engine, project, "db", 1)
    web = compose_container(engine, project, "web", 1)
    engine.docker("stop", "-t", "0", db)
    d = view.path / "projects" / project
    write(d, b"pause\n")
    assert states(engine, db, web) == ["exited", "paused"]
    write(d, b"unpause\n")
    write(d, b"rm\n")
    assert states(engine, web) == ["running"]
    assert db not in {c["Id"] for c in engine.containers(all=True)}
    assert os.listdir(d / "services") == ["web"]
    write(d, b"kill\n")
    assert states(engine, web) == ["exited"]
    assert (d / "err").read_bytes() == b""


def test_a_partial_failure_says_which_container_and_what_was_done(
    engine: Engine, view: Mount, suffix: str
) -> None:
    project = f"oc{suffix}"
    db = compose_container(engine, project, "db", 1, create=True)
    web1 = compose_container(engine, project, "web", 1, "/nonexistent", create=True)
    web2 = compose_container(engine, project, "web", 2, create=True)
    d = view.path / "projects" / project
    code, command, reason = refused(d, b"start\n")
    # Docker's 400 for a command that cannot run; dependencies first, so db ran.
    assert code == errno.EINVAL and command == "start", (code, command)
    assert reason.startswith(f"web/1 ({web1[:12]}): "), reason
    assert "/nonexistent" in reason and reason.endswith("done: db/1; not tried: web/2"), reason
    assert states(engine, db, web1, web2) == ["running", "created", "created"]
    assert tree_states(view, db) == ["running"]
    code, _, reason = refused(d, b"stop soon\n")
    assert code == errno.EINVAL and "SECONDS" in reason
    assert refused(d, b"scale 2\n")[0] == errno.EINVAL
    assert states(engine, db, web1, web2) == ["running", "created", "created"]
    # Gone behind the ctl's back: ENOENT.
    fd = os.open(d / "ctl", os.O_WRONLY)
    try:
        engine.docker("rm", "-f", db, web1, web2)
        with pytest.raises(OSError) as caught:
            os.write(fd, b"start\n")
    finally:
        os.close(fd)
    assert caught.value.errno == errno.ENOENT


def test_ctl_under_o_ro_is_erofs(engine: Engine, mount_factory: Any, suffix: str) -> None:
    m = mount_factory(engine.host, "--view=engine", "-o", "ro", name="ro")
    name = f"oc-ro-{suffix}"
    engine.docker("volume", "create", name)
    try:
        with pytest.raises(OSError) as caught:
            write(m.path / "volumes" / name, b"rm\n")
        assert caught.value.errno == errno.EROFS
        assert name in engine.docker("volume", "ls", "-q").split()
    finally:
        engine.docker("volume", "rm", name, check=False)


def test_ctl_by_another_user_is_refused(engine: Engine, suffix: str) -> None:
    # pytest's tmp dirs are private to root: mount where another user can reach.
    base = Path(tempfile.mkdtemp(prefix="dfs-shared-"))
    base.chmod(0o755)
    m = start_mount(engine.host, base / "mnt", "--view=engine", "-o", "allow_other")
    name = f"oc-other-{suffix}"
    engine.docker("volume", "create", name)
    try:
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        d = m.path / "volumes" / name
        read = subprocess.run([*nobody, "cat", f"{d}/Name", f"{d}/err"], capture_output=True)
        assert read.returncode == 0 and read.stdout == f"{name}\n".encode(), read.stderr
        script = f"echo rm > {d}/ctl"
        write = subprocess.run([*nobody, "sh", "-c", script], capture_output=True, text=True)
        assert write.returncode != 0 and "Permission denied" in write.stderr
        assert name in engine.docker("volume", "ls", "-q").split()
    finally:
        stop_mount(m)
        engine.docker("volume", "rm", name, check=False)
        shutil.rmtree(base, ignore_errors=True)
