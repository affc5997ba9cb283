"""Inode numbering rules the kernel depends on, without a kernel."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

from dockerfs_fuse.engine.engines import Engines
from dockerfs_fuse.fuse.exec import ExecView
from dockerfs_fuse.fuse.handles import HandleTable
from dockerfs_fuse.fuse.invalidate import Invalidator
from dockerfs_fuse.model.inodes import ROOT_INODE, InodeTable, Kind, Node
from dockerfs_fuse.model.names import NameIndex

RECORDED: list[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "data" / "containers-all.json").read_text()
)


def walk(table: InodeTable, *names: str) -> Node:
    node = table.root
    for name in names:
        found = table.lookup(node, name)
        assert found is not None, names
        node = found
    return node


def test_root_lists_containers_in_api_order() -> None:
    t = InodeTable()
    t.set_containers(RECORDED)
    assert list(t.children(t.root)) == [c["Id"] for c in RECORDED]
    assert t.root.nlink == 2 + len(RECORDED)


def test_container_directories_are_built_only_when_entered() -> None:
    t = InodeTable()
    t.set_containers(RECORDED)
    assert len(t) == 1 + len(RECORDED)
    cid = RECORDED[0]["Id"]
    assert walk(t, cid, "Image").data.endswith(b"\n")
    assert len(t) > 1 + len(RECORDED)
    # Names, Labels, Ports, Mounts, Networks and root
    assert walk(t, cid).nlink == 2 + 6


def test_inodes_are_stable_across_refreshes_and_status_changes() -> None:
    t = InodeTable()
    t.set_containers(RECORDED)
    cid = RECORDED[0]["Id"]
    before = {n: walk(t, cid, n).inode for n in ("ID", "Status", "Names")}
    changed = copy.deepcopy(RECORDED)
    changed[0]["Status"] = "Up 3 hours"
    changed.reverse()
    t.set_containers(changed)
    assert {n: walk(t, cid, n).inode for n in before} == before
    assert walk(t, cid, "Status").data == b"Up 3 hours\n"


def test_size_change_of_a_looked_up_file_is_reported_for_invalidation() -> None:
    t = InodeTable()
    t.set_containers(RECORDED)
    cid = RECORDED[0]["Id"]
    status = walk(t, cid, "Status")
    t.remember(status)
    changed = copy.deepcopy(RECORDED)
    changed[0]["Status"] = "Up 3 hours and then some"
    changes = t.set_containers(changed)
    assert changes.changed == [status.inode]


def test_same_length_change_of_a_looked_up_file_is_reported_too() -> None:
    t = InodeTable()
    recorded = copy.deepcopy(RECORDED)
    recorded[0]["Status"] = "Up 5 minutes"
    t.set_containers(recorded)
    cid = recorded[0]["Id"]
    status, image = walk(t, cid, "Status"), walk(t, cid, "Image")
    t.remember(status)
    t.remember(image)
    changed = copy.deepcopy(recorded)
    changed[0]["Status"] = "Up 6 minutes"  # same length, other bytes
    changes = t.set_containers(changed)
    assert changes.changed == [status.inode]  # and not Image, which did not change
    assert status.data == b"Up 6 minutes\n"
    # Not looked up by the kernel: nothing to invalidate.
    other = recorded[1]["Id"]
    walk(t, other, "Status")
    again = copy.deepcopy(changed)
    again[1]["Status"] = again[1]["Status"] + "!"
    assert t.set_containers(again).changed == []
    assert t.set_containers(again).changed == []  # no change, no report


def test_vanished_container_is_kept_until_the_kernel_forgets_it() -> None:
    t = InodeTable()
    t.set_containers(RECORDED)
    gone_id = RECORDED[1]["Id"]
    gone = walk(t, gone_id)
    image = walk(t, gone_id, "Image")
    t.remember(gone)
    t.remember(gone)
    changes = t.set_containers(RECORDED[:1] + RECORDED[2:])
    assert changes.removed == [(ROOT_INODE, gone_id, gone.inode)]
    assert gone_id not in t.children(t.root)
    assert gone.inode in t and t.get(gone.inode).gone
    assert image.inode not in t  # never looked up by the kernel: dropped at once
    t.forget(gone.inode, 1)
    assert gone.inode in t
    t.forget(gone.inode, 1)
    assert gone.inode not in t


def test_forget_keeps_what_the_kernel_still_looks_up() -> None:
    t = InodeTable()
    t.set_containers(RECORDED)
    cid = RECORDED[0]["Id"]
    image, labels = walk(t, cid, "Image"), walk(t, cid, "Labels")
    for _ in range(3):
        t.remember(image)
    t.remember(labels)
    # Live nodes stay whatever the count: the tree still holds them.
    t.forget(image.inode, 2)
    assert image.lookups == 1 and t.get(image.inode) is image
    t.forget(labels.inode, 1)
    assert labels.lookups == 0 and t.get(labels.inode) is labels
    assert walk(t, cid, "Labels").inode == labels.inode
    # Gone, with one lookup left: kept, and readable through the kernel's reference.
    t.set_containers(RECORDED[1:])
    assert t.get(image.inode).gone and t.get(image.inode).data == b"busybox:latest\n"
    assert labels.inode not in t  # gone with no lookup: dropped at once
    t.forget(image.inode, 0)
    assert image.inode in t
    t.forget(image.inode, 5)  # more than it holds: the count stops at zero
    assert image.lookups == 0 and image.inode not in t
    t.forget(image.inode, 1)  # and forgetting it again is harmless
    t.forget(ROOT_INODE, 1)  # as is forgetting the root, which always stays
    assert t.get(ROOT_INODE) is t.root


def test_forget_of_a_batch_counts_each_entry() -> None:
    t = InodeTable()
    t.set_containers(RECORDED)
    gone_id = RECORDED[0]["Id"]
    gone = walk(t, gone_id)
    for _ in range(4):
        t.remember(gone)
    t.set_containers(RECORDED[1:])
    t.forget(gone.inode, 3)  # FORGET carries counts above one (a batch of lookups)
    assert gone.inode in t and gone.lookups == 1
    t.forget(gone.inode, 1)
    assert gone.inode not in t


def numbers_below(t: InodeTable, node: Node, path: str = "") -> dict[str, int]:
    """Every node below a directory, built as the kernel would reach it, by path."""
    found: dict[str, int] = {}
    for name, child in t.children(node).items():
        found[path + name] = child.inode
        if child.is_dir:
            found.update(numbers_below(t, child, f"{path}{name}/"))
    return found


def hold_all_below(t: InodeTable, node: Node) -> list[Node]:
    held = []
    for child in t.children(node).values():
        t.remember(child)
        held.append(child)
        if child.is_dir:
            held += hold_all_below(t, child)
    return held


def test_a_container_the_kernel_forgot_is_let_go_and_rebuilt_with_its_numbers() -> None:
    t = InodeTable()
    t.set_containers(RECORDED)
    listed = len(t)
    container = walk(t, RECORDED[0]["Id"])
    t.remember(container)  # the kernel keeps the directory itself: it does not matter
    held = hold_all_below(t, container)
    before = numbers_below(t, container)
    assert len(t) == listed + len(before) and len(before) > 20
    image = walk(t, RECORDED[0]["Id"], "Image")
    t.remember(image)  # twice
    for node in held:
        t.forget(node.inode, 1)
    assert t.folded() == 0 and len(t) == listed + len(before)  # Image is still held
    assert t.holding() == 1
    t.forget(image.inode, 1)
    assert t.folded() == 1 and len(t) == listed  # only numbers are kept
    assert t.holding() == 0  # the end of a forgotten walk: memory goes back then
    assert all(node.inode not in t for node in held)
    assert numbers_below(t, container) == before  # a lookup builds it again, same numbers
    assert t.folded() == 0 and len(t) == listed + len(before)


def test_a_container_whose_exec_has_a_session_is_not_let_go() -> None:
    t = InodeTable()
    t.set_containers(RECORDED)
    cid = RECORDED[0]["Id"]
    before = numbers_below(t, walk(t, cid))
    exec_dir = walk(t, cid, ".live", "exec")
    clone = t.add_file("clone", exec_dir)  # what the exec view adds when exec/ is looked up
    told: list[tuple[str, list[str]]] = []
    t.fold_listeners.append(lambda node: told.append((node.name, list(node.children or {}))))
    t.remember(clone)
    t.forget(clone.inode, 1)
    # Only the view's clone: let go, with it (the view is told, and adds it again).
    assert t.folded() == 1 and clone.inode not in t
    assert told[0][0] == RECORDED[0]["Id"] and ("exec", ["clone"]) in told
    assert numbers_below(t, walk(t, cid)) == before
    session = t.add_dir("0", parent=walk(t, cid, ".live", "exec"))
    t.remember(session)
    t.forget(session.inode, 1)
    assert t.folded() == 0 and session.inode in t  # a session's directory: kept


def test_a_container_that_changed_while_folded_keeps_the_numbers_of_its_paths() -> None:
    t = InodeTable()
    t.set_containers(RECORDED)
    cid = RECORDED[0]["Id"]
    held = hold_all_below(t, walk(t, cid))
    before = numbers_below(t, walk(t, cid))
    for node in held:
        t.forget(node.inode, 1)
    assert t.folded() == 1
    changed = copy.deepcopy(RECORDED)
    changed[0]["Names"] = ["/renamed", "/second"]
    changed[0]["Labels"] = {"new.label": "1", **changed[0]["Labels"]}
    t.set_containers(changed)
    after = numbers_below(t, walk(t, cid))
    assert walk(t, cid, "Names", "0").data == b"/renamed\n"
    assert {p: after[p] for p in before} == before
    new = set(after) - set(before)
    assert new == {"Names/1", "Labels/new.label"}
    assert all(after[p] not in before.values() and after[p] > max(before.values()) for p in new)
    # Folded and rebuilt again: the numbers are now those recorded, not the first build's.
    for node in hold_all_below(t, walk(t, cid)):
        t.forget(node.inode, 1)
    assert t.folded() == 1 and numbers_below(t, walk(t, cid)) == after


def test_inode_numbers_are_never_reused() -> None:
    t = InodeTable()
    seen: set[int] = set()
    for round_ in range(5):
        batch = copy.deepcopy(RECORDED)
        for c in batch:
            c["Id"] = f"{round_:02x}" + c["Id"][2:]
        t.set_containers(batch)
        for name in t.children(t.root):
            node = walk(t, name, "Names")
            assert node.inode not in seen
            seen.add(node.inode)
    assert len(t) < 200  # and the table does not grow without bound


def test_dot_and_dotdot_resolve_to_self_and_parent() -> None:
    t = InodeTable()
    c = dict(RECORDED[0])
    t.set_containers([c])
    assert walk(t, c["Id"], "Labels").kind is Kind.DIR
    assert t.lookup(t.root, ".") is t.root
    assert t.lookup(walk(t, c["Id"]), "..") is t.root


def test_names_and_prefixes_resolve_to_links_and_ambiguity_to_nothing() -> None:
    t = InodeTable()
    a = dict(RECORDED[0], Id="abcd1" + "0" * 59, Names=["/web"])
    b = dict(RECORDED[0], Id="abcd2" + "0" * 59, Names=["/db", "/alias"])
    t.set_containers([a, b])
    web = t.alias("web")
    assert web is not None and web.kind is Kind.LINK and web.data == a["Id"].encode()
    assert t.alias("alias") is not None and t.alias("alias").data == b["Id"].encode()  # type: ignore[union-attr]
    assert t.alias("abcd") is None  # ambiguous
    assert t.alias("abcd2").data == b["Id"].encode()  # type: ignore[union-attr]
    assert t.alias("abc") is None  # too short
    assert t.alias("/web") is None  # a path component never holds a slash
    assert web.name not in t.children(t.root)  # never listed
    t.remember(web)
    changes = t.set_containers([b])  # names can move: aliases are dropped on change
    assert (ROOT_INODE, "web", web.inode) in changes.removed
    assert t.alias("web") is None


def test_names_follow_renames_removals_and_unlisted_containers() -> None:
    """The name index moves with every change of one container (events), not only listings."""
    t = InodeTable()
    a = dict(RECORDED[0], Id="abcd1" + "0" * 59, Names=["/web"])
    b = dict(RECORDED[0], Id="abcd2" + "0" * 59, Names=["/db"])
    t.set_containers([a])
    t.upsert_container(dict(a, Names=["/site"]))  # renamed
    assert t.alias("web") is None
    assert t.alias("site").data == a["Id"].encode()  # type: ignore[union-attr]
    assert t.alias("abcd").data == a["Id"].encode()  # type: ignore[union-attr]
    t.unlist_container(b)  # reachable, not listed: still a name, and a prefix's rival
    assert t.alias("db").data == b["Id"].encode()  # type: ignore[union-attr]
    assert t.alias("abcd") is None
    t.remove_container(b["Id"])
    assert t.alias("db") is None
    assert t.alias("abcd").data == a["Id"].encode()  # type: ignore[union-attr]
    t.set_containers([])
    assert t.alias("site") is None and t.alias("abcd") is None


def hold_listed_below(t: InodeTable, node: Node) -> list[Node]:
    """What a walk (`find`) makes the kernel hold: the listed entries only."""
    held = []
    for _, child in t.listed(node):
        t.remember(child)
        held.append(child)
        if child.is_dir:
            held += hold_listed_below(t, child)
    return held


def test_a_containers_live_directory_is_made_when_looked_into_with_a_whole_builds_numbers() -> None:
    cid = RECORDED[0]["Id"]
    whole = InodeTable()
    whole.set_containers(RECORDED)
    expected = numbers_below(whole, walk(whole, cid))  # .live/ looked into as well
    t = InodeTable()
    t.set_containers(RECORDED)
    held = hold_listed_below(t, walk(t, cid))
    live = walk(t, cid, ".live")
    assert live.children is None and live.nlink == 2 + 2  # root/ and exec/, made or not
    assert len(t) == 1 + len(RECORDED) + len(held) + 1  # the walk's nodes and .live itself
    for node in held:
        t.forget(node.inode, 1)
    assert t.folded() == 1  # folded with .live/ never made
    changed = copy.deepcopy(RECORDED)
    changed[0]["Status"] = "Exited (0) 1 second ago"
    t.set_containers(changed)  # changed while folded: its numbers recorded, .live/'s too
    assert numbers_below(t, walk(t, cid)) == expected
    again = InodeTable()
    again.set_containers(RECORDED)
    hold_listed_below(again, walk(again, cid))
    assert walk(again, cid, ".live", "exec").inode == expected[".live/exec"]  # made now
    assert numbers_below(again, walk(again, cid)) == expected


def test_an_answer_that_says_the_same_keeps_the_one_kept_and_containers_share_parts() -> None:
    first = RECORDED[0]
    second = {**copy.deepcopy(first), "Id": "f" * 64, "Names": ["/other"]}
    t = InodeTable()
    t.set_containers([first, second])
    a, b = walk(t, first["Id"]), walk(t, "f" * 64)
    assert a.raw == first and b.raw == second
    kept = a.raw
    t.set_containers(copy.deepcopy([first, second]))
    assert a.raw is kept  # the new answer is not kept beside the old
    assert a.raw is not None and b.raw is not None
    for field in ("ImageID", "NetworkSettings", "HostConfig", "Ports"):
        assert a.raw[field] is b.raw[field]
    # Copies: kept, the parse's own objects would keep all of its memory in use.
    assert not any(a.raw[field] is first[field] for field in ("Id", "Names", "Ports", "Image"))
    assert walk(t, first["Id"], "ImageID").data is walk(t, "f" * 64, "ImageID").data
    assert walk(t, first["Id"], "ctl").data is walk(t, "f" * 64, "ctl").data
    t.set_containers([{**first, "Status": "Up 1 second"}, second])
    assert a.raw is not kept and walk(t, first["Id"], "Status").data == b"Up 1 second\n"


def test_the_exec_view_lets_go_of_what_it_kept_for_a_folded_containers_exec() -> None:
    t = InodeTable()
    t.set_containers(RECORDED)
    modes: dict[int, int] = {}
    block_sizes: dict[int, int] = {}
    view = ExecView(
        cast(Engines, SimpleNamespace(table=t)),
        HandleTable(),
        cast(Invalidator, None),
        modes,
        block_sizes,
    )
    exec_dir = walk(t, RECORDED[0]["Id"], ".live", "exec")
    view.prepare(exec_dir)  # the kernel looked exec/ up: its clone is added
    clone = walk(t, RECORDED[0]["Id"], ".live", "exec", "clone")
    t.remember(clone)
    assert clone.inode in block_sizes and clone.inode in modes
    t.forget(clone.inode, 1)
    assert t.folded() == 1
    # Kept, their numbers would keep the memory of a forgotten walk in use.
    assert not modes and not block_sizes and not view.files


def test_an_answer_orjson_cannot_encode_is_kept_as_it_came() -> None:
    odd = {**copy.deepcopy(RECORDED[0]), "Labels": {"lone": "\udcff"}}  # json's, not orjson's
    t = InodeTable()
    t.set_containers([odd])
    node = walk(t, odd["Id"])
    assert node.raw == odd
    assert walk(t, odd["Id"], "Labels", "lone").data == b"\xff\n"
    t.set_containers([copy.deepcopy(odd)])
    assert node.raw == odd


def test_the_name_index_resolves_through_clashes_and_their_end() -> None:
    index = NameIndex()
    a, b = "abcd" + "1" * 60, "abcd" + "2" * 60
    index.put({"Id": a, "Names": ["/web"]})
    index.put({"Id": b, "Names": ["/web"]})  # a clash Docker never makes: the least ID
    assert index.resolve("web") == a and index.resolve("abcd") == ""  # two share the prefix
    assert index.resolve("abcd1") == a and index.resolve("abcd2") == b
    index.drop(a)
    assert index.resolve("web") == b and index.resolve("abcd") == b
    index.put({"Id": b, "Names": ["/db"]})  # renamed
    assert index.resolve("web") == "" and index.resolve("db") == b
    index.drop(b)
    assert index.resolve("db") == "" and index.resolve("abcd") == "" and not len(index)


def test_a_changed_answer_keeps_the_parts_it_did_not_change() -> None:
    t = InodeTable()
    t.set_containers(RECORDED)
    node = walk(t, RECORDED[0]["Id"])
    assert node.raw is not None
    kept = dict(node.raw)
    t.set_containers([{**copy.deepcopy(RECORDED[0]), "Status": "Up 2 hours"}, *RECORDED[1:]])
    assert node.raw["Status"] == "Up 2 hours" and node.raw["Names"] is kept["Names"]
    assert node.raw["NetworkSettings"] is kept["NetworkSettings"]


def test_a_rename_under_root_keeps_the_moved_nodes_numbers() -> None:
    """The kernel moves its dentry on a rename and asks nothing: the node
    must answer under its new name with its old number (a `chmod` of the new
    name right after `mv` reaches that number), its subtree's paths moved."""
    import stat as st

    from dockerfs_fuse.model.files import Entry

    t = InodeTable()
    t.set_containers(RECORDED)
    root = walk(t, RECORDED[0]["Id"], ".live", "root")  # the directory, not the link to it

    def entry(path: str, mode: int) -> Entry:
        return Entry(path, mode, 0, 0, 0, 0)

    tmp, _ = t.set_entry(root, entry("/tmp", st.S_IFDIR | 0o755))
    a, _ = t.set_entry(tmp, entry("/tmp/a", st.S_IFREG | 0o644))
    b, _ = t.set_entry(tmp, entry("/tmp/b", st.S_IFREG | 0o644))
    d, _ = t.set_entry(tmp, entry("/tmp/d", st.S_IFDIR | 0o755))
    f, _ = t.set_entry(d, entry("/tmp/d/f", st.S_IFREG | 0o644))
    for n in (tmp, a, b, d, f):
        t.remember(n)

    changes = t.move_entry(tmp, "a", tmp, "b", "/tmp/b")
    assert t.lookup(tmp, "b") is a and t.lookup(tmp, "a") is None
    assert a.name == "b" and a.entry is not None and a.entry.path == "/tmp/b"
    assert b.gone and (tmp.inode, "b", b.inode) in changes.removed
    assert t.get(a.inode) is a

    t.move_entry(tmp, "d", root, "e", "/e")
    assert t.lookup(root, "e") is d and d.parent is root and t.lookup(tmp, "d") is None
    assert f.entry is not None and f.entry.path == "/e/f" and t.lookup(d, "f") is f
    assert not (d.gone or f.gone)

    # Never looked up: only the replaced name goes.
    assert not t.move_entry(tmp, "nothing", tmp, "x", "/tmp/x")


def test_a_live_entry_keeps_its_number_after_a_change_while_built() -> None:
    """`cat ID/logs` numbers `.live/logs`; forgotten (folded as built), the
    container rebuilt with `.live/` unmade, changed while built (started:
    a new address), forgotten again (folded with a record of its numbers,
    none of `.live/`'s): the next `cat ID/logs` gets the number it had."""
    c = copy.deepcopy(RECORDED[0])
    cid = c["Id"]
    t = InodeTable()
    t.set_containers([c])

    def hold(*names: str) -> list[Node]:
        held, node = [], t.root
        for name in names:
            found = t.lookup(node, name)
            assert found is not None, names
            t.remember(found)
            held.append(found)
            node = found
        return held

    held = hold(cid, "logs") + hold(cid, ".live", "logs")
    first = walk(t, cid, ".live", "logs").inode
    for n in held:
        t.forget(n.inode, 1)
    held = hold(cid, "State")
    started = copy.deepcopy(c)
    started["NetworkSettings"]["Networks"]["bridge"]["IPAddress"] = "172.17.0.2"
    t.set_containers([started])
    for n in held:
        t.forget(n.inode, 1)
    assert t.folded() == 1
    assert walk(t, cid, ".live", "logs").inode == first


def test_live_is_the_last_of_a_containers_entries() -> None:
    """_live_block numbers `.live/`'s entries after it, as the last of a
    build's: an entry added after it would share those numbers."""
    from dockerfs_fuse.model.containers import LIVE, container_spec

    assert all(list(container_spec(c))[-1] == LIVE for c in RECORDED)


def test_a_removed_containers_nodes_are_let_go_once_the_kernel_forgets_them() -> None:
    """Views keep things by number (the exec view's clone): the table says
    when a removed node's number is let go, and not while the kernel holds it."""
    t = InodeTable()
    t.set_containers(RECORDED)
    gone: list[int] = []
    t.gone_listeners.append(gone.append)
    cid = RECORDED[0]["Id"]
    held = [walk(t, cid), walk(t, cid, "State")]
    for n in held:
        t.remember(n)
    below = {n.inode for n in t.children(held[0]).values()}
    t.set_containers(RECORDED[1:])  # docker rm, while the kernel holds two of its nodes
    assert held[0].inode not in gone and held[1].inode not in gone
    assert below - {held[1].inode} <= set(gone)
    for n in held:
        t.forget(n.inode, 1)
    assert {held[0].inode, held[1].inode} <= set(gone)
    assert all(n not in t for n in gone)
