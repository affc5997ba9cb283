"""The clone benchmark: `echo run ... > containers/clone` against `docker run -d`.

`sudo .venv/bin/python bench/bench_clone.py [--runs 10] [--out DIR]` starts a
private dockerd and one `--view=engine` mount, then times, per run and
taking turns going first, three ways of starting the same container
(`--network none busybox sleep 1d`), each one subprocess, start-up included:

- `sh -c 'echo run ... > MOUNT/containers/clone'`;
- `bash -c 'exec 3<>clone; echo run ... >&3; read id <&3; cat "$id/State"'`:
  the ID read back, and the new container's directory readable at once;
- `docker run -d ...`.

Containers are removed between runs, untimed. Target (issue 21): the echo
within 1.0x of `docker run -d`. Prints a markdown table; writes
bench/results/clone.json and clone.md.
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

# The harness (private dockerd, dockerfs-fuse as a child) is the checkout's tests/support.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.bench_results import publish
from support.mount_process import start_mount, stop_mount
from support.private_dockerd import IMAGE, PrivateDockerd

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TARGET = 1.0
LINE = f"run --network none {IMAGE} sleep 1d"


def timed(argv: Sequence[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env, cwd=cwd)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    dockerd = PrivateDockerd()
    figures: dict[str, list[float]] = {"echo": [], "read_id": [], "docker_run": []}
    try:
        dockerd.start()
        dockerd.import_busybox()
        env = dockerd.env()
        docker = shutil.which("docker") or "docker"
        with tempfile.TemporaryDirectory(prefix="dfs-bench-clone-") as tmp:
            m = start_mount(dockerd.host, Path(tmp) / "mnt", "--view=engine")
            try:
                containers = m.path / "containers"
                ways = {
                    "echo": ["sh", "-c", f"echo '{LINE}' > clone"],
                    "read_id": [
                        "bash",
                        "-c",
                        f"exec 3<>clone; echo '{LINE}' >&3; read id <&3; cat \"$id/State\"",
                    ],
                    "docker_run": [docker, "run", "-d", *LINE.split()[1:]],
                }
                for _ in range(args.warmup):
                    for argv in ways.values():
                        timed(argv, env, containers)
                for n in range(args.runs):
                    order = list(ways)
                    order = order[n % len(order) :] + order[: n % len(order)]
                    for way in order:
                        figures[way].append(timed(ways[way], env, containers))
                    ids = dockerd.docker("ps", "-aq").stdout.decode().split()
                    if ids:
                        dockerd.docker("rm", "-f", *ids)
            finally:
                stop_mount(m)
    finally:
        dockerd.cleanup()
    return {"runs": args.runs, "figures": figures}


def render(results: dict[str, Any]) -> str:
    f = results["figures"]
    base = statistics.median(f["docker_run"])
    rows = []
    for way, label in (
        ("echo", "`echo run ... > containers/clone`"),
        ("read_id", "`exec 3<>clone; echo run ... >&3; read id <&3; cat $id/State`"),
        ("docker_run", "`docker run -d ...`"),
    ):
        med = statistics.median(f[way])
        ratio = med / base if base else float("inf")
        target = (
            f"{'met' if ratio <= TARGET else 'NOT met'} (<= {TARGET}x)" if way == "echo" else ""
        )
        rows.append(
            f"| {label} | {med * 1000:.0f} ms | {min(f[way]) * 1000:.0f}-{max(f[way]) * 1000:.0f}"
            f" ms | {ratio:.2f}x | {target} |"
        )
    head = (
        f"Starting one container (`--network none busybox sleep 1d`), medians of "
        f"{results['runs']} runs, each a whole subprocess\n\n"
        "| how | median | min-max | vs docker run -d | target |\n|---|---|---|---|---|\n"
    )
    return head + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    results = run(args)
    return publish(args.out, "clone", results, render(results))


if __name__ == "__main__":
    sys.exit(main())
