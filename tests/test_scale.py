"""Many containers removed at once while listings are in flight, on the real
engine and a real `-a` mount: the event race guard at the largest size a test
run affords (tests/test_scale_unit.py plays 10,000 with the fake engine)."""

from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Any

from conftest import Engine, Mount
from support.private_dockerd import IMAGE
from support.waiting import wait_until

# Containers made (no process) and removed together: a few seconds each way.
MANY = 300
THREADS = 16


def test_removals_during_listings_leave_no_container_behind(
    engine: Engine, mount_factory: Any
) -> None:
    m: Mount = mount_factory(engine.host, "-a")
    spec = {
        "Image": IMAGE,
        "Cmd": ["true"],
        "HostConfig": {"NetworkMode": "none"},
        "Labels": {"dockerfs.test": "churn"},
    }

    def create(_: int) -> str:
        return str(engine.send("POST", "/containers/create", spec)["Id"])

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        ids = list(pool.map(create, range(MANY)))
    try:
        wait_until(lambda: set(ids) <= set(os.listdir(m.path)), "every container listed")
        # The kernel holds a tenth of them (and a file in each), as a shell would.
        for cid in ids[::10]:
            (m.path / cid / "State").read_bytes()
        stop = threading.Event()
        listings = 0

        def list_meanwhile() -> None:
            nonlocal listings
            while not stop.is_set():
                os.listdir(m.path)  # each asks Docker: a listing in flight as events come
                listings += 1

        readers = [threading.Thread(target=list_meanwhile) for _ in range(2)]
        for t in readers:
            t.start()
        try:
            with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
                list(pool.map(lambda cid: engine.send("DELETE", f"/containers/{cid}"), ids))
        finally:
            stop.set()
            for t in readers:
                t.join()
        assert listings > 0
        # No listing from here on: only the events (and the re-reads the guard
        # makes for listings that landed after them) may take them away.
        wait_until(
            lambda: not [cid for cid in ids if os.path.lexists(m.path / cid)],
            "every removed container gone without another listing",
        )
        assert not set(ids) & set(os.listdir(m.path))
    finally:
        left = {c["Id"] for c in engine.containers(all=True)} & set(ids)
        for cid in left:
            engine.send("DELETE", f"/containers/{cid}?force=1")
