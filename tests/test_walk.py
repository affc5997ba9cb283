"""The mount is safe to walk: the standard recursive tools, with no options and
no excludes, over the whole mount or one container, against a real dockerd.

`find`, `ls -R`, `grep -r`, `cp -r`, `tar -c` and `du` must finish, exit 0
(grep: 0 or 1, never 2), show each container's core tree, and never open what
blocks (logs.follow, wait), streams a whole log (logs), acts (ctl), costs a
slow request (stats) or holds a whole filesystem (root/): those are links into
the unlisted `.live`, and these tools do not follow links below their
arguments. The request counter (user.dockerfs.stats) shows that the walks
asked Docker for none of them. Every one still works by path.

The containers: one running with a label to grep for, one printing a line
every 0.1 s, one paused, one exited (the mount shows all, `-a`).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    WAIT_FOR_GO,
    Engine,
    Mount,
    run_held,
    start_mount,
    state,
    stop_mount,
)
from support.private_dockerd import IMAGE, PrivateDockerd
from support.waiting import wait_until

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

# A bound for a walk of a few containers: it ends a walk that blocks, it does
# not time one (a loaded two-CPU machine walks this tree in well under a second).
WALK_BOUND = 60.0
# The seed's fields: every walk shows them for every container.
SEED_FIELDS = ("ID", "Names/0", "Image", "ImageID", "Command", "Created", "State")
# The unlisted directory in each container's, and what is listed as links into
# it: never opened or entered by a walk.
LIVE = ".live"
BEHIND_LINKS = ("ctl", "logs", "logs.follow", "root", "top", "stats", "wait", "exec")
# Requests only these entries make: a walk must cause none of them.
LIVE_REQUESTS = (
    "containers/stats",
    "containers/top",
    "containers/archive",
    "containers/wait",
    "containers/logs",
    "exec/create",
    "exec/start",
)
CONTROL_REQUESTS = tuple(
    f"containers/{a}" for a in ("start", "stop", "restart", "kill", "pause", "unpause", "rm")
)
TARGET_LABEL = "role=walk-target"


@dataclass
class World:
    engine: Engine
    mount: Mount
    ids: dict[str, str]  # container name -> ID

    @property
    def path(self) -> Path:
        return self.mount.path


@pytest.fixture(scope="module")
def world(
    dockerd_session: PrivateDockerd, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    if dockerd_session.proc is None or dockerd_session.proc.poll() is not None:
        dockerd_session.start()  # an earlier test stopped it (as the engine fixture does)
    engine = Engine(dockerd_session)
    mount: Mount | None = None
    try:
        ids = {
            "walk-web": engine.run("--name=walk-web", "-l", TARGET_LABEL, IMAGE, "sleep", "1d"),
            "walk-chatty": engine.run(
                "--name=walk-chatty", IMAGE, "sh", "-c", "while :; do echo tick; sleep 0.1; done"
            ),
            "walk-frozen": engine.run("--name=walk-frozen", IMAGE, "sleep", "1d"),
            "walk-done": engine.run("--name=walk-done", IMAGE, "true"),
        }
        engine.docker("pause", ids["walk-frozen"])
        wait_until(
            lambda: state(engine, ids["walk-done"])["Status"] == "exited", "walk-done exited"
        )
        mount = start_mount(engine.host, tmp_path_factory.mktemp("walk") / "mnt", "-a")
        yield World(engine, mount, ids)
    finally:
        if mount is not None:
            stop_mount(mount)
        engine.remove_started()


def run_walk(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run one tool to its end; one that blocks fails the test by its command line."""
    args = [str(a) for a in argv]
    try:
        return subprocess.run(args, capture_output=True, timeout=WALK_BOUND, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(args)}` did not finish within {WALK_BOUND:.0f}s", pytrace=False)


def requests(m: Mount) -> dict[str, int]:
    return dict(m.stats()["requests"])


def asked_for_live_entries(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """The requests for live entries or control made between two counts."""
    return {
        kind: after.get(kind, 0) - before.get(kind, 0)
        for kind in (*LIVE_REQUESTS, *CONTROL_REQUESTS)
        if after.get(kind, 0) != before.get(kind, 0)
    }


def walked(world: World, *argv: str | Path, cwd: Path | None = None) -> tuple[int, str, str]:
    """A walk's exit status, stdout and stderr, after checking that it asked
    Docker for no live entry and no control."""
    before = requests(world.mount)
    done = run_walk(*argv, cwd=cwd)
    asked = asked_for_live_entries(before, requests(world.mount))
    assert not asked, f"{argv[0]} asked Docker for {asked}"
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode()


def relative(paths: list[str], base: Path | str) -> set[str]:
    """Paths a tool printed, relative to the path it was given ("" for that one)."""
    prefix = str(base).rstrip("/")
    return {p[len(prefix) :].strip("/") for p in paths if p.startswith(prefix)}


def assert_core_tree(rels: set[str], ids: list[str]) -> None:
    """Every container's seed fields are there, its live entries are there as
    names, and nothing under root/ or .live is."""
    for cid in ids:
        for rel in (*SEED_FIELDS, *BEHIND_LINKS, "inspect.json"):
            assert f"{cid}/{rel}" in rels, f"{rel} of {cid[:12]} not walked"
    inside = sorted(p for p in rels if "/root/" in p or LIVE in p.split("/"))
    assert not inside, f"walked into {inside[:5]}"


# -- the walks ---------------------------------------------------------------------------------


def test_find_shows_the_core_tree_and_enters_nothing_live(world: World) -> None:
    code, out, err = walked(world, "find", world.path)
    assert code == 0, err
    assert_core_tree(relative(out.splitlines(), world.path), list(world.ids.values()))
    web = world.ids["walk-web"]
    links = relative(run_walk("find", world.path, "-type", "l").stdout.decode().split(), world.path)
    assert {p for p in links if p.startswith(f"{web}/")} == {
        f"{web}/{name}" for name in BEHIND_LINKS
    }


def test_find_of_one_container_by_name(world: World) -> None:
    # A trailing slash follows the name's link, as a user means it to.
    code, out, err = walked(world, "find", f"{world.path}/walk-chatty/")
    assert code == 0, err
    cid = world.ids["walk-chatty"]
    rels = relative(out.split(), world.path / "walk-chatty")
    assert_core_tree({f"{cid}/{rel}" for rel in rels}, [cid])


def test_ls_r_lists_the_core_tree(world: World) -> None:
    code, out, err = walked(world, "ls", "-R", world.path)
    assert code == 0, err
    sections = relative([line[:-1] for line in out.splitlines() if line.endswith(":")], world.path)
    for cid in world.ids.values():
        assert {f"{cid}/Names", f"{cid}/Labels", f"{cid}/Networks"} <= sections
    inside = [s for s in sections if "root" in s.split("/") or LIVE in s.split("/")]
    assert not inside, inside


def test_grep_r_finds_the_label_and_opens_nothing_live(world: World) -> None:
    code, out, err = walked(world, "grep", "-r", "walk-target", world.path)
    assert code == 0, err
    assert err == ""  # not even a complaint about ctl
    web = world.ids["walk-web"]
    assert f"{world.path}/{web}/Labels/role:walk-target" in out.splitlines()
    assert f"/{LIVE}/" not in out and "/root/" not in out
    # A pattern found nowhere: 1, never 2.
    code, _, err = walked(world, "grep", "-r", "no-such-text-anywhere-here", world.path)
    assert code == 1, err


def test_cp_r_copies_a_container_with_its_links(world: World, tmp_path: Path) -> None:
    cid = world.ids["walk-chatty"]
    code, _, err = walked(world, "cp", "-r", world.path / cid, tmp_path / "copy")
    assert code == 0, err
    copy = tmp_path / "copy"
    assert (copy / "ID").read_text() == f"{cid}\n"
    assert (copy / "Names" / "0").read_text() == "/walk-chatty\n"
    for name in BEHIND_LINKS:
        assert os.readlink(copy / name) == f"{LIVE}/{name}"
    assert not (copy / LIVE).exists()
    # Through the name, as a user types it.
    code, _, err = walked(world, "cp", "-r", f"{world.path}/walk-web/", tmp_path / "web")
    assert code == 0, err
    assert (tmp_path / "web" / "Labels" / "role").read_text() == "walk-target\n"


def test_tar_c_archives_the_core_tree(world: World, tmp_path: Path) -> None:
    archive = tmp_path / "mount.tar"
    code, _, err = walked(world, "tar", "-cf", archive, "-C", world.path, ".")
    # A Status that grows while tar reads it ("Up 9 seconds" to "Up 10 seconds")
    # is tar's warning, exit 1: that file is the only one allowed to.
    complaints = [line for line in err.splitlines() if "file changed as we read it" not in line]
    assert code == 0 or (code == 1 and not complaints and "/Status" in err), err
    with tarfile.open(archive) as tar:
        members = {m.name.removeprefix("./"): m for m in tar.getmembers()}
    assert_core_tree(set(members), list(world.ids.values()))
    ctl = members[f"{world.ids['walk-web']}/ctl"]
    assert ctl.issym() and ctl.linkname == f"{LIVE}/ctl"


def test_du_counts_the_core_tree(world: World) -> None:
    code, out, err = walked(world, "du", world.path)
    assert code == 0, err
    dirs = relative([line.split("\t", 1)[1] for line in out.splitlines()], world.path)
    for cid in world.ids.values():
        assert {f"{cid}/Names", f"{cid}/Labels", f"{cid}/Networks"} <= dirs
    assert not [d for d in dirs if "root" in d.split("/") or LIVE in d.split("/")]


def test_the_live_directory_is_listed_nowhere(world: World) -> None:
    web = world.path / "walk-web"
    assert LIVE not in os.listdir(world.path)
    assert LIVE not in os.listdir(web)
    assert os.listdir(web / LIVE) == []
    # A lookup of it changes no listing.
    listed = os.listdir(world.path)
    assert (web / LIVE / "ctl").exists()
    assert os.listdir(world.path) == listed
    assert LIVE not in os.listdir(web)
    for name in BEHIND_LINKS:
        assert os.readlink(web / name) == f"{LIVE}/{name}"
    ls = run_walk("ls", "-a", web)
    assert ls.returncode == 0 and LIVE not in ls.stdout.decode().split()


# -- every one, by path --------------------------------------------------------------------------


def test_by_path_root_listing_and_cd(world: World) -> None:
    web = world.path / "walk-web"
    assert {"bin", "etc"} <= set(os.listdir(web / "root"))
    assert "hostname" in os.listdir(web / "root" / "etc")
    hostname = f"{world.ids['walk-web'][:12]}\n"
    assert (web / "root" / "etc" / "hostname").read_text() == hostname
    cd = run_walk("sh", "-c", 'cd "$1/root/etc" && cat hostname', "sh", web)
    assert cd.returncode == 0 and cd.stdout.decode() == hostname, cd.stderr


def test_by_path_stats_costs_one_request(world: World) -> None:
    before = requests(world.mount).get("containers/stats", 0)
    text = (world.path / "walk-web" / "stats").read_text()
    assert "memory_usage_bytes " in text and "pids " in text
    assert requests(world.mount).get("containers/stats", 0) == before + 1


def test_by_path_tail_f_logs(world: World) -> None:
    tail = subprocess.Popen(
        ["tail", "-f", str(world.path / "walk-chatty" / "logs")], stdout=subprocess.PIPE
    )
    out = tail.stdout
    assert out is not None
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(out.readline, b"")), daemon=True)
    reader.start()
    try:
        # tail shows the last 10 lines, then follows: 20 means it followed.
        wait_until(
            lambda: lines.count(b"tick\n") >= 20, "tail -f shows new ticks", timeout=WALK_BOUND
        )
    finally:
        tail.send_signal(signal.SIGTERM)
        tail.wait(WALK_BOUND)


def test_by_path_logs_follow_and_wait_until_the_container_ends(world: World) -> None:
    cid, go = run_held(world.engine, f"echo before; {WAIT_FOR_GO}; echo after; exit 3")
    # Running as the mount knows it: logs.follow follows only a container that runs.
    wait_until(
        lambda: (world.path / cid / "State").read_text() == "running\n", "State reads running"
    )
    follow = subprocess.Popen(
        ["cat", str(world.path / cid / "logs.follow")], stdout=subprocess.PIPE
    )
    wait = subprocess.Popen(["cat", str(world.path / cid / "wait")], stdout=subprocess.PIPE)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == b"before\n"  # following, before it goes on
        go.touch()
        assert follow.communicate(timeout=WALK_BOUND)[0] == b"after\n"
        assert wait.communicate(timeout=WALK_BOUND)[0] == b"3\n"
        assert (follow.returncode, wait.returncode) == (0, 0)
    finally:
        for proc in (follow, wait):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_by_path_echo_stop_to_ctl(world: World) -> None:
    name = "walk-stoppable"
    cid = world.engine.run(
        f"--name={name}", IMAGE, "sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.1; done"
    )
    sh = shutil.which("sh")
    assert sh is not None
    done = run_walk(sh, "-c", 'echo stop > "$1/ctl"', "sh", world.path / name)
    assert done.returncode == 0, done.stderr
    assert state(world.engine, cid)["Status"] == "exited"


def test_a_walk_of_two_engines(engine: Engine, mount_factory: Any) -> None:
    """Each engine's directory holds the one-engine tree: its links resolve in it."""
    cid = engine.run("--name=walk-two", IMAGE, "sleep", "1d")
    m: Mount = mount_factory(f"one={engine.host}", "-H", f"two={engine.host}")
    done = run_walk("find", m.path)
    assert done.returncode == 0, done.stderr
    for top in ("one", "two"):
        assert_core_tree(relative(done.stdout.decode().split(), m.path / top), [cid])
        assert "hostname" in os.listdir(m.path / top / "walk-two" / "root" / "etc")
