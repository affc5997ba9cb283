"""Which Docker engines to talk to: the docker CLI's rules, resolved in one place.

aiodocker can pick an endpoint by itself, but in another order than the
`docker` CLI (it reads the context before DOCKER_HOST), and users expect the
engine `docker ps` shows them. So the choice is made here, following the
CLI's source (cli/command/cli.go resolveContextName and getDockerEndPoint,
cli/context/store, opts/hosts.go ParseHost), and aiodocker is always handed
an explicit URL.

This module only reads files (the CLI's config.json, its context store, the
TLS files it names); it opens no connection. Every error is an
`EndpointError` whose message is one line, fit for stderr at start-up.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import pwd
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

# The CLI's defaults (opts/hosts.go).
DEFAULT_UNIX_SOCKET = "/var/run/docker.sock"
DEFAULT_HOST = f"unix://{DEFAULT_UNIX_SOCKET}"
DEFAULT_TCP_HOST = "localhost"
DEFAULT_TCP_PORT = 2375
DEFAULT_TLS_HOST = "tcp://localhost:2376"
DEFAULT_CONTEXT = "default"  # the CLI's built-in context: DOCKER_HOST/flags, not the store
DOCKER_ENDPOINT = "docker"  # the endpoint kind a context holds for the engine

# What NAME defaults to for an engine behind a unix socket.
LOCAL_NAME = "local"

MAX_URL = 4096
MAX_NAME = 255  # a directory name (phase 2: one directory per engine)
MAX_CONFIG_BYTES = 1 << 20  # config.json and meta.json: small files, read whole


class EndpointError(ValueError):
    """An endpoint that cannot be used; the message is one line for the user."""


@dataclass(frozen=True)
class TLS:
    """The TLS material for a tcp:// engine, as file paths (None: not given).

    `verify` False means "encrypt, but do not check the engine's certificate"
    (the CLI's DOCKER_TLS without DOCKER_TLS_VERIFY, or a context's SkipTLSVerify).
    """

    ca: str | None
    cert: str | None
    key: str | None
    verify: bool = True


@dataclass(frozen=True)
class Endpoint:
    """One engine: the name it goes by, where it is, and how to reach it.

    `url` is normalised: unix:///PATH, tcp://HOST:PORT[/PATH] or
    ssh://[USER@]HOST[:PORT]. `tls` is only ever set for tcp://.
    `origin` says where it came from ("-H", "context prod", "DOCKER_HOST", ...),
    for messages.
    """

    name: str
    url: str
    tls: TLS | None = None
    origin: str = ""

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0]


# -- the CLI's configuration directory ------------------------------------------------


def home_dir(env: Mapping[str, str]) -> Path:
    """$HOME, else the password database (as Go's os.UserHomeDir, then user.Current)."""
    home = env.get("HOME")
    if home:
        return Path(home)
    return Path(pwd.getpwuid(os.getuid()).pw_dir)


def config_dir(env: Mapping[str, str]) -> Path:
    """DOCKER_CONFIG, else ~/.docker: where config.json and contexts/ live."""
    override = env.get("DOCKER_CONFIG")
    return Path(override) if override else home_dir(env) / ".docker"


def _read_json(path: Path, what: str) -> Any:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EndpointError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise EndpointError(f"{what} {path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EndpointError(f"{what} {path} is not valid JSON: {exc}") from None


def _field(obj: Any, key: str) -> Any:
    """A JSON object's field, matched as Go's encoding/json does (case-insensitively)."""
    if not isinstance(obj, dict):
        return None
    if key in obj:
        return obj[key]
    for k, v in obj.items():
        if isinstance(k, str) and k.lower() == key.lower():
            return v
    return None


def current_context(env: Mapping[str, str]) -> str:
    """`currentContext` from config.json, or "" when there is none."""
    path = config_dir(env) / "config.json"
    name = _field(_read_json(path, "docker config"), "currentContext")
    if name is not None and not isinstance(name, str):
        raise EndpointError(f"docker config {path}: currentContext is not a string")
    return name or ""


# -- URLs --------------------------------------------------------------------------------


def parse_url(url: str, default_to_tls: bool = False) -> str:
    """A Docker host URL, checked and normalised as the CLI's ParseHost does.

    An empty URL means the default socket (or the default TLS address when TLS is
    on); a URL without a scheme is tcp://. Only unix, tcp and ssh are served.
    """
    url = url.strip()
    if len(url) > MAX_URL:
        raise EndpointError(f"Docker URL longer than {MAX_URL} characters")
    if not url:
        return DEFAULT_TLS_HOST if default_to_tls else DEFAULT_HOST
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise EndpointError(f"Docker URL {url!r} contains control characters")
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "tcp", url
    shown = _without_password(url)
    if scheme == "unix":
        return _parse_unix(shown, rest)
    if scheme == "tcp":
        return _parse_tcp(shown, rest)
    if scheme == "ssh":
        return _parse_ssh(shown, rest)
    raise EndpointError(
        f"bad Docker endpoint {shown!r}: scheme {scheme!r} is not supported "
        "(use unix://, tcp:// or ssh://)"
    )


def _without_password(url: str) -> str:
    """The URL as messages show it: stderr and logs never carry a password."""
    return re.sub(r"://([^/@:]*):[^/@]*@", r"://\1:***@", url)


def _parse_unix(url: str, path: str) -> str:
    if "://" in path:
        raise EndpointError(f"bad Docker endpoint {url!r}: expected unix:///PATH")
    path = path or DEFAULT_UNIX_SOCKET
    if not path.startswith("/"):
        raise EndpointError(f"bad Docker endpoint {url!r}: the socket path must be absolute")
    return f"unix://{path}"


def _split(shown: str, rest: str, scheme: str) -> SplitResult:
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise EndpointError(f"bad Docker endpoint {shown!r}: {exc}") from None
    if parts.query or parts.fragment:
        raise EndpointError(f"bad Docker endpoint {shown!r}: no query or fragment allowed")
    return parts


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _parse_tcp(url: str, rest: str) -> str:
    if "://" in rest:
        raise EndpointError(f"bad Docker endpoint {url!r}: expected tcp://HOST:PORT")
    parts = _split(url, rest, "tcp")
    if parts.username is not None or parts.password is not None:
        raise EndpointError(f"bad Docker endpoint {url!r}: tcp:// takes no user")
    host = parts.hostname or DEFAULT_TCP_HOST
    port = parts.port if parts.port is not None else DEFAULT_TCP_PORT
    if not 0 < port < 65536:
        raise EndpointError(f"bad Docker endpoint {url!r}: port {port} out of range")
    path = parts.path.rstrip("/")
    return f"tcp://{_host_port(host, port)}{path}"


def _parse_ssh(url: str, rest: str) -> str:
    parts = _split(url, rest, "ssh")
    if parts.password is not None:
        raise EndpointError(
            f"bad Docker endpoint {url!r}: a password in the URL is not supported (use a key)"
        )
    if not parts.hostname:
        raise EndpointError(
            f"bad Docker endpoint {url!r}: no host (expected ssh://[USER@]HOST[:PORT])"
        )
    if parts.path not in ("", "/"):
        # aiodocker runs `docker system dial-stdio` remotely, which picks the socket.
        raise EndpointError(
            f"bad Docker endpoint {url!r}: a socket path is not supported over ssh "
            "(the remote docker CLI picks the engine)"
        )
    if parts.port is not None and not 0 < parts.port < 65536:
        raise EndpointError(f"bad Docker endpoint {url!r}: port {parts.port} out of range")
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port is not None else ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"ssh://{user}{host}{port}"


def url_host(url: str) -> str:
    """The host part of a normalised URL (`local` for a unix socket): the default NAME."""
    scheme, _, rest = url.partition("://")
    if scheme == "unix":
        return LOCAL_NAME
    host = urlsplit(f"{scheme}://{rest}").hostname or ""
    try:
        # An IPv6 address names a directory without its brackets, compressed.
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host


def check_name(name: str, what: str) -> str:
    """An engine name must work as a directory name."""
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise EndpointError(f"bad engine name {name!r} in {what}")
    if len(name.encode()) > MAX_NAME:
        raise EndpointError(f"engine name in {what} is longer than {MAX_NAME} bytes")
    return name


# -- TLS -----------------------------------------------------------------------------


def env_tls(env: Mapping[str, str]) -> TLS | None:
    """TLS as the CLI sets it up from the environment for the default context.

    DOCKER_TLS_VERIFY non-empty: TLS, verified. DOCKER_TLS non-empty: TLS, not
    verified. Files from DOCKER_CERT_PATH, else the config directory: ca.pem
    must exist (the CLI reads it unconditionally); cert.pem and key.pem are
    used only when both exist.
    """
    verify = bool(env.get("DOCKER_TLS_VERIFY"))
    if not verify and not env.get("DOCKER_TLS"):
        return None
    cert_dir = Path(env.get("DOCKER_CERT_PATH") or config_dir(env))
    ca = cert_dir / "ca.pem"
    if not ca.is_file():
        why = "DOCKER_TLS_VERIFY" if verify else "DOCKER_TLS"
        raise EndpointError(
            f"{why} is set but there is no CA certificate at {ca} (set DOCKER_CERT_PATH)"
        )
    cert, key = cert_dir / "cert.pem", cert_dir / "key.pem"
    if cert.is_file() and key.is_file():
        return TLS(str(ca), str(cert), str(key), verify)
    return TLS(str(ca), None, None, verify)


def tls_defaults_on(env: Mapping[str, str]) -> bool:
    """Whether the CLI would default to its TLS address (tcp://localhost:2376)."""
    return bool(env.get("DOCKER_TLS_VERIFY") or env.get("DOCKER_TLS"))


# -- contexts ------------------------------------------------------------------------


def context_id(name: str) -> str:
    """The context store keys a context's directories by the sha256 of its name."""
    return hashlib.sha256(name.encode()).hexdigest()


def context_endpoint(name: str, env: Mapping[str, str], origin: str) -> Endpoint:
    """The engine a stored context points at, with its TLS material."""
    if name == DEFAULT_CONTEXT:
        return default_context_endpoint(env, name=DEFAULT_CONTEXT, origin=origin)
    store = config_dir(env) / "contexts"
    meta_path = store / "meta" / context_id(name) / "meta.json"
    meta = _read_json(meta_path, "docker context")
    if meta is None:
        raise EndpointError(f"docker context {name!r} not found ({origin}; no {meta_path})")
    docker = _field(_field(meta, "Endpoints"), DOCKER_ENDPOINT)
    if not isinstance(docker, dict):
        raise EndpointError(f"docker context {name!r} has no docker endpoint ({meta_path})")
    host = _field(docker, "Host") or ""
    skip_verify = _field(docker, "SkipTLSVerify")
    if not isinstance(host, str) or not isinstance(skip_verify, bool | None):
        raise EndpointError(f"docker context {name!r}: bad docker endpoint in {meta_path}")
    try:
        # A context without a host means the client's built-in default.
        url = parse_url(host)
    except EndpointError as exc:
        raise EndpointError(f"docker context {name!r}: {exc}") from None
    tls = None
    if url.startswith("tcp://"):
        tls = _context_tls(store / "tls" / context_id(name) / DOCKER_ENDPOINT, bool(skip_verify))
    return Endpoint(check_name(name, origin), url, tls, origin)


def _context_tls(directory: Path, skip_verify: bool) -> TLS | None:
    """A context's TLS material: any of ca.pem, cert.pem, key.pem in its tls dir.

    As the CLI: no material and no SkipTLSVerify is plain TCP; SkipTLSVerify
    alone is TLS without verification; a client key pair is used only whole.
    """
    files = {f: directory / f for f in ("ca.pem", "cert.pem", "key.pem")}
    present = {f: str(p) for f, p in files.items() if p.is_file()}
    if not present and not skip_verify:
        return None
    pair = "cert.pem" in present and "key.pem" in present
    return TLS(
        present.get("ca.pem"),
        present["cert.pem"] if pair else None,
        present["key.pem"] if pair else None,
        verify=not skip_verify,
    )


# -- resolution ----------------------------------------------------------------------


def _with_env_tls(url: str, env: Mapping[str, str]) -> TLS | None:
    # The CLI reads the TLS files for any host; only tcp:// uses them, so only
    # tcp:// can fail on them here.
    return env_tls(env) if url.startswith("tcp://") else None


def default_context_endpoint(
    env: Mapping[str, str], name: str | None = None, origin: str = ""
) -> Endpoint:
    """The CLI's built-in `default` context: DOCKER_HOST, else the default socket
    (or tcp://localhost:2376 when the TLS variables are set), TLS from the environment."""
    docker_host = env.get("DOCKER_HOST", "")
    if docker_host.strip():
        origin = origin or "DOCKER_HOST"
        try:
            url = parse_url(docker_host, tls_defaults_on(env))
        except EndpointError as exc:
            raise EndpointError(f"DOCKER_HOST: {exc}") from None
    else:
        origin = origin or "the default socket"
        url = parse_url("", tls_defaults_on(env))
    return Endpoint(name or url_host(url), url, _with_env_tls(url, env), origin)


def default_endpoint(env: Mapping[str, str]) -> Endpoint:
    """With no -H and no --context, the engine the docker CLI would use:
    DOCKER_HOST, then DOCKER_CONTEXT, then config.json's currentContext, then
    the default socket (resolveContextName in the CLI)."""
    if env.get("DOCKER_HOST"):
        return default_context_endpoint(env)
    if name := env.get("DOCKER_CONTEXT"):
        return context_endpoint(name, env, "DOCKER_CONTEXT")
    if name := current_context(env):
        return context_endpoint(name, env, "currentContext in docker config")
    return default_context_endpoint(env)


def host_endpoint(spec: str, env: Mapping[str, str]) -> Endpoint:
    """One `-H [NAME=]URL`. As the CLI's -H, TLS comes from the environment."""
    name, url = split_name(spec)
    origin = f"-H {spec}"
    if not url.strip():
        raise EndpointError(f"empty Docker URL in {origin}")
    normal = parse_url(url, tls_defaults_on(env))
    name = check_name(name, origin) if name is not None else url_host(normal)
    return Endpoint(name, normal, _with_env_tls(normal, env), origin)


def split_name(spec: str) -> tuple[str | None, str]:
    """`NAME=URL` or `URL`: an `=` counts only before the URL's `://`."""
    head, sep, tail = spec.partition("=")
    if sep and "://" not in head:
        return head, tail
    return None, spec


def resolve(
    hosts: Sequence[str] | None, contexts: Sequence[str] | None, env: Mapping[str, str]
) -> list[Endpoint]:
    """Every engine named on the command line (-H first, then --context, each in
    order), or the one the docker CLI would pick when none is; names unique."""
    found = [host_endpoint(h, env) for h in hosts or ()]
    for name in contexts or ():
        if not name:
            raise EndpointError("empty context name in --context")
        found.append(context_endpoint(name, env, f"--context {name}"))
    if not found:
        found.append(default_endpoint(env))
    seen: dict[str, Endpoint] = {}
    for ep in found:
        if ep.name in seen:
            raise EndpointError(
                f"two engines named {ep.name!r} ({seen[ep.name].origin}; {ep.origin}): "
                "name them with -H NAME=URL"
            )
        seen[ep.name] = ep
    return found
