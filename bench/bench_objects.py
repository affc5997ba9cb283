"""The engine view's listings: `ls images` and `ls volumes` against the docker CLI.

`sudo .venv/bin/python bench/bench_objects.py [--images 500] [--volumes 500] [--runs 5]`
starts a private dockerd, makes IMAGES images and VOLUMES volumes through the
API, then per run, on a fresh `--view=engine` mount (once its start-up
listing of containers is done):

- a cold `ls images` and `ls volumes` (the first listing of each), then a
  warm one of each (the kernel has the directory; reading it lists again);
- `docker images -q` and `docker volume ls -q`;
- the daemon's requests for each listing, by kind, from the root's
  `user.dockerfs.stats` xattr: one of its own kind, none of any other.

The images are distinct images, not tags of one: each a `POST
/images/create?fromSrc=-` (what `docker import -` sends) of a tar of one
small file whose content differs (about 30 ms each, no CLI process), tagged
`dfs-bench/i<n>:latest`. Volumes are `POST /volumes/create`.

Targets (issue 21): each listing at most 1.0x its CLI command, with one list
request. The best (shortest) of each is shown too: on a loaded machine it
says more than the median. Prints a markdown table; writes bench/results/objects.json and
objects.md.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

# The harness (private dockerd, dockerfs-fuse as a child) is the checkout's tests/support.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.bench_results import publish
from support.mount_process import MountProcess, start_mount, stop_mount
from support.private_dockerd import PrivateDockerd

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
TARGET = 1.0
# (our listing, the CLI's, the kind it lists)
PAIRS = (("images", ("images", "-q")), ("volumes", ("volume", "ls", "-q")))


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("docker", timeout=60)
        self._path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)
        self.sock.connect(self._path)


def api(d: PrivateDockerd, method: str, path: str, body: bytes, ctype: str) -> bytes:
    conn = _Unix(d.socket)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
        return data
    finally:
        conn.close()


def tiny_tar(n: int) -> bytes:
    """A root filesystem of one file whose content is n: a distinct image per n."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        content = f"dockerfs bench image {n}\n".encode()
        info = tarfile.TarInfo("id")
        info.size = len(content)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def make_images(d: PrivateDockerd, count: int) -> None:
    for n in range(count):
        query = urlencode({"fromSrc": "-", "repo": f"dfs-bench/i{n}", "tag": "latest"})
        api(d, "POST", f"/images/create?{query}", tiny_tar(n), "application/x-tar")


def make_volumes(d: PrivateDockerd, count: int) -> None:
    for n in range(count):
        body = json.dumps({"Name": f"dfs-bench-{n}"}).encode()
        api(d, "POST", "/volumes/create", body, "application/json")


def timed(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def requests(m: MountProcess) -> dict[str, int]:
    return dict(m.stats()["requests"])


def settled(m: MountProcess) -> None:
    """The mount's start-up listing of containers done (its event stream up)."""
    deadline = time.monotonic() + 60
    while not all(e.get("events") for e in m.stats()["engines"].values()):
        if time.monotonic() > deadline:
            raise RuntimeError("the mount's start-up listing did not finish")
        time.sleep(0.1)


def listing(m: MountProcess, kind: str, want: int) -> tuple[float, dict[str, int]]:
    """Time `ls MOUNT/kind`; the requests it made, by kind (zeros left out)."""
    before = requests(m)
    start = time.perf_counter()
    out = subprocess.run(["ls", str(m.path / kind)], check=True, capture_output=True)
    seconds = time.perf_counter() - start
    after = requests(m)
    listed = len(out.stdout.split())
    if listed < want:
        raise RuntimeError(f"ls {kind} listed {listed}, not {want}")
    made = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return seconds, {k: v for k, v in made.items() if v}


def run(args: argparse.Namespace) -> dict[str, Any]:
    d = PrivateDockerd()
    results: dict[str, Any] = {"images": args.images, "volumes": args.volumes}
    try:
        d.start()
        start = time.monotonic()
        make_images(d, args.images)
        results["images_seconds"] = time.monotonic() - start
        start = time.monotonic()
        make_volumes(d, args.volumes)
        results["volumes_seconds"] = time.monotonic() - start
        env = d.env()
        docker = shutil.which("docker") or "docker"
        figures: dict[str, list[float]] = {}
        made: dict[str, list[dict[str, int]]] = {}
        with tempfile.TemporaryDirectory(prefix="dfs-bench-objects-") as tmp:
            work = Path(tmp)
            for _ in range(args.runs):
                m = start_mount(d.host, work / "mnt", "--view=engine")
                try:
                    settled(m)
                    # Each listing, then its CLI command at once: under a
                    # varying load both pay alike.
                    for temp in ("cold", "warm"):
                        for kind, cli in PAIRS:
                            seconds, reqs = listing(m, kind, getattr(args, kind))
                            figures.setdefault(f"ls_{kind}_{temp}", []).append(seconds)
                            made.setdefault(f"ls_{kind}_{temp}", []).append(reqs)
                            cli_seconds = timed([docker, *cli], env)
                            figures.setdefault(f"cli_{kind}", []).append(cli_seconds)
                finally:
                    stop_mount(m)
        results["figures"] = figures
        results["requests"] = made
    finally:
        d.cleanup()
    results["targets"] = targets(results)
    return results


def one_of_its_kind(kind: str, made: list[dict[str, int]]) -> bool:
    """Each listing asked for its kind's list once and for nothing else."""
    return all(r == {kind: 1} for r in made)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    f, r = results["figures"], results["requests"]
    out = []
    for kind, cli in PAIRS:
        theirs = statistics.median(f[f"cli_{kind}"])
        for temp in ("cold", "warm"):
            key = f"ls_{kind}_{temp}"
            ours = statistics.median(f[key])
            ratio = ours / theirs if theirs else float("inf")
            one = one_of_its_kind(kind, r[key])
            best, best_cli = min(f[key]), min(f[f"cli_{kind}"])
            out.append(
                {
                    "target": f"{temp} `ls {kind}` <= {TARGET}x `docker {' '.join(cli)}`",
                    "ours_ms": ours * 1000,
                    "cli_ms": theirs * 1000,
                    "ratio": ratio,
                    "best_ms": best * 1000,
                    "best_cli_ms": best_cli * 1000,
                    "best_ratio": best / best_cli if best_cli else float("inf"),
                    "requests": r[key],
                    "pass": ratio <= TARGET and one,
                }
            )
    return out


def _one(target: dict[str, Any]) -> bool:
    kinds = {k for r in target["requests"] for k in r}
    return len(kinds) == 1 and all(list(r.values()) == [1] for r in target["requests"])


def render(results: dict[str, Any]) -> str:
    rows = [
        f"| {t['target']} | {t['ours_ms']:.0f} ms | {t['cli_ms']:.0f} ms | {t['ratio']:.2f}x "
        f"| {t['best_ms']:.0f} / {t['best_cli_ms']:.0f} ms = {t['best_ratio']:.2f}x "
        f"| {'1 of its kind, none other' if _one(t) else t['requests']} "
        f"| {'met' if t['pass'] else 'NOT met'} |"
        for t in results["targets"]
    ]
    runs = len(results["figures"]["ls_images_cold"])
    head = (
        f"{results['images']} images (made in {results['images_seconds']:.0f} s), "
        f"{results['volumes']} volumes (in {results['volumes_seconds']:.0f} s); "
        f"medians of {runs} runs, each on a fresh mount\n\n"
        "| listing | dockerfs | CLI | ratio (medians) | best of each | requests per listing "
        "| target (medians) |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    return head + "\n".join(rows) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--volumes", type=int, default=500)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    results = run(args)
    return publish(args.out, "objects", results, render(results))


if __name__ == "__main__":
    sys.exit(main())
