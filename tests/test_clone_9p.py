"""containers/clone over 9P (the `--9p` shim, 9P2000, our own client): refused
unless the mount was started with `--9p-allow-control`; with it, a write on
a fid and a read of the same fid from offset 0, as a Plan 9 client does,
get the new container's ID."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Engine, Mount, start_mount, stop_mount
from ninep_support import Client

from dockerfs_fuse.ninep import codec

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

LISTENING = re.compile(r"listening on tcp!127\.0\.0\.1!(\d+)")
LINE = b"run --network none busybox:latest sleep 1d\n"


def with_9p(engine: Engine, mountpoint: Path, *extra: str) -> tuple[Mount, int]:
    m = start_mount(engine.host, mountpoint, "--view=engine", "--9p", "tcp!127.0.0.1!0", *extra)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = LISTENING.search(m.log_text())
        if found:
            return m, int(found.group(1))
        if m.proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_mount(m)
    raise AssertionError(f"the 9P shim never announced its port:\n{m.log_text()}")


def open_clone(client: Client, fid: int) -> Any:
    walked = client.walk("containers/clone", newfid=fid)
    assert isinstance(walked, codec.Rwalk) and len(walked.qids) == 2, walked
    return client.rpc(codec.Topen(tag=1, fid=fid, mode=codec.ORDWR))


def test_clone_over_9p_only_with_allow_control(engine: Engine, tmp_path: Path) -> None:
    before = {c["Id"] for c in engine.containers(all=True)}
    m, port = with_9p(engine, tmp_path / "ro")
    try:
        with Client.session("127.0.0.1", port) as client:
            assert isinstance(open_clone(client, 10), codec.Rerror)
    finally:
        stop_mount(m)
    assert {c["Id"] for c in engine.containers(all=True)} == before

    m, port = with_9p(engine, tmp_path / "ctl", "--9p-allow-control")
    try:
        with Client.session("127.0.0.1", port) as client:
            assert isinstance(open_clone(client, 10), codec.Ropen)
            wrote = client.rpc(codec.Twrite(tag=2, fid=10, offset=0, data=LINE))
            assert isinstance(wrote, codec.Rwrite) and wrote.count == len(LINE), wrote
            answer = client.read_all(10)
        cid = answer.decode().strip()
        engine.started.append(cid)
        assert answer == cid.encode() + b"\n" and len(cid) == 64
        assert engine.api(f"/containers/{cid}/json")["State"]["Running"] is True
    finally:
        stop_mount(m)
