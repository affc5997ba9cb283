"""How the mount's cost grows with the engine: 100 to 10,000 containers (issue 24).

For each N in --sizes, a private dockerd holds N containers made with
`docker create` (no processes: ten thousand fit on a small machine), made in
parallel through the API and labelled, so that a later size, or a later run
with --keep, makes only the missing ones. Each N is mounted with `-a` and
measured in one run: a cold `ls` against the bare API request and `docker ps
-aq`; warm `find` and `grep -r` against a tmpfs copy of the same tree; the
daemon's RSS after a full walk and after the kernel forgot it (drop_caches);
the time from `docker rm` of one container to its directory being gone.

Results: a markdown table on stdout and in RESULTS/scale.md, raw figures in
RESULTS/scale.json and scale.csv, and a log-log plot per figure against N
(RESULTS/scale-*.png). RESULTS is bench/results unless --out says otherwise.
Needs root (dockerd, tmpfs, drop_caches), fusermount3, docker, curl.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import csv
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

# bench.py beside it; the harness (private dockerd, mounts) is the checkout's tests/support.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.private_dockerd import IMAGE, PrivateDockerd

from bench import (
    CORE_FIND,
    DEFAULT_OUT,
    GREP_EXCLUDES,
    BenchError,
    Mount,
    Series,
    Tracer,
    api,
    copy_core_tree,
    counted,
    cpu_ticks,
    fuse_tracer,
    loadavg,
    machine,
    mounted,
    timed,
    wait_idle,
)

LABEL = "dockerfs.scale"
# The containers this bench makes and keeps; the one removed per run is apart.
KEPT = f"{LABEL}=kept"
REMOVED = f"{LABEL}=removed"
CREATE_THREADS = 16
DEFAULT_SIZES = "100,1000,10000"
# A poll of a directory that is about to go: short against the figure, long
# enough not to take a CPU from the daemon it waits for.
GONE_POLL = 0.001
GONE_TIMEOUT = 30.0
# tmpfs for the copy of the tree: ~25 files a container, a page each.
TMPFS_SIZE = "8g"
# The kernel forgetting a walk's inodes (drop_caches) is answered by FORGETs;
# the daemon has caught up once it has been idle this long.
FORGET_QUIET = 1.0

# Issue 24's targets, at the largest size.
TARGET_COLD_LS_VS_API = 1.2
TARGET_FIND_VS_TMPFS = 1.2  # warm find <= the API request + this x tmpfs's find
TARGET_RSS_WALK_MB = 200.0
TARGET_RSS_FORGOT_MB = 100.0

OPS = (
    "ls_cold",
    "curl_api",
    "docker_ps_aq",
    "find_warm",
    "tmpfs_find",
    "grep_warm",
    "tmpfs_grep",
    "rm_gone",
    "rm_request",
)
PLOTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ls": ("a cold listing of the root, ms", ("ls_cold", "curl_api", "docker_ps_aq")),
    "walk": ("a warm walk, ms", ("find_warm", "tmpfs_find", "grep_warm", "tmpfs_grep")),
    "rss": ("the daemon's RSS, MB", ("rss_walk_mb", "rss_forgot_mb")),
    "rm": ("docker rm to the directory gone, ms", ("rm_gone", "rm_request")),
}


# -- the containers, kept by a label -------------------------------------------------------


def labelled(sock: Path, label: str) -> list[str]:
    filters = urllib.parse.quote(json.dumps({"label": [label]}))
    return [str(c["Id"]) for c in api(sock, "GET", f"/containers/json?all=1&filters={filters}")]


def create(sock: Path, label: str) -> str:
    """`docker create --network=none busybox true`, labelled: no process, a few files."""
    key, value = label.split("=")
    spec = {
        "Image": IMAGE,
        "Cmd": ["true"],
        "HostConfig": {"NetworkMode": "none"},
        "Labels": {key: value},
    }
    return str(api(sock, "POST", "/containers/create", spec)["Id"])


def remove(sock: Path, cid: str) -> None:
    api(sock, "DELETE", f"/containers/{cid}?force=1")


def ensure(sock: Path, n: int) -> tuple[int, int, float]:
    """Exactly n kept containers: make the missing, remove any beyond (and any
    left from an interrupted rm run). (made, removed, seconds)."""
    t0 = time.monotonic()
    have = labelled(sock, KEPT)
    extra = have[n:] + labelled(sock, REMOVED)
    with concurrent.futures.ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(lambda cid: remove(sock, cid), extra))
        made = list(pool.map(lambda _: create(sock, KEPT), range(n - len(have))))
    return len(made), len(extra), time.monotonic() - t0


def ensure_image(d: PrivateDockerd) -> None:
    try:
        api(d.socket, "GET", f"/images/{IMAGE}/json")
    except BenchError:
        d.import_busybox()


# -- one size -------------------------------------------------------------------------------


def rss_mb(m: Mount) -> float:
    return m.rss_kb() / 1024


def forget_all() -> None:
    """Make the kernel forget what it caches (dentries, inodes), as memory pressure would."""
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def rm_to_gone(d: PrivateDockerd, m: Mount) -> tuple[float, float]:
    """One container made, seen through the mount, removed: seconds from sending
    `DELETE /containers/ID` to its directory being gone, and of the request alone."""
    cid = create(d.socket, REMOVED)
    path = m.path / cid
    deadline = time.monotonic() + GONE_TIMEOUT
    while not path.is_dir():  # the create event's re-read, or this lookup, adds it
        if time.monotonic() > deadline:
            raise BenchError(f"{cid[:12]} never appeared under {m.path}")
        time.sleep(GONE_POLL)
    wait_idle(m.proc.pid, quiet=0.2, timeout=5, poll=0.02, slack=0)
    t0 = time.perf_counter()
    remove(d.socket, cid)
    request = time.perf_counter() - t0
    while os.path.lexists(path):
        if time.perf_counter() - t0 > GONE_TIMEOUT:
            raise BenchError(f"{cid[:12]} still under {m.path} {GONE_TIMEOUT}s after docker rm")
        time.sleep(GONE_POLL)
    return time.perf_counter() - t0, request


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_of_find(
    m: Mount, d: PrivateDockerd, argv: list[str], into: dict[str, list[float]]
) -> float:
    """Time a warm find, noting the CPU seconds it took of find itself, the
    daemon and dockerd: on a shared machine the wall time also counts the
    others' load, these do not."""
    ticks = os.sysconf("SC_CLK_TCK")
    daemon, engine, tool = cpu_ticks(m.proc.pid), cpu_ticks(_pid(d)), children_cpu()
    dt = timed(argv)
    into["find"].append(children_cpu() - tool)
    into["daemon"].append((cpu_ticks(m.proc.pid) - daemon) / ticks)
    into["dockerd"].append((cpu_ticks(_pid(d)) - engine) / ticks)
    return dt


def _pid(d: PrivateDockerd) -> int:
    if d.proc is None:
        raise BenchError("the private dockerd is not running")
    return d.proc.pid


def measure(
    d: PrivateDockerd, n: int, runs: int, work: Path, tracer: Tracer | None = None
) -> dict[str, Any]:
    """All figures for one N; the tools' runs interleave so drift hits all alike."""
    load = loadavg()
    env = d.env()
    s: dict[str, Series] = {op: Series() for op in OPS}
    curl = ["curl", "-sf", "--unix-socket", str(d.socket), "http://docker/containers/json?all=1"]
    curl += ["-o", "/dev/null"]
    ps_aq = ["docker", "ps", "-aq", "--no-trunc"]
    grep_core = ["grep", "-r", *GREP_EXCLUDES, "."]
    seen = len(api(d.socket, "GET", "/containers/json?all=1"))
    if seen != n:
        raise BenchError(f"expected {n} containers, the engine lists {seen}")
    for argv in (curl, ps_aq):  # the engine and the CLI warm once; figures are steady-state
        timed(argv, env)
    mount_s: list[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        with mounted(d.host, work / "cold", extra=["-a"]) as m:
            mount_s.append(time.perf_counter() - t0)
            s["ls_cold"].add(*counted(m, lambda m=m: timed(["ls", str(m.path)])))
        s["curl_api"].add(timed(curl, env))
        s["docker_ps_aq"].add(timed(ps_aq, env))

    with mounted(d.host, work / "warm", extra=["-a"]) as m, tmpfs(work / "tmpfs") as floor:
        mp, fl = str(m.path), str(floor)
        t0 = time.perf_counter()
        files = copy_core_tree(m.path, floor)  # the first full walk, read through the mount
        first_walk = time.perf_counter() - t0
        for argv in (["find", mp, *CORE_FIND], [*grep_core, mp]):
            timed(argv)
        find_cpu: dict[str, list[float]] = {"find": [], "daemon": [], "dockerd": []}
        find_argv = ["find", mp, *CORE_FIND]
        walks: dict[str, Callable[[], tuple[float, ...]]] = {
            "find_warm": lambda: counted(m, lambda: cpu_of_find(m, d, find_argv, find_cpu)),
            "tmpfs_find": lambda: (timed(["find", fl, *CORE_FIND]),),
            "grep_warm": lambda: counted(m, lambda: timed([*grep_core, mp])),
            "tmpfs_grep": lambda: (timed([*grep_core, fl]),),
        }
        for _ in range(runs):
            for op, walk in walks.items():
                wait_idle(m.proc.pid, quiet=0.2, timeout=10, poll=0.02, slack=0)
                s[op].add(*walk())
        requests: dict[str, dict[str, int]] = {}
        if tracer is not None:  # the FUSE requests of one warm walk, by opcode
            for op, argv in (("find", find_argv), ("grep", [*grep_core, mp])):
                wait_idle(m.proc.pid, quiet=0.2, timeout=10, poll=0.02, slack=0)
                requests[op] = tracer(m.path, lambda argv=argv: timed(argv))
        wait_idle(m.proc.pid, quiet=0.2, timeout=10, poll=0.02, slack=0)
        rss_walk, inodes_walk = rss_mb(m), int(m.stats()["inodes"])
        forget_all()
        wait_idle(m.proc.pid, quiet=FORGET_QUIET, timeout=60, poll=0.05, slack=0)
        rss_forgot, inodes_forgot = rss_mb(m), int(m.stats()["inodes"])
        # The kernel updates VmHWM lazily: once malloc_trim has handed pages
        # back, it read below the walk's VmRSS (47.97 MB against 48.07 at
        # N=100). Never below a figure measured.
        peak = max(m.peak_rss_kb() / 1024, rss_walk, rss_forgot)
        for _ in range(runs):
            gone, request = rm_to_gone(d, m)
            s["rm_gone"].add(gone)
            s["rm_request"].add(request)

    return {
        "n": n,
        "runs": runs,
        "ops": {op: series.as_json() for op, series in s.items()},
        "mount_seconds": mount_s,
        "first_walk_seconds": first_walk,
        "files_in_tree": files,
        "rss_walk_mb": rss_walk,
        "rss_forgot_mb": rss_forgot,
        "peak_rss_mb": peak,
        "inodes_after_walk": inodes_walk,
        "inodes_after_forget": inodes_forgot,
        "fuse_requests": requests,
        "find_cpu_seconds": find_cpu,
        "loadavg_1min": [load, loadavg()],
    }


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir(exist_ok=True)
    opts = f"size={TMPFS_SIZE},mode=0755"
    subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "scale-tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


# -- the report ------------------------------------------------------------------------------


def median_ms(r: dict[str, Any], op: str) -> float:
    return float(r["ops"][op]["median"]) * 1000


def figure(r: dict[str, Any], name: str) -> float:
    """One plotted figure of a size: an op's median in ms, or an RSS in MB."""
    return float(r[name]) if name.endswith("_mb") else median_ms(r, name)


def targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """Issue 24's targets at one size: (what, measured, limit, holds)."""
    api_ms, tmpfs_ms = median_ms(r, "curl_api"), median_ms(r, "tmpfs_find")
    ls_ratio = median_ms(r, "ls_cold") / api_ms
    find_limit = api_ms + TARGET_FIND_VS_TMPFS * tmpfs_ms
    return [
        (
            "cold `ls` ≤ 1.2x the API request",
            f"{ls_ratio:.2f}x",
            f"{TARGET_COLD_LS_VS_API}x",
            ls_ratio <= TARGET_COLD_LS_VS_API,
        ),
        (
            "warm `find` ≤ API request + 1.2x tmpfs `find`",
            f"{median_ms(r, 'find_warm'):.0f} ms",
            f"{find_limit:.0f} ms",
            median_ms(r, "find_warm") <= find_limit,
        ),
        (
            "RSS after a full walk ≤ 200 MB",
            f"{r['rss_walk_mb']:.0f} MB",
            f"{TARGET_RSS_WALK_MB:.0f} MB",
            r["rss_walk_mb"] <= TARGET_RSS_WALK_MB,
        ),
        (
            "RSS once the kernel forgot < 100 MB",
            f"{r['rss_forgot_mb']:.0f} MB",
            f"{TARGET_RSS_FORGOT_MB:.0f} MB",
            r["rss_forgot_mb"] < TARGET_RSS_FORGOT_MB,
        ),
    ]


ROWS = (
    ("containers made (s)", lambda r: f"{r['made']} ({r['create_seconds']:.1f})"),
    ("`ls` root, cold (fresh `-a` mount)", lambda r: f"{median_ms(r, 'ls_cold'):.1f}"),
    ("`curl` GET /containers/json?all=1", lambda r: f"{median_ms(r, 'curl_api'):.1f}"),
    ("`docker ps -aq`", lambda r: f"{median_ms(r, 'docker_ps_aq'):.1f}"),
    (
        "cold `ls` / API request",
        lambda r: f"{median_ms(r, 'ls_cold') / median_ms(r, 'curl_api'):.2f}x",
    ),
    ("`find`, warm", lambda r: f"{median_ms(r, 'find_warm'):.1f}"),
    ("`find`, tmpfs copy", lambda r: f"{median_ms(r, 'tmpfs_find'):.1f}"),
    ("`grep -r` core tree, warm", lambda r: f"{median_ms(r, 'grep_warm'):.1f}"),
    ("`grep -r`, tmpfs copy", lambda r: f"{median_ms(r, 'tmpfs_grep'):.1f}"),
    ("FUSE requests of one warm `find`", lambda r: requests_cell(r, "find")),
    ("FUSE requests of one warm `grep -r`", lambda r: requests_cell(r, "grep")),
    (
        "CPU s of a warm `find`: find, daemon, dockerd",
        lambda r: ", ".join(
            f"{statistics.median(r['find_cpu_seconds'][who]):.2f}"
            for who in ("find", "daemon", "dockerd")
        ),
    ),
    (
        "1-min load average, before and after",
        lambda r: ", ".join(f"{x:.1f}" for x in r["loadavg_1min"]),
    ),
    ("files in the core tree", lambda r: f"{r['files_in_tree']:,}"),
    ("RSS after a full walk, MB", lambda r: f"{r['rss_walk_mb']:.0f}"),
    ("RSS after drop_caches, MB", lambda r: f"{r['rss_forgot_mb']:.0f}"),
    (
        "inodes held: after the walk, after forgetting",
        lambda r: f"{r['inodes_after_walk']:,}, {r['inodes_after_forget']:,}",
    ),
    ("`docker rm` to directory gone", lambda r: f"{median_ms(r, 'rm_gone'):.1f}"),
    ("of which the DELETE request", lambda r: f"{median_ms(r, 'rm_request'):.1f}"),
)


def requests_cell(r: dict[str, Any], op: str) -> str:
    counts = r["fuse_requests"].get(op)
    if not counts:
        return "?"
    parts = ", ".join(f"{name} {count:,}" for name, count in counts.items())
    return f"{sum(counts.values()):,} ({parts})"


def render(report: dict[str, Any]) -> str:
    results = report["results"]
    m = report["machine"]
    lines = [
        "## Scale (issue 24)",
        "",
        f"{m['nproc']} CPUs ({m['cpu']}), Linux {m['kernel']}; medians of {report['runs']} "
        "runs, ms unless said",
        "",
        "| figure | " + " | ".join(f"N={r['n']:,}" for r in results) + " |",
        "|---|" + "---:|" * len(results),
    ]
    for label, cell in ROWS:
        lines.append(f"| {label} | " + " | ".join(cell(r) for r in results) + " |")
    largest = results[-1]
    lines += [
        "",
        f"| target (issue 24) at N={largest['n']:,} | measured | limit | holds |",
        "|---|---|---|---|",
    ]
    for what, got, limit, ok in targets(largest):
        lines.append(f"| {what} | {got} | {limit} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines) + "\n"


def write_csv(results: Sequence[dict[str, Any]], path: Path) -> None:
    names = [name for _, names in PLOTS.values() for name in names]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["n", *names])
        for r in results:
            w.writerow([r["n"], *(f"{figure(r, name):.3f}" for name in names)])


def plot(results: Sequence[dict[str, Any]], out: Path) -> list[Path]:
    """One log-log plot per figure against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["n"] for r in results]
    written = []
    for key, (title, names) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for name in names:
            ax.plot(sizes, [figure(r, name) for r in results], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("containers (N)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        path = out / f"scale-{key}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# -- the run ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", default=DEFAULT_SIZES, help=f"container counts ({DEFAULT_SIZES})")
    p.add_argument("--runs", type=int, default=3, help="runs per figure (default 3)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    p.add_argument(
        "--keep",
        type=Path,
        help="the private dockerd's directory, kept with its containers for the next run "
        "(default: a temporary one, removed)",
    )
    args = p.parse_args(argv)
    args.sizes = sorted({int(x) for x in args.sizes.split(",") if x.strip()})
    if not args.sizes or min(args.sizes) < 1:
        p.error("--sizes needs positive counts")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    if os.geteuid() != 0:
        raise BenchError("needs root: a private dockerd, tmpfs and drop_caches")
    missing = [t for t in ("dockerd", "docker", "fusermount3", "curl") if not shutil.which(t)]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)}")
    meta = machine()
    started = time.monotonic()
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    d = PrivateDockerd(args.keep)
    work = Path(tempfile.mkdtemp(prefix="dfs-scale-"))
    results: list[dict[str, Any]] = []
    try:
        d.start(timeout=300)  # a kept engine loads its containers first
        ensure_image(d)
        with fuse_tracer(work) as tracer:  # the FUSE requests of one walk, where it can
            for n in args.sizes:
                made, removed, seconds = ensure(d.socket, n)
                if d.proc is not None:
                    wait_idle(d.proc.pid, timeout=120)
                print(
                    f"N={n}: {made} containers made, {removed} removed, in {seconds:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
                t0 = time.monotonic()
                r = measure(d, n, args.runs, work, tracer)
                r.update(made=made, removed=removed, create_seconds=seconds)
                results.append(r)
                print(
                    f"N={n}: measured in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True
                )
    finally:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for sub in ("cold", "warm", "tmpfs"):
                if os.path.ismount(work / sub):
                    subprocess.run(["umount", "-l", str(work / sub)], capture_output=True)
            if args.keep is None:
                d.cleanup()
            else:
                d.stop(timeout=120)
                subprocess.run(["umount", "-R", "-l", str(d.base / "exec")], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old)
    meta["seconds_total"] = round(time.monotonic() - started, 1)
    return {"machine": meta, "sizes": args.sizes, "runs": args.runs, "results": results}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(args)
    except BenchError as exc:
        print(f"scale: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("scale: interrupted; cleaned up", file=sys.stderr)
        return 130
    report["targets"] = [
        {"n": r["n"], "target": w, "measured": g, "limit": lim, "pass": ok}
        for r in report["results"]
        for w, g, lim, ok in targets(r)
    ]
    md = render(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "scale.md").write_text(md)
    write_csv(report["results"], args.out / "scale.csv")
    plots = plot(report["results"], args.out)
    print(md)
    print(
        f"wrote scale.json, scale.md, scale.csv and {len(plots)} plots in {args.out} "
        f"({report['machine']['seconds_total']}s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
