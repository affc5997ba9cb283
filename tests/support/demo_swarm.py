"""`make demo-swarm`: a private three-node Docker Swarm to try, and its teardown.

`python -m support.demo_swarm MOUNTPOINT` (with the checkout's tests/ on
PYTHONPATH, as the Makefile runs it) starts the cluster (see private_swarm)
with two sample services and mounts its view through the manager engine
(`dockerfs-fuse --swarm`);
`python -m support.demo_swarm --stop DIR` tears a cluster down again,
by the PIDs and namespaces it saved in DIR. Needs root (dockerd does).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from . import ROOT
from .private_swarm import DockerdError, PrivateSwarm

NODES = 3


def start(mountpoint: str) -> int:
    swarm = PrivateSwarm(NODES)
    try:
        swarm.start()
        swarm.create_service(
            "web", "--replicas=4", "--label=com.example/tier=front", command=["sleep", "1d"]
        )
        swarm.create_service(
            "ticker",
            "--mode=global",
            command=["sh", "-c", "while true; do echo tick; sleep 5; done"],
        )
        swarm.save()
    except DockerdError as exc:
        swarm.cleanup()
        print(f"demo-swarm: {exc}", file=sys.stderr)
        return 1
    m = swarm.manager
    res = subprocess.run(
        [sys.executable, "-m", "dockerfs_fuse.lifecycle.cli", "--swarm", "-H", m.host, mountpoint],
        check=False,
    )
    if res.returncode != 0:
        swarm.cleanup()
        return res.returncode
    nodes = ", ".join(f"{n.hostname} {n.addr} (pid {n.pid})" for n in swarm.nodes)
    print(
        f"""
a private {NODES}-node swarm is running: {nodes}
services web (4 replicas) and ticker (global), started in {swarm.start_seconds:.1f}s
mounted the cluster (services/, nodes/, tasks/) at {mountpoint}; try:
  ls {mountpoint}/services/web/tasks; cat {mountpoint}/services/web/Running
  echo scale 6 > {mountpoint}/services/web/ctl; echo drain > {mountpoint}/nodes/node2/ctl
  DOCKER_HOST={m.host} docker service ps web     # the cluster, with the docker CLI
stop both (the mount, then the cluster, its namespaces and files):
  fusermount3 -u {mountpoint}; PYTHONPATH={ROOT} {sys.executable} -m support.demo_swarm --stop \\
    {swarm.base}
"""
    )
    return 0


def stop(base: str) -> int:
    try:
        swarm = PrivateSwarm.attach(Path(base))
    except (OSError, ValueError, KeyError) as exc:
        print(f"demo-swarm: no cluster state in {base}: {exc}", file=sys.stderr)
        return 1
    swarm.cleanup()
    print(f"stopped the cluster in {swarm.stop_seconds:.1f}s")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 1 and not argv[0].startswith("-"):
        return start(argv[0])
    if len(argv) == 2 and argv[0] == "--stop":
        return stop(argv[1])
    print(
        "usage: python -m support.demo_swarm MOUNTPOINT | --stop DIR",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
