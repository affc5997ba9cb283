"""containers/clone: `run [OPTIONS] IMAGE [ARG...]` and `create ...`, as the
docker CLI's `run -d` and `create` would send them, or an Engine API body.

Pure: a line becomes the body of `POST /containers/create` (and its `name`),
or a refusal that names the option at fault, before Docker hears of it. The
options, with the docker CLI's names and meanings:

```
--name NAME              -e, --env K=V        -l, --label K[=V]      -w, --workdir DIR
-u, --user USER          --entrypoint CMD     -t, --tty              -i, --interactive
-v, --volume [SRC:]DST[:OPTS]                 --mount type=volume|bind|tmpfs,target=DST,...
--network, --net NET     --restart no|always|unless-stopped|on-failure[:N]
--rm                     -p, --publish [IP:][HOST:]PORT[/PROTO]
--cpus N.N               -m, --memory BYTES[b|k|m|g|t]
-h, --hostname NAME      --privileged         --init                 --read-only
--stop-signal SIG        --stop-timeout SECS  --cap-add CAP          --cap-drop CAP
--add-host HOST:IP       --dns IP             --tmpfs DST[:OPTS]     -d, --detach (run: always)
```

`-e NAME` without a value is refused: the CLI would take NAME from its own
environment, and the writer's is not ours to read. A write whose first byte
is `{` is the create body verbatim (checked to be a JSON object, then sent
as written; the engine names the container).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dockerfs_fuse.model.clone import (
    BadLine,
    Opt,
    Parsed,
    command_of,
    decode_line,
    key_values,
    parse_options,
    split_words,
)


@dataclass(frozen=True)
class ContainerRequest:
    """What a containers/clone write asks: create (and for `run` start) a container."""

    start: bool
    name: str
    body: dict[str, Any]
    # A `{` write: the bytes to send, exactly as written.
    raw: bytes | None = None


_COMMON = (
    Opt(("--name",), "name"),
    Opt(("-e", "--env"), "env"),
    Opt(("-l", "--label"), "label"),
    Opt(("-v", "--volume"), "volume"),
    Opt(("--mount",), "mount"),
    Opt(("-w", "--workdir"), "workdir"),
    Opt(("-u", "--user"), "user"),
    Opt(("--entrypoint",), "entrypoint"),
    Opt(("-t", "--tty"), "tty", takes_value=False),
    Opt(("-i", "--interactive"), "interactive", takes_value=False),
    Opt(("--network", "--net"), "network"),
    Opt(("--restart",), "restart"),
    Opt(("--rm",), "rm", takes_value=False),
    Opt(("-p", "--publish"), "publish"),
    Opt(("--cpus",), "cpus"),
    Opt(("-m", "--memory"), "memory"),
    Opt(("-h", "--hostname"), "hostname"),
    Opt(("--privileged",), "privileged", takes_value=False),
    Opt(("--init",), "init", takes_value=False),
    Opt(("--read-only",), "read_only", takes_value=False),
    Opt(("--stop-signal",), "stop_signal"),
    Opt(("--stop-timeout",), "stop_timeout"),
    Opt(("--cap-add",), "cap_add"),
    Opt(("--cap-drop",), "cap_drop"),
    Opt(("--add-host",), "add_host"),
    Opt(("--dns",), "dns"),
    Opt(("--tmpfs",), "tmpfs"),
)
_RUN = (*_COMMON, Opt(("-d", "--detach"), "detach", takes_value=False))

_RESTART = ("no", "always", "unless-stopped", "on-failure")
_BIND_MODES = frozenset(
    [
        "ro",
        "rw",
        "z",
        "Z",
        "shared",
        "rshared",
        "slave",
        "rslave",
        "private",
        "rprivate",
        "nocopy",
        "consistent",
        "cached",
        "delegated",
    ]
)
_MEMORY = re.compile(r"^(\d+(?:\.\d+)?) ?([kmgtp])?i?b?$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_PROTOCOLS = ("tcp", "udp", "sctp")
_MAX_PORT = 65535
_MAX_STOP_TIMEOUT = 24 * 3600


def parse_container(data: bytes) -> ContainerRequest:
    """One containers/clone write, as the request it makes."""
    if data[:1] == b"{":
        return _json_body(data)
    action, rest = command_of(split_words(decode_line(data)), ("run", "create"))
    parsed = parse_options(rest, _RUN if action == "run" else _COMMON)
    if not parsed.args:
        raise BadLine(f"{action} needs an IMAGE")
    image, *cmd = parsed.args
    if any(c.isspace() for c in image) or not image:
        raise BadLine(f"not an image reference: {image!r}")
    config = _config(parsed, image, cmd)
    config["HostConfig"] = _host_config(parsed, config)
    return ContainerRequest(action == "run", parsed.last("name") or "", config)


def _json_body(data: bytes) -> ContainerRequest:
    decode_line(data)  # bounded, UTF-8, no NUL; line breaks are JSON's own
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise BadLine(f"not a JSON object: {exc}") from None
    if not isinstance(body, dict):
        raise BadLine("a create body is a JSON object")
    if not isinstance(body.get("Image"), str) or not body["Image"]:
        raise BadLine("a create body names its Image")
    return ContainerRequest(False, "", body, raw=data)


def _config(parsed: Parsed, image: str, cmd: list[str]) -> dict[str, Any]:
    config: dict[str, Any] = {"Image": image}
    if cmd:
        config["Cmd"] = cmd
    if parsed.given("entrypoint"):
        entrypoint = parsed.last("entrypoint") or ""
        # As the CLI: an empty --entrypoint clears the image's.
        config["Entrypoint"] = [entrypoint]
    env = parsed.all("env")
    for item in env:
        if "=" not in item or item.startswith("="):
            why = "the writer's environment is not ours to read"
            raise BadLine(f"-e must be NAME=VALUE, not {item!r} ({why})")
    if env:
        config["Env"] = env
    labels = key_values(parsed.all("label"), "--label", value_needed=False)
    if labels:
        config["Labels"] = labels
    for key, field in (("workdir", "WorkingDir"), ("user", "User"), ("hostname", "Hostname")):
        value = parsed.last(key)
        if value is not None:
            config[field] = value
    config["Tty"] = parsed.given("tty")
    config["OpenStdin"] = parsed.given("interactive")
    signal = parsed.last("stop_signal")
    if signal is not None:
        config["StopSignal"] = signal
    timeout = parsed.last("stop_timeout")
    if timeout is not None:
        config["StopTimeout"] = _whole(timeout, "--stop-timeout", _MAX_STOP_TIMEOUT)
    return config


def _host_config(parsed: Parsed, config: dict[str, Any]) -> dict[str, Any]:
    host: dict[str, Any] = {}
    binds, anonymous = _volumes(parsed.all("volume"))
    if binds:
        host["Binds"] = binds
    if anonymous:
        config["Volumes"] = {dest: {} for dest in anonymous}
    mounts = [_mount(m) for m in parsed.all("mount")]
    if mounts:
        host["Mounts"] = mounts
    network = parsed.last("network")
    if network is not None:
        if not network:
            raise BadLine("--network needs a network name")
        host["NetworkMode"] = network
    auto_remove = parsed.given("rm")
    host["AutoRemove"] = auto_remove
    restart = parsed.last("restart")
    if restart is not None:
        policy = _restart(restart)
        if auto_remove and policy["Name"] != "no":
            raise BadLine("conflicting options: --restart and --rm")
        host["RestartPolicy"] = policy
    exposed, bindings = _ports(parsed.all("publish"))
    if bindings:
        config["ExposedPorts"] = exposed
        host["PortBindings"] = bindings
    cpus = parsed.last("cpus")
    if cpus is not None:
        host["NanoCpus"] = _nano_cpus(cpus)
    memory = parsed.last("memory")
    if memory is not None:
        host["Memory"] = memory_bytes(memory, "--memory")
    for key, field in (
        ("privileged", "Privileged"),
        ("init", "Init"),
        ("read_only", "ReadonlyRootfs"),
    ):
        if parsed.given(key):
            host[field] = True
    for key, field in (
        ("cap_add", "CapAdd"),
        ("cap_drop", "CapDrop"),
        ("add_host", "ExtraHosts"),
        ("dns", "Dns"),
    ):
        if parsed.given(key):
            host[field] = parsed.all(key)
    tmpfs = parsed.all("tmpfs")
    if tmpfs:
        host["Tmpfs"] = dict(_tmpfs(t) for t in tmpfs)
    return host


def _whole(text: str, option: str, most: int) -> int:
    if not text.isdigit() or int(text) > most:
        raise BadLine(f"{option} must be a whole number from 0 to {most}, not {text!r}")
    return int(text)


def _restart(text: str) -> dict[str, Any]:
    name, colon, count = text.partition(":")
    if name not in _RESTART:
        raise BadLine(f"--restart must be one of {', '.join(_RESTART)}, not {text!r}")
    if colon and name != "on-failure":
        raise BadLine(f"--restart {name} takes no count: {text!r}")
    retries = _whole(count, "--restart on-failure's count", 1 << 31) if colon else 0
    return {"Name": name, "MaximumRetryCount": retries}


def _nano_cpus(text: str) -> int:
    try:
        cpus = float(text)
    except ValueError:
        cpus = -1.0
    if not 0 < cpus <= 4096 or text.strip() != text:
        raise BadLine(f"--cpus must be a number of CPUs above 0 (1.5), not {text!r}")
    return round(cpus * 1e9)


def memory_bytes(text: str, option: str) -> int:
    """`512m`, `1g`, `1.5GiB`, `100000`: bytes, in the docker CLI's units (powers of 1024)."""
    found = _MEMORY.match(text)
    if found is None:
        raise BadLine(f"{option} must be bytes with a unit (512m, 1g), not {text!r}")
    value = int(float(found.group(1)) * _UNITS[(found.group(2) or "").lower()])
    if value <= 0:
        raise BadLine(f"{option} must be above 0: {text!r}")
    return value


def _volumes(specs: Sequence[str]) -> tuple[list[str], list[str]]:
    """(-v SRC:DST[:OPTS] as the API's Binds, -v DST as anonymous volumes)."""
    binds: list[str] = []
    anonymous: list[str] = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) > 3 or not all(parts[:2]):
            raise BadLine(f"-v must be [SOURCE:]DEST[:OPTIONS], not {spec!r}")
        dest = parts[0] if len(parts) == 1 else parts[1]
        if not dest.startswith("/"):
            raise BadLine(f"-v's destination must be an absolute path: {spec!r}")
        if len(parts) == 3:
            bad = [m for m in parts[2].split(",") if m not in _BIND_MODES]
            if bad:
                raise BadLine(f"-v: unknown option {bad[0]!r} in {spec!r}")
        if len(parts) == 1:
            anonymous.append(dest)
        else:
            binds.append(spec)
    return binds, anonymous


def _bool(value: str, what: str) -> bool:
    lowered = value.lower()
    if lowered in ("", "1", "true"):
        return True
    if lowered in ("0", "false"):
        return False
    raise BadLine(f"--mount: {what} is true or false, not {value!r}")


def _mount(spec: str) -> dict[str, Any]:
    """--mount's CSV fields as one entry of the API's HostConfig.Mounts."""
    try:
        fields = next(csv.reader([spec]))
    except (csv.Error, StopIteration):
        raise BadLine(f"--mount: cannot read {spec!r}") from None
    mount: dict[str, Any] = {"Type": "volume"}
    labels: dict[str, str] = {}
    driver_opts: dict[str, str] = {}
    volume: dict[str, Any] = {}
    for item in fields:
        key, eq, value = item.partition("=")
        key = key.strip().lower()
        if key == "type":
            if value not in ("volume", "bind", "tmpfs"):
                raise BadLine(f"--mount: type must be volume, bind or tmpfs, not {value!r}")
            mount["Type"] = value
        elif key in ("source", "src"):
            mount["Source"] = value
        elif key in ("target", "destination", "dst"):
            mount["Target"] = value
        elif key in ("readonly", "ro"):
            mount["ReadOnly"] = _bool(value, key)
        elif key == "bind-propagation":
            mount["BindOptions"] = {"Propagation": value}
        elif key == "volume-nocopy":
            volume["NoCopy"] = _bool(value, key)
        elif key == "volume-label":
            labels.update(key_values([value], "--mount volume-label", value_needed=False))
        elif key == "volume-driver":
            volume["DriverConfig"] = {"Name": value, **volume.get("DriverConfig", {})}
        elif key == "volume-opt":
            driver_opts.update(key_values([value], "--mount volume-opt"))
        elif key == "tmpfs-size":
            mount.setdefault("TmpfsOptions", {})["SizeBytes"] = memory_bytes(value, "tmpfs-size")
        elif key == "tmpfs-mode":
            try:
                mount.setdefault("TmpfsOptions", {})["Mode"] = int(value, 8)
            except ValueError:
                raise BadLine(f"--mount: tmpfs-mode is octal, not {value!r}") from None
        elif key == "consistency":
            mount["Consistency"] = value
        else:
            raise BadLine(f"--mount: unknown field {key!r} in {spec!r}")
        if key not in ("readonly", "ro", "volume-nocopy") and not eq:
            raise BadLine(f"--mount: {key} needs a value (=...)")
    if not mount.get("Target"):
        raise BadLine(f"--mount needs a target: {spec!r}")
    if mount["Type"] == "bind" and not mount.get("Source"):
        raise BadLine(f"--mount type=bind needs a source: {spec!r}")
    if labels:
        volume["Labels"] = labels
    if driver_opts:
        volume.setdefault("DriverConfig", {})["Options"] = driver_opts
    if volume:
        if mount["Type"] != "volume":
            raise BadLine(f"--mount: volume-* fields are for type=volume: {spec!r}")
        mount["VolumeOptions"] = volume
    return mount


def _tmpfs(spec: str) -> tuple[str, str]:
    dest, _, options = spec.partition(":")
    if not dest.startswith("/"):
        raise BadLine(f"--tmpfs needs an absolute path: {spec!r}")
    return dest, options


def _port_range(text: str, what: str, spec: str) -> list[int]:
    low, dash, high = text.partition("-")
    try:
        start = int(low)
        end = int(high) if dash else start
    except ValueError:
        raise BadLine(f"-p: bad {what} port in {spec!r}") from None
    if not 1 <= start <= end <= _MAX_PORT:
        raise BadLine(f"-p: {what} port out of range in {spec!r}")
    return list(range(start, end + 1))


def _ports(specs: Sequence[str]) -> tuple[dict[str, Any], dict[str, list[dict[str, str]]]]:
    """-p [IP:][HOST:]PORT[/PROTO] as the API's ExposedPorts and PortBindings."""
    exposed: dict[str, Any] = {}
    bindings: dict[str, list[dict[str, str]]] = {}
    for spec in specs:
        rest, slash, proto = spec.rpartition("/") if "/" in spec else (spec, "", "tcp")
        if slash and proto not in _PROTOCOLS:
            raise BadLine(f"-p: protocol must be tcp, udp or sctp: {spec!r}")
        ip = ""
        if rest.startswith("["):  # [IPv6]:HOST:PORT
            ip, close, rest = rest[1:].partition("]")
            if not close or not rest.startswith(":"):
                raise BadLine(f"-p: bad address in {spec!r}")
            rest = rest[1:]
        parts = rest.split(":")
        if len(parts) > 3 or (ip and len(parts) != 2):
            raise BadLine(f"-p must be [IP:][HOST:]PORT[/PROTO], not {spec!r}")
        if len(parts) == 3:
            ip = parts.pop(0)
        host = parts[0] if len(parts) == 2 else ""
        ports = _port_range(parts[-1], "container", spec)
        hosts = _port_range(host, "host", spec) if host else []
        if hosts and len(hosts) != len(ports) and len(ports) != 1:
            raise BadLine(f"-p: host and container port ranges differ in length: {spec!r}")
        for n, port in enumerate(ports):
            key = f"{port}/{proto}"
            host_port = str(hosts[n]) if len(hosts) == len(ports) else host
            exposed[key] = {}
            bindings.setdefault(key, []).append({"HostIp": ip, "HostPort": host_port})
    return exposed, bindings
