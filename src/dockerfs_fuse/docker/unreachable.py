"""Why an engine cannot be reached, in the user's words rather than a library's.

aiohttp says "Cannot connect to unix socket /var/run/docker.sock ssl:default
[No such file or directory]" and aiodocker's ssh connector says "set
strict_host_keys=False", an option our command line does not have, before it
has even tried to connect. The cause is in the exception chain (an OSError,
an asyncssh error); this module names it, with the endpoint's host and port
and the fix, so a start-up refusal says what to do next.

asyncssh is recognised by class name, never imported: importing it costs
start-up time, and the ssh connector imports it only for ssh:// engines.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import ssl
import stat
from dataclasses import dataclass
from urllib.parse import urlsplit

# The ports the docker CLI assumes when a URL gives none.
DEFAULT_PORTS = {"ssh": 22, "tcp": 2375}
# OpenSSL's wording without its library tag and source line:
# "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)".
SSL_NOISE = re.compile(r"^\[[^]]*\]\s*|\s*\(_ssl\.c:\d+\)$")
# What to try when nothing answers on the default socket or the one given.
NO_DAEMON_HINT = "is dockerd running? set -H or DOCKER_HOST"


@dataclass(frozen=True)
class Where:
    """The parts of an engine URL a message names."""

    scheme: str
    host: str  # for unix://, the socket's path
    port: int

    @classmethod
    def of(cls, url: str) -> Where:
        scheme, _, rest = url.partition("://")
        if scheme == "unix":
            return cls(scheme, rest, 0)
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = None
        return cls(scheme, parts.hostname or "", port or DEFAULT_PORTS.get(scheme, 0))

    @property
    def address(self) -> str:
        if self.scheme == "unix":
            return self.host
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host} port {self.port}"

    def keyscan(self) -> str:
        return f"ssh-keyscan -p {self.port} {self.host} >> ~/.ssh/known_hosts"


def root_cause(exc: BaseException) -> BaseException | None:
    """The innermost exception of the chain that names a cause: an OSError
    (aiohttp's connector error carries one; a timeout is one), or an asyncssh error."""
    found: BaseException | None = None
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        os_error = getattr(current, "os_error", None)  # aiohttp.ClientConnectorError
        if isinstance(os_error, OSError):
            found = os_error
        elif isinstance(current, OSError) or _is_ssh_error(current):
            found = current
        current = current.__cause__ or current.__context__
    return found


def _ssh_error_name(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        if cls.__module__.startswith("asyncssh"):
            return cls.__name__
    return ""


def _is_ssh_error(exc: BaseException) -> bool:
    return bool(_ssh_error_name(exc))


def reason(cause: BaseException | None) -> str | None:
    """A short account of a cause, without the endpoint (for the log); None
    when there is nothing better to say than the message itself."""
    if cause is None:
        return None
    ssh = _ssh_error_name(cause)
    if ssh == "HostKeyNotVerifiable":
        return "ssh host key unknown"
    if ssh == "PermissionDenied":
        return "ssh login refused"
    if ssh:
        return f"ssh: {getattr(cause, 'reason', '') or cause}"
    if isinstance(cause, TimeoutError):
        return "no answer"
    if isinstance(cause, socket.gaierror):
        return "unknown host"
    if isinstance(cause, ssl.SSLError):
        # Its errno is OpenSSL's code (1 is SSL_ERROR_SSL), not an OS errno.
        return f"TLS: {tls_words(cause)}"
    if isinstance(cause, OSError) and cause.errno is not None:
        if cause.errno == errno.ENOENT:
            return "no such socket"
        return _os_words(cause.errno)
    return None


def tls_words(exc: ssl.SSLError) -> str:
    """What OpenSSL said, as a phrase: "tlsv13 alert certificate required"."""
    text = getattr(exc, "verify_message", None) or exc.strerror or exc.reason or str(exc)
    return SSL_NOISE.sub("", str(text)) or str(exc)


def _os_words(code: int) -> str:
    """strerror in lower case: "connection refused", "permission denied"."""
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


def explain(url: str, cause: BaseException | None) -> str | None:
    """What went wrong reaching `url` and what to do about it, or None when
    the cause is not one this knows."""
    if cause is None:
        return None
    where = Where.of(url)
    ssh = _ssh_error_name(cause)
    if ssh == "HostKeyNotVerifiable":
        return host_key_unknown(where)
    if ssh == "PermissionDenied":
        return (
            f"ssh login to {where.address} refused: no key of yours is accepted there "
            "(ssh must log in with a key, the agent or ~/.ssh/config)"
        )
    if isinstance(cause, ssl.SSLError):
        return (
            f"TLS with {where.address} failed: {tls_words(cause)} "
            "(the certificates come from DOCKER_CERT_PATH, or the context's TLS files)"
        )
    code = cause.errno if isinstance(cause, OSError) else None
    if isinstance(cause, socket.gaierror):
        return f"unknown host {where.host}"
    if where.scheme == "unix":
        if _exists_but_not_a_socket(where.host):
            return "not a socket"
        if code == errno.ENOENT:
            return f"no such socket ({NO_DAEMON_HINT})"
        if code == errno.ECONNREFUSED:
            return f"connection refused: no daemon behind the socket ({NO_DAEMON_HINT})"
        if code == errno.EACCES:
            return "permission denied (is your user in the docker group?)"
    elif code == errno.ECONNREFUSED:
        return f"connection refused: nothing listens on {where.address}"
    if isinstance(cause, TimeoutError) or code == errno.ETIMEDOUT:
        return f"no answer from {where.address}"
    return reason(cause)


def _exists_but_not_a_socket(path: str) -> bool:
    try:
        return not stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def host_key_unknown(where: Where) -> str:
    return (
        f"ssh host key of {where.address} unknown (not in ~/.ssh/known_hosts); "
        f"add it with: {where.keyscan()}"
    )


def probe(where: Where, timeout: float) -> OSError | None:
    """Whether a TCP connection to the host and port opens (None) or why not.
    For the one case where the ssh client refuses before connecting (no
    known_hosts at all), so that "nothing listens" is told from "key unknown"."""
    try:
        with socket.create_connection((where.host, where.port), timeout=timeout):
            return None
    except OSError as exc:
        return exc
