"""The private swarm itself: it stays out of the host's network, and its teardown
(here from another process, as `make demo-swarm`'s --stop does it) leaves no
engine, namespace or file behind."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from conftest import require
from support import ROOT
from support.private_swarm import NETNS_DIR, PrivateSwarm

pytestmark = pytest.mark.docker


def root_links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout


def test_private_swarm_stays_out_of_the_host_network_and_stops_from_its_saved_state() -> None:
    require(os.geteuid() == 0, "the private swarm needs root")
    for tool in ("dockerd", "busybox", "ip", "nsenter", "unshare"):
        require(shutil.which(tool) is not None, f"{tool} missing")
    swarm = PrivateSwarm(2)
    try:
        swarm.start()
        namespaces = [swarm.bridge_netns, *(n.netns for n in swarm.nodes)]
        assert all((NETNS_DIR / ns).exists() for ns in namespaces)
        # No veth end, bridge or address of ours in the host's own namespace.
        assert f"dfs-{swarm.tag}" not in root_links()
        ips = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout
        assert "10.77.0." not in ips
        # Node 2 reaches node 1's swarm port over the bridge: it joined through it.
        assert len(swarm.node_list()) == 2
        procs = [n.proc for n in swarm.nodes]
        state = swarm.save()
        res = subprocess.run(
            [sys.executable, "-m", "support.demo_swarm", "--stop", str(swarm.base)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},  # as the printed instructions say
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr
        for p in procs:
            assert p is not None
            assert p.wait(10) is not None  # the dockerds we started have exited
        assert not any((NETNS_DIR / ns).exists() for ns in namespaces)
        assert not state.exists() and not swarm.base.exists()
    finally:
        swarm.cleanup()  # a no-op when the test got this far
