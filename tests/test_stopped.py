"""Stopped containers on a mount without -a: not listed, still reachable.

A container stopped through its ctl stays reachable by the name, ID or
prefix that stopped it (its State says `exited`, its ctl takes `start` and
`rm`), as Docker resolves names among all containers; the root listing
shows running containers only. A listing that drops a container leaves
nothing under it answering as if it still ran.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount, ctl, ctl_errno, state
from support.waiting import wait_until

from dockerfs_fuse.fuse.kernel_cache import STOCK_ENV

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

IMG = "busybox:latest"
# Stops at once on `docker stop` (busybox sh as PID 1 ignores TERM without a trap).
STOPS_ON_TERM = "trap 'exit 0' TERM; while true; do sleep 0.1; done"
# Rounds of `docker kill; ls; cat State` (the defect showed 2 times in 20).
KILL_ROUNDS = 20


def listed(m: Mount) -> list[str]:
    """The root as `ls` and `find` show it (one listing each)."""
    names = os.listdir(m.path)
    found = subprocess.run(
        ["find", str(m.path), "-mindepth", "1", "-maxdepth", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert sorted(Path(p).name for p in found.stdout.split()) == sorted(names)
    return names


def test_stop_then_start_through_ctl_by_name(engine: Engine, mounted: Mount) -> None:
    cid = engine.run("--name=web", IMG, "sh", "-c", STOPS_ON_TERM)
    ctl(mounted, "web", "stop")
    assert not state(engine, cid)["Running"]
    assert (mounted.path / "web" / "State").read_text() == "exited\n"
    assert cid not in listed(mounted)
    assert (mounted.path / "web" / "State").read_text() == "exited\n"  # after the listing too
    ctl(mounted, "web", "start")
    assert state(engine, cid)["Running"]
    assert (mounted.path / "web" / "State").read_text() == "running\n"
    assert cid in listed(mounted)


def test_kill_then_rm_through_ctl_by_name(engine: Engine, mounted: Mount) -> None:
    cid = engine.run("--name=fresh", IMG, "sleep", "1d")
    ctl(mounted, "fresh", "kill")
    assert state(engine, cid)["ExitCode"] == 137
    assert cid not in listed(mounted)
    ctl(mounted, "fresh", "rm")
    assert cid not in [c["Id"] for c in engine.containers(all=True)]
    for path in ("fresh", "fresh/State", cid, f"{cid}/State"):
        with pytest.raises(FileNotFoundError):
            (mounted.path / path).read_text()


def test_state_right_after_stop_says_exited(engine: Engine, mounted: Mount) -> None:
    cid = engine.run("--name=job", IMG, "sh", "-c", STOPS_ON_TERM)
    state_file = mounted.path / "job" / "State"
    assert state_file.read_text() == "running\n"  # the kernel holds it now
    ctl(mounted, "job", "stop")
    assert state_file.read_text() == "exited\n"
    assert (mounted.path / cid / "Status").read_text().startswith("Exited (0)")
    assert cid not in listed(mounted)


def test_a_stopped_container_resolves_by_full_id_and_prefix(engine: Engine, mounted: Mount) -> None:
    """Never listed by this mount, never looked up before: reachable all the
    same, its files readable, its ctl taking `start`."""
    cid = engine.run("--name=napping", IMG, "sh", "-c", "echo hello; " + STOPS_ON_TERM)
    engine.docker("stop", cid)
    assert cid not in listed(mounted)
    d = mounted.path / cid
    assert (d / "ID").read_text() == cid + "\n"
    assert (d / "State").read_text() == "exited\n"
    assert (d / "Names" / "0").read_text() == "/napping\n"
    wait_until(lambda: (d / "logs").read_text() == "hello\n", "the log of a stopped one")
    assert os.readlink(mounted.path / cid[:12]) == cid
    assert (mounted.path / cid[:12] / "State").read_text() == "exited\n"
    assert os.readlink(mounted.path / "napping") == cid
    assert cid not in listed(mounted)  # reaching it did not list it
    ctl(mounted, cid[:12], "start")
    assert state(engine, cid)["Running"]
    assert cid in listed(mounted)
    # Removed behind the mount's back: gone by name and ID alike.
    engine.docker("rm", "-f", cid)
    wait_until(lambda: not (mounted.path / cid).exists(), "the removed one's entry")
    assert ctl_errno(mounted, cid, "start") == errno.ENOENT


def test_a_listing_only_ever_shows_running_containers(engine: Engine, mounted: Mount) -> None:
    running = engine.run(IMG, "sleep", "1d")
    stopped = engine.run(IMG, "sleep", "1d")
    (mounted.path / stopped / "State").read_text()
    ctl(mounted, stopped, "kill")
    (mounted.path / stopped / "State").read_text()
    for _ in range(3):
        names = listed(mounted)
        assert running in names and stopped not in names
        assert names == [c["Id"] for c in engine.containers()]


@pytest.mark.parametrize("pyfuse3", ["as installed", "stock"])
def test_a_container_a_listing_drops_answers_as_it_is_now(
    engine: Engine, mount_factory: Any, monkeypatch: pytest.MonkeyPatch, pyfuse3: str
) -> None:
    """`docker kill $id; ls` (not listed), then at once `cat $id/State`: the
    kernel held the container's entries and pages from before the kill; once
    `ls` has returned, none of them may answer as if it ran. A removed one is
    ENOENT (or `removing`, if Docker still said so)."""
    if pyfuse3 == "stock":
        monkeypatch.setenv(STOCK_ENV, "1")
    m = mount_factory(engine.host)
    if pyfuse3 == "stock":
        assert m.stats()["kernel_cache"] is False
    seen: list[str] = []
    for round in range(KILL_ROUNDS + 5):
        removed = round >= KILL_ROUNDS
        cid = engine.run(IMG, "sleep", "1d")
        assert cid in os.listdir(m.path)
        d = m.path / cid
        assert (d / "ID").read_text() == cid + "\n" and (d / "State").read_text() == "running\n"
        if removed:
            engine.docker("rm", "-f", cid)
        else:
            engine.docker("kill", cid)
        assert cid not in os.listdir(m.path)
        try:
            seen.append((d / "State").read_text())
        except FileNotFoundError:
            seen.append("ENOENT")
        # A removed one is gone, or still on its way out as Docker said at that
        # listing ("removing"); never a state of a container that runs.
        wanted = ("ENOENT", "removing\n") if removed else ("exited\n",)
        assert seen[-1] in wanted, (round, seen)
        if not removed:
            assert (d / "ID").read_text() == cid + "\n"
