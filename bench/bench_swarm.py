"""The `--swarm` benchmark: cold listings of a 3-node cluster against the docker CLI.

`sudo .venv/bin/python bench/bench_swarm.py [--services 50] [--replicas 4] [--runs 5]`
starts a private 3-node swarm (private_swarm), creates SERVICES services of
REPLICAS replicas each, waits for every task to run, then times, per run:

- a cold `ls services` and a cold `ls tasks` (each the first listing on a
  fresh `--swarm` mount, once the daemon's own start-up listing is done),
  with the daemon's count of list requests each made;
- `docker service ls` and `docker service ps ID...` (every service's ID).

Target (issue 11): each listing within 0.5x of its CLI command's time, with
one list request. Prints a markdown table; writes bench/results/swarm.json.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The harness (private swarm, dockerfs-fuse as a child) is the checkout's tests/support.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.bench_results import publish
from support.mount_process import MountProcess, start_mount, stop_mount
from support.private_swarm import PrivateSwarm

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TARGET = 0.5


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def wait_all_running(swarm: PrivateSwarm, services: int, replicas: int) -> float:
    start = time.monotonic()
    deadline = start + 600
    want = f"{replicas}/{replicas}"
    while time.monotonic() < deadline:
        out = swarm.manager.docker("service", "ls", "--format", "{{.Replicas}}").stdout.decode()
        counts = out.split()
        if len(counts) == services and all(c == want for c in counts):
            return time.monotonic() - start
        time.sleep(1)
    raise RuntimeError("the services did not all run within 600 s")


def requests(m: MountProcess) -> dict[str, int]:
    return dict(m.stats()["requests"])


def cold_listing(swarm: PrivateSwarm, work: Path, kind: str) -> tuple[float, int]:
    """One fresh mount: wait for its start-up listing, then time `ls MOUNT/kind`."""
    m = start_mount(swarm.manager.host, work / "mnt", "--swarm")
    try:
        deadline = time.monotonic() + 30
        while not all(requests(m).get(k, 0) >= 1 for k in ("services", "nodes", "tasks")):
            if time.monotonic() > deadline:
                raise RuntimeError("the mount's start-up listing did not finish")
            time.sleep(0.1)
        time.sleep(0.5)
        before = requests(m).get(kind, 0)
        seconds = timed(["ls", str(m.path / kind)])
        return seconds, requests(m).get(kind, 0) - before
    finally:
        stop_mount(m)


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def run(args: argparse.Namespace) -> dict[str, Any]:
    swarm = PrivateSwarm(3)
    results: dict[str, Any] = {"services": args.services, "replicas": args.replicas}
    try:
        swarm.start()
        start = time.monotonic()
        for i in range(args.services):
            swarm.create_service(
                f"s{i:03d}", f"--replicas={args.replicas}", command=["sleep", "1d"]
            )
        results["create_seconds"] = time.monotonic() - start
        results["converge_seconds"] = wait_all_running(swarm, args.services, args.replicas)
        ids = swarm.manager.docker("service", "ls", "-q").stdout.decode().split()
        env = swarm.manager.env()
        docker = shutil.which("docker") or "docker"
        figures: dict[str, list[float]] = {
            k: [] for k in ("ls_services", "ls_tasks", "service_ls", "service_ps")
        }
        reqs: dict[str, list[int]] = {"ls_services": [], "ls_tasks": []}
        with tempfile.TemporaryDirectory(prefix="dfs-bench-swarm-") as tmp:
            work = Path(tmp)
            (work / "mnt").mkdir()
            for _ in range(args.runs):
                for kind in ("services", "tasks"):
                    seconds, count = cold_listing(swarm, work, kind)
                    figures[f"ls_{kind}"].append(seconds)
                    reqs[f"ls_{kind}"].append(count)
                figures["service_ls"].append(timed([docker, "service", "ls"], env))
                figures["service_ps"].append(timed([docker, "service", "ps", *ids], env))
        results["figures"] = figures
        results["requests"] = reqs
    finally:
        swarm.cleanup()
    return results


def render(results: dict[str, Any]) -> str:
    f = results["figures"]
    r = results["requests"]
    rows = []
    for ours, theirs, label in (
        ("ls_services", "service_ls", "`ls services` vs `docker service ls`"),
        ("ls_tasks", "service_ps", "`ls tasks` vs `docker service ps $(docker service ls -q)`"),
    ):
        a, b = median(f[ours]), median(f[theirs])
        ratio = a / b if b else float("inf")
        one = all(c == 1 for c in r[ours])
        ok = ratio <= TARGET and one
        rows.append(
            f"| {label} | {a * 1000:.0f} ms | {b * 1000:.0f} ms | {ratio:.2f}x "
            f"(target <= {TARGET}x) | {r[ours]} | {'met' if ok else 'NOT met'} |"
        )
    head = (
        f"3-node swarm, {results['services']} services x {results['replicas']} replicas "
        f"(created in {results['create_seconds']:.0f} s, all running after "
        f"{results['converge_seconds']:.0f} s more); medians of {len(f['ls_services'])} runs\n\n"
        "| listing (cold mount) | dockerfs | CLI | ratio | list requests per run | target |\n"
        "|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--services", type=int, default=50)
    p.add_argument("--replicas", type=int, default=4)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    results = run(args)
    return publish(args.out, "swarm", results, render(results))


if __name__ == "__main__":
    sys.exit(main())
