"""The clone files' languages (model/clone.py, model/runline.py), with no
Docker: each option's place in the request body, and each malformed line
refused with a reason that names what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from dockerfs_fuse.model.clone import (
    MAX_LINE_BYTES,
    BadLine,
    Pull,
    Tag,
    parse_image,
    parse_network,
    parse_volume,
    progress_line,
    split_reference,
)
from dockerfs_fuse.model.runline import ContainerRequest, memory_bytes, parse_container


def run(line: str) -> ContainerRequest:
    return parse_container(line.encode() + b"\n")


def host(line: str) -> dict[str, Any]:
    hc: dict[str, Any] = run(line).body["HostConfig"]
    return hc


def refused(parse: Any, line: str | bytes) -> str:
    data = line.encode() if isinstance(line, str) else line
    with pytest.raises(BadLine) as err:
        parse(data)
    return str(err.value)


def test_run_starts_and_create_does_not() -> None:
    r = run("run busybox")
    assert r.start and r.name == "" and r.raw is None
    assert r.body["Image"] == "busybox" and "Cmd" not in r.body
    c = run("create busybox")
    assert not c.start


def test_arguments_after_the_image_are_the_command_even_if_they_look_like_options() -> None:
    r = run("run busybox sleep --name x -e 1d")
    assert r.body["Cmd"] == ["sleep", "--name", "x", "-e", "1d"]
    assert r.name == ""


def test_words_split_as_a_shell_does_never_run_by_one() -> None:
    r = run("""run busybox sh -c 'echo "a b"; echo $HOME' a\\ b "c\\"d" ''""")
    assert r.body["Cmd"] == ["sh", "-c", 'echo "a b"; echo $HOME', "a b", 'c"d', ""]


def test_name_env_label_workdir_user_hostname() -> None:
    r = run(
        "run --name web -e A=1 --env=B=two\\ words -eC= -l tier=db --label=flag "
        "-w /srv -u 1000:1000 -h box busybox"
    )
    assert r.name == "web"
    assert r.body["Env"] == ["A=1", "B=two words", "C="]
    assert r.body["Labels"] == {"tier": "db", "flag": ""}
    assert r.body["WorkingDir"] == "/srv"
    assert r.body["User"] == "1000:1000"
    assert r.body["Hostname"] == "box"


def test_tty_interactive_bundled_and_detach_accepted_by_run() -> None:
    r = run("run -dit busybox")
    assert r.body["Tty"] is True and r.body["OpenStdin"] is True
    plain = run("run busybox")
    assert plain.body["Tty"] is False and plain.body["OpenStdin"] is False
    assert "unknown option -d" in refused(parse_container, "create -d busybox")


def test_entrypoint_and_an_empty_one() -> None:
    assert run("run --entrypoint /bin/sh busybox -c x").body["Entrypoint"] == ["/bin/sh"]
    assert run("run --entrypoint '' busybox").body["Entrypoint"] == [""]


def test_volumes_binds_and_anonymous() -> None:
    r = run("run -v /data -v named:/n -v /host:/h:ro,rshared busybox")
    assert r.body["Volumes"] == {"/data": {}}
    assert r.body["HostConfig"]["Binds"] == ["named:/n", "/host:/h:ro,rshared"]


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("rel", "absolute"),
        ("a:b", "absolute"),
        ("a:/b:bogus", "unknown option 'bogus'"),
        ("a:/b:ro:x", "[SOURCE:]DEST"),
        (":/b", "[SOURCE:]DEST"),
    ],
)
def test_bad_volumes(spec: str, why: str) -> None:
    assert why in refused(parse_container, f"run -v {spec} busybox")


def test_mounts() -> None:
    mounts = host(
        "run --mount type=volume,source=v1,target=/v,volume-label=a=b,volume-nocopy "
        '--mount "type=bind,src=/etc,dst=/e,readonly,bind-propagation=rslave" '
        "--mount type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1777 "
        "--mount target=/anon,volume-driver=local,volume-opt=type=tmpfs busybox"
    )["Mounts"]
    assert mounts[0] == {
        "Type": "volume",
        "Source": "v1",
        "Target": "/v",
        "VolumeOptions": {"NoCopy": True, "Labels": {"a": "b"}},
    }
    assert mounts[1] == {
        "Type": "bind",
        "Source": "/etc",
        "Target": "/e",
        "ReadOnly": True,
        "BindOptions": {"Propagation": "rslave"},
    }
    assert mounts[2] == {
        "Type": "tmpfs",
        "Target": "/t",
        "TmpfsOptions": {"SizeBytes": 1 << 20, "Mode": 0o1777},
    }
    assert mounts[3]["VolumeOptions"] == {
        "DriverConfig": {"Name": "local", "Options": {"type": "tmpfs"}}
    }


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("type=nfs,target=/x", "type must be volume, bind or tmpfs"),
        ("source=v", "needs a target"),
        ("type=bind,target=/x", "needs a source"),
        ("target=/x,colour=red", "unknown field 'colour'"),
        ("target=/x,readonly=maybe", "true or false"),
        ("type=bind,src=/a,target=/x,volume-nocopy", "volume-* fields are for type=volume"),
        ("target=/x,tmpfs-mode=9", "octal"),
        ("target", "needs a value"),
    ],
)
def test_bad_mounts(spec: str, why: str) -> None:
    assert why in refused(parse_container, f"run --mount {spec} busybox")


def test_network_restart_rm() -> None:
    hc = host("run --network=backend --restart on-failure:3 busybox")
    assert hc["NetworkMode"] == "backend"
    assert hc["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert hc["AutoRemove"] is False
    assert host("run --net none --rm busybox")["AutoRemove"] is True
    assert host("run --restart unless-stopped busybox")["RestartPolicy"]["Name"] == "unless-stopped"
    assert host("run --rm --restart no busybox")["AutoRemove"] is True


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ("--restart sometimes", "--restart must be one of"),
        ("--restart always:2", "takes no count"),
        ("--restart on-failure:x", "whole number"),
        ("--rm --restart always", "conflicting options: --restart and --rm"),
        ("--network ''", "--network needs a network name"),
    ],
)
def test_bad_policies(options: str, why: str) -> None:
    assert why in refused(parse_container, f"run {options} busybox")


def test_ports() -> None:
    r = run("run -p 8080:80 -p 127.0.0.1:53:53/udp -p 9000 -p [::1]:7000-7001:70-71 busybox")
    assert r.body["ExposedPorts"] == {
        "80/tcp": {},
        "53/udp": {},
        "9000/tcp": {},
        "70/tcp": {},
        "71/tcp": {},
    }
    assert r.body["HostConfig"]["PortBindings"] == {
        "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
        "53/udp": [{"HostIp": "127.0.0.1", "HostPort": "53"}],
        "9000/tcp": [{"HostIp": "", "HostPort": ""}],
        "70/tcp": [{"HostIp": "::1", "HostPort": "7000"}],
        "71/tcp": [{"HostIp": "::1", "HostPort": "7001"}],
    }


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("80/icmp", "protocol"),
        ("x:80", "bad host port"),
        ("8080:0", "out of range"),
        ("70000", "out of range"),
        ("1-3:1-2", "differ in length"),
        ("a:b:c:d", "[IP:][HOST:]PORT"),
        ("[::1:80", "bad address"),
    ],
)
def test_bad_ports(spec: str, why: str) -> None:
    assert why in refused(parse_container, f"run -p {spec} busybox")


def test_cpus_and_memory() -> None:
    hc = host("run --cpus 1.5 -m 512m busybox")
    assert hc["NanoCpus"] == 1_500_000_000
    assert hc["Memory"] == 512 << 20
    assert memory_bytes("1g", "-m") == 1 << 30
    assert memory_bytes("1.5GiB", "-m") == 3 << 29
    assert memory_bytes("4096", "-m") == 4096
    assert memory_bytes("100kb", "-m") == 100 << 10


@pytest.mark.parametrize(
    ("options", "why"),
    [
        ("--cpus 0", "--cpus must be"),
        ("--cpus lots", "--cpus must be"),
        ("-m 12q", "--memory must be bytes"),
        ("-m 0", "must be above 0"),
        ("--stop-timeout -1", "whole number"),
        ("--stop-timeout x", "whole number"),
    ],
)
def test_bad_resources(options: str, why: str) -> None:
    assert why in refused(parse_container, f"run {options} busybox")


def test_the_other_options() -> None:
    r = run(
        "run --privileged --init --read-only --stop-signal SIGINT --stop-timeout 5 "
        "--cap-add NET_ADMIN --cap-drop MKNOD --add-host db:10.0.0.2 --dns 10.0.0.53 "
        "--tmpfs /run:size=1m busybox"
    )
    hc = r.body["HostConfig"]
    assert hc["Privileged"] is hc["Init"] is hc["ReadonlyRootfs"] is True
    assert r.body["StopSignal"] == "SIGINT" and r.body["StopTimeout"] == 5
    assert hc["CapAdd"] == ["NET_ADMIN"] and hc["CapDrop"] == ["MKNOD"]
    assert hc["ExtraHosts"] == ["db:10.0.0.2"] and hc["Dns"] == ["10.0.0.53"]
    assert hc["Tmpfs"] == {"/run": "size=1m"}


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("", "empty request"),
        ("   ", "empty request"),
        ("start busybox", "unknown request 'start'"),
        ("run", "run needs an IMAGE"),
        ("run --name", "--name needs a value"),
        ("run -e", "-e needs a value"),
        ("run --bogus busybox", "unknown option --bogus"),
        ("run -itx busybox", "unknown option -x (in -itx)"),
        ("run --rm=yes busybox", "--rm takes no value"),
        ("run 'busybox", "cannot split the line into words: No closing quotation"),
        ("run busybox \\", "cannot split the line into words"),
        ("run -e HOME busybox", "-e must be NAME=VALUE"),
        ("run -e =x busybox", "-e must be NAME=VALUE"),
        ("run -l =x busybox", "--label must be KEY=VALUE"),
        ("run --tmpfs rel busybox", "absolute path"),
        ("run -- ", "run needs an IMAGE"),
    ],
)
def test_malformed_lines(line: str, why: str) -> None:
    assert why in refused(parse_container, line)


def test_bounds_nul_and_encoding() -> None:
    big = b"run busybox " + b"x" * MAX_LINE_BYTES
    assert "at most" in refused(parse_container, big)
    assert "at most" in refused(parse_container, b"run busybox " + b"x" * (1 << 20))
    assert "NUL" in refused(parse_container, b"run busybox\0")
    assert "UTF-8" in refused(parse_container, b"run busybox \xff")
    assert "line break" in refused(parse_container, b"run busybox\nrun busybox\n")
    # One trailing newline, as echo writes it, is not part of the request.
    assert run("run busybox").body["Image"] == "busybox"


def test_a_json_body_is_sent_as_written() -> None:
    data = b'{"Image": "busybox",\n "Cmd": ["sleep", "1d"], "Labels": {"a": "b"}}\n'
    r = parse_container(data)
    assert r.raw == data and not r.start and r.name == ""
    assert r.body["Cmd"] == ["sleep", "1d"]
    assert "not a JSON object" in refused(parse_container, b"{nope")
    assert "names its Image" in refused(parse_container, b'{"Cmd": ["x"]}')
    assert "at most" in refused(parse_container, b'{"Image": "' + b"x" * MAX_LINE_BYTES + b'"}')
    assert "NUL" in refused(parse_container, b'{"Image": "x\0"}')


def test_volume_lines() -> None:
    body = parse_volume(
        b"create --driver local -l a=b --label c -o type=tmpfs --opt=device=tmpfs v1\n"
    )
    assert body == {
        "Name": "v1",
        "Driver": "local",
        "DriverOpts": {"type": "tmpfs", "device": "tmpfs"},
        "Labels": {"a": "b", "c": ""},
    }
    assert parse_volume(b"create")["Name"] == ""  # the engine names it
    assert "one volume name" in refused(parse_volume, "create a b")
    assert "unknown request 'rm'" in refused(parse_volume, "rm a")
    assert "--opt must be KEY=VALUE" in refused(parse_volume, "create -o x v")
    assert "unknown option --subnet" in refused(parse_volume, "create --subnet 10.0.0.0/8 v")


def test_network_lines() -> None:
    body = parse_network(
        b"create -d bridge --subnet 10.9.0.0/24 --subnet fd00::/64 --internal -l env=test "
        b"-o com.docker.network.bridge.name=br9 net9\n"
    )
    assert body == {
        "Name": "net9",
        "Driver": "bridge",
        "Internal": True,
        "Options": {"com.docker.network.bridge.name": "br9"},
        "Labels": {"env": "test"},
        "CheckDuplicate": True,
        "IPAM": {
            "Driver": "default",
            "Config": [{"Subnet": "10.9.0.0/24"}, {"Subnet": "fd00::/64"}],
        },
    }
    plain = parse_network(b"create n")
    assert plain["Internal"] is False and "IPAM" not in plain
    assert "needs a NAME" in refused(parse_network, "create --internal")
    assert "must be a CIDR" in refused(parse_network, "create --subnet 10.9.0.0/33 n")
    assert "must be a CIDR" in refused(parse_network, "create --subnet 10.9.0.1 n")
    assert "--internal takes no value" in refused(parse_network, "create --internal=1 n")


def test_image_lines() -> None:
    assert parse_image(b"pull busybox\n") == Pull("busybox", "busybox", "latest")
    assert parse_image(b"pull 127.0.0.1:5000/team/app:1") == Pull(
        "127.0.0.1:5000/team/app:1", "127.0.0.1:5000/team/app", "1"
    )
    digest = "sha256:" + "a" * 64
    assert parse_image(f"pull app@{digest}".encode()) == Pull(f"app@{digest}", "app", digest)
    assert parse_image(b"tag busybox 127.0.0.1:5000/bb") == Tag(
        "busybox", "127.0.0.1:5000/bb", "latest"
    )
    assert "pull takes one REF" in refused(parse_image, "pull")
    assert "pull takes one REF" in refused(parse_image, "pull a b")
    assert "tag takes SRC and DST" in refused(parse_image, "tag a")
    assert "not an image reference" in refused(parse_image, "tag a b:")
    assert "cannot be a digest" in refused(parse_image, f"tag a b@{digest}")
    assert "unknown request 'push'" in refused(parse_image, "push a")


def test_split_reference() -> None:
    assert split_reference("localhost:5000/app") == ("localhost:5000/app", "latest")
    assert split_reference("app:v1.2") == ("app", "v1.2")
    with pytest.raises(BadLine):
        split_reference("-x")


def test_progress_lines() -> None:
    assert (
        progress_line({"status": "Pulling from team/app", "id": "1"}) == "1: Pulling from team/app"
    )
    assert (
        progress_line({"status": "Downloading", "progress": "[=>  ] 1MB/2MB", "id": "abc"})
        == "abc: Downloading [=> ] 1MB/2MB"
    )
    assert progress_line({"status": "Digest: sha256:x\n"}) == "Digest: sha256:x"
    assert progress_line({}) == ""
    assert progress_line({"id": "x"}) == "x:"
