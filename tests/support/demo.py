"""`make demo`, and `make run` with no engine: dockerfs-fuse over a private Docker engine.

`python -m support.demo MOUNTPOINT` (with the checkout's tests/ on PYTHONPATH,
as the Makefile runs it) starts the tests' private dockerd with a few sample
containers, mounts it, and prints how to stop both. Needs root (dockerd does).
`make run` asks `dockerfs-fuse --ping` first, and comes here only when no
engine answers.
"""

from __future__ import annotations

import os
import subprocess
import sys

from dockerfs_fuse.lifecycle.config import MountConfig, MountError
from dockerfs_fuse.lifecycle.preflight import check_config

from .private_dockerd import IMAGE, DockerdError, PrivateDockerd


def demo(mountpoint: str) -> int:
    mountpoint = os.path.abspath(mountpoint)
    try:
        # Before starting an engine: a bad or dead mountpoint costs one line, not a dockerd.
        check_config(MountConfig(mountpoint=mountpoint))
    except MountError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    d = PrivateDockerd()
    try:
        d.start()
        d.import_busybox()
        d.run("--name=web", "-l", "com.example/tier=front", IMAGE, "sleep", "1d")
        d.run("--name=db", "-v", "dbdata:/data", IMAGE, "sleep", "1d")
        d.run("--name=worker", IMAGE, "sh", "-c", "while true; do echo tick; sleep 5; done")
    except DockerdError as exc:
        d.cleanup()
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    res = subprocess.run(
        [sys.executable, "-m", "dockerfs_fuse.lifecycle.cli", "-H", d.host, mountpoint], check=False
    )
    if res.returncode != 0:
        d.cleanup()
        return res.returncode
    assert d.proc is not None
    print(
        f"""
mounted a private Docker engine (3 containers) at {mountpoint}
  ls {mountpoint}; find {mountpoint}; cat {mountpoint}/*/Names/0
  DOCKER_HOST={d.host} docker ps      # the same engine, with the docker CLI
stop both (the mount, then the private dockerd, then its files):
  fusermount3 -u {mountpoint}; kill {d.proc.pid}; \\
  while kill -0 {d.proc.pid} 2>/dev/null; do sleep 0.2; done; rm -rf {d.base}
"""
    )
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m support.demo MOUNTPOINT", file=sys.stderr)
        return 2
    return demo(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
