"""More throwaway engines, and the ways users reach remote ones, for tests and bench.

Beside the private dockerd (private_dockerd.py) the tests need what users
point dockerfs-fuse at: a Podman service (Docker's API, another engine), an
engine behind sshd (ssh://), and a dockerd that only speaks TLS on TCP
(tcp:// with certificates). Each class here starts its own processes in its
own temporary directory, talks only over loopback, and stops only the
processes it started, by PID.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .private_dockerd import (
    IMAGE,
    DockerdError,
    PrivateDockerd,
    PrivateEngine,
    PrivateProcess,
    busybox_rootfs_tar,
)

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (the daemon binds it next)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port


def _find(program: str, package: str) -> str:
    # sshd lives in /usr/sbin, which a non-login PATH may lack.
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    found = shutil.which(program, path=path)
    if found is None:
        raise DockerdError(f"{program} not found (Debian package {package})")
    return found


def _run(args: Sequence[str | os.PathLike[str]], what: str) -> None:
    res = subprocess.run(list(args), capture_output=True, timeout=60)
    if res.returncode != 0:
        raise DockerdError(f"{what}: {res.stderr.decode(errors='replace').strip()}")


def _listens(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    except OSError:
        return False
    return True


def _unmount_under(base: Path) -> None:
    """Lazily unmount whatever an engine left mounted under its directory."""
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return
    points = [line.split()[1] for line in mounts if len(line.split()) > 1]
    for point in sorted((p for p in points if p.startswith(f"{base}/")), reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)


# -- TLS material, made with openssl -------------------------------------------------


@dataclass(frozen=True)
class TLSMaterial:
    """A CA, a server certificate for one IP, and a client certificate.

    `client_dir` holds ca.pem, cert.pem and key.pem: what DOCKER_CERT_PATH
    names for the docker CLI (and for dockerfs-fuse).
    """

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_dir: Path


def make_tls_material(directory: Path, ip: str = LOOPBACK) -> TLSMaterial:
    """Certificates valid for a day, EC keys (quick to make), SAN IP:ip for the server."""
    openssl = _find("openssl", "openssl")
    directory.mkdir(parents=True, exist_ok=True)
    client = directory / "client"
    client.mkdir(exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    days = ["-days", "1"]
    subject = ["-subj", "/CN=dockerfs test CA"]
    _run([openssl, "req", "-x509", *ec, *days, *subject, "-keyout", ca_key, "-out", ca], "CA")

    def signed(name: str, cn: str, extensions: str) -> tuple[Path, Path]:
        key, csr, cert = (directory / f"{name}-{p}.pem" for p in ("key", "csr", "cert"))
        ext = directory / f"{name}.ext"
        ext.write_text(extensions)
        _run([openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={cn}"], name)
        signing = ["-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", *days]
        signing += ["-extfile", str(ext)]
        _run([openssl, "x509", "-req", "-in", csr, *signing, "-out", cert], f"sign {name}")
        return cert, key

    server_cert, server_key = signed(
        "server", ip, f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n"
    )
    client_cert, client_key = signed("client", "dockerfs client", "extendedKeyUsage=clientAuth\n")
    shutil.copy(ca, client / "ca.pem")
    shutil.copy(client_cert, client / "cert.pem")
    shutil.copy(client_key, client / "key.pem")
    return TLSMaterial(directory, ca, server_cert, server_key, client)


class TLSDockerd(PrivateDockerd):
    """A private dockerd that also listens on a loopback TCP port, TLS only,
    verifying clients against its own CA (`--tlsverify`)."""

    def __init__(self, base: Path | None = None) -> None:
        super().__init__(base)
        self.tls = make_tls_material(self.base / "tls")
        self.port = free_port()
        self.tcp_url = f"tcp://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--tlsverify",
            f"--tlscacert={self.tls.ca}",
            f"--tlscert={self.tls.server_cert}",
            f"--tlskey={self.tls.server_key}",
            f"--host={self.tcp_url}",
        ]

    def start(self, timeout: float = 30.0) -> None:
        super().start(timeout)
        self.wait_ready_while_alive(
            lambda: _listens(self.port), timeout, f"dockerd did not listen on {self.tcp_url}"
        )


# -- Podman -------------------------------------------------------------------------

# Podman's default rlimits (nofile 1048576, nproc 4194304) are above this kind
# of machine's hard limits, so runc fails with EPERM; and there is no network.
PODMAN_CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "none"
"""


class PrivatePodman(PrivateEngine):
    """`podman system service` on a socket of ours, with its own storage.

    The compatible (Docker) API is served on `host`; it is driven with the
    docker CLI, as users do. Its containers outlive the service (each has a
    conmon of its own), so stopping the service is an engine going down, and
    `cleanup` removes the containers before the files.
    """

    name = "podman service"

    def __init__(self, base: Path | None = None) -> None:
        super().__init__(Path(base or tempfile.mkdtemp(prefix="dfp-")), "podman.sock", "podman.log")
        self.conf = self.base / "containers.conf"

    def podman_command(self, *args: str) -> list[str]:
        return [
            _find("podman", "podman"),
            f"--root={self.base / 'root'}",
            f"--runroot={self.base / 'run'}",
            f"--tmpdir={self.base / 'tmp'}",
            # No systemd here, and none wanted: plain cgroups, events in a file.
            "--cgroup-manager=cgroupfs",
            "--events-backend=file",
            *args,
        ]

    def podman_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(self.conf)
        return env

    def podman(self, *args: str, input: bytes | None = None, check: bool = True) -> str:
        res = subprocess.run(
            self.podman_command(*args),
            input=input,
            capture_output=True,
            env=self.podman_env(),
            timeout=120,
        )
        if check and res.returncode != 0:
            raise DockerdError(f"podman {' '.join(args)}: {res.stderr.decode(errors='replace')}")
        return res.stdout.decode()

    def start(self, timeout: float = 30.0) -> None:
        if os.geteuid() != 0:
            raise DockerdError("a private podman service needs root")
        self.conf.write_text(PODMAN_CONTAINERS_CONF)
        self.socket.unlink(missing_ok=True)
        self.spawn(
            self.podman_command("system", "service", "--time=0", self.host), self.podman_env()
        )
        self.wait_ready_while_alive(
            self.answers, timeout, f"podman service did not answer within {timeout}s"
        )

    def cleanup(self) -> None:
        # Stopping the service (by PID) leaves its containers running;
        # their conmon processes end with them.
        self.stop()
        self.podman("rm", "--force", "--all", "--time=0", check=False)
        _unmount_under(self.base)
        super().cleanup()

    def import_busybox(self) -> str:
        """Make IMAGE (as localhost/busybox:latest, Podman's spelling) with `podman import`."""
        self.podman("import", "-", IMAGE, input=busybox_rootfs_tar())
        return self.podman("image", "inspect", "--format", "{{.Id}}", IMAGE).strip()


# -- sshd in front of an engine ------------------------------------------------------


class PrivateSshd(PrivateProcess):
    """A real sshd on a loopback port, whose sessions see `docker_host` as DOCKER_HOST.

    That is what an ssh:// engine is: the client runs `docker system
    dial-stdio` on the far side (aiodocker as the docker CLI does), and the far
    side's docker CLI connects to its engine. Host key, client key and
    known_hosts are made here; `client_home` is a HOME whose ~/.ssh has the
    key and knows the host, for the client process.
    """

    name = "sshd"

    def __init__(self, docker_host: str, base: Path | None = None) -> None:
        super().__init__(Path(base or tempfile.mkdtemp(prefix="dfs-ssh-")), "sshd.log")
        self.docker_host = docker_host
        self.port = free_port()
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.url = f"ssh://{self.user}@{LOOPBACK}:{self.port}"
        self.client_home = self.base / "home"
        self.config = self.base / "sshd_config"

    def _prepare(self) -> None:
        keygen = _find("ssh-keygen", "openssh-client")
        host_key = self.base / "host_key"
        ssh_dir = self.client_home / ".ssh"
        ssh_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        client_key = ssh_dir / "id_ed25519"
        for key in (host_key, client_key):
            if not key.exists():
                _run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], "ssh-keygen")
        authorized = self.base / "authorized_keys"
        authorized.write_text(client_key.with_suffix(".pub").read_text())
        kind, blob = host_key.with_suffix(".pub").read_text().split()[:2]
        (ssh_dir / "known_hosts").write_text(f"[{LOOPBACK}]:{self.port} {kind} {blob}\n")
        # The far side's docker CLI reads no config of the machine's user.
        remote_config = self.base / "remote-docker"
        remote_config.mkdir(exist_ok=True)
        self.config.write_text(
            f"Port {self.port}\n"
            f"ListenAddress {LOOPBACK}\n"
            f"HostKey {host_key}\n"
            f"PidFile {self.base / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {authorized}\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            # The temporary directory's modes are not sshd's business.
            "StrictModes no\n"
            f"SetEnv DOCKER_HOST={self.docker_host} DOCKER_CONFIG={remote_config}\n"
        )

    def start(self, timeout: float = 30.0) -> None:
        if os.geteuid() != 0:
            raise DockerdError("a private sshd needs root")
        sshd = _find("sshd", "openssh-server")
        self._prepare()
        # sshd refuses to start without its privilege separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.spawn([sshd, "-D", "-e", "-f", str(self.config)])
        self.wait_ready_while_alive(
            lambda: _listens(self.port), timeout, f"sshd did not listen on port {self.port}"
        )
