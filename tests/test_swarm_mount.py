"""`dockerfs-fuse --swarm` on a real 3-node swarm (the private swarm fixture) and a
real mount: what the files say agrees with the docker CLI, and ctl writes act
on the cluster."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from support.private_swarm import CONVERGE_TIMEOUT, IMAGE, PrivateSwarm
from support.waiting import wait_until

pytestmark = pytest.mark.docker

SLEEP = ["sleep", "1d"]


def cli(swarm: PrivateSwarm, *args: str) -> list[str]:
    return swarm.manager.docker(*args).stdout.decode().split()


def read(path: Path) -> str:
    """A file's content, whose size must be what stat says. A file of a task
    can change between the read and the stat (its State while the swarm
    converges): then read it again, until two reads around the stat agree."""
    deadline = time.monotonic() + 30
    while True:
        data = path.read_bytes()
        size = os.stat(path).st_size
        if path.read_bytes() == data or time.monotonic() > deadline:
            break
    assert data.endswith(b"\n"), path
    assert size == len(data), path
    return data.decode()[:-1]


def requests(m: Path) -> dict[str, int]:
    """The mount's Docker requests by kind (the stats xattr)."""
    stats: dict[str, Any] = json.loads(os.getxattr(m, "user.dockerfs.stats"))
    return dict(stats["requests"])


def ctl(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def ctl_errno(path: Path, text: str) -> int:
    try:
        ctl(path, text)
    except OSError as exc:
        return exc.errno or 0
    return 0


def slot_nodes(m: Path, service: str) -> dict[str, str]:
    """slot -> the Node of the task its link points at, through the mount."""
    tasks = m / "services" / service / "tasks"
    return {slot: read(tasks / slot / "Node") for slot in os.listdir(tasks)}


def running_nodes(m: Path, service: str) -> list[str] | None:
    """The nodes of a service's tasks when every current task runs, else None."""
    tasks = m / "services" / service / "tasks"
    slots = os.listdir(tasks)
    if any(read(tasks / s / "State") != "running" for s in slots):
        return None
    return [read(tasks / s / "Node") for s in slots]


@pytest.fixture
def swarm_mount(swarm: PrivateSwarm, mount_factory: Any) -> Path:
    return Path(mount_factory(swarm.manager.host, "--swarm").path)


def test_services_tasks_and_nodes_agree_with_the_cli(
    swarm: PrivateSwarm, swarm_mount: Path
) -> None:
    m = swarm_mount
    assert sorted(os.listdir(m)) == ["nodes", "services", "tasks"]
    swarm.create_service("web", "--replicas=3", "--label=tier=front", command=SLEEP)
    assert os.listdir(m / "services") == cli(swarm, "service", "ls", "--format", "{{.Name}}")
    web = m / "services" / "web"
    sid = cli(swarm, "service", "inspect", "--format", "{{.ID}}", "web")[0]
    assert read(web / "ID") == sid
    assert read(web / "Name") == "web"
    assert read(web / "Mode") == "replicated"
    assert read(web / "Replicas") == "3"
    assert read(web / "Image") == IMAGE
    assert read(web / "Labels" / "tier") == "front"
    assert json.loads((web / "inspect.json").read_text())["ID"] == sid
    # The service's ID is an unlisted alias of its name.
    assert os.readlink(m / "services" / sid) == "web"
    wait_until(
        lambda: read(web / "Running") == "3", "3 running", CONVERGE_TIMEOUT, retry_on=(OSError,)
    )

    ps = set(cli(swarm, "service", "ps", "-q", "--no-trunc", "web"))
    assert ps <= set(os.listdir(m / "tasks"))
    assert sorted(os.listdir(web / "tasks")) == ["1", "2", "3"]
    for slot in ("1", "2", "3"):
        link = web / "tasks" / slot
        target = os.readlink(link)
        tid = target.rsplit("/", 1)[1]
        assert target == f"../../../tasks/{tid}" and tid in ps
        assert read(link / "Service") == "web"
        assert read(link / "Slot") == slot
        assert read(link / "DesiredState") == "running"
        inspected = json.loads((link / "inspect.json").read_text())
        assert inspected["ID"] == tid and inspected["ServiceID"] == sid

    hostnames = cli(swarm, "node", "ls", "--format", "{{.Hostname}}")
    assert sorted(os.listdir(m / "nodes")) == sorted(hostnames)
    for n in swarm.node_list():
        d = m / "nodes" / n["Description"]["Hostname"]
        assert read(d / "ID") == n["ID"]
        assert read(d / "Role") == n["Spec"]["Role"]
        assert read(d / "Availability") == n["Spec"]["Availability"]
        assert read(d / "State") == n["Status"]["State"]
        assert read(d / "Addr") == n["Status"]["Addr"]
        assert os.readlink(m / "nodes" / n["ID"]) == n["Description"]["Hostname"]
        assert (
            (read(d / "Leader") == "true")
            if n.get("ManagerStatus")
            else not (d / "Leader").exists()
        )
    # The nodes a task names are node directories.
    assert set(slot_nodes(m, "web").values()) <= set(hostnames)

    # ctl and logs are links into the unlisted .live: a walk opens neither.
    assert (os.readlink(web / "ctl"), os.readlink(web / "logs")) == (".live/ctl", ".live/logs")
    assert os.readlink(m / "nodes" / hostnames[0] / "ctl") == ".live/ctl"
    assert ".live" not in os.listdir(web)
    logs_asked = requests(m).get("services/logs", 0)
    grep = subprocess.run(["grep", "-r", "front", str(m)], capture_output=True, timeout=60)
    assert grep.returncode == 0, grep.stderr
    assert f"{m}/services/web/Labels/tier:front".encode() in grep.stdout.splitlines()
    assert requests(m).get("services/logs", 0) == logs_asked


def test_scale_up_and_down_through_ctl(swarm: PrivateSwarm, swarm_mount: Path) -> None:
    m = swarm_mount
    swarm.create_service("web", "--replicas=1", command=SLEEP)
    web = wait_until(
        lambda: (m / "services" / "web").is_dir() and m / "services" / "web",
        "web listed",
        CONVERGE_TIMEOUT,
        retry_on=(OSError,),
    )
    ctl(web / "ctl", "scale 6")
    assert read(web / "Replicas") == "6"  # at once
    nodes = wait_until(
        lambda: (n := running_nodes(m, "web")) and len(n) == 6 and n,
        "6 running tasks",
        CONVERGE_TIMEOUT,
        retry_on=(OSError,),
    )
    assert len(set(nodes)) >= 2, nodes
    wait_until(
        lambda: read(web / "Running") == "6", "Running 6", CONVERGE_TIMEOUT, retry_on=(OSError,)
    )
    ctl(web / "ctl", "scale 1")
    assert read(web / "Replicas") == "1"
    wait_until(
        lambda: os.listdir(web / "tasks") == ["1"],
        "one slot left",
        CONVERGE_TIMEOUT,
        retry_on=(OSError,),
    )
    wait_until(
        lambda: read(web / "Running") == "1", "Running 1", CONVERGE_TIMEOUT, retry_on=(OSError,)
    )


def test_image_update_and_rollback(swarm: PrivateSwarm, swarm_mount: Path) -> None:
    m = swarm_mount
    swarm.tag_image("busybox:v2")
    swarm.create_service(
        "web", "--replicas=2", "--update-parallelism=0", "--update-monitor=1s",
        "--rollback-parallelism=0", "--rollback-monitor=1s", command=SLEEP,
    )  # fmt: skip
    web = m / "services" / "web"
    wait_until(
        lambda: read(web / "Running") == "2", "2 running", CONVERGE_TIMEOUT, retry_on=(OSError,)
    )
    ctl(web / "ctl", "image busybox:v2")
    assert read(web / "Image") == "busybox:v2"
    wait_until(
        lambda: read(web / "UpdateStatus" / "State") == "completed",
        "update completed",
        CONVERGE_TIMEOUT,
        retry_on=(OSError,),
    )
    ctl(web / "ctl", "rollback")
    wait_until(
        lambda: read(web / "UpdateStatus" / "State") == "rollback_completed",
        "rollback completed",
        CONVERGE_TIMEOUT,
        retry_on=(OSError,),
    )
    assert read(web / "Image") == IMAGE


def test_drain_moves_tasks_off_a_node(swarm: PrivateSwarm, swarm_mount: Path) -> None:
    m = swarm_mount
    swarm.create_service("web", "--replicas=6", command=SLEEP)
    worker = swarm.workers[0].hostname
    wait_until(
        lambda: (n := running_nodes(m, "web")) and len(n) == 6,
        "6 running",
        CONVERGE_TIMEOUT,
        retry_on=(OSError,),
    )
    node = m / "nodes" / worker
    ctl(node / "ctl", "drain")
    assert read(node / "Availability") == "drain"
    wait_until(
        lambda: (n := running_nodes(m, "web")) and len(n) == 6 and worker not in n,
        f"no task on {worker}",
        CONVERGE_TIMEOUT,
        retry_on=(OSError,),
    )
    ctl(node / "ctl", "active")
    assert read(node / "Availability") == "active"


def test_a_removed_service_disappears(swarm: PrivateSwarm, swarm_mount: Path) -> None:
    m = swarm_mount
    swarm.create_service("gone", "--replicas=1", command=SLEEP)
    web = m / "services" / "gone"
    wait_until(web.is_dir, "listed", CONVERGE_TIMEOUT, retry_on=(OSError,))
    fd = os.open(web, os.O_RDONLY)  # the kernel holds the entry: it must be invalidated
    try:
        swarm.manager.docker("service", "rm", "gone")
        wait_until(
            lambda: "gone" not in os.listdir(m / "services"), "gone", 30, retry_on=(OSError,)
        )
        wait_until(lambda: not (web / "ID").exists(), "its files gone", 30, retry_on=(OSError,))
    finally:
        os.close(fd)
    ctl_path = m / "services" / "gone" / "ctl"
    assert not ctl_path.exists()


def test_ctl_through_the_mount_of_a_worker_is_refused(
    swarm: PrivateSwarm, mount_factory: Any
) -> None:
    mount = mount_factory(swarm.workers[0].host, "--swarm", name="worker")
    m = Path(mount.path)
    wait_until(
        lambda: "not a swarm manager" in mount.log_text(),
        "the start-up line",
        30,
        retry_on=(OSError,),
    )
    with pytest.raises(OSError) as caught:
        os.listdir(m / "services")
    assert caught.value.errno == errno.EIO
    assert not (m / "services" / "anything").exists()


def test_each_engine_directory_holds_its_cluster_view(
    swarm: PrivateSwarm, mount_factory: Any
) -> None:
    """With several engines, each engine's directory is the one-engine swarm tree:
    the manager's lists the cluster, a worker's refuses (EIO) and says so at start-up."""
    worker = swarm.workers[0]
    mount = mount_factory(
        f"manager={swarm.manager.host}", "-H", f"worker={worker.host}", "--swarm", name="two"
    )
    m = Path(mount.path)
    assert sorted(os.listdir(m)) == ["manager", "worker"]
    assert sorted(os.listdir(m / "manager")) == ["nodes", "services", "tasks"]
    swarm.create_service("web", "--replicas=2", command=SLEEP)
    wait_until(
        lambda: "web" in os.listdir(m / "manager" / "services"),
        "web listed",
        CONVERGE_TIMEOUT,
        retry_on=(OSError,),
    )
    assert sorted(os.listdir(m / "manager" / "nodes")) == sorted(n.hostname for n in swarm.nodes)
    with pytest.raises(OSError) as caught:
        os.listdir(m / "worker" / "services")
    assert caught.value.errno == errno.EIO
    wait_until(
        lambda: "worker: this engine is not a swarm manager" in mount.log_text(),
        "the start-up line",
        CONVERGE_TIMEOUT,
        retry_on=(OSError,),
    )


def test_bad_commands_are_einval(swarm: PrivateSwarm, swarm_mount: Path) -> None:
    m = swarm_mount
    swarm.create_service("web", "--replicas=1", command=SLEEP)
    web = m / "services" / "web"
    wait_until(web.is_dir, "listed", CONVERGE_TIMEOUT, retry_on=(OSError,))
    for bad in ("scale", "scale x", "scale -1", "frobnicate", "image", "rm now"):
        assert ctl_errno(web / "ctl", bad) == errno.EINVAL, bad
    node = m / "nodes" / swarm.workers[0].hostname
    for bad in ("drain now", "up", "promote\ndemote"):
        assert ctl_errno(node / "ctl", bad) == errno.EINVAL, bad
    # Each refusal's reason is in the object's err file, the last one kept.
    assert read(web / "err").endswith(" rm now: usage: rm"), read(web / "err")
    assert " promote demote: " in read(node / "err")
    # A command that Docker refuses as a conflict: demoting the only manager.
    manager = m / "nodes" / swarm.manager.hostname
    assert (manager / "err").read_bytes() == b""
    assert ctl_errno(manager / "ctl", "demote") == errno.EBUSY
    assert " demote: " in read(manager / "err")
    # ctl of a service removed meanwhile: ENOENT.
    fd = os.open(web / "ctl", os.O_WRONLY)
    try:
        swarm.manager.docker("service", "rm", "web")
        with pytest.raises(OSError) as caught:
            os.write(fd, b"scale 2")
        assert caught.value.errno == errno.ENOENT
    finally:
        os.close(fd)


def test_service_logs(swarm: PrivateSwarm, swarm_mount: Path) -> None:
    m = swarm_mount
    swarm.create_service("talk", "--replicas=2", command=["sh", "-c", "echo hello; sleep 1d"])
    logs = m / "services" / "talk" / "logs"
    text = wait_until(
        lambda: (t := logs.read_text()).count("hello\n") == 2 and t,
        "both lines",
        CONVERGE_TIMEOUT,
        retry_on=(OSError,),
    )
    assert text == "hello\nhello\n"
    # Spooled like a container's logs: while open, the size is what it holds so far.
    with logs.open("rb") as f:
        wait_until(
            lambda: os.fstat(f.fileno()).st_size == len(text),
            "its size",
            CONVERGE_TIMEOUT,
            retry_on=(OSError,),
        )
        assert f.read() == text.encode()
