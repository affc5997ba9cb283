"""Benchmark dockerfs-fuse against `docker ps`, the bare API and tmpfs (issue 5).

Everything runs against a private dockerd started here (never the user's
engine), with N idle busybox containers for each N in --sizes. Each figure is
the wall time of one subprocess (`ls`, `find`, `grep -r`, `docker ps`, `curl`),
so all of them pay the same process start-up; ratios are taken within one run
so that the machine's speed cancels out.

Results: a markdown table on stdout and in RESULTS/latest.md, raw figures in
RESULTS/latest.json (RESULTS is bench/results unless --out says otherwise).
Needs root (dockerd, tmpfs), fusermount3, docker, curl, grep, find.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import functools
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from dockerfs_fuse.fuse import kernel_cache

# The harness (private dockerd, dockerfs-fuse as a child) is the checkout's tests/support.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support import mount_process
from support.mount_process import MountProcess
from support.private_dockerd import IMAGE, PrivateDockerd

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
LIST_KEY = "containers/json"
# Files outside the core tree: logs.follow and wait block like a pipe, and the
# others ask Docker when opened (or are write-only). grep skips them everywhere.
SPECIAL_FILES = ("logs.follow", "logs", "inspect.json", "ctl", "top", "stats", "wait")
# Each container's own filesystem (issue 10) is measured on its own, below: the
# core-tree walks leave it out.
ROOT_DIR = "root"
GREP_EXCLUDES = (*(f"--exclude={name}" for name in SPECIAL_FILES), f"--exclude-dir={ROOT_DIR}")
CORE_FIND = ("-path", f"*/{ROOT_DIR}", "-prune", "-o", "-print")
CREATE_THREADS = 8
CONCURRENT_LS = 8
# Issue 5's limits, as multipliers of the reference named next to each.
TARGET_COLD_LS_VS_PS_Q = 0.5
TARGET_COLD_LS_VS_CURL = 1.2
TARGET_WARM_FIND_VS_TMPFS = 3.0
# Issue 13's, with the kernel caching listings and pages (patches/pyfuse3).
TARGET_CACHED_FIND_VS_TMPFS = 2.0
TARGET_CACHED_GREP_VS_TMPFS = 10.0
# "Cold root `ls` no slower than today (0.57x `docker ps -q` at N=100)". At
# N=1000 both paths make the same Docker request and the same 1000-entry reply
# (the stock path two requests more, OPENDIR and RELEASEDIR, ~0.1 ms), so they
# are compared within the runs' noise.
TARGET_CACHED_COLD_LS_VS_PS_Q_100 = 0.57
TARGET_CACHED_COLD_LS_VS_STOCK = 1.1
TARGET_RSS_MB = 80.0
# Issue 9's: a cold `ls` of one engine's directory in a two-engine mount costs
# what the one-engine root's does, within this much noise.
TARGET_ENGINE_LS_VS_ROOT_LS = 1.2
# The two-engine mount: the private dockerd under two names, so the figure
# isolates what the mount does (the other engine must not be asked at all).
ENGINE, OTHER_ENGINE = "one", "other"
LINEAR_SLACK = 1.2


# Figures of the warm walks (interleaved in one loop): they take a fraction of
# a second each and their ratios are targets, so they run warm_runs(runs)
# times, an odd count, and a median is less at the mercy of one noisy run.
WARM_WALK_OPS = (
    "find_warm",
    "tmpfs_find",
    "find_warm_stock",
    "find_below_root",
    "tmpfs_find_below_root",
    "grep_warm",
    "tmpfs_grep",
    "grep_warm_stock",
)


def warm_runs(runs: int) -> int:
    return 2 * runs + 1


class BenchError(RuntimeError):
    """The benchmark could not set up or measure something; the run is void."""


# -- the Docker API, spoken directly (fast container set-up, no CLI per container) --


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 60) -> None:
        super().__init__("docker", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def api(sock: Path, method: str, path: str, body: Any = None) -> Any:
    conn = _UnixHTTPConnection(str(sock))
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status >= 300 and resp.status != 304:
            raise BenchError(f"{method} {path}: {resp.status} {raw[:200]!r}")
        return json.loads(raw) if raw.strip() else None
    finally:
        conn.close()


def start_sleeper(sock: Path) -> str:
    """What `docker run -d --network=none busybox sleep 1d` does, in two API calls."""
    spec = {
        "Image": IMAGE,
        "Cmd": ["sleep", "86400"],
        "HostConfig": {"NetworkMode": "none"},
        "Labels": {"dockerfs.bench": "1"},
    }
    cid = str(api(sock, "POST", "/containers/create", spec)["Id"])
    api(sock, "POST", f"/containers/{cid}/start")
    return cid


def start_sleepers(sock: Path, count: int) -> list[str]:
    """A thread pool, because one container start is mostly waiting on runc and the shim."""
    with concurrent.futures.ThreadPoolExecutor(CREATE_THREADS) as pool:
        return list(pool.map(lambda _: start_sleeper(sock), range(count)))


def kill_all(sock: Path, ids: Sequence[str]) -> None:
    """SIGKILL every container first: dockerd's own shutdown of 1000 may outlast its timeout."""

    def kill(cid: str) -> None:
        with contextlib.suppress(Exception):
            api(sock, "POST", f"/containers/{cid}/kill")

    with concurrent.futures.ThreadPoolExecutor(CREATE_THREADS) as pool:
        list(pool.map(kill, ids))


# -- a mount of our own ------------------------------------------------------------------


@dataclass
class Mount(MountProcess):
    def lists(self) -> int:
        return int(self.stats()["requests"].get(LIST_KEY, 0))

    def peak_rss_kb(self) -> int:
        return proc_status_kb(self.proc.pid, "VmHWM")

    def rss_kb(self) -> int:
        return proc_status_kb(self.proc.pid, "VmRSS")


def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError(f"no {key} for PID {pid}")


def start_mount(
    host: str,
    mountpoint: Path,
    stock: bool = False,
    timeout: float = 30,
    extra: Sequence[str] = (),
) -> Mount:
    """The daemon in the foreground, as the tests run it, in a session of its own
    (a Ctrl-C reaches us, and we unmount in order); fail fast if it dies.

    `stock`: as on stock pyfuse3, without kernel caching (kernel_cache.STOCK_ENV).
    """
    env = {**os.environ, kernel_cache.STOCK_ENV: "1"} if stock else None
    try:
        p = mount_process.start_mount(
            host, mountpoint, *extra, new_session=True, timeout=timeout, env=env
        )
    except mount_process.MountFailed as exc:
        raise BenchError(str(exc)) from None
    m = Mount(p.path, p.proc, p.log)
    settle(m)
    return m


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime, all threads


def wait_idle(
    *pids: int, quiet: float = 1.0, timeout: float = 30, poll: float = 0.1, slack: int = 1
) -> None:
    """Wait until these processes, together, have used at most `slack` CPU ticks
    per `poll` for `quiet` seconds: dockerd's after-work of a burst of starts,
    or a daemon still answering the requests a tool left behind when it exited
    (RELEASE is sent after close returns), before the next figure is timed."""

    def ticks() -> int:
        return sum(cpu_ticks(pid) for pid in pids)

    last, since = ticks(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(poll)
        now = ticks()
        if now - last > slack:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def machine_busy(interval: float = 1.0) -> float:
    """The fraction of all CPUs' time spent busy over `interval` seconds (/proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    busy0, total0 = sample()
    time.sleep(interval)
    busy1, total1 = sample()
    return (busy1 - busy0) / max(1, total1 - total0)


def wait_quiet(limit: float = 0.5, quiet: int = 3, timeout: float = 180) -> float:
    """Wait until the machine has been under `limit` busy for `quiet` seconds in a
    row (the after-work of starting or killing a thousand containers: containerd,
    the shims, the kernel); return the last second's figure. The 1-minute load
    average lags by minutes, so it cannot tell."""
    deadline = time.monotonic() + timeout
    calm, busy = 0, 1.0
    while time.monotonic() < deadline and calm < quiet:
        busy = machine_busy()
        calm = calm + 1 if busy < limit else 0
    return busy


def settle(m: Mount, quiet: float = 0.3, timeout: float = 15) -> None:
    """Wait out the daemon's own start-up listing (event stream connect).

    Otherwise the first `ls` shares that request in flight: it would look
    faster than a real first listing and count zero requests. A request in
    flight does not move the counters, so quiet also means no CPU used.
    """
    last = (m.stats()["requests"], cpu_ticks(m.proc.pid))
    since = time.monotonic()
    deadline = since + timeout
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = (m.stats()["requests"], cpu_ticks(m.proc.pid))
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


stop_mount = mount_process.stop_mount


@contextlib.contextmanager
def mounted(
    host: str, mountpoint: Path, stock: bool = False, extra: Sequence[str] = ()
) -> Iterator[Mount]:
    m = start_mount(host, mountpoint, stock, extra=extra)
    try:
        yield m
    finally:
        stop_mount(m)


@contextlib.contextmanager
def tmpfs(path: Path) -> Iterator[Path]:
    path.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1g,mode=0755", "bench-tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def copy_core_tree(src: Path, dst: Path) -> int:
    """Copy what grep reads; the special files become empty, so find sees the same names."""
    files = 0
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        if ROOT_DIR in dirnames:
            dirnames.remove(ROOT_DIR)
        target = dst / rel
        target.mkdir(exist_ok=True)
        for d in dirnames:
            (target / d).mkdir(exist_ok=True)
        for name in filenames:
            data = b"" if name in SPECIAL_FILES else (Path(dirpath) / name).read_bytes()
            (target / name).write_bytes(data)
            files += 1
    return files


# -- FUSE requests, counted by the kernel ------------------------------------------------

TRACEFS = Path("/sys/kernel/tracing")
# Runs a callable and counts the FUSE requests it made on a mount, by opcode.
Tracer = Callable[[Path, Callable[[], object]], dict[str, int]]
FUSE_EVENT = "events/fuse/fuse_request_send"


@contextlib.contextmanager
def tracefs(work: Path) -> Iterator[Path]:
    """The tracing filesystem: where it is mounted, else mounted here until the end."""
    if (TRACEFS / "instances").is_dir():
        yield TRACEFS
        return
    own = work / "tracefs"
    own.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tracefs", "nodev", str(own)]).returncode != 0:
        yield TRACEFS  # no tracefs: the caller finds no fuse events
        return
    try:
        yield own
    finally:
        subprocess.run(["umount", str(own)], capture_output=True)


@contextlib.contextmanager
def fuse_tracer(work: Path) -> Iterator[Tracer | None]:
    """Count the FUSE requests the kernel sends for one operation, by opcode.

    The figure the Docker counters cannot give: how much of an operation's
    time is per-request overhead in the daemon. Uses a private tracefs
    instance (the global trace buffer is left alone); None where the kernel
    has no fuse tracepoints (before Linux 6.14).
    """
    with tracefs(work) as root, _fuse_tracer(root) as tracer:
        yield tracer


@contextlib.contextmanager
def _fuse_tracer(root: Path) -> Iterator[Tracer | None]:
    if not (root / FUSE_EVENT).exists():
        yield None
        return
    inst = root / "instances" / f"dfs-bench-{os.getpid()}"
    inst.mkdir()
    try:
        # A grep of 1000 containers makes ~65000 requests: room for all of them.
        (inst / "buffer_size_kb").write_text("32768\n")

        def count(mount: Path, fn: Callable[[], object]) -> dict[str, int]:
            event = inst / FUSE_EVENT
            (event / "filter").write_text(f"connection == {os.minor(os.stat(mount).st_dev)}\n")
            (event / "enable").write_text("1\n")
            (inst / "trace").write_text("")
            (inst / "tracing_on").write_text("1\n")
            try:
                fn()
            finally:
                (inst / "tracing_on").write_text("0\n")
                (event / "enable").write_text("0\n")
            counts: dict[str, int] = {}
            for line in (inst / "trace").read_text().splitlines():
                start = line.find("(FUSE_")
                if start >= 0:
                    op = line[start + 6 : line.index(")", start)]
                    counts[op] = counts.get(op, 0) + 1
            return dict(sorted(counts.items(), key=lambda kv: -kv[1]))

        yield count
    finally:
        with contextlib.suppress(OSError):
            (inst / "tracing_on").write_text("0\n")
        inst.rmdir()


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# -- timing ------------------------------------------------------------------------------


def timed(
    argv: Sequence[str], env: dict[str, str] | None = None, ok: Sequence[int] = (0,)
) -> float:
    """Seconds of one subprocess, output discarded; a failure voids the figure."""
    t0 = time.perf_counter()
    res = subprocess.run(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, timeout=600
    )
    dt = time.perf_counter() - t0
    if res.returncode not in ok:
        raise BenchError(f"{' '.join(argv)} exited {res.returncode}: {res.stderr[:300]!r}")
    return dt


def timed_concurrently(argv: Sequence[str], count: int) -> float:
    """Wall time of COUNT copies started together (the kernel may merge nothing)."""
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for _ in range(count)
    ]
    codes = [p.wait(600) for p in procs]
    dt = time.perf_counter() - t0
    for p, code in zip(procs, codes, strict=True):
        err = p.stderr.read() if p.stderr else b""
        if p.stderr:
            p.stderr.close()
        if code != 0:
            raise BenchError(f"{' '.join(argv)} exited {code}: {err[:300]!r}")
    return dt


# How often each tool opens the directory it is given, when strace cannot tell:
# GNU grep open(2)s its argument before it sees a directory, then opens it again.
ASSUMED_ROOT_OPENS = {"ls": 1, "find": 1, "grep": 2}


def root_opens(argv: Sequence[str], root: Path) -> tuple[int, bool]:
    """How many times ARGV opens ROOT itself (each open of the root is one listing).

    Counted with strace on the tmpfs copy, so the daemon's request count can be
    judged against what the tool asks for; (assumed count, False) without strace.
    """
    tool = Path(argv[0]).name
    if shutil.which("strace") is None:
        return ASSUMED_ROOT_OPENS[tool], False
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as trace:
        subprocess.run(
            ["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", trace.name, *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
            timeout=600,
        )
        needle = json.dumps(str(root))
        count = sum(1 for line in trace if f"{needle}," in line and "= -1" not in line)
    return count, True


@dataclass
class Series:
    """Seconds of repeated runs, plus Docker list requests each run made (None: not counted)."""

    seconds: list[float] = field(default_factory=list)
    lists: list[int] = field(default_factory=list)

    def add(self, seconds: float, lists: int | None = None) -> None:
        self.seconds.append(seconds)
        if lists is not None:
            self.lists.append(lists)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seconds": self.seconds,
            "median": self.median,
            "min": min(self.seconds),
            "max": max(self.seconds),
        }
        if self.lists:
            out["list_requests"] = self.lists
        return out


def counted(m: Mount, fn: Callable[[], float]) -> tuple[float, int]:
    """Time FN and count the container-list requests the daemon made meanwhile."""
    before = m.lists()
    dt = fn()
    return dt, m.lists() - before


# -- one size ------------------------------------------------------------------------------


OPS = (
    "ls_cold",
    "ls_warm",
    "ls_8_concurrent",
    "find_first",
    "find_warm",
    "find_below_root",
    "grep_first",
    "grep_warm",
    "ls_cold_stock",
    "ls_cold_engine",
    "find_warm_stock",
    "grep_warm_stock",
    "docker_ps_q",
    "docker_ps_json",
    "curl_api",
    "tmpfs_find",
    "tmpfs_find_below_root",
    "tmpfs_grep",
)


def measure(
    d: PrivateDockerd,
    n: int,
    runs: int,
    work: Path,
    tracer: Tracer | None,
) -> dict[str, Any]:
    """All figures for one N; runs of different tools interleave so drift hits all alike."""
    busy_before = wait_quiet()
    load_before = loadavg()
    env = d.env()
    s: dict[str, Series] = {op: Series() for op in OPS}
    ps_q = ["docker", "ps", "--no-trunc", "-q"]
    ps_json = ["docker", "ps", "--no-trunc", "--format", "{{json .}}"]
    curl = ["curl", "-sf", "--unix-socket", str(d.socket), "http://docker/containers/json"]
    curl += ["-o", "/dev/null"]
    seen = len(api(d.socket, "GET", "/containers/json"))
    if seen != n:
        raise BenchError(f"expected {n} running containers, the engine lists {seen}")
    peak_kb: list[int] = []
    mount_s: list[float] = []
    other_engine_requests: list[int] = []
    two_engines = (f"{ENGINE}={d.host}", ["-H", f"{OTHER_ENGINE}={d.host}"])

    # Warm the engine and the CLI binaries once; the figures are steady-state.
    for argv in (ps_q, ps_json, curl):
        timed(argv, env)

    def cold_cached() -> bool:
        t0 = time.perf_counter()
        with mounted(d.host, work / "cold") as m:
            mount_s.append(time.perf_counter() - t0)
            s["ls_cold"].add(*counted(m, functools.partial(timed, ["ls", str(m.path)])))
            peak_kb.append(m.peak_rss_kb())
            return bool(m.stats().get("kernel_cache"))

    def cold_stock() -> None:
        with mounted(d.host, work / "cold-stock", stock=True) as m:
            s["ls_cold_stock"].add(*counted(m, functools.partial(timed, ["ls", str(m.path)])))

    for run in range(runs):
        # The two cold paths take turns going first, so drift hits both alike.
        if run % 2:
            cold_stock()
            kernel_caching = cold_cached()
        else:
            kernel_caching = cold_cached()
            cold_stock()
        with mounted(two_engines[0], work / "cold-two", extra=two_engines[1]) as m:
            other = m.stats()["engines"][OTHER_ENGINE]["requests"]
            ls_one = functools.partial(timed, ["ls", str(m.path / ENGINE)])
            s["ls_cold_engine"].add(*counted(m, ls_one))
            after = m.stats()["engines"][OTHER_ENGINE]["requests"]
            other_engine_requests.append(sum(after.values()) - sum(other.values()))
        s["docker_ps_q"].add(timed(ps_q, env))
        s["docker_ps_json"].add(timed(ps_json, env))
        s["curl_api"].add(timed(curl, env))

    grep_core = ["grep", "-r", *GREP_EXCLUDES, "."]
    with mounted(d.host, work / "warm") as m:
        mp = str(m.path)
        timed(["ls", mp])
        for _ in range(runs):
            s["ls_warm"].add(*counted(m, lambda: timed(["ls", mp])))
        for _ in range(runs):
            s["ls_8_concurrent"].add(
                *counted(m, lambda: timed_concurrently(["ls", mp], CONCURRENT_LS))
            )
        s["find_first"].add(*counted(m, lambda: timed(["find", mp, *CORE_FIND])))
        s["grep_first"].add(*counted(m, lambda: timed([*grep_core, mp])))

        with (
            tmpfs(work / "tmpfs") as floor,
            mounted(d.host, work / "warm-stock", stock=True) as stock,
        ):
            files = copy_core_tree(m.path, floor)
            fl, sp = str(floor), str(stock.path)
            # The walk alone: every container directory named, the root not listed.
            below, tmpfs_below = (
                ["find", *sorted(str(p) for p in top.iterdir()), *CORE_FIND]
                for top in (m.path, floor)
            )
            for argv in (
                ["find", fl, *CORE_FIND],
                [*grep_core, fl],
                ["find", sp, *CORE_FIND],
                [*grep_core, sp],
            ):
                timed(argv)

            # Each warm walk, as (seconds, list requests) or (seconds,).
            walks: dict[str, Callable[[], tuple[float, ...]]] = {
                "find_warm": lambda: counted(m, lambda: timed(["find", mp, *CORE_FIND])),
                "tmpfs_find": lambda: (timed(["find", fl, *CORE_FIND]),),
                "find_warm_stock": lambda: counted(stock, lambda: timed(["find", sp, *CORE_FIND])),
                "find_below_root": lambda: (timed(below),),
                "tmpfs_find_below_root": lambda: (timed(tmpfs_below),),
                "grep_warm": lambda: counted(m, lambda: timed([*grep_core, mp])),
                "tmpfs_grep": lambda: (timed([*grep_core, fl]),),
                "grep_warm_stock": lambda: counted(stock, lambda: timed([*grep_core, sp])),
            }
            assert tuple(walks) == WARM_WALK_OPS
            # Mounts and tmpfs alternate, so load from elsewhere hits all alike;
            # each figure starts with both daemons idle.
            for _ in range(warm_runs(runs)):
                for op, walk in walks.items():
                    wait_idle(m.proc.pid, stock.proc.pid, quiet=0.2, timeout=5, poll=0.02, slack=0)
                    s[op].add(*walk())
            fuse_requests: dict[str, dict[str, int]] = {}
            fuse_requests_stock: dict[str, dict[str, int]] = {}
            if tracer is not None:
                for name, argv in (("ls", ["ls"]), ("find", ["find"]), ("grep", grep_core)):
                    extra = CORE_FIND if name == "find" else ()
                    fuse_requests[name] = tracer(
                        m.path, functools.partial(timed, [*argv, mp, *extra])
                    )
                    fuse_requests_stock[name] = tracer(
                        stock.path, functools.partial(timed, [*argv, sp, *extra])
                    )
            stats_after = m.stats()
            peak_kb.append(m.peak_rss_kb())
            rss_now_kb = m.rss_kb()
            opens = {
                "ls": root_opens(["ls", fl], floor),
                "find": root_opens(["find", fl, *CORE_FIND], floor),
                "grep": root_opens([*grep_core, fl], floor),
            }

    return {
        "n": n,
        "runs": runs,
        "ops": {op: series.as_json() for op, series in s.items()},
        "mount_seconds": mount_s,
        "files_in_tree": files,
        "root_opens": {tool: count for tool, (count, _) in opens.items()},
        "root_opens_traced": all(traced for _, traced in opens.values()),
        "kernel_cache": kernel_caching,
        "fuse_requests_warm": fuse_requests,
        "fuse_requests_warm_stock": fuse_requests_stock,
        "loadavg_1min": [load_before, loadavg()],
        "cpu_busy_before": busy_before,
        "peak_rss_kb": max(peak_kb),
        "rss_after_kb": rss_now_kb,
        "daemon_stats_after": stats_after,
        "other_engine_requests": other_engine_requests,
    }


# -- inside one container (issue 10) -------------------------------------------------------

INSIDE_IMAGE = "dfs-bench-inside:latest"
INSIDE_BIG = "/big/file"
# Issue 10's limits, as multipliers of the reference named next to each.
TARGET_FIND_VS_EXPORT = 1.5
TARGET_TAR_VS_EXPORT = 3.0
TARGET_CAT_VS_CP = 1.5
TARGET_CAT_RSS_GROWTH_MB = 64.0
INSIDE_OPS = ("find_root", "tar_root", "docker_export", "cat_big", "docker_cp_big")


def inside_image_tar(path: Path, files: int, big_mb: int) -> int:
    """A root filesystem: busybox, FILES small files in 50 directories, and one
    BIG_MB MB file (a repeated random MiB: quick to make, not compressible by
    chance). Written to PATH; returns the bytes of the files."""
    import io
    import tarfile

    from support.private_dockerd import busybox_binary

    total = 0
    block = os.urandom(1 << 20)
    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, **kw: Any) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size, info.mode = kind, len(data), kw.pop("mode", 0o644)
            for k, v in kw.items():
                setattr(info, k, v)
            tar.addfile(info, io.BytesIO(data) if data else None)

        for d in ("bin", "tmp", "big", "data"):
            add(d, kind=tarfile.DIRTYPE, mode=0o755)
        busybox = busybox_binary().read_bytes()
        add("bin/busybox", busybox, mode=0o755)
        for applet in ("sh", "sleep"):
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
        for i in range(files):
            if i % max(1, files // 50) == 0:
                add(f"data/d{i:05}", kind=tarfile.DIRTYPE, mode=0o755)
                where = f"data/d{i:05}"
            size = 200 + (i * 7919) % 3800
            add(f"{where}/f{i:05}", block[i : i + size])
            total += size
        info = tarfile.TarInfo(INSIDE_BIG.lstrip("/"))
        info.size, info.mode = big_mb << 20, 0o644

        class Repeated(io.RawIOBase):
            def __init__(self) -> None:
                self.left = big_mb << 20

            def readable(self) -> bool:
                return True

            def readinto(self, b: Any) -> int:
                n = min(len(b), self.left, len(block))
                b[:n] = block[:n]
                self.left -= n
                return n

        tar.addfile(info, io.BufferedReader(Repeated(), 1 << 20))
        total += info.size + len(busybox)
    return total


def timed_shell(cmd: str, env: dict[str, str] | None = None) -> float:
    return timed(["sh", "-c", "set -e; " + cmd], env)


def measure_inside(
    d: PrivateDockerd, runs: int, work: Path, files: int, big_mb: int
) -> dict[str, Any]:
    """`find` and `tar -c` of a container's root/ against `docker export`, and `cat`
    of a large file against `docker cp`, all piped to `wc -c`; interleaved."""
    busy_before = wait_quiet()
    load_before = loadavg()
    env = d.env()
    image_tar = work / "inside.tar"
    content = inside_image_tar(image_tar, files, big_mb)
    d.docker("import", str(image_tar), INSIDE_IMAGE, timeout=600)
    image_tar.unlink()
    cid = d.docker("run", "-d", "--network=none", INSIDE_IMAGE, "sleep", "1d").stdout.decode()
    cid = cid.strip()
    s: dict[str, Series] = {op: Series() for op in INSIDE_OPS}
    archive: dict[str, list[int]] = {"find_root": [], "tar_root": [], "cat_big": []}
    try:
        with mounted(d.host, work / "inside") as m:
            root = m.path / cid / "root"

            def requests() -> int:
                return int(m.stats()["requests"].get("containers/archive", 0))

            def counted_archive(op: str, fn: Callable[[], float]) -> float:
                before = requests()
                dt = fn()
                archive[op].append(requests() - before)
                return dt

            commands = {
                "find_root": lambda: timed(["find", f"{root}/"]),
                "tar_root": lambda: timed_shell(f"tar -c -C {root} . | wc -c > /dev/null"),
                "docker_export": lambda: timed_shell(
                    f"docker export {cid} | wc -c > /dev/null", env
                ),
                "cat_big": lambda: timed_shell(f"cat {root}{INSIDE_BIG} | wc -c > /dev/null"),
                "docker_cp_big": lambda: timed_shell(
                    f"docker cp {cid}:{INSIDE_BIG} - | wc -c > /dev/null", env
                ),
            }
            for op in INSIDE_OPS:  # once untimed: binaries and the engine warm
                commands[op]()
            time.sleep(1.5)  # no snapshot of the warm-up left to serve the first run
            rss_growth: list[int] = []
            for _ in range(runs):
                for op in INSIDE_OPS:
                    if op in archive:
                        before_kb = m.rss_kb()
                        s[op].add(counted_archive(op, commands[op]))
                        if op == "cat_big":
                            rss_growth.append(m.peak_rss_kb() - before_kb)
                    else:
                        s[op].add(commands[op]())
                    time.sleep(1.5)  # each walk starts from nothing (WALK_IDLE)
            peak_kb = m.peak_rss_kb()
            stats_after = m.stats()
            listed = sum(1 for _ in root.rglob("*"))
    finally:
        d.docker("rm", "-f", cid, check=False)
    return {
        "runs": runs,
        "files": files,
        "big_mb": big_mb,
        "content_bytes": content,
        "entries_listed": listed,
        "ops": {op: series.as_json() for op, series in s.items()},
        "archive_requests": archive,
        "cat_peak_rss_growth_kb": rss_growth,
        "peak_rss_kb": peak_kb,
        "loadavg_1min": [load_before, loadavg()],
        "cpu_busy_before": busy_before,
        "daemon_stats_after": stats_after,
    }


INSIDE_LABELS = {
    "find_root": "`find <id>/root/`",
    "tar_root": "`tar -c -C <id>/root . | wc -c`",
    "docker_export": "`docker export <id> | wc -c`",
    "cat_big": f"`cat <id>/root{INSIDE_BIG} | wc -c`",
    "docker_cp_big": f"`docker cp <id>:{INSIDE_BIG} - | wc -c`",
}


def inside_targets(r: dict[str, Any]) -> list[tuple[str, str, str, bool]]:
    """Issue 10's targets: (what, measured, limit, pass)."""
    ops = r["ops"]

    def med(op: str) -> float:
        return float(ops[op]["median"])

    out = []
    for op, ref, limit in (
        ("find_root", "docker_export", TARGET_FIND_VS_EXPORT),
        ("tar_root", "docker_export", TARGET_TAR_VS_EXPORT),
        ("cat_big", "docker_cp_big", TARGET_CAT_VS_CP),
    ):
        a, b = med(op), med(ref)
        out.append(
            (
                f"{INSIDE_LABELS[op]} vs {INSIDE_LABELS[ref]}",
                f"{ms(a)} / {ms(b)} ms = {a / b:.2f}x",
                f"<= {limit}x",
                a <= limit * b,
            )
        )
    got = r["archive_requests"]["find_root"]
    out.append(
        (
            "archive requests per `find` of root/ (a few per walk)",
            ", ".join(str(x) for x in got),
            "<= 3",
            all(x <= 3 for x in got),
        )
    )
    growth = [kb / 1024 for kb in r["cat_peak_rss_growth_kb"]]
    out.append(
        (
            f"daemon peak RSS growth while reading the {r['big_mb']} MB file",
            ", ".join(f"{mb:.1f} MB" for mb in growth),
            f"< {TARGET_CAT_RSS_GROWTH_MB} MB",
            all(mb < TARGET_CAT_RSS_GROWTH_MB for mb in growth),
        )
    )
    return out


def machine_load(r: dict[str, Any]) -> str:
    """How busy the machine was around one set of figures."""
    before, after = r["loadavg_1min"]
    return (
        f"1-min load average {before:.1f} before, {after:.1f} after; "
        f"CPUs {r['cpu_busy_before'] * 100:.0f}% busy when it began."
    )


def render_inside(r: dict[str, Any]) -> list[str]:
    ops = r["ops"]
    lines = [
        "",
        f"## Inside one container (issue 10): {r['files']} small files and a "
        f"{r['big_mb']} MB file, {r['content_bytes'] / 1e6:.0f} MB in all "
        f"({r['entries_listed']} entries under root/; {r['runs']} runs)",
        "",
        "| operation | median ms | min-max ms | archive requests |",
        "|---|---:|---:|---|",
    ]
    for op in INSIDE_OPS:
        o = ops[op]
        req = ",".join(str(x) for x in r["archive_requests"].get(op, []))
        lines.append(
            f"| {INSIDE_LABELS[op]} | {ms(o['median'])} | {ms(o['min'])}-{ms(o['max'])} | {req} |"
        )
    lines += [
        "",
        f"Daemon peak RSS (VmHWM) {r['peak_rss_kb'] / 1024:.1f} MB; {machine_load(r)}",
        "",
        "| target (issue 10) | measured | limit | result |",
        "|---|---|---|---|",
    ]
    for what, got, limit, ok in inside_targets(r):
        lines.append(f"| {what} | {got} | {limit} | {'PASS' if ok else 'MISS'} |")
    return lines


# -- report ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    docker = subprocess.run(["docker", "--version"], capture_output=True, text=True)
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "docker": docker.stdout.strip(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
    }


def ms(x: float) -> str:
    return f"{x * 1000:.1f}" if x < 10 else f"{x * 1000:.0f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


LABELS = {
    "ls_cold": "`ls` root, cold (fresh mount)",
    "ls_warm": "`ls` root, warm",
    "ls_8_concurrent": f"{CONCURRENT_LS} x `ls` root at once (wall)",
    "find_first": "`find`, first after mount",
    "find_warm": "`find`, warm",
    "grep_first": "`grep -r .` core tree, first",
    "grep_warm": "`grep -r .` core tree, warm",
    "find_below_root": "`find` of every container directory (root not listed), warm",
    "ls_cold_stock": "stock path: `ls` root, cold",
    "ls_cold_engine": "two engines: `ls` of one engine's directory, cold",
    "find_warm_stock": "stock path: `find`, warm",
    "grep_warm_stock": "stock path: `grep -r .` core tree, warm",
    "docker_ps_q": "`docker ps --no-trunc -q`",
    "docker_ps_json": "`docker ps --no-trunc --format '{{json .}}'`",
    "curl_api": "`curl --unix-socket` GET /containers/json",
    "tmpfs_find": "`find` on tmpfs copy",
    "tmpfs_find_below_root": "`find` of every container directory on tmpfs copy",
    "tmpfs_grep": "`grep -r .` on tmpfs copy",
}
TMPFS_OF = {
    "find_first": "tmpfs_find",
    "find_warm": "tmpfs_find",
    "find_below_root": "tmpfs_find_below_root",
    "grep_first": "tmpfs_grep",
    "grep_warm": "tmpfs_grep",
    "find_warm_stock": "tmpfs_find",
    "grep_warm_stock": "tmpfs_grep",
}


def targets(results: Sequence[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """Issue 5's targets: (what, measured, limit, pass) for each size that has the figures."""
    by_n = {r["n"]: r for r in results}

    def med(n: int, op: str) -> float:
        return float(by_n[n]["ops"][op]["median"])

    out: list[tuple[str, str, str, bool]] = []
    if 100 in by_n:
        a, b = med(100, "ls_cold"), med(100, "docker_ps_q")
        out.append(
            (
                "N=100 cold `ls` vs `docker ps --no-trunc -q`",
                f"{ms(a)} / {ms(b)} ms = {a / b:.2f}x",
                f"<= {TARGET_COLD_LS_VS_PS_Q}x",
                a <= TARGET_COLD_LS_VS_PS_Q * b,
            )
        )
        a, b = med(100, "grep_warm"), med(100, "docker_ps_json")
        out.append(
            (
                "N=100 `grep -r` (walk + read every file) vs `docker ps --format json`",
                f"{ms(a)} / {ms(b)} ms = {a / b:.2f}x",
                "<= 1x",
                a <= b,
            )
        )
        a = med(100, "find_warm") + med(100, "grep_warm")
        out.append(
            (
                "N=100 `find` + `grep -r` (both) vs `docker ps --format json`",
                f"{ms(a)} / {ms(b)} ms = {a / b:.2f}x",
                "<= 1x",
                a <= b,
            )
        )
    if 1000 in by_n:
        a, b = med(1000, "ls_cold"), med(1000, "curl_api")
        out.append(
            (
                "N=1000 cold `ls` vs bare `curl` GET /containers/json",
                f"{ms(a)} / {ms(b)} ms = {a / b:.2f}x",
                f"<= {TARGET_COLD_LS_VS_CURL}x",
                a <= TARGET_COLD_LS_VS_CURL * b,
            )
        )
        a, b = med(1000, "find_warm"), med(1000, "tmpfs_find")
        out.append(
            (
                "N=1000 warm `find` vs tmpfs",
                f"{ms(a)} / {ms(b)} ms = {a / b:.2f}x",
                f"<= {TARGET_WARM_FIND_VS_TMPFS}x",
                a <= TARGET_WARM_FIND_VS_TMPFS * b,
            )
        )
        mb = by_n[1000]["peak_rss_kb"] / 1024
        out.append(
            (
                "N=1000 daemon peak RSS (VmHWM)",
                f"{mb:.1f} MB",
                f"< {TARGET_RSS_MB} MB",
                mb < TARGET_RSS_MB,
            )
        )
    for r in results:
        n, ops = r["n"], r["ops"]
        opens = r["root_opens"]
        one = ops["ls_cold"]["list_requests"] + ops["ls_warm"]["list_requests"]
        out.append(
            (
                f"N={n} list requests per root `ls` (cold and warm)",
                ", ".join(str(x) for x in one),
                f"exactly 1 each (`ls` opens the root {opens['ls']}x)",
                all(x == 1 for x in one),
            )
        )
        conc = ops["ls_8_concurrent"]["list_requests"]
        out.append(
            (
                f"N={n} list requests for {CONCURRENT_LS} `ls` at once",
                ", ".join(str(x) for x in conc),
                f"1..{CONCURRENT_LS}",
                all(1 <= x <= CONCURRENT_LS for x in conc),
            )
        )
        for tool, first, warm in (
            ("find", "find_first", "find_warm"),
            ("grep", "grep_first", "grep_warm"),
        ):
            got = ops[first]["list_requests"] + ops[warm]["list_requests"]
            out.append(
                (
                    f"N={n} list requests per `{tool}` of the core tree",
                    ", ".join(str(x) for x in got),
                    f"<= {opens[tool]} (one per open of the root by {tool}; 0 for files)",
                    all(x <= opens[tool] for x in got),
                )
            )
    for n, r in sorted(by_n.items()):
        a, b = med(n, "ls_cold_engine"), med(n, "ls_cold")
        out.append(
            (
                f"N={n} two engines: cold `ls` of one engine's directory vs the one-engine root's",
                f"{ms(a)} / {ms(b)} ms = {a / b:.2f}x",
                f"<= {TARGET_ENGINE_LS_VS_ROOT_LS}x (noise)",
                a <= TARGET_ENGINE_LS_VS_ROOT_LS * b,
            )
        )
        other = r.get("other_engine_requests", [])
        out.append(
            (
                f"N={n} two engines: requests to the other engine during that `ls`",
                ", ".join(str(x) for x in other),
                "0",
                all(x == 0 for x in other),
            )
        )
    sized = sorted(by_n)
    if len(sized) >= 2:
        lo, hi = sized[-2], sized[-1]
        per_lo = med(lo, "ls_cold") / lo
        per_hi = med(hi, "ls_cold") / hi
        out.append(
            (
                f"linear: cold `ls` per container, N={hi} vs N={lo}",
                f"{per_hi * 1e6:.0f} / {per_lo * 1e6:.0f} us = {per_hi / per_lo:.2f}x",
                f"<= {LINEAR_SLACK}x",
                per_hi <= LINEAR_SLACK * per_lo,
            )
        )
    return out


def cache_targets(results: Sequence[dict[str, Any]]) -> list[tuple[str, str, str, bool]]:
    """Issue 13's targets (kernel caching), at N=1000, as ratios within the run."""
    out: list[tuple[str, str, str, bool]] = []
    for r in results:
        out.append(
            (
                f"N={r['n']} kernel caching in use (patched pyfuse3)",
                "on" if r["kernel_cache"] else "off",
                "on",
                bool(r["kernel_cache"]),
            )
        )
        ops = r["ops"]
        if r["n"] == 100:
            a, b = ops["ls_cold"]["median"], ops["docker_ps_q"]["median"]
            limit = TARGET_CACHED_COLD_LS_VS_PS_Q_100
            out.append(
                (
                    "N=100 cold `ls` vs `docker ps --no-trunc -q` (no slower than before)",
                    f"{ms(a)} / {ms(b)} ms = {a / b:.2f}x",
                    f"<= {limit:g}x",
                    a <= limit * b,
                )
            )
        if r["n"] != 1000:
            continue
        for what, op, ref, limit in (
            ("warm `find` vs tmpfs", "find_warm", "tmpfs_find", TARGET_CACHED_FIND_VS_TMPFS),
            ("warm `grep -r` vs tmpfs", "grep_warm", "tmpfs_grep", TARGET_CACHED_GREP_VS_TMPFS),
            (
                "cold `ls` vs the stock path's (within noise)",
                "ls_cold",
                "ls_cold_stock",
                TARGET_CACHED_COLD_LS_VS_STOCK,
            ),
        ):
            a, b = ops[op]["median"], ops[ref]["median"]
            out.append(
                (
                    f"N=1000 {what}",
                    f"{ms(a)} / {ms(b)} ms = {a / b:.2f}x",
                    f"<= {limit:g}x",
                    a <= limit * b,
                )
            )
    return out


def render(
    meta: dict[str, Any], results: Sequence[dict[str, Any]], inside: dict[str, Any] | None = None
) -> str:
    lines = [
        "# dockerfs-fuse benchmark",
        "",
        f"Machine: {meta['nproc']} CPUs, {meta['cpu']}, Linux {meta['kernel']}, "
        f"Python {meta['python']}, {meta['docker']}; {meta['date_utc']}.",
        "",
        "Times are wall ms of one subprocess each (process start-up included for all), "
        "median of the runs with min-max. Ratios are of medians from the same run. "
        "`grep -r` reads the core tree: it skips "
        + ", ".join(f"`{x}`" for x in SPECIAL_FILES)
        + " (logs.follow blocks like a pipe; the others ask Docker when opened or are "
        "write-only). The tmpfs copy holds the same names, those four empty. "
        "`req` = container-list requests (GET /containers/json) the daemon made per run.",
    ]
    for r in results:
        ops = r["ops"]
        ps_q = ops["docker_ps_q"]["median"]
        curl = ops["curl_api"]["median"]
        lines += [
            "",
            f"## N = {r['n']} containers "
            f"({r['runs']} runs, warm walks {warm_runs(r['runs'])}; "
            f"{r['files_in_tree']} files in the tree)",
            "",
            "| operation | median ms | min-max ms | vs ps -q | vs curl | vs tmpfs | req |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for op in OPS:
            o = ops[op]
            tm = TMPFS_OF.get(op)
            vs_tmpfs = ratio(o["median"], ops[tm]["median"]) if tm else ""
            req = ",".join(str(x) for x in o.get("list_requests", []))
            lines.append(
                f"| {LABELS[op]} | {ms(o['median'])} | {ms(o['min'])}-{ms(o['max'])} "
                f"| {ratio(o['median'], ps_q)} | {ratio(o['median'], curl)} | {vs_tmpfs} "
                f"| {req} |"
            )
        per = ops["ls_cold"]["median"] / r["n"] * 1e6
        lines += [
            "",
            f"Daemon peak RSS (VmHWM) {r['peak_rss_kb'] / 1024:.1f} MB; "
            f"cold `ls` per container {per:.0f} us; "
            f"mount start-up median {ms(statistics.median(r['mount_seconds']))} ms; "
            + machine_load(r),
            "",
        ]
        for key, path in (
            ("fuse_requests_warm", "kernel caching " + ("on" if r["kernel_cache"] else "OFF")),
            ("fuse_requests_warm_stock", "stock path"),
        ):
            for tool, counts in r[key].items():
                total = sum(counts.values())
                detail = ", ".join(f"{op} {c}" for op, c in counts.items())
                lines.append(
                    f"- FUSE requests for one warm `{tool}`, {path}: {total} ({detail or '-'})."
                )
    for title, rows in (("issue 5", targets(results)), ("issue 13", cache_targets(results))):
        lines += ["", f"## Targets ({title})", "", "| target | measured | limit | result |"]
        lines += ["|---|---|---|---|"]
        for what, got, limit, ok in rows:
            lines.append(f"| {what} | {got} | {limit} | {'PASS' if ok else 'MISS'} |")
    if inside is not None:
        lines += render_inside(inside)
    return "\n".join(lines) + "\n"


# -- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", help="comma-separated container counts (default 10,100,1000)")
    p.add_argument("--runs", type=int, help="runs per figure (default 5; the warm walks 2x+1)")
    p.add_argument("--quick", action="store_true", help="smoke run: sizes 10,100, runs 3")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    p.add_argument(
        "--inside-files", type=int, help="small files in the issue-10 container (default 3000)"
    )
    p.add_argument("--inside-mb", type=int, help="its large file, in MB (default 200)")
    p.add_argument("--no-inside", action="store_true", help="skip the issue-10 figures")
    args = p.parse_args(argv)
    sizes = args.sizes or ("10,100" if args.quick else "10,100,1000")
    args.sizes = sorted({int(x) for x in sizes.split(",") if x.strip()})
    if not args.sizes or min(args.sizes) < 1:
        p.error("--sizes needs positive counts")
    args.runs = args.runs or (3 if args.quick else 5)
    if args.inside_files is None:
        args.inside_files = 300 if args.quick else 3000
    if args.inside_mb is None:
        args.inside_mb = 8 if args.quick else 200
    if args.inside_files < 1 or args.inside_mb < 1:
        p.error("--inside-files and --inside-mb must be at least 1")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


TOOLS = ("dockerd", "docker", "fusermount3", "curl", "find", "grep", "ls", "busybox", "tar")


def check_tools() -> None:
    if os.geteuid() != 0:
        raise BenchError("needs root: a private dockerd and a tmpfs mount")
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise BenchError(f"missing tools: {', '.join(missing)}")
    if not os.path.exists("/dev/fuse"):
        raise BenchError("/dev/fuse is missing")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    check_tools()
    meta = machine()
    started = time.monotonic()
    d = PrivateDockerd()
    ids: list[str] = []
    results: list[dict[str, Any]] = []
    inside: dict[str, Any] | None = None
    work = Path(tempfile.mkdtemp(prefix="dfs-bench-"))
    stack = contextlib.ExitStack()
    try:
        tracer = stack.enter_context(fuse_tracer(work))
        d.start()
        d.import_busybox()
        print(f"private dockerd ready at {d.base}", file=sys.stderr, flush=True)
        for n in args.sizes:
            t0 = time.monotonic()
            ids += start_sleepers(d.socket, n - len(ids))
            if d.proc is not None:
                wait_idle(d.proc.pid)
            print(
                f"N={n}: containers up in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True
            )
            t0 = time.monotonic()
            results.append(measure(d, n, args.runs, work, tracer))
            print(f"N={n}: measured in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
        if not args.no_inside:
            if d.proc is not None and ids:
                kill_all(d.socket, ids)  # the walks alone on the engine
                wait_idle(d.proc.pid)
            t0 = time.monotonic()
            inside = measure_inside(d, args.runs, work, args.inside_files, args.inside_mb)
            print(f"inside: measured in {time.monotonic() - t0:.1f}s", file=sys.stderr, flush=True)
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave mounts behind.
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if d.proc is not None and ids:
                kill_all(d.socket, ids)
            d.cleanup()
            stack.close()
            for sub in (
                "cold",
                "cold-stock",
                "cold-two",
                "warm",
                "warm-stock",
                "tmpfs",
                "tracefs",
                "inside",
            ):
                p = work / sub
                if os.path.ismount(p):
                    subprocess.run(["umount", "-l", str(p)], capture_output=True)
            shutil.rmtree(work, ignore_errors=True)
        finally:
            signal.signal(signal.SIGINT, old)
    meta["seconds_total"] = round(time.monotonic() - started, 1)
    return {
        "machine": meta,
        "sizes": args.sizes,
        "runs": args.runs,
        "results": results,
        "inside": inside,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = run(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; cleaned up", file=sys.stderr)
        return 130
    report["targets"] = [
        {"target": w, "measured": g, "limit": lim, "pass": ok}
        for w, g, lim, ok in [*targets(report["results"]), *cache_targets(report["results"])]
    ]
    if report["inside"] is not None:
        report["inside"]["targets"] = [
            {"target": w, "measured": g, "limit": lim, "pass": ok}
            for w, g, lim, ok in inside_targets(report["inside"])
        ]
    md = render(report["machine"], report["results"], report["inside"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "latest.md").write_text(md)
    print(md)
    print(
        f"wrote {args.out / 'latest.json'} and latest.md ({report['machine']['seconds_total']}s)",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
