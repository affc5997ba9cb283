"""How tests/data/swarm-*.json were made: real answers of a private 3-node swarm.

    sudo .venv/bin/python tests/record_swarm.py tests/data

Builds a cluster with one object of each interesting kind (a replicated
service updated to a new image, a global one, one with a published port,
one whose tasks cannot start, one whose task exits non-zero; a labelled
second manager, a paused worker), then saves `GET /services?status=true`,
`GET /tasks` and `GET /nodes` as the engine answered them, and what
`docker service ls`, `docker service ps` and `docker node ls` printed for
the same state (swarm-cli.json). Not a test.
"""

from __future__ import annotations

import http.client
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

from support.private_swarm import CONVERGE_TIMEOUT, PrivateSwarm
from support.waiting import wait_until


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("docker", timeout=30)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self._path)


def api(swarm: PrivateSwarm, path: str) -> Any:
    conn = _Unix(swarm.manager.socket)
    try:
        conn.request("GET", path)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def main(out: Path) -> None:
    with PrivateSwarm(3) as swarm:
        m = swarm.manager
        swarm.tag_image("busybox:v2")
        swarm.create_service(
            "web", "--replicas=4", "--label=com.example/tier=front", command=["sleep", "1d"]
        )
        swarm.create_service(
            "ticker", "--mode=global", command=["sh", "-c", "while :; do echo tick; sleep 5; done"]
        )
        swarm.create_service("edge", "--publish=8081:80", command=["sleep", "1d"])
        swarm.create_service("broken", "--restart-condition=none", command=["/bin/nonexistent"])
        swarm.create_service("once", "--restart-condition=none", command=["sh", "-c", "exit 3"])

        def running(name: str, n: int) -> bool:
            tasks = api(swarm, f"/tasks?filters=%7B%22service%22%3A%5B%22{name}%22%5D%7D")
            up: int = sum(t["Status"]["State"] == "running" for t in tasks)
            return up >= n

        wait_until(lambda: running("web", 4), "web", CONVERGE_TIMEOUT)
        wait_until(lambda: running("ticker", 3), "ticker", CONVERGE_TIMEOUT)
        m.docker("service", "update", "--detach", "--no-resolve-image", "--image=busybox:v2", "web")
        wait_until(
            lambda: (
                (api(swarm, "/services/web").get("UpdateStatus") or {}).get("State") == "completed"
            ),
            "web update",
            CONVERGE_TIMEOUT,
        )
        m.docker("node", "update", "--label-add=zone=a", "--label-add=com.example/rack=r1", "node2")
        m.docker("node", "promote", "node2")
        m.docker("node", "update", "--availability=pause", "node3")
        wait_until(
            lambda: (
                api(swarm, "/nodes/node2").get("ManagerStatus", {}).get("Reachability")
                == "reachable"
            ),
            "node2 reachable",
            CONVERGE_TIMEOUT,
        )
        time.sleep(2)
        for name, path in (
            ("services", "/services?status=true"),
            ("tasks", "/tasks"),
            ("nodes", "/nodes"),
        ):
            data = api(swarm, path)
            (out / f"swarm-{name}.json").write_text(json.dumps(data, indent=4) + "\n")
            print(f"swarm-{name}.json: {len(data)} objects")
        # What the docker CLI makes of the same state, to check the tree against.
        ids = m.docker("service", "ls", "-q").stdout.decode().split()
        cli = {
            argv: [
                json.loads(line)
                for line in m.docker(*argv.split(), "--format={{json .}}", *extra)
                .stdout.decode()
                .splitlines()
            ]
            for argv, extra in (
                ("service ls", ()),
                ("service ps --no-trunc", ids),
                ("node ls", ()),
            )
        }
        (out / "swarm-cli.json").write_text(json.dumps(cli, indent=4) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
