"""The shim against 9P clients nobody here wrote:

- diod's `diodls`/`diodcat` (C, libnpclient), 9P2000.L;
- p9fs (fsspec over a Python 3 py9p), in all three dialects;
- pyroute2.plan9's asyncio client, 9P2000.

Missing clients fail under CI (conftest.IN_CI) and skip elsewhere."""

from __future__ import annotations

import asyncio
import grp
import importlib
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import require
from ninep_support import require_tool, running_shim

Shim = tuple[str, int]
OWNER_UID, OWNER_GID = 1234, 5678


def require_module(name: str) -> ModuleType:
    """Import a PyPI test client; missing is a failure under CI, a skip elsewhere."""
    try:
        return importlib.import_module(name)
    except ImportError:
        require(False, f"python module {name} not installed (pip install '.[test]')")
        raise


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("interop")
    (root / "c0ffee" / "logs").mkdir(parents=True)
    (root / "c0ffee" / "Image").write_text("busybox:latest\n")
    (root / "c0ffee" / "inspect.json").write_text('{"Id": "c0ffee"}\n' * 500)
    (root / "c0ffee" / "logs" / "stdout").write_bytes(os.urandom(70000))
    (root / "README").write_text("containers\n")
    if os.geteuid() == 0:  # an owner whose uid and gid differ, so that a swap shows
        os.chown(root / "c0ffee" / "Image", OWNER_UID, OWNER_GID)
    return root


@pytest.fixture(scope="module")
def shim(tree: Path) -> Iterator[Shim]:
    with running_shim(tree) as (_, host, port):
        yield host, port


def all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------ diod


def diod(tool: str, shim: Shim, *args: str) -> subprocess.CompletedProcess[bytes]:
    host, port = shim
    argv = [require_tool(tool), "-s", f"{host}:{port}", "-a", "/", *args]
    return subprocess.run(argv, capture_output=True, timeout=20, check=False)


def test_diodls_lists_directories(shim: Shim, tree: Path) -> None:
    for path in ("/", "c0ffee", "c0ffee/logs"):
        done = diod("diodls", shim, path)
        assert done.returncode == 0, done.stderr
        listed = sorted(done.stdout.decode().split())
        expected = sorted(os.listdir(tree / path.strip("/")) if path != "/" else os.listdir(tree))
        assert listed == expected


def test_diod_tools_work_without_an_attach_name(shim: Shim, tree: Path) -> None:
    """diodls and diodcat attach with "ctl" unless given -a: the whole export here,
    so the README's plain `diodls -s HOST:PORT` lists it."""
    host, port = shim
    done = subprocess.run(
        [require_tool("diodls"), "-s", f"{host}:{port}"], capture_output=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.decode().split()) == sorted(os.listdir(tree))
    done = subprocess.run(
        [require_tool("diodcat"), "-s", f"{host}:{port}", "c0ffee/Image"],
        capture_output=True,
        timeout=20,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == (tree / "c0ffee" / "Image").read_bytes()


def test_diodls_long_shows_stat(shim: Shim, tree: Path) -> None:
    done = diod("diodls", shim, "-l", "c0ffee")
    assert done.returncode == 0, done.stderr
    lines = {line.split()[-1]: line for line in done.stdout.decode().splitlines()}
    assert lines["logs"].startswith("d") and lines["Image"].startswith("-")
    assert " 15 " in lines["Image"]  # size of "busybox:latest\n"
    assert {".", ".."} <= set(lines)
    owner = (tree / "c0ffee" / "Image").stat()
    assert lines["Image"].split()[2:4] == [user_name(owner.st_uid), group_name(owner.st_gid)]


def user_name(uid: int) -> str:
    """As diodls prints an owner: the local name, else the number."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


@pytest.mark.parametrize("msize", ["8192", "65536"])  # 8192: non-root 9mount's cap
def test_diodcat_reads_files(shim: Shim, tree: Path, msize: str) -> None:
    files = all_files(tree)
    done = diod("diodcat", shim, "-m", msize, *files)
    assert done.returncode == 0, done.stderr
    assert done.stdout == b"".join(files.values())


def test_diodcat_missing_file_fails(shim: Shim) -> None:
    done = diod("diodcat", shim, "no/such/file")
    assert done.returncode != 0
    assert b"No such file" in done.stderr or b"no such file" in done.stderr.lower()


# ------------------------------------------------------------------ p9fs


@pytest.mark.parametrize("version", ["9P2000", "9P2000.u", "9P2000.L"])
def test_p9fs_reads_the_tree(shim: Shim, tree: Path, version: str) -> None:
    p9fs = require_module("p9fs")
    fs: Any = p9fs.P9FileSystem(shim[0], shim[1], "root", version=version)
    expected = all_files(tree)
    found = sorted(p.strip("/") for p in fs.find(""))
    assert found == sorted(expected)
    for name, content in expected.items():
        assert fs.cat(name) == content
    assert fs.info("c0ffee/Image")["size"] == len(expected["c0ffee/Image"])
    with pytest.raises(Exception):  # noqa: B017 - py9p raises its own RpcError
        fs.pipe("c0ffee/new", b"x")
    with pytest.raises(Exception):  # noqa: B017
        fs.rm("README")
    assert (tree / "README").exists() and not (tree / "c0ffee" / "new").exists()


# -------------------------------------------------------------- pyroute2


def test_pyroute2_plan9_client(shim: Shim, tree: Path) -> None:
    require_module("pyroute2.plan9.client")
    result = asyncio.run(_pyroute2_session(shim))
    assert result["image"] == (tree / "c0ffee" / "Image").read_bytes()
    assert result["stat"]["name"] == "Image" and result["stat"]["length"] == 15
    assert result["names"] == sorted(os.listdir(tree / "c0ffee"))


async def _pyroute2_session(shim: Shim) -> dict[str, Any]:
    from pyroute2.plan9 import Stat, msg_topen, msg_tstat
    from pyroute2.plan9.client import Plan9ClientSocket

    async def open_fid(p9: Any, path: str) -> int:
        fid: int = await p9.fid(path)
        request = msg_topen()
        request["fid"], request["mode"] = fid, 0
        await p9.request(request)
        return fid

    async with Plan9ClientSocket(address=shim) as p9:
        await p9.start_session()
        image = await open_fid(p9, "c0ffee/Image")
        data = (await p9.read(image))["data"]
        request = msg_tstat()
        request["fid"] = image
        stat = (await p9.request(request))["stat"]
        directory = await open_fid(p9, "c0ffee")
        listing = bytes((await p9.read(directory, count=4096))["data"])
        names, offset = [], 0
        while offset < len(listing):
            entry, offset = Stat.decode_from(listing, offset)
            names.append(entry["name"])
    return {"image": bytes(data), "stat": stat, "names": sorted(names)}
