"""Filesystem trees compared: what the engine exports (`docker export`, read
with Python's tarfile) against what a mount shows under a root/ (a
container's, an image's)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from support.private_dockerd import PrivateDockerd

# path -> (kind, permission bits, size, uid, gid, mtime, link target, sha256 of content)
Tree = dict[str, tuple[str, int, int, int, int, int, str, str]]


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "dir"),
        (stat.S_ISREG, "file"),
        (stat.S_ISLNK, "link"),
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISCHR, "char"),
        (stat.S_ISBLK, "block"),
    ):
        if test(mode):
            return name
    return "other"


def tree_of_tar(stream: IO[bytes]) -> Tree:
    """Every member of a tar stream as the mount should show it.

    A hard link is the file it links to; a symlink's size is its target's
    length (lstat's, as the engine's stat says; tar writes 0).
    """
    tree: Tree = {}
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for m in tar:
            path = "/" + m.name.strip("/")
            if path == "/":
                continue
            digest = ""
            if m.isfile():
                f = tar.extractfile(m)
                assert f is not None
                h = hashlib.sha256()
                while chunk := f.read(1 << 20):
                    h.update(chunk)
                digest = h.hexdigest()
            if m.islnk():
                target = tree["/" + m.linkname.strip("/")]
                tree[path] = (target[0], m.mode & 0o7777, *target[2:6], "", target[7])
                continue
            kind = (
                "dir" if m.isdir() else "file" if m.isfile() else "link" if m.issym() else
                "fifo" if m.isfifo() else "char" if m.ischr() else "block" if m.isblk() else "other"
            )  # fmt: skip
            size = len(m.linkname.encode()) if m.issym() else m.size if m.isfile() else 0
            link = m.linkname if m.issym() else ""
            tree[path] = (kind, m.mode & 0o7777, size, m.uid, m.gid, int(m.mtime), link, digest)
    return tree


def docker_env(d: PrivateDockerd | Any) -> dict[str, str]:
    """The docker CLI's environment for an engine (a private dockerd or Podman)."""
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_CONTEXT"}
    return {**env, "DOCKER_HOST": d.host}


def exported(d: PrivateDockerd | Any, cid: str) -> Tree:
    """`docker export` of a container, read as it streams."""
    return _tar_of(d, ["docker", "export", cid])


def docker_copied(d: PrivateDockerd | Any, cid: str, path: str) -> Tree:
    """`docker cp CID:PATH -` of a container (created or running), read as it streams."""
    return _tar_of(d, ["docker", "cp", f"{cid}:{path}", "-"])


def _tar_of(d: PrivateDockerd | Any, argv: list[str]) -> Tree:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=docker_env(d))
    assert proc.stdout is not None
    try:
        return tree_of_tar(proc.stdout)
    finally:
        proc.stdout.close()
        assert proc.wait(120) == 0


# -- what the mount shows ------------------------------------------------------------------


def mounted_tree(root: Path) -> Tree:
    """Every path under root/, from lstat, readlink and reading every regular file."""
    tree: Tree = {}
    pending = [root]
    while pending:
        d = pending.pop()
        with os.scandir(d) as it:
            entries = list(it)
        for e in entries:
            st = e.stat(follow_symlinks=False)
            path = "/" + str(Path(e.path).relative_to(root))
            kind = _kind(st.st_mode)
            link = os.readlink(e.path) if kind == "link" else ""
            digest = ""
            if kind == "file":
                h = hashlib.sha256()
                with open(e.path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                digest = h.hexdigest()
            perms = stat.S_IMODE(st.st_mode)
            tree[path] = (
                kind,
                perms,
                st.st_size,
                st.st_uid,
                st.st_gid,
                int(st.st_mtime),
                link,
                digest,
            )
            if kind == "dir":
                pending.append(Path(e.path))
    return tree


def lands(path: str, target: str) -> str:
    """Where a link leads in the container, as its kernel resolves `..`
    (at "/" it stays there); the links between are not followed."""
    names = [] if target.startswith("/") else path.split("/")[1:-1]
    for part in target.split("/"):
        if part == "..":
            names = names[:-1]
        elif part not in ("", "."):
            names.append(part)
    return "/" + "/".join(names)


def by_landing(tree: Tree) -> Tree:
    """A tree with each link's target (and size) as where it leads."""
    return {
        p: (v[0], v[1], 0, v[3], v[4], v[5], lands(p, v[6]), v[7]) if v[0] == "link" else v
        for p, v in tree.items()
    }


def compare(got: Tree, want: Tree, skip: Callable[[str], bool], mtime_slack: int = 0) -> None:
    """The mount shows what the engine does; a link shows a relative target
    that leads where the engine's does, and lstat's size is its length."""
    for p, v in got.items():
        if v[0] == "link":
            assert not v[6].startswith("/") and v[2] == len(os.fsencode(v[6])), (p, v)
    got = by_landing({p: v for p, v in got.items() if not skip(p)})
    want = by_landing({p: v for p, v in want.items() if not skip(p)})
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))

    def same(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
        return a[:5] == b[:5] and a[6:] == b[6:] and abs(a[5] - b[5]) <= mtime_slack

    wrong = sorted(p for p in set(want) & set(got) if not same(got[p], want[p]))
    assert not (missing or extra or wrong), (
        f"missing {missing[:10]}, extra {extra[:10]}, "
        f"differing {[(p, got[p], want[p]) for p in wrong[:5]]}"
    )
