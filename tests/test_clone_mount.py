"""The engine view's clone files on a real mount over the private dockerd:
each `run` option's effect as `docker inspect` shows it, the ID read back on
the same descriptor, each refusal's errno and reason (and that it made
nothing), `{` bodies, volumes and networks, the new object listed at once,
who may write (the mounting user; never under -o ro)."""

from __future__ import annotations

import errno
import json
import os
import shlex
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount
from support.private_dockerd import IMAGE
from support.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

KINDS = ("containers", "images", "volumes", "networks")


def clone(m: Mount, kind: str, line: str | bytes) -> str:
    """One open (read-write), one write(2), one read: what `exec 3<>clone;
    echo LINE >&3; read id <&3` does. Raises the write's OSError with the
    reason read back as its note."""
    data = line.encode() + b"\n" if isinstance(line, str) else line
    fd = os.open(m.path / kind / "clone", os.O_RDWR)
    try:
        try:
            os.write(fd, data)
        except OSError as exc:
            exc.add_note(os.read(fd, 4096).decode())
            raise
        return os.read(fd, 4096).decode()
    finally:
        os.close(fd)


def refused(m: Mount, kind: str, line: str | bytes) -> tuple[int, str]:
    """The errno of a refused write and the reason read back after it."""
    with pytest.raises(OSError) as err:
        clone(m, kind, line)
    notes = getattr(err.value, "__notes__", [""])
    return err.value.errno or 0, notes[-1]


def made(engine: Engine, cid: str) -> str:
    engine.started.append(cid)
    return cid


def all_containers(engine: Engine) -> set[str]:
    return {c["Id"] for c in engine.containers(all=True)}


@pytest.fixture
def network(engine: Engine, suffix: str) -> Iterator[str]:
    name = f"cl-net-{suffix}"
    engine.docker("network", "create", name)
    yield name
    engine.docker("network", "rm", name, check=False)


def test_clone_is_a_link_into_the_unlisted_live(view: Mount) -> None:
    for kind in KINDS:
        d = view.path / kind
        assert "clone" in os.listdir(d) and ".live" not in os.listdir(d)
        assert os.readlink(d / "clone") == ".live/clone"
        st = os.stat(d / "clone")
        assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.getuid()
        assert os.listdir(d / ".live") == []


def test_run_with_every_option(
    engine: Engine, view: Mount, network: str, suffix: str, tmp_path: Path
) -> None:
    host_dir = tmp_path / "shared"
    host_dir.mkdir()
    name = f"cl-run-{suffix}"
    line = (
        f"run --name {name} -e 'GREETING=hello world' --env=EMPTY= -l tier=db "
        f"--label=flag -v cl-vol-{suffix}:/named -v {host_dir}:/host:ro "
        "--mount type=tmpfs,target=/scratch,tmpfs-size=1m "
        f"--mount type=volume,source=cl-mnt-{suffix},target=/m,volume-label=made=by-clone "
        f"-w /tmp -u 1000:1000 --entrypoint /bin/sleep -t -i --network {network} "
        "--restart on-failure:2 -p 127.0.0.1:18080:80 -p 9000/udp --cpus 0.5 -m 64m "
        f"-h box{suffix} --stop-timeout 3 {IMAGE} 1d"
    )
    answer = clone(view, "containers", line)
    cid = made(engine, answer.strip())
    assert answer == cid + "\n" and len(cid) == 64
    # Listed at once, with no root listing asked for.
    assert cid in os.listdir(view.path / "containers")
    assert (view.path / "containers" / cid / "State").read_text() == "running\n"
    info = engine.api(f"/containers/{cid}/json")
    config, hc = info["Config"], info["HostConfig"]
    assert info["Name"] == f"/{name}"
    assert {"GREETING=hello world", "EMPTY="} <= set(config["Env"])
    assert config["Labels"] == {"tier": "db", "flag": ""}
    assert hc["Binds"] == [f"cl-vol-{suffix}:/named", f"{host_dir}:/host:ro"]
    assert hc["Mounts"][0]["Type"] == "tmpfs" and hc["Mounts"][0]["Target"] == "/scratch"
    assert hc["Mounts"][0]["TmpfsOptions"]["SizeBytes"] == 1 << 20
    volume = engine.api(f"/volumes/cl-mnt-{suffix}")
    assert volume["Labels"] == {"made": "by-clone"}
    assert config["WorkingDir"] == "/tmp" and config["User"] == "1000:1000"
    assert config["Entrypoint"] == ["/bin/sleep"] and config["Cmd"] == ["1d"]
    assert config["Tty"] is True and config["OpenStdin"] is True
    assert hc["NetworkMode"] == network and network in info["NetworkSettings"]["Networks"]
    assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 2}
    assert hc["PortBindings"] == {
        "80/tcp": [{"HostIp": "127.0.0.1", "HostPort": "18080"}],
        "9000/udp": [{"HostIp": "", "HostPort": ""}],
    }
    assert hc["NanoCpus"] == 500_000_000 and hc["Memory"] == 64 << 20
    assert config["Hostname"] == f"box{suffix}" and config["StopTimeout"] == 3
    engine.docker("rm", "-f", cid)
    engine.docker("volume", "rm", f"cl-vol-{suffix}", f"cl-mnt-{suffix}")


def test_rm_and_create(engine: Engine, view: Mount) -> None:
    cid = made(
        engine, clone(view, "containers", f"run --rm --network none {IMAGE} sleep 1d").strip()
    )
    assert engine.api(f"/containers/{cid}/json")["HostConfig"]["AutoRemove"] is True
    created = made(engine, clone(view, "containers", f"create --network=none {IMAGE} true").strip())
    assert engine.api(f"/containers/{created}/json")["State"]["Status"] == "created"
    # Not listed without -a, as any stopped container; reachable by ID.
    assert created not in os.listdir(view.path / "containers")
    assert (view.path / "containers" / created / "State").read_text() == "created\n"


def test_the_shell_idiom(engine: Engine, view: Mount, suffix: str) -> None:
    script = (
        "exec 3<>clone; echo \"run --name 'cl-sh-$1' --network none busybox sleep 1d\" >&3; "
        'read id <&3; echo "$id"; cat "$id/Names/0"'
    )
    done = subprocess.run(
        ["bash", "-c", script, "bash", suffix],
        cwd=view.path / "containers",
        capture_output=True,
        timeout=60,
        check=True,
    )
    cid, name = done.stdout.decode().split()
    made(engine, cid)
    assert name == f"/cl-sh-{suffix}"
    assert engine.api(f"/containers/{cid}/json")["Name"] == f"/cl-sh-{suffix}"


def test_echo_without_reading(engine: Engine, view: Mount, suffix: str) -> None:
    clone_path = view.path / "containers" / "clone"
    subprocess.run(
        [
            "sh",
            "-c",
            f"echo 'run --name cl-echo-{suffix} --network none busybox sleep 1d' > {clone_path}",
        ],
        check=True,
        timeout=60,
    )
    cid = engine.api(f"/containers/cl-echo-{suffix}/json")["Id"]
    made(engine, cid)
    assert cid in os.listdir(view.path / "containers")


def test_a_json_body_is_the_create_body(engine: Engine, view: Mount) -> None:
    body = {
        "Image": IMAGE,
        "Cmd": ["sleep", "1d"],
        "Labels": {"made": "json"},
        "HostConfig": {"NetworkMode": "none", "Memory": 32 << 20},
    }
    cid = made(engine, clone(view, "containers", json.dumps(body, indent=2).encode()).strip())
    info = engine.api(f"/containers/{cid}/json")
    assert info["Config"]["Labels"] == {"made": "json"}
    assert info["HostConfig"]["Memory"] == 32 << 20
    assert info["State"]["Status"] == "created"


@pytest.mark.parametrize(
    ("line", "code", "why"),
    [
        ("run --bogus busybox", errno.EINVAL, "unknown option --bogus"),
        ("run 'busybox", errno.EINVAL, "No closing quotation"),
        ("run -e HOME busybox", errno.EINVAL, "-e must be NAME=VALUE"),
        (b"run busybox sleep 1d\0", errno.EINVAL, "NUL"),
        (b"run busybox " + b"x" * (1 << 20), errno.EINVAL, "at most"),
        (b"{not json", errno.EINVAL, "not a JSON object"),
        ("run --network none no-such-image:1 true", errno.ENOENT, "No such image"),
        ("run --network no-such-net busybox true", errno.ENOENT, "no-such-net"),
        (
            "run --network none --mount type=bind,src=/no/such/dir,dst=/x busybox true",
            errno.EINVAL,
            "/no/such/dir",
        ),
    ],
)
def test_refusals_make_nothing(
    engine: Engine, view: Mount, line: str | bytes, code: int, why: str
) -> None:
    before = all_containers(engine)
    got, reason = refused(view, "containers", line)
    assert (errno.errorcode[got], why) == (errno.errorcode[code], why)
    assert why in reason
    assert reason.endswith("\n") and reason.count("\n") == 1
    assert all_containers(engine) == before


def test_a_name_in_use_is_eexist(engine: Engine, view: Mount, suffix: str) -> None:
    cid = engine.run(f"--name=cl-dup-{suffix}", IMAGE, "sleep", "1d")
    before = all_containers(engine)
    code, reason = refused(
        view, "containers", f"run --name cl-dup-{suffix} --network none busybox true"
    )
    assert code == errno.EEXIST and "already in use" in reason and cid[:12] in reason
    assert all_containers(engine) == before


def test_volumes_clone(engine: Engine, view: Mount, suffix: str) -> None:
    name = f"cl-v-{suffix}"
    try:
        line = f"create --label tier=db --opt type=tmpfs --opt device=tmpfs {name}"
        assert clone(view, "volumes", line) == name + "\n"
        answer = engine.api(f"/volumes/{name}")
        assert answer["Labels"] == {"tier": "db"} and answer["Options"]["type"] == "tmpfs"
        assert name in os.listdir(view.path / "volumes")
        assert (view.path / "volumes" / name / "Labels" / "tier").read_text() == "db\n"
    finally:
        engine.docker("volume", "rm", "-f", name, check=False)
    code, reason = refused(view, "volumes", "create --opt nonsense v")
    assert code == errno.EINVAL and "--opt must be KEY=VALUE" in reason


def test_networks_clone(engine: Engine, view: Mount, suffix: str) -> None:
    name = f"cl-n-{suffix}"
    subnet = f"10.{150 + int(suffix[:2], 16) % 50}.{int(suffix[2:4], 16)}.0/24"
    try:
        line = f"create --internal --subnet {subnet} --label env=test {name}"
        nid = clone(view, "networks", line).strip()
        answer = engine.api(f"/networks/{name}")
        assert nid == answer["Id"]
        assert answer["Internal"] is True and answer["Labels"] == {"env": "test"}
        assert answer["IPAM"]["Config"][0]["Subnet"] == subnet
        assert name in os.listdir(view.path / "networks")
        before = engine.api("/networks")
        code, reason = refused(view, "networks", f"create {name}")
        assert code == errno.EEXIST and "already exists" in reason
        assert len(engine.api("/networks")) == len(before)
    finally:
        engine.docker("network", "rm", name, check=False)


def test_refused_under_read_only(engine: Engine, mount_factory: Any) -> None:
    m = mount_factory(engine.host, "--view=engine", "-o", "ro", name="ro")
    for kind in KINDS:
        with pytest.raises(OSError) as err:
            os.open(m.path / kind / "clone", os.O_WRONLY)
        assert err.value.errno == errno.EROFS


def test_only_the_mounting_user(engine: Engine, mount_factory: Any) -> None:
    m = mount_factory(engine.host, "--view=engine", "-o", "allow_other", name="shared")
    before = all_containers(engine)
    target = shlex.quote(str(m.path / "containers" / "clone"))
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c",
         f"echo 'run --network none busybox sleep 1d' > {target}"],
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode != 0 and b"Permission denied" in done.stderr
    assert all_containers(engine) == before


def test_a_run_whose_start_fails_leaves_nothing(engine: Engine, view: Mount) -> None:
    before = all_containers(engine)
    code, reason = refused(
        view, "containers", f"run --network none --entrypoint /no/such/program {IMAGE}"
    )
    assert code == errno.EINVAL  # the engine answers 400
    assert "/no/such/program" in reason
    assert all_containers(engine) == before


def test_read_only_opens_read_nothing(view: Mount) -> None:
    assert (view.path / "containers" / "clone").read_bytes() == b""


def test_walks_never_open_a_clone(engine: Engine, view: Mount) -> None:
    before = all_containers(engine)
    for tool in (["grep", "-r", "busybox", str(view.path)], ["find", str(view.path), "-type", "f"]):
        done = subprocess.run(tool, capture_output=True, timeout=60)
        assert b"/.live/" not in done.stdout and b"clone:" not in done.stdout
    asked = view.stats()["requests"]
    assert not [k for k in asked if k.endswith(("create", "/start", "/pull", "/tag"))]
    assert all_containers(engine) == before


def test_shown_at_once_with_no_listing(engine: Engine, view: Mount) -> None:
    wait_until(lambda: all(e["events"] for e in view.stats()["engines"].values()), "events up")
    before = view.stats()["requests"]
    cid = made(engine, clone(view, "containers", f"run --network none {IMAGE} sleep 1d").strip())
    assert (view.path / "containers" / cid / "State").read_text() == "running\n"
    after = view.stats()["requests"]
    # The one container read by ID; no listing of them all.
    assert after.get("containers/json", 0) == before.get("containers/json", 0)
    assert after["containers/create"] == before.get("containers/create", 0) + 1
    assert after["containers/json?filters"] > before.get("containers/json?filters", 0)
