"""Engines other than a local dockerd socket: ssh://, tcp:// with TLS, contexts, Podman.

Each is a real engine reached the way users reach theirs: a real sshd on
loopback in front of the private dockerd, a private dockerd with --tlsverify
on a loopback port and openssl-made certificates, a context made by the
docker CLI, and a private `podman system service`. Expectations come from the
engine's API, asked directly over its unix socket.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Engine,
    Mount,
    dockerfs_command,
    require_fuse,
    stop_mount,
    wait_for_mount,
    wait_for_start_line,
)
from support.private_engines import PrivateSshd, TLSDockerd
from support.waiting import wait_until_none
from test_mount import expected_files, tree_files

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

IMG = "busybox:latest"
TLS_VARS = ("DOCKER_TLS_VERIFY", "DOCKER_TLS", "DOCKER_CERT_PATH")


def tree_vs_api(engine: Engine, mount: Mount, all: bool = False) -> str | None:
    """How the mount differs from the engine's answer, or None.

    Listing the root refreshes the tree; the API is asked after it, so the
    only difference that can remain for a moment is Status's "Up N seconds".
    """
    listed = os.listdir(mount.path)
    api = engine.containers(all)
    if listed != [c["Id"] for c in api]:
        return f"root lists {listed}, the API {[c['Id'] for c in api]}"
    for c in api:
        got, want = tree_files(mount.path / c["Id"]), expected_files(c)
        if got != want:
            diff = {k: (got.get(k), want.get(k)) for k in got.keys() | want.keys()}
            return f"{c['Id'][:12]}: " + repr({k: v for k, v in diff.items() if v[0] != v[1]})
    return None


def fails_with_one_line(args: list[str], want: str, env: dict[str, str] | None = None) -> str:
    """Exit status 1, exactly one line on stderr, containing `want`; nothing mounted."""
    res = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    lines = res.stderr.splitlines()
    assert res.returncode == 1 and len(lines) == 1 and want in lines[0], (
        res.returncode,
        res.stderr,
    )
    return lines[0]


@pytest.fixture
def two(engine: Engine) -> list[str]:
    return [
        engine.run("--name=ssh-a", "-l", "tier=front", IMG, "sh", "-c", "echo hello; sleep 1d"),
        engine.run("--name=ssh-b", IMG, "sleep", "1d"),
    ]


# -- ssh:// ------------------------------------------------------------------------------


def test_ssh_mount_reads_the_same_tree_as_the_unix_socket(
    engine: Engine,
    two: list[str],
    sshd_session: PrivateSshd,
    mount_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unix = mount_factory(engine.host, name="unix")
    # The client's ~/.ssh holds the key and knows the host, as a user's would.
    monkeypatch.setenv("HOME", str(sshd_session.client_home))
    ssh = mount_factory(sshd_session.url, name="ssh")
    wait_for_start_line(ssh, sshd_session.url)
    wait_until_none(lambda: tree_vs_api(engine, ssh))
    wait_until_none(lambda: tree_vs_api(engine, unix))
    assert sorted(os.listdir(ssh.path)) == sorted(os.listdir(unix.path))
    assert set(two) <= set(os.listdir(ssh.path))
    # A live file streams through the tunnel too.
    assert (ssh.path / two[0] / "logs").read_bytes() == b"hello\n"
    # A container started now is there on the next listing.
    third = engine.run("--name=ssh-c", IMG, "sleep", "1d")
    wait_until_none(lambda: None if third in os.listdir(ssh.path) else "not listed yet")


@pytest.mark.parametrize("known_hosts", [None, ""], ids=["no-known-hosts-file", "host-not-in-it"])
def test_ssh_without_a_known_host_fails_with_one_line(
    sshd_session: PrivateSshd,
    tmp_path: Path,
    mount_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
    known_hosts: str | None,
) -> None:
    """The cause (the host key is unknown) and its fix, as a command to run;
    not aiodocker's advice to set an option our command line does not have.
    Then the fix, run as it is printed, makes the same mount work."""
    require_fuse()
    mp = tmp_path / "m"
    mp.mkdir()
    home = tmp_path / "home"
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(parents=True, mode=0o700)
    key = sshd_session.client_home / ".ssh" / "id_ed25519"  # a key sshd accepts
    shutil.copy(key, ssh_dir)
    shutil.copy(key.with_suffix(".pub"), ssh_dir)
    if known_hosts is not None:
        (ssh_dir / "known_hosts").write_text(known_hosts)
    env = {**os.environ, "HOME": str(home)}
    port = sshd_session.port
    fix = f"ssh-keyscan -p {port} 127.0.0.1 >> ~/.ssh/known_hosts"
    line = fails_with_one_line(
        dockerfs_command("-f", "-H", sshd_session.url, str(mp)),
        f"cannot reach Docker at {sshd_session.url}: ssh host key of 127.0.0.1 port {port} unknown",
        env=env,
    )
    assert line.endswith(f"add it with: {fix}"), line
    assert "strict_host_keys" not in line
    assert not os.path.ismount(mp)
    subprocess.run(["sh", "-c", fix], env=env, check=True, capture_output=True, timeout=60)
    monkeypatch.setenv("HOME", str(home))
    m = mount_factory(sshd_session.url, name="fixed")
    wait_for_start_line(m, sshd_session.url)


@pytest.mark.parametrize("knows_the_host", [True, False])
def test_ssh_to_nothing_fails_with_one_line(
    tmp_path: Path, sshd_session: PrivateSshd, knows_the_host: bool
) -> None:
    """Nothing listens on the port: said as such, whether or not ~/.ssh knows
    the host (without known_hosts, aiodocker refuses before connecting)."""
    require_fuse()
    mp = tmp_path / "m"
    mp.mkdir()
    home = sshd_session.client_home if knows_the_host else tmp_path / "empty-home"
    home.mkdir(exist_ok=True)
    env = {**os.environ, "HOME": str(home)}
    # The same user and keys, but a port where no sshd listens.
    url = sshd_session.url.rsplit(":", 1)[0] + ":1"
    line = fails_with_one_line(
        dockerfs_command("-f", "-H", url, str(mp)),
        f"cannot reach Docker at {url}: connection refused: nothing listens on 127.0.0.1 port 1",
        env=env,
    )
    assert "strict_host_keys" not in line and "known_hosts" not in line, line
    assert not os.path.ismount(mp)


# -- tcp:// with TLS -----------------------------------------------------------------------


def test_tls_mount_with_the_cert_environment(
    tls_engine: Engine, mount_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    d: TLSDockerd = tls_engine.dockerd  # type: ignore[assignment]
    tls_engine.run("--name=tls-a", "-l", "via=tls", IMG, "sleep", "1d")
    monkeypatch.setenv("DOCKER_TLS_VERIFY", "1")
    monkeypatch.setenv("DOCKER_CERT_PATH", str(d.tls.client_dir))
    m = mount_factory(d.tcp_url)
    wait_for_start_line(m, d.tcp_url)
    wait_until_none(lambda: tree_vs_api(tls_engine, m))
    assert len(os.listdir(m.path)) >= 1


@pytest.mark.parametrize(
    ("certs", "want"),
    [
        # No TLS variables: plain HTTP to a TLS port.
        (None, "Client sent an HTTP request to an HTTPS server"),
        # The CA but no client certificate: dockerd --tlsverify refuses us.
        ("ca-only", "certificate"),
        # Told to verify, but nothing to verify with.
        ("empty", "DOCKER_TLS_VERIFY is set but there is no CA certificate"),
    ],
)
def test_tls_without_certificates_fails_with_one_line(
    tls_dockerd: TLSDockerd, tmp_path: Path, certs: str | None, want: str
) -> None:
    require_fuse()
    mp = tmp_path / "m"
    mp.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in TLS_VARS}
    if certs is not None:
        cert_dir = tmp_path / certs
        cert_dir.mkdir()
        if certs == "ca-only":
            (cert_dir / "ca.pem").write_bytes(tls_dockerd.tls.ca.read_bytes())
        env.update(DOCKER_TLS_VERIFY="1", DOCKER_CERT_PATH=str(cert_dir))
    fails_with_one_line(dockerfs_command("-f", "-H", tls_dockerd.tcp_url, str(mp)), want, env=env)
    assert not os.path.ismount(mp)


def test_context_with_tls_material_mounts_without_flags_or_variables(
    tls_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A context made by the docker CLI (TLS files in its store), chosen by --context
    and by DOCKER_CONTEXT; DOCKER_CONFIG says where the store is."""
    d: TLSDockerd = tls_engine.dockerd  # type: ignore[assignment]
    tls_engine.run("--name=ctx-a", IMG, "sleep", "1d")
    c = d.tls.client_dir
    for var in (*TLS_VARS, "DOCKER_HOST", "DOCKER_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))
    spec = f"host={d.tcp_url},ca={c / 'ca.pem'},cert={c / 'cert.pem'},key={c / 'key.pem'}"
    res = subprocess.run(
        ["docker", "context", "create", "secure", "--docker", spec],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    for how, flags, env in (
        ("flag", ["--context", "secure"], {}),
        ("env", [], {"DOCKER_CONTEXT": "secure"}),
    ):
        mp = tmp_path / how
        mp.mkdir()
        log = tmp_path / f"{how}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                dockerfs_command("-f", *flags, str(mp)),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )
        m = Mount(mp, proc, log)
        try:
            wait_for_mount(mp, proc, log)
            wait_for_start_line(m, d.tcp_url)
            wait_until_none(lambda: tree_vs_api(tls_engine, m))  # noqa: B023 - called at once
        finally:
            stop_mount(m)


def test_unknown_context_and_duplicate_names_fail_with_one_line(
    engine: Engine, tmp_path: Path
) -> None:
    require_fuse()
    mp = tmp_path / "m"
    mp.mkdir()
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "cfg")}
    fails_with_one_line(
        dockerfs_command("-f", "--context", "nope", str(mp)), "docker context 'nope' not found", env
    )
    fails_with_one_line(
        dockerfs_command("-f", "-H", "a=unix:///x", "-H", "a=unix:///y", str(mp)),
        "two engines named 'a'",
    )
    assert not os.path.ismount(mp)


# -- Podman ------------------------------------------------------------------------------


def test_podman_mount_lists_its_containers(podman_engine: Engine, mount_factory: Any) -> None:
    podman_engine.run("--name=pod-a", "-l", "engine=podman", IMG, "sleep", "1d")
    podman_engine.run("--name=pod-b", IMG, "sh", "-c", "echo from-podman; sleep 1d")
    m = mount_factory(podman_engine.host)
    wait_until_none(lambda: tree_vs_api(podman_engine, m))
    listed = os.listdir(m.path)
    assert len(listed) >= 2
    by_name = {(m.path / cid / "Names" / "0").read_text(): cid for cid in listed}
    assert (m.path / by_name["/pod-b\n"] / "logs").read_bytes() == b"from-podman\n"


def list_state(e: Engine, name: str, all: bool) -> str | None:
    """The State of the container `name` in the engine's list, None if unlisted."""
    found = [c for c in e.containers(all) if c["Names"] == [f"/{name}"]]
    return str(found[0]["State"]) if found else None


def wait_state(e: Engine, name: str, want: str) -> None:
    def check() -> str | None:
        got = list_state(e, name, all=True)
        return None if got == want else f"{name}: State {got}, waiting for {want}"

    wait_until_none(check)


def test_podman_api_differs_from_docker_as_recorded(podman_engine: Engine, engine: Engine) -> None:
    """Facts about Podman 4.3's compatible API that the per-engine cache must
    handle (issue 9, phase 2), each checked here so that a change shows."""
    for e in (podman_engine, engine):
        e.run("--name=fact-paused", IMG, "sleep", "1d")
        e.docker("pause", "fact-paused")

    # A paused container: Docker lists it without all=1, Podman only with it.
    assert list_state(engine, "fact-paused", all=False) == "paused"
    assert list_state(podman_engine, "fact-paused", all=False) is None
    assert list_state(podman_engine, "fact-paused", all=True) == "paused"

    # The image is spelled with Podman's default registry; no networks at all.
    [c] = [c for c in podman_engine.containers(True) if c["Names"] == ["/fact-paused"]]
    assert c["Image"] == "localhost/busybox:latest"
    assert c["NetworkSettings"] == {"Networks": None}

    # While a stop waits out its grace period, State reads "stopping" (Docker
    # says "running" until the process ends), and the default list drops it.
    podman_engine.run("--name=fact-stopping", IMG, "sh", "-c", "trap '' TERM; sleep 1d")
    stopper = subprocess.Popen(
        ["docker", "stop", "-t", "20", "fact-stopping"],
        env={**os.environ, "DOCKER_HOST": podman_engine.host},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_state(podman_engine, "fact-stopping", "stopping")
        assert list_state(podman_engine, "fact-stopping", all=False) is None
    finally:
        podman_engine.docker("kill", "fact-stopping", check=False)
        stopper.wait(60)
    wait_state(podman_engine, "fact-stopping", "exited")

    # Events: a removal is "remove" (Docker: "destroy"); "init" comes before
    # "start", and "cleanup" once the process is gone. Whether `docker stop`
    # also sends "stop" varies (Podman 4.3 sometimes does): not asserted, the
    # cache re-reads on "die" and "cleanup" either way.
    since = str(int(time.time()) - 1)
    podman_engine.run("--name=fact-events", IMG, "sleep", "1d")
    podman_engine.docker("stop", "-t", "1", "fact-events")
    podman_engine.docker("rm", "fact-events")
    # Podman ends an `--until` stream by the clock, so on a loaded machine one
    # reading can stop short of events already recorded: read until "remove" is in.
    deadline = time.monotonic() + 60
    while True:
        until = str(int(time.time()) + 1)
        window = ["--since", since, "--until", until, "--filter", "container=fact-events"]
        actions = podman_engine.docker("events", *window, "--format", "{{.Action}}").split()
        if "remove" in actions or time.monotonic() > deadline:
            break
    assert actions[:3] == ["create", "init", "start"], actions
    assert "remove" in actions and "destroy" not in actions, actions
    assert "cleanup" in actions, actions
