"""The tree contract, checked against answers recorded from a real engine."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from dockerfs_fuse.model import containers as tree
from dockerfs_fuse.model.containers import (
    LIVE,
    NAME_MAX,
    ORDER,
    Link,
    Special,
    Unlisted,
    container_spec,
    escape_name,
    is_shortened,
    named_entries,
    render,
    resolve_name,
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


def test_what_a_walk_must_not_open_is_a_link_into_the_unlisted_live_directory() -> None:
    spec = container_spec(by_name("lab"))
    behind = ("ctl", "logs", "logs.follow", "root", "top", "stats", "wait", "exec")
    assert {name: spec[name] for name in behind} == {n: Link(f"{LIVE}/{n}") for n in behind}
    live = spec[LIVE]
    assert isinstance(live, Unlisted)
    assert live == {name: Special(name) for name in behind}
    # Small, cheap (one quick request) and without effect: a walk reads it.
    assert spec["inspect.json"] is Special.INSPECT


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
    network_id = none["NetworkID"]
    assert isinstance(network_id, bytes)
    assert network_id.endswith(b"\n") and len(network_id) == 65
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


# -- names longer than NAME_MAX (issue 14.3) ----------------------------------------------


def _short(key: str) -> str:
    """The documented mapping, computed independently of the code under test."""
    return "%~" + hashlib.sha256(key.encode()).hexdigest()[:12]


@pytest.mark.parametrize("size", [255, 256, 1000, 4000])
def test_every_name_fits_name_max_and_long_ones_keep_a_prefix_and_hash(size: int) -> None:
    key = "k" * size
    name = escape_name(key)
    assert len(name.encode()) <= NAME_MAX
    if size <= NAME_MAX:
        assert name == key and not is_shortened(name)
    else:
        assert name == "k" * 200 + _short(key)
        assert is_shortened(name)
        with pytest.raises(ValueError):
            unescape_name(name)


def test_shortening_cuts_between_characters_and_escapes() -> None:
    # 3-byte characters: 66 of them are 198 bytes, a 67th would pass 200.
    wide = "€" * 100
    assert escape_name(wide) == "€" * 66 + _short(wide)
    # An escape is never cut in half: "%2F" (3 bytes) at bytes 199-201 is dropped whole.
    slashed = "a" * 198 + "/" + "b" * 100
    name = escape_name(slashed)
    assert name == "a" * 198 + _short(slashed)
    escaped = "a" * 197 + "/" + "b" * 100
    assert escape_name(escaped) == "a" * 197 + "%2F" + _short(escaped)
    # the length after escaping is what counts: 100 "/" are 300 bytes escaped
    assert is_shortened(escape_name("/" * 100))
    assert escape_name("/" * 85) == "%2F" * 85  # exactly 255


def test_keys_sharing_a_long_prefix_get_distinct_names() -> None:
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    spec = container_spec({"Id": "ab" * 32, "Labels": {a: "1", b: "2", "short": "3"}})
    labels = spec["Labels"]
    assert isinstance(labels, dict)
    assert labels == {escape_name(a): b"1\n", escape_name(b): b"2\n", "short": b"3\n"}
    assert len(labels) == 3


def test_a_hash_collision_drops_no_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    # Force every shortened name to one hash: the later keys get ~2, ~3.
    monkeypatch.setattr(tree, "shorten_name", lambda escaped, key: "same%~000000000000")
    keys = ["y" * 300, "z" * 300, "w" * 300]
    got = named_entries((k, k[0]) for k in keys)
    assert got == {
        "same%~000000000000": "y",
        "same%~000000000000~2": "z",
        "same%~000000000000~3": "w",
    }


def test_network_names_and_fields_are_mapped_too() -> None:
    net = "n" * 300
    spec = container_spec(
        {"Id": "cd" * 32, "NetworkSettings": {"Networks": {net: {"IPAddress": "10.0.0.2"}}}}
    )
    networks = spec["Networks"]
    assert isinstance(networks, dict)
    assert list(networks) == ["n" * 200 + _short(net)]


def test_lone_surrogates_are_escaped_and_reversible() -> None:
    key = "a\ud800b\udcffc"
    name = escape_name(key)
    assert name == "a%uD800b%uDCFFc"
    name.encode()  # valid UTF-8: the kernel can carry it
    assert unescape_name(name) == key
    assert unescape_name(escape_name("%uD800")) == "%uD800"  # a literal stays literal


# -- names and prefixes, resolved as Docker does (issue 14.4) -----------------------------


def _c(cid: str, *names: str, state: str = "running") -> dict[str, Any]:
    return {"Id": cid, "Names": [f"/{n}" for n in names], "State": state}


def test_resolve_full_id_then_name_then_unique_prefix() -> None:
    a = _c("f4c5" + "a" * 60, "web")
    b = _c("f4c5" + "b" * 60, "f4c5b")  # a name that is also a prefix of its own ID
    c = _c("beef" + "c" * 60, "f4c5")  # a name equal to a shared prefix
    everything = [a, b, c]
    assert resolve_name("web", everything) == a["Id"]
    assert resolve_name(b["Id"], everything) == b["Id"]
    # an exact name wins over a prefix, as in Docker's GetContainer
    assert resolve_name("f4c5", everything) == c["Id"]
    assert resolve_name("f4c5b", everything) == b["Id"]
    assert resolve_name("f4c5a", everything) == a["Id"]
    assert resolve_name("beef", everything) == c["Id"]
    # ambiguous, unknown, too short, not hex: nothing
    assert resolve_name("f4c5", [a, b]) == ""
    assert resolve_name("dead", everything) == ""
    assert resolve_name("bee", everything) == ""
    assert resolve_name("BEEF", everything) == ""
    # names only: a prefix is left to someone who sees every container
    assert resolve_name("beef", everything, prefixes=False) == ""
    assert resolve_name("web", everything, prefixes=False) == a["Id"]


def test_a_stopped_container_makes_a_prefix_ambiguous() -> None:
    running = _c("f4c5" + "1" * 60)
    stopped = _c("f4c5" + "2" * 60, state="exited")
    assert resolve_name("f4c5", [running]) == running["Id"]
    assert resolve_name("f4c5", [running, stopped]) == ""
    assert resolve_name("f4c51", [running, stopped]) == running["Id"]
