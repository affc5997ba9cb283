"""A throwaway Docker Swarm of our own: several private dockerds on this host.

Swarm needs each node to have an address of its own that the others reach,
so each dockerd lives in a network namespace we create, with one end of a
veth pair; the other ends are joined by a bridge in one more namespace of
ours. Nothing is added to the host's own network, and two clusters (a test
session and `make demo-swarm`, say) can use the same addresses side by side.

Each dockerd is started under `nsenter --net`, not `ip netns exec`: the
latter also remounts /sys for the namespace, which hides the cgroup mounts
dockerd needs. `unshare --uts` gives each node a hostname of its own, so
nodes are told apart by name as on real machines. No registry is reachable
(nor should be): every node imports the same busybox image, services pin
that local tag, and `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1` stops the swarm
agent from trying to pull it before each task.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from .private_dockerd import IMAGE, DockerdError, PrivateDockerd

__all__ = ["CONVERGE_TIMEOUT", "IMAGE", "DockerdError", "NetnsDockerd", "PrivateSwarm"]

NETNS_DIR = Path("/run/netns")
SUBNET = "10.77.0"  # a /24 that exists only inside our namespaces
SWARM_PORT = 2377
# How long a test waits for a swarm to converge (seconds; tens under load).
CONVERGE_TIMEOUT = 90.0
T = TypeVar("T")


def _tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise DockerdError(f"{name} not found (Debian package {package})")
    return found


def ip(*args: str) -> None:
    """`ip ARGS`, or DockerdError with its message."""
    res = subprocess.run([_tool("ip", "iproute2"), *args], capture_output=True, timeout=30)
    if res.returncode != 0:
        raise DockerdError(f"ip {' '.join(args)}: {res.stderr.decode(errors='replace').strip()}")


def _in_parallel(fn: Callable[[T], object], items: Iterable[T]) -> None:
    """fn on every item at once (nodes start and stop slowly); raise the first error."""
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(len(items)) as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


class NetnsDockerd(PrivateDockerd):
    """A private dockerd inside a network namespace, with a hostname of its own."""

    def __init__(self, netns: str, addr: str, hostname: str, base: Path | None = None) -> None:
        super().__init__(base)
        self.netns = netns
        self.addr = addr
        self.hostname = hostname
        # Set when another process started it (see PrivateSwarm.attach).
        self.attached_pid: int | None = None

    def command(self) -> list[str]:
        # nsenter, unshare and sh each exec the next, so the PID we hold is dockerd's.
        return [
            _tool("nsenter", "util-linux"),
            f"--net={NETNS_DIR / self.netns}",
            _tool("unshare", "util-linux"),
            "--uts",
            "sh",
            "-c",
            'hostname "$0" && DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1 exec "$@"',
            self.hostname,
            *super().command(),
        ]

    @property
    def pid(self) -> int | None:
        """Our dockerd's PID, whether we started it in this process or attached to it."""
        return self.proc.pid if self.proc is not None else self.attached_pid

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is not None or self.attached_pid is None:
            super().stop(timeout)
            return
        pid, self.attached_pid = self.attached_pid, None
        if not self._is_ours(pid):
            return  # gone already, and the PID may since name someone else's process
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._is_ours(pid):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
            time.sleep(0.1)

    def _is_ours(self, pid: int) -> bool:
        """A dockerd started by another process of ours: known by its pidfile argument."""
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return f"--pidfile={self.base / 'dockerd.pid'}".encode() in args

    def leave_and_stop(self) -> None:
        """Leave the swarm first: leaving force-removes the task containers, where a
        plain stop waits out each one's stop grace period (10 s by default)."""
        if self.pid is not None:
            # A dockerd that does not answer is stopped all the same.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.docker("swarm", "leave", "--force", check=False, timeout=20)
        self.stop()

    def docker_json(self, *args: str) -> Any:
        """`docker ARGS` whose output is JSON (`inspect`, `--format '{{json .}}'`)."""
        return json.loads(self.docker(*args).stdout)


class PrivateSwarm:
    """`size` nodes: node 1 is the manager that initialised the swarm, the rest workers.

    Everything lives under one temp directory and in namespaces named
    `dfs-<tag>-*`, so whatever a crashed run leaves behind is easy to find.
    """

    def __init__(self, size: int = 2, base: Path | None = None) -> None:
        if not 1 <= size <= 9:
            raise ValueError("a private swarm has 1 to 9 nodes")
        self.base = Path(base or tempfile.mkdtemp(prefix="dfs-sw-"))
        self.tag = self.base.name.removeprefix("dfs-sw-")[:8] or secrets.token_hex(4)
        self.bridge_netns = f"dfs-{self.tag}-br"
        self.nodes = [
            NetnsDockerd(
                netns=f"dfs-{self.tag}-n{i}",
                addr=f"{SUBNET}.{i}",
                hostname=f"node{i}",
                # Unique directory names: they also name each node's containerd namespace.
                base=Path(tempfile.mkdtemp(prefix=f"n{i}-", dir=self.base)),
            )
            for i in range(1, size + 1)
        ]
        self._namespaces: list[str] = []
        self.start_seconds = 0.0
        self.stop_seconds = 0.0

    @property
    def manager(self) -> NetnsDockerd:
        return self.nodes[0]

    @property
    def workers(self) -> list[NetnsDockerd]:
        return self.nodes[1:]

    # -- lifecycle --------------------------------------------------------

    def start(self, timeout: float = 90.0) -> None:
        """Network, engines, swarm, image; on any failure tear down what was made."""
        t0 = time.monotonic()
        try:
            self._make_network()
            _in_parallel(lambda n: n.start(timeout=timeout), self.nodes)
            self._form_swarm()
            _in_parallel(lambda n: n.import_busybox(), self.nodes)
            self.wait_ready(timeout)
        except BaseException:
            self.cleanup()
            raise
        self.start_seconds = time.monotonic() - t0

    def _make_network(self) -> None:
        self._add_netns(self.bridge_netns)
        ip("-n", self.bridge_netns, "link", "add", "br0", "type", "bridge")
        ip("-n", self.bridge_netns, "link", "set", "br0", "up")
        for i, node in enumerate(self.nodes, 1):
            self._add_netns(node.netns)
            # Both ends are created inside our namespaces: the host never sees them.
            ip(
                "link", "add", "eth0", "netns", node.netns, "type", "veth",
                "peer", "name", f"n{i}", "netns", self.bridge_netns,
            )  # fmt: skip
            ip("-n", self.bridge_netns, "link", "set", f"n{i}", "master", "br0", "up")
            ip("-n", node.netns, "link", "set", "lo", "up")
            ip("-n", node.netns, "addr", "add", f"{node.addr}/24", "dev", "eth0")
            ip("-n", node.netns, "link", "set", "eth0", "up")

    def _add_netns(self, name: str) -> None:
        ip("netns", "add", name)
        self._namespaces.append(name)

    def _form_swarm(self) -> None:
        m = self.manager
        # A 1 s heartbeat (5 s by default): a node that left or died is seen down sooner.
        m.docker(
            "swarm", "init",
            f"--advertise-addr={m.addr}",
            f"--listen-addr={m.addr}:{SWARM_PORT}",
            "--dispatcher-heartbeat=1s",
        )  # fmt: skip
        _in_parallel(self.join, self.workers)

    def join(self, node: NetnsDockerd) -> None:
        """Make `node` a worker of this swarm (again, after it left)."""
        m = self.manager
        token = m.docker("swarm", "join-token", "-q", "worker").stdout.decode().strip()
        node.docker(
            "swarm", "join",
            f"--token={token}",
            f"--advertise-addr={node.addr}",
            f"--listen-addr={node.addr}:{SWARM_PORT}",
            f"{m.addr}:{SWARM_PORT}",
        )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until the manager sees every node Ready (a join returns a little before)."""
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.node_list()
            ready = [n for n in nodes if n.get("Status", {}).get("State") == "ready"]
            if len(ready) == len(self.nodes):
                return
            if time.monotonic() > deadline:
                states = {n.get("Description", {}).get("Hostname"): n.get("Status") for n in nodes}
                raise DockerdError(f"swarm nodes not ready after {timeout}s: {states}")
            time.sleep(0.2)

    def cleanup(self) -> None:
        """Engines, their files, then our namespaces (which takes the veths with them)."""
        t0 = time.monotonic()
        try:
            _in_parallel(lambda n: n.leave_and_stop(), self.nodes)
        finally:
            try:
                _in_parallel(lambda n: n.cleanup(), self.nodes)
            finally:
                for name in reversed(self._namespaces):
                    subprocess.run(["ip", "netns", "del", name], capture_output=True)
                self._namespaces.clear()
                shutil.rmtree(self.base, ignore_errors=True)
        self.stop_seconds = time.monotonic() - t0

    # -- handing over to another process (make demo-swarm, then its --stop) -----

    STATE = "swarm.json"

    def save(self) -> Path:
        """What another process needs to tear this cluster down, in base/swarm.json."""
        state = {
            "namespaces": self._namespaces,
            "nodes": [
                {"base": str(n.base), "netns": n.netns, "addr": n.addr,
                 "hostname": n.hostname, "pid": n.pid}
                for n in self.nodes
            ],
        }  # fmt: skip
        path = self.base / self.STATE
        path.write_text(json.dumps(state, indent=1) + "\n")
        return path

    @classmethod
    def attach(cls, base: Path) -> PrivateSwarm:
        """The cluster a saved state describes, ready for cleanup() by PID."""
        state = json.loads((base / cls.STATE).read_text())
        swarm = cls.__new__(cls)
        swarm.base = base
        swarm.tag = base.name.removeprefix("dfs-sw-")[:8]
        swarm.bridge_netns = f"dfs-{swarm.tag}-br"
        swarm._namespaces = list(state["namespaces"])
        swarm.nodes = []
        for n in state["nodes"]:
            node = NetnsDockerd(n["netns"], n["addr"], n["hostname"], Path(n["base"]))
            node.attached_pid = n["pid"]
            swarm.nodes.append(node)
        swarm.start_seconds = swarm.stop_seconds = 0.0
        return swarm

    def __enter__(self) -> PrivateSwarm:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # -- driving it ---------------------------------------------------------

    def node_list(self) -> list[dict[str, Any]]:
        """The manager's `GET /nodes`, as `docker node inspect` prints it."""
        ids = self.manager.docker("node", "ls", "-q").stdout.decode().split()
        result: list[dict[str, Any]] = self.manager.docker_json("node", "inspect", *ids)
        return result

    def create_service(self, name: str, *args: str, command: Sequence[str] = ()) -> str:
        """`docker service create` on the manager, pinned to the local image; return its ID.

        --no-resolve-image: the CLI would otherwise ask a registry for the
        tag's digest. --detach: return at once; callers wait for what they
        mean. A 1 s stop grace period (ARGS may override it): busybox's
        `sleep` as PID 1 ignores SIGTERM, and every rolling update, scale
        down or drain would otherwise wait 10 s per task.
        """
        res = self.manager.docker(
            "service", "create", "--detach", "--no-resolve-image", "--stop-grace-period=1s",
            f"--name={name}", *args, IMAGE, *command,
        )  # fmt: skip
        return res.stdout.decode().strip()

    def tag_image(self, ref: str) -> None:
        """Another name for the busybox image on every node (an `image REF` to update to)."""
        _in_parallel(lambda n: n.docker("tag", IMAGE, ref), self.nodes)

    def remove_services(self) -> None:
        ids = self.manager.docker("service", "ls", "-q").stdout.decode().split()
        if ids:
            self.manager.docker("service", "rm", *ids)

    def reset(self) -> None:
        """Back to the state start() left: no services, every node active, node 1
        the only manager (what a test changed, undone for the next)."""
        self.remove_services()
        m = self.manager
        for n in self.node_list():
            nid = n["ID"]
            if n.get("Spec", {}).get("Availability") != "active":
                m.docker("node", "update", "--availability=active", nid)
            manager = n.get("Spec", {}).get("Role") == "manager"
            if manager and n.get("Description", {}).get("Hostname") != m.hostname:
                m.docker("node", "demote", nid)
