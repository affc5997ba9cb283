"""The exec benchmark: a session through the mount against `docker exec`.

`sudo .venv/bin/python bench/bench_exec.py [--runs 10] [--mb 200]` starts a
private dockerd, runs one busybox container holding a file of MB megabytes,
mounts it, and times, per run:

- one session of `true` through the mount: open `exec/clone`, read N, write
  `exec true`, read `N/wait`, close (in this process: the mount is already
  connected), against `docker exec C true` (a process, which pays its own
  start-up and connection: the point of the comparison);
- `cat N/data > /dev/null` of a session running `cat big`, from a shell
  that opens the clone and starts it (a process), against
  `docker exec C cat big > /dev/null`.

Targets (issue 22): the session of `true` within 0.5x of `docker exec C
true`; the throughput of `cat data` at least 0.8x that of `docker exec`.
For scale it also times Docker's own exec path for `true` (create, start,
the stream's end, one inspect) asked from this process without the mount:
no session through the mount can be faster than that.
Prints a markdown table; writes bench/results/exec.json and exec.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

# The harness (private dockerd, dockerfs-fuse as a child) is the checkout's tests/support.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.bench_results import publish
from support.mount_process import MountProcess, start_mount, stop_mount
from support.private_dockerd import IMAGE, PrivateDockerd

from dockerfs_fuse.docker import exec as docker_exec
from dockerfs_fuse.docker.source import DockerSource
from dockerfs_fuse.model.exec import ExecSpec

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
LATENCY_TARGET = 0.5
THROUGHPUT_TARGET = 0.8
# Runs `cat` of session N's data, the session started in the same shell ($1: exec/).
CAT_DATA = 'exec 3<>"$1/clone"; read n <&3; echo "exec cat /big" >&3; cat "$1/$n/data" > /dev/null'


def session_of_true(m: MountProcess, cid: str) -> float:
    clone = m.path / cid / "exec" / "clone"
    start = time.perf_counter()
    fd = os.open(clone, os.O_RDWR)
    try:
        n = int(os.read(fd, 32))
        os.write(fd, b"exec true\n")
        with open(m.path / cid / "exec" / str(n) / "wait", "rb") as wait:
            code = wait.read()
    finally:
        os.close(fd)
    seconds = time.perf_counter() - start
    if code != b"0\n":
        raise RuntimeError(f"exec true: wait said {code!r}")
    return seconds


def api_true(source: DockerSource, cid: str) -> float:
    """Docker's exec path for `true` alone: create, start, read to the end, inspect."""

    async def run() -> float:
        start = time.perf_counter()
        exec_id = await docker_exec.create(source, cid, ExecSpec(("true",)), "bench")
        channel = await docker_exec.start(source, exec_id, False)
        try:
            while await channel.read() is not None:
                pass
            state = await docker_exec.inspect(source, exec_id)
        finally:
            channel.close()
        seconds = time.perf_counter() - start
        if state.exit_code != 0:
            raise RuntimeError(f"exec true through the API: {state}")
        return seconds

    return trio.run(run)


def cpu_seconds(pid: int) -> float:
    """A process's user and system time so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def run(args: argparse.Namespace) -> dict[str, Any]:
    dockerd = PrivateDockerd()
    results: dict[str, Any] = {"runs": args.runs, "mb": args.mb}
    try:
        dockerd.start()
        dockerd.import_busybox()
        cid = dockerd.run(IMAGE, "sleep", "1d")
        dockerd.docker(
            "exec", cid, "sh", "-c", f"head -c {args.mb << 20} /dev/zero > /big", timeout=300
        )
        env = dockerd.env()
        docker = shutil.which("docker") or "docker"
        figures: dict[str, list[float]] = {
            k: []
            for k in (
                "session_true",
                "docker_exec_true",
                "api_true",
                "cat_data",
                "docker_exec_cat",
                "daemon_cpu_cat",
            )
        }
        source = DockerSource(dockerd.host)
        source.start()
        with tempfile.TemporaryDirectory(prefix="dfs-bench-exec-") as tmp:
            m = start_mount(dockerd.host, Path(tmp) / "mnt")
            try:
                api_true(source, cid)
                exec_dir = str(m.path / cid / "exec")
                session_of_true(m, cid)  # the first pays for the connection pool
                for _ in range(args.runs):
                    figures["session_true"].append(session_of_true(m, cid))
                    figures["docker_exec_true"].append(timed([docker, "exec", cid, "true"], env))
                    figures["api_true"].append(api_true(source, cid))
                    cpu = cpu_seconds(m.proc.pid)
                    figures["cat_data"].append(timed(["sh", "-c", CAT_DATA, "sh", exec_dir]))
                    figures["daemon_cpu_cat"].append(cpu_seconds(m.proc.pid) - cpu)
                    figures["docker_exec_cat"].append(
                        timed([docker, "exec", cid, "cat", "/big"], env)
                    )
            finally:
                stop_mount(m)
                source.close()
        results["figures"] = figures
    finally:
        dockerd.cleanup()
    return results


def render(results: dict[str, Any]) -> str:
    f = results["figures"]
    mb = results["mb"]
    true_ours, true_cli = median(f["session_true"]), median(f["docker_exec_true"])
    cat_ours, cat_cli = median(f["cat_data"]), median(f["docker_exec_cat"])
    api = median(f["api_true"])
    latency = true_ours / true_cli if true_cli else float("inf")
    throughput = cat_cli / cat_ours if cat_ours else 0.0
    ok = {True: "met", False: "NOT met"}
    return (
        f"One busybox container, private dockerd; medians of {results['runs']} runs\n\n"
        "| | dockerfs | docker CLI | ratio | target |\n|---|---|---|---|---|\n"
        f"| clone, `exec true`, read `wait` vs `docker exec C true` | {true_ours * 1000:.1f} ms "
        f"| {true_cli * 1000:.1f} ms | {latency:.2f}x | <= {LATENCY_TARGET}x: "
        f"{ok[latency <= LATENCY_TARGET]} |\n"
        f"| `cat data` of `cat` {mb} MB vs `docker exec C cat` | {mb / cat_ours:.0f} MB/s "
        f"| {mb / cat_cli:.0f} MB/s | {throughput:.2f}x | >= {THROUGHPUT_TARGET}x: "
        f"{ok[throughput >= THROUGHPUT_TARGET]} |\n"
        f"\nDocker's own exec path for `true` (create, start, the stream's end, one inspect), "
        f"asked in-process without the mount: {api * 1000:.1f} ms, {api / true_cli:.2f}x "
        "`docker exec C true`: no session can be faster.\n"
        f"\nThe daemon's CPU time per `cat data` of {mb} MB: "
        f"{median(f['daemon_cpu_cat']):.2f} s (load average {os.getloadavg()[0]:.1f}).\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--mb", type=int, default=200)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    results = run(args)
    return publish(args.out, "exec", results, render(results))


if __name__ == "__main__":
    sys.exit(main())
