"""Several engines in one mount (issue 9): the private dockerd and the private
Podman service side by side, each under its own directory, each answering
for itself, asked only when its own directory is read."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount
from support.waiting import wait_until_none
from test_mount import expected_files, tree_files

from dockerfs_fuse.docker.source import LISTED_STATES

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

IMG = "busybox:latest"


def listed_by_engine(e: Engine) -> list[dict[str, Any]]:
    """What a mount without -a shows of an engine: those with a process (for
    Docker exactly its default list; Podman leaves paused ones out of that)."""
    return [c for c in e.containers(all=True) if c["State"] in LISTED_STATES]


def subtree_vs_api(e: Engine, top: Path) -> str | None:
    """How an engine's directory differs from the engine's answer, or None."""
    listed = os.listdir(top)
    api = listed_by_engine(e)
    if sorted(listed) != sorted(c["Id"] for c in api):
        return f"{top.name} lists {listed}, the API {[c['Id'] for c in api]}"
    for c in api:
        got, want = tree_files(top / c["Id"]), expected_files(c)
        if got != want:
            diff = {k: (got.get(k), want.get(k)) for k in got.keys() | want.keys()}
            return f"{c['Id'][:12]}: " + repr({k: v for k, v in diff.items() if v[0] != v[1]})
    return None


def state_is(path: Path, want: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            got = path.read_text()
        except OSError as exc:
            got = str(exc)
        return None if got == want + "\n" else f"{path}: {got!r}, waiting for {want}"

    return check


def requests_of(m: Mount, name: str) -> dict[str, int]:
    counts: dict[str, int] = m.stats()["engines"][name]["requests"]
    return counts


def settled_requests(m: Mount, name: str) -> dict[str, int]:
    """The engine's request counts once they stop moving for a second (events' re-reads)."""
    last = requests_of(m, name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = requests_of(m, name)
        if now == last:
            return now
        last = now
    raise AssertionError(f"{name}'s requests never settled: {last}")


@pytest.fixture
def both(engine: Engine, podman_engine: Engine, mount_factory: Any) -> Mount:
    m: Mount = mount_factory(f"docker={engine.host}", "-H", f"podman={podman_engine.host}")
    return m


def test_each_engine_has_its_own_tree(engine: Engine, podman_engine: Engine, both: Mount) -> None:
    engine.run("--name=multi-d", "-l", "engine=docker", IMG, "sleep", "1d")
    podman_engine.run("--name=multi-p", "-l", "engine=podman", IMG, "sleep", "1d")
    assert sorted(os.listdir(both.path)) == ["docker", "podman"]
    docker, podman = both.path / "docker", both.path / "podman"
    wait_until_none(lambda: subtree_vs_api(engine, docker))
    wait_until_none(lambda: subtree_vs_api(podman_engine, podman))
    # Names are symlinks among their engine's containers, relative, one level down.
    assert (podman / "multi-p" / "State").read_text() == "running\n"
    assert (docker / "multi-d" / "Labels" / "engine").read_text() == "docker\n"
    target = os.readlink(podman / "multi-p")
    assert "/" not in target and (podman / target).is_dir()
    assert os.path.realpath(podman / "multi-p") == str(podman / target)
    # One engine's names are not the other's.
    assert not (docker / "multi-p").exists() and not (podman / "multi-d").exists()


def ctl_logs_and_events(e: Engine, top: Path) -> None:
    name = top.name
    cid = e.run(f"--name=talk-{name}", IMG, "sh", "-c", f"echo hi-{name}; sleep 1d")
    wait_until_none(lambda: None if cid in os.listdir(top) else f"{cid[:12]} not listed")
    log = (top / cid / "logs").read_bytes
    wait_until_none(lambda: None if log() == f"hi-{name}\n".encode() else f"log {log()!r}")
    # Events: a pause made outside the mount shows without any listing,
    # and a paused container stays listed on Podman as on Docker.
    e.docker("pause", f"talk-{name}")
    wait_until_none(state_is(top / cid / "State", "paused"))
    assert cid in os.listdir(top)
    # ctl: the mount's own commands, through the ID and through the name.
    (top / cid / "ctl").write_text("unpause\n")
    wait_until_none(state_is(top / cid / "State", "running"))
    (top / f"talk-{name}" / "ctl").write_text("kill\n")
    wait_until_none(lambda: None if cid not in os.listdir(top) else f"{cid[:12]} still listed")
    # Stopped: not listed, still reachable by its name, whose ctl removes it.
    wait_until_none(state_is(top / f"talk-{name}" / "State", "exited"))
    (top / f"talk-{name}" / "ctl").write_text("rm\n")
    assert cid not in [c["Id"] for c in e.containers(all=True)]


def test_ctl_logs_and_events_under_both(engine: Engine, podman_engine: Engine, both: Mount) -> None:
    ctl_logs_and_events(engine, both.path / "docker")
    ctl_logs_and_events(podman_engine, both.path / "podman")


def test_reading_one_engine_asks_nothing_of_the_other(
    engine: Engine, podman_engine: Engine, both: Mount
) -> None:
    engine.run("--name=quiet-d", IMG, "sleep", "1d")
    podman_engine.run("--name=quiet-p", IMG, "sleep", "1d")
    os.listdir(both.path / "docker")
    os.listdir(both.path / "podman")
    podman_before = settled_requests(both, "podman")
    docker_before = settled_requests(both, "docker")
    os.listdir(both.path)  # the root asks no engine
    assert requests_of(both, "docker") == docker_before
    for _ in range(3):
        os.listdir(both.path / "docker")
    docker_after = requests_of(both, "docker")
    assert docker_after["containers/json"] == docker_before["containers/json"] + 3
    assert requests_of(both, "podman") == podman_before
    # The total stays where one-engine readers of the xattr find it.
    total = both.stats()["requests"]["containers/json"]
    assert total == docker_after["containers/json"] + podman_before["containers/json"]


def test_an_engine_that_goes_down_leaves_the_other_and_comes_back(
    engine: Engine, podman_engine: Engine, podman_session: Any, both: Mount
) -> None:
    cid = podman_engine.run("--name=survivor", IMG, "sleep", "1d")
    engine.run("--name=steady", IMG, "sleep", "1d")
    podman = both.path / "podman"
    wait_until_none(lambda: subtree_vs_api(podman_engine, podman))
    podman_session.stop()

    def listing_fails() -> str | None:
        try:
            os.listdir(podman)
        except OSError as exc:
            assert exc.errno == errno.EIO, exc
            return None
        return "the stopped engine still lists"

    wait_until_none(listing_fails)
    assert "podman" in os.listdir(both.path)  # its directory stays
    wait_until_none(lambda: subtree_vs_api(engine, both.path / "docker"))
    assert (both.path / "docker" / "steady" / "State").read_text() == "running\n"
    podman_session.start()  # its containers outlived the service
    wait_until_none(lambda: subtree_vs_api(podman_engine, podman), timeout=60)
    assert (podman / "survivor" / "ID").read_text() == cid + "\n"


def test_an_engine_down_at_start_up_mounts_the_others(
    engine: Engine, mount_factory: Any, tmp_path: Path
) -> None:
    engine.run("--name=alone", IMG, "sleep", "1d")
    nowhere = f"unix://{tmp_path / 'no-engine.sock'}"
    m = mount_factory(f"up={engine.host}", "-H", f"down={nowhere}")
    assert sorted(os.listdir(m.path)) == ["down", "up"]
    wait_until_none(lambda: subtree_vs_api(engine, m.path / "up"))
    with pytest.raises(OSError) as caught:
        os.listdir(m.path / "down")
    assert caught.value.errno == errno.EIO
    # Asked once at start-up: one deadline, one warning.
    assert m.log_text().count("down: cannot reach Docker at") == 1, m.log_text()


def test_an_engine_over_ssh_beside_a_local_one(
    engine: Engine, sshd_session: Any, mount_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-H local=unix://... -H remote=ssh://...`: the ssh engine (sshd in front
    of the same private dockerd) gets its own tree, read through the tunnel."""
    cid = engine.run("--name=over-ssh", IMG, "sh", "-c", "echo via-ssh; sleep 1d")
    # The client's ~/.ssh holds the key and knows the host, as a user's would.
    monkeypatch.setenv("HOME", str(sshd_session.client_home))
    m = mount_factory(f"local={engine.host}", "-H", f"remote={sshd_session.url}")
    assert sorted(os.listdir(m.path)) == ["local", "remote"]
    local, remote = m.path / "local", m.path / "remote"
    wait_until_none(lambda: subtree_vs_api(engine, local))
    wait_until_none(lambda: subtree_vs_api(engine, remote))
    assert (remote / "over-ssh" / "ID").read_text() == cid + "\n"
    log = (remote / cid / "logs").read_bytes  # a stream through the tunnel
    wait_until_none(lambda: None if log() == b"via-ssh\n" else f"log {log()!r}")
    assert requests_of(m, "remote")["containers/json"] >= 1
    # A container started now reaches both trees, the remote one over ssh.
    later = engine.run("--name=over-ssh-2", IMG, "sleep", "1d")
    wait_until_none(lambda: None if later in os.listdir(remote) else "not listed over ssh yet")
    wait_until_none(lambda: None if later in os.listdir(local) else "not listed locally yet")
