"""The tree contract, checked against answers recorded from a real engine."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from dockerfs_fuse.tree import (
    ORDER,
    container_spec,
    escape_name,
    render,
    unescape_name,
)

RECORDED = json.loads((Path(__file__).parent / "data" / "containers-all.json").read_text())


def by_name(name: str) -> dict[str, Any]:
    for c in RECORDED:
        if f"/{name}" in c["Names"]:
            return dict(c)
    raise KeyError(name)


def test_container_directory_lists_fields_in_contract_order() -> None:
    spec = container_spec(by_name("lab"))
    assert tuple(spec) == ORDER


def test_scalar_files_hold_value_and_one_newline() -> None:
    c = by_name("lab")
    spec = container_spec(c)
    assert spec["ID"] == c["Id"].encode() + b"\n"
    assert spec["Image"] == b"busybox:latest\n"
    assert spec["ImageID"] == c["ImageID"].encode() + b"\n"
    assert spec["Command"] == b"sleep 1000\n"
    assert spec["Created"] == f"{c['Created']}\n".encode()
    assert spec["State"] == b"running\n"
    assert spec["Status"] == c["Status"].encode() + b"\n"
    assert spec["Names"] == {"0": b"/lab\n"}


def test_labels_escape_slash_and_percent() -> None:
    spec = container_spec(by_name("exp"))
    labels = spec["Labels"]
    assert isinstance(labels, dict)
    assert labels["odd%25key%2Fwith%2Fslash"] == b"v 1\n"
    assert labels["empty"] == b"\n"


def test_mounts_have_one_file_per_present_field_booleans_lowercase() -> None:
    mounts = container_spec(by_name("lab"))["Mounts"]
    assert isinstance(mounts, dict)
    volume, bind = mounts["0"], mounts["1"]
    assert isinstance(volume, dict) and isinstance(bind, dict)
    assert list(volume) == [
        "Type",
        "Name",
        "Source",
        "Destination",
        "Driver",
        "Mode",
        "RW",
        "Propagation",
    ]
    assert volume["RW"] == b"true\n"
    assert "Name" not in bind and "Driver" not in bind
    assert bind["RW"] == b"false\n"
    assert bind["Propagation"] == b"rslave\n"


def test_networks_keep_non_empty_scalars_only() -> None:
    networks = container_spec(by_name("lab"))["Networks"]
    assert isinstance(networks, dict)
    none = networks["none"]
    assert isinstance(none, dict)
    assert none["NetworkID"].endswith(b"\n") and len(none["NetworkID"]) == 65
    assert "Gateway" not in none  # ""
    assert "IPAMConfig" not in none  # null
    assert "Aliases" not in none  # null (and not scalar)
    assert none["IPPrefixLen"] == b"0\n"  # a number is a value, even 0


def test_ports_from_an_engine_with_port_mapping() -> None:
    # This machine's engine runs with --bridge=none, so it reports no ports;
    # this entry is the shape `docker run -p 8080:80` gives on a default engine.
    c = copy.deepcopy(by_name("lab"))
    c["Ports"] = [
        {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 8080, "Type": "tcp"},
        {"PrivatePort": 53, "Type": "udp"},
    ]
    ports = container_spec(c)["Ports"]
    assert ports == {
        "0": {"PrivatePort": b"53\n", "Type": b"udp\n"},
        "1": {
            "IP": b"0.0.0.0\n",
            "PrivatePort": b"80\n",
            "PublicPort": b"8080\n",
            "Type": b"tcp\n",
        },
    }
    # The engine's order changes between answers (Go map order); the tree's does not.
    c["Ports"].reverse()
    c["Mounts"] = list(reversed(c["Mounts"]))
    assert container_spec(c)["Ports"] == ports
    assert container_spec(c)["Mounts"] == container_spec(by_name("lab"))["Mounts"]


def test_ports_sort_by_number_not_by_text() -> None:
    # As text, "443" < "80" < "8080" < "9"; as numbers, 9 < 80 < 443 < 8080.
    c = copy.deepcopy(by_name("lab"))
    c["Ports"] = [
        {"IP": "0.0.0.0", "PrivatePort": 8080, "PublicPort": 10080, "Type": "tcp"},
        {"IP": "0.0.0.0", "PrivatePort": 443, "PublicPort": 9443, "Type": "tcp"},
        {"PrivatePort": 9, "Type": "udp"},
        {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 10000, "Type": "tcp"},
        {"IP": "0.0.0.0", "PrivatePort": 80, "PublicPort": 9000, "Type": "tcp"},
        {"IP": "::", "PrivatePort": 80, "PublicPort": 9000, "Type": "tcp"},
    ]
    ports = container_spec(c)["Ports"]
    assert isinstance(ports, dict)

    def field(i: int, name: str) -> bytes:
        entry = ports[str(i)]
        assert isinstance(entry, dict)
        value = entry.get(name, b"")
        assert isinstance(value, bytes)
        return value

    assert [field(i, "PrivatePort") for i in range(6)] == [
        b"9\n",
        b"80\n",
        b"80\n",
        b"80\n",
        b"443\n",
        b"8080\n",
    ]
    # The same private port: by type, then IP, then public port as a number.
    assert [(field(i, "IP"), field(i, "PublicPort")) for i in (1, 2, 3)] == [
        (b"0.0.0.0\n", b"9000\n"),
        (b"0.0.0.0\n", b"10000\n"),
        (b"::\n", b"9000\n"),
    ]
    for _ in range(3):  # whatever order the engine answers in
        c["Ports"] = c["Ports"][1:] + c["Ports"][:1]
        assert container_spec(c)["Ports"] == ports


def test_stopped_container_and_missing_fields_do_not_break_the_tree() -> None:
    spec = container_spec({"Id": "ab" * 32, "Names": None, "Labels": None})
    assert spec["Names"] == {} and spec["Labels"] == {} and spec["Ports"] == {}
    assert spec["Created"] == b"0\n"
    stopped = container_spec(by_name("stopped"))
    assert stopped["State"] == b"created\n"


@pytest.mark.parametrize("key", ["plain", "a/b", "100%", "%2F", "", ".", "..", "x\0y", "ünï/cödé"])
def test_escape_is_one_component_and_reversible(key: str) -> None:
    name = escape_name(key)
    assert "/" not in name and "\0" not in name and name not in ("", ".", "..")
    assert unescape_name(name) == key


def test_render_scalars() -> None:
    assert render(True) == b"true\n"
    assert render(False) == b"false\n"
    assert render(0) == b"0\n"
    assert render(None) == b"\n"
    assert render("Up 5 minutes") == b"Up 5 minutes\n"
