"""Defects a new user tripped over (issue 14), each against a real engine and mount.

Long label keys, ID prefixes shared with stopped containers, oversized ctl
writes, containers removed under readers, state conflicts, and the tree after
Docker is reachable again.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount, ctl_errno, state
from support.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

IMG = "busybox:latest"


@pytest.fixture
def all_mounted(engine: Engine, mount_factory: Any) -> Mount:
    m: Mount = mount_factory(engine.host, "--all", name="all")
    return m


# -- 3. names longer than 255 bytes ------------------------------------------------------


def file_name(key: str) -> str:
    """docs/tree.md's mapping, written out independently of model/."""
    name = key.replace("%", "%25").replace("/", "%2F")
    if len(name.encode()) <= 255:
        return name
    return name[:200] + "%~" + hashlib.sha256(key.encode()).hexdigest()[:12]  # ASCII keys here


def test_long_label_keys_are_valid_names_and_the_directory_lists(
    engine: Engine, mounted: Mount, tmp_path: Path
) -> None:
    labels = {"plain": "p", "a/b": "slash", "100%": "pct"}
    for size in (255, 256, 1000, 4000):
        labels["k" * (size - 5) + f"{size:05d}"] = f"value {size}"
    labels["k" * 995 + "other"] = "shares 200 bytes with the 1000-byte key"
    args = [arg for k, v in labels.items() for arg in ("-l", f"{k}={v}")]
    cid = engine.run(*args, IMG, "sleep", "1d")
    assert engine.api(f"/containers/{cid}/json")["Config"]["Labels"] == labels
    d = mounted.path / cid / "Labels"
    want = {file_name(k): f"{v}\n".encode() for k, v in labels.items()}
    assert len(want) == len(labels)  # no two keys share a name

    ls = subprocess.run(["ls", "-1", str(d)], capture_output=True, text=True)
    assert ls.returncode == 0, ls.stderr
    assert sorted(ls.stdout.splitlines()) == sorted(want)
    assert all(len(n.encode()) <= 255 for n in os.listdir(d))
    find = subprocess.run(["find", str(mounted.path / cid)], capture_output=True, text=True)
    assert find.returncode == 0, find.stderr
    assert {Path(p).name for p in find.stdout.splitlines() if "/Labels/" in p} == set(want)
    for name, content in want.items():
        assert (d / name).read_bytes() == content
    copy = tmp_path / "labels-copy"
    cp = subprocess.run(["cp", "-r", str(d), str(copy)], capture_output=True, text=True)
    assert cp.returncode == 0, cp.stderr
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == want
    root = subprocess.run(["ls", str(mounted.path)], capture_output=True, text=True)
    assert root.returncode == 0 and cid in root.stdout.split()


# -- 4. an ID prefix is resolved against every container --------------------------------------


def two_ids_sharing_a_prefix(engine: Engine) -> tuple[str, str]:
    """Create containers until two IDs share 4 hex digits (~320 on average, as in
    test_control's ambiguous-prefix test); remove all the others."""
    seen: dict[str, str] = {}
    pair: tuple[str, str] | None = None

    def create(_: int) -> str:
        return engine.dockerd.docker("create", IMG, "sleep", "1d").stdout.decode().strip()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        while pair is None:
            assert len(seen) < 2000, "no two IDs shared a 4-digit prefix"
            for cid in pool.map(create, range(64)):
                engine.started.append(cid)
                if cid[:4] in seen and pair is None:
                    pair = (seen[cid[:4]], cid)
                seen.setdefault(cid[:4], cid)
    others = [c for c in engine.started if c not in pair]
    for i in range(0, len(others), 100):
        engine.docker("rm", *others[i : i + 100])
    engine.started[:] = list(pair)
    return pair


def test_a_prefix_shared_with_a_stopped_container_does_not_resolve(
    engine: Engine, mounted: Mount
) -> None:
    running, stopped = two_ids_sharing_a_prefix(engine)
    engine.docker("start", running)
    common = running[: next(i for i in range(64) if running[i] != stopped[i])]
    print(f"\n{running[:12]} running and {stopped[:12]} created share {common!r}")
    m = mounted.path
    # Docker itself refuses the prefix (the premise)
    refused = engine.dockerd.docker("kill", common, check=False)
    assert refused.returncode != 0 and b"ultiple IDs found" in refused.stderr, refused.stderr
    for listed_first in (False, True):
        if listed_first:
            assert running in os.listdir(m) and stopped not in os.listdir(m)
        with pytest.raises(FileNotFoundError):
            os.readlink(m / common)
        with pytest.raises(FileNotFoundError):
            os.open(m / common / "ctl", os.O_WRONLY)
        sh = subprocess.run(["sh", "-c", f"echo kill > {m}/{common}/ctl"], capture_output=True)
        assert sh.returncode != 0
        # one more digit tells them apart, as it does to Docker; the stopped
        # one is reachable, not listed
        assert os.readlink(m / running[: len(common) + 1]) == running
        assert os.readlink(m / stopped[: len(common) + 1]) == stopped
        assert (m / stopped[: len(common) + 1] / "State").read_text() == "created\n"
        time.sleep(1.1)  # past the lookup-miss interval, so the next pass asks Docker again
    assert stopped not in os.listdir(m)
    assert state(engine, running)["Running"]


def test_a_name_of_a_stopped_container_never_resolves_to_another(
    engine: Engine, mounted: Mount
) -> None:
    running = engine.run(IMG, "sleep", "1d")
    # a stopped container named like the running one's prefix: Docker means the stopped one
    alias = running[:6]
    stopped = engine.docker("create", f"--name={alias}", IMG, "true").strip()
    engine.started.append(stopped)
    dormant = engine.docker("create", "--name=dormant", IMG, "true").strip()
    engine.started.append(dormant)
    assert json.loads(engine.docker("inspect", alias))[0]["Id"] == stopped
    os.listdir(mounted.path)
    assert os.readlink(mounted.path / alias) == stopped
    assert os.readlink(mounted.path / "dormant") == dormant
    assert os.readlink(mounted.path / running[:7]) == running
    assert not {stopped, dormant} & set(os.listdir(mounted.path))


def test_a_prefix_resolves_on_an_all_mount_as_docker_does(
    engine: Engine, all_mounted: Mount
) -> None:
    stopped = engine.docker("create", "--name=asleep", IMG, "true").strip()
    engine.started.append(stopped)
    assert os.readlink(all_mounted.path / "asleep") == stopped
    assert os.readlink(all_mounted.path / stopped[:8]) == stopped
    assert (all_mounted.path / stopped[:8] / "State").read_text() == "created\n"


# -- 5. a ctl write is one whole command, or nothing ----------------------------------------


def kill_events(engine: Engine, cid: str, since: int) -> list[str]:
    """The signals Docker says it sent the container (from its event log)."""
    until = str(int(time.time()) + 1)
    out = engine.docker(
        "events", "--since", str(since), "--until", until, "--filter", f"container={cid}",
        "--filter", "event=kill", "--format", "{{json .Actor.Attributes.signal}}",
    )  # fmt: skip
    return [json.loads(line) for line in out.splitlines()]


def test_an_oversized_or_offset_ctl_write_is_refused_and_runs_nothing(
    engine: Engine, mounted: Mount
) -> None:
    since = int(time.time()) - 1
    # HUP (what a split "kill 1|5" sent) exits 42; TERM (stop) exits 0.
    script = "trap 'exit 42' HUP; trap 'exit 0' TERM; while true; do sleep 0.1; done"
    cid = engine.run(IMG, "sh", "-c", script)
    fd = os.open(mounted.path / cid / "ctl", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as err:
            os.write(fd, b" " * (1 << 20) + b"kill 15\n")
        assert err.value.errno == errno.EINVAL
        with pytest.raises(OSError) as err:
            os.write(fd, b"kill HUP".ljust(257))
        assert err.value.errno == errno.EINVAL
        with pytest.raises(OSError) as err:
            os.pwrite(fd, b"kill HUP\n", 5)
        assert err.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert state(engine, cid)["Running"]
    # the plain way still works, and the container stops by TERM, not by a stray HUP
    sh = subprocess.run(["sh", "-c", f"echo stop > {mounted.path}/{cid}/ctl"], capture_output=True)
    assert sh.returncode == 0, sh.stderr
    after = state(engine, cid)
    assert not after["Running"] and after["ExitCode"] == 0, after
    assert kill_events(engine, cid, since) == ["15"]  # stop's TERM, and nothing else
    assert "unknown command" not in mounted.log_text()


# -- 7. a container being removed is ENOENT to its readers -------------------------------------


def test_readers_of_containers_being_removed_see_only_enoent(
    engine: Engine, mounted: Mount
) -> None:
    def new_victim() -> str:
        return engine.run(IMG, "sh", "-c", "echo hello; sleep 1d")

    victims = [new_victim() for _ in range(4)]
    current = [victims[0]]
    reads = Counter[str]()
    seen = Counter[str]()
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            cid = current[0]
            for name in ("logs", "inspect.json"):
                try:
                    (mounted.path / cid / name).read_bytes()
                    seen["ok"] += 1
                except OSError as exc:
                    seen[errno.errorcode.get(exc.errno or 0, str(exc.errno))] += 1
                    time.sleep(0.01)  # gone: no need to spin until the next victim
            reads[cid] += 1

    threads = [threading.Thread(target=reader) for _ in range(6)]
    for t in threads:
        t.start()
    removed = 0
    try:
        while removed < 30:
            cid = victims.pop(0)
            victims.append(new_victim())
            current[0] = cid
            wait_until(lambda: reads[cid] >= 6, "the readers are on it")  # noqa: B023 - called at once
            engine.docker("rm", "-f", cid)
            removed += 1
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    going = mounted.log_text().count("marked for removal")
    print(f"\n{removed} removals under 6 readers: {dict(seen)}; 409s seen by the daemon: {going}")
    assert not any(t.is_alive() for t in threads), "a reader hung"
    assert seen["ok"] > 0
    assert set(seen) <= {"ok", "ENOENT"}, seen


# -- 11. state conflicts are EBUSY, whatever Docker's status ----------------------------------


def test_every_state_conflict_is_ebusy(engine: Engine, all_mounted: Mount) -> None:
    m = all_mounted
    running = engine.run(IMG, "sleep", "1d")
    paused = engine.run(IMG, "sleep", "1d")
    engine.docker("pause", paused)
    exited = engine.run(IMG, "true")
    wait_until(lambda: not state(engine, exited)["Running"], "the container exited")
    created = engine.docker("create", IMG, "sleep", "1d").strip()
    engine.started.append(created)
    # A container that keeps failing waits longer each time between restarts
    # (0.1 s doubling): after five it is "restarting" for 3.2 s at a stretch.
    restarting = engine.run("--restart=always", IMG, "false")

    def waiting_to_restart() -> bool:
        info = engine.api(f"/containers/{restarting}/json")
        return bool(info["State"]["Restarting"] and info["RestartCount"] >= 5)

    cases = {
        running: ("unpause", "rm"),
        paused: ("pause", "start", "rm"),
        exited: ("pause", "unpause", "kill"),
        created: ("pause", "unpause", "kill"),
    }
    os.listdir(m.path)
    for cid, commands in cases.items():
        before = state(engine, cid)
        for command in commands:
            assert ctl_errno(m, cid, command) == errno.EBUSY, (before["Status"], command)
        assert state(engine, cid)["Status"] == before["Status"]
    wait_until(waiting_to_restart, "the container waiting to restart", timeout=30)
    for command in ("pause", "unpause", "rm"):
        assert ctl_errno(m, restarting, command) == errno.EBUSY, command
    log = m.log_text()
    assert "is not paused" in log  # Docker's 500 for unpause, now EBUSY
    assert "is restarting" in log


# -- also seen: containers that changed while Docker was down ---------------------------------


class SocketRelay:
    """A unix socket in front of the engine's, that the test can cut and restore:
    Docker "down" for the mount only, while the test keeps changing containers."""

    def __init__(self, path: Path, target: Path) -> None:
        self.path, self.target = path, target
        self._server: socket.socket | None = None
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(str(self.path))
        server.listen(64)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut every open one."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
            self.path.unlink()
        with self._lock:
            for conn in self._open:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()
            self._open.clear()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return  # closed by down()
            engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                engine.connect(str(self.target))
            except OSError:
                client.close()
                engine.close()
                continue
            with self._lock:
                self._open += [client, engine]
            for a, b in ((client, engine), (engine, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


def test_changes_made_while_docker_was_unreachable_show_once_it_answers(
    engine: Engine, mount_factory: Any, tmp_path: Path
) -> None:
    relay = SocketRelay(tmp_path / "relay.sock", engine.dockerd.socket)
    relay.up()
    try:
        m = mount_factory(f"unix://{relay.path}", "--all", name="relayed")
        cid = engine.run(IMG, "sleep", "1d")
        state_file = m.path / cid / "State"
        wait_until(lambda: state_file.read_text() == "running\n", "State reads running")
        relay.down()
        # The mount cannot see this stop: no event reaches it.
        engine.docker("stop", "-t", "0", cid)
        with pytest.raises(OSError) as err:
            os.listdir(m.path)
        assert err.value.errno == errno.EIO
        time.sleep(5)  # long enough for the old reconnect backoff to grow to 4 s
        assert state_file.read_text() == "running\n"  # stale: there is nobody to ask
        relay.up()
        t0 = time.monotonic()
        wait_until(lambda: state_file.read_text() == "exited\n", "State reads exited", timeout=15)
        took = time.monotonic() - t0
        print(f"\nthe stop made while Docker was unreachable showed {took:.2f}s after it answered")
        wait_until(
            lambda: "event stream reconnected" in m.log_text(), "the event stream reconnected"
        )
    finally:
        relay.down()


# -- also seen: grep -r over the mount, as the README says -----------------------------------


# No excludes: what blocks, acts or holds a whole filesystem is behind links
# (test_walk.py has the other tools).
def test_grep_r_as_the_readme_says_exits_0(engine: Engine, mounted: Mount) -> None:
    cid = engine.run("-l", "role=grep-target", IMG, "sleep", "1d")
    grep = shutil.which("grep")
    assert grep is not None
    res = subprocess.run(
        [grep, "-r", "grep-target", str(mounted.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert f"{mounted.path}/{cid}/Labels/role:grep-target" in res.stdout.splitlines()
