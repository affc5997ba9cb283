"""`--view=engine`'s swarm/ on a real 3-node swarm (the private swarm fixture)
and a real mount: over the manager it is the `--view=swarm` tree, agreeing
with the CLI, its ctl acting on the cluster; over a worker its three
directories list nothing, without an error, so a walk of the view finishes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine
from support.private_swarm import CONVERGE_TIMEOUT, PrivateSwarm
from support.waiting import wait_until
from test_swarm_mount import SLEEP, cli, ctl, read

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

TOP = ["containers", "images", "volumes", "networks", "projects", "swarm"]
# The root lists the directories, then `events` (test_engine_events.py).
LISTED = [*TOP, "events"]
# A bound for a walk of a small engine: it ends a walk that blocks, it does not time one.
WALK_BOUND = 60.0


def test_swarm_is_the_cluster_view_over_a_manager(swarm: PrivateSwarm, mount_factory: Any) -> None:
    m = Path(mount_factory(swarm.manager.host, "--view=engine").path)
    assert os.listdir(m) == LISTED
    s = m / "swarm"
    assert os.listdir(s) == ["services", "nodes", "tasks"]
    swarm.create_service("web", "--replicas=1", "--label=tier=front", command=SLEEP)
    assert os.listdir(s / "services") == cli(swarm, "service", "ls", "--format", "{{.Name}}")
    web = s / "services" / "web"
    sid = cli(swarm, "service", "inspect", "--format", "{{.ID}}", "web")[0]
    assert read(web / "ID") == sid
    assert read(web / "Labels" / "tier") == "front"
    assert json.loads((web / "inspect.json").read_text())["ID"] == sid
    assert os.readlink(s / "services" / sid) == "web"
    hostnames = cli(swarm, "node", "ls", "--format", "{{.Hostname}}")
    assert sorted(os.listdir(s / "nodes")) == sorted(hostnames)
    # The task links stay inside swarm/.
    link = wait_until(
        lambda: "1" in os.listdir(web / "tasks") and web / "tasks" / "1",
        "a task of web",
        CONVERGE_TIMEOUT,
        retry_on=(OSError,),
    )
    tid = os.readlink(link).rsplit("/", 1)[1]
    assert os.readlink(link) == f"../../../tasks/{tid}"
    assert tid in cli(swarm, "service", "ps", "-q", "--no-trunc", "web")
    assert read(link / "Service") == "web"
    # Its ctl acts on the cluster, as the swarm view's does.
    ctl(web / "ctl", "scale 2")
    assert read(web / "Replicas") == "2"
    spec = cli(swarm, "service", "inspect", "--format", "{{.Spec.Mode.Replicated.Replicas}}", "web")
    assert spec == ["2"]


def test_swarm_lists_nothing_over_a_worker(swarm: PrivateSwarm, mount_factory: Any) -> None:
    mount = mount_factory(swarm.workers[0].host, "--view=engine", name="worker")
    m = Path(mount.path)
    assert os.listdir(m) == LISTED
    for kind in ("services", "nodes", "tasks"):
        assert os.listdir(m / "swarm" / kind) == []
    assert not (m / "swarm" / "services" / "anything").exists()
    wait_until(
        lambda: "not a swarm manager" in mount.log_text(),
        "the start-up line",
        30,
        retry_on=(OSError,),
    )
    found = subprocess.run(["find", str(m)], capture_output=True, timeout=WALK_BOUND)
    assert found.returncode == 0, found.stderr
    assert f"{m}/swarm/tasks".encode() in found.stdout.splitlines()


def test_swarm_lists_nothing_over_an_engine_in_no_swarm(engine: Engine, mount_factory: Any) -> None:
    mount = mount_factory(engine.host, "--view=engine")
    s = Path(mount.path) / "swarm"
    assert os.listdir(s) == ["services", "nodes", "tasks"]
    for kind in ("services", "nodes", "tasks"):
        assert os.listdir(s / kind) == []
    wait_until(
        lambda: "not a swarm manager (swarm state 'inactive')" in mount.log_text(),
        "the start-up line",
        30,
        retry_on=(OSError,),
    )
