"""`events` at the root of `--view=engine`, on a real mount over the private
dockerd: Docker's event stream from the moment of open, one JSON object per
line, read as a pipe (a read blocks, a signal ends it), each open its own
stream, never opened by a walk, and read over the 9P shim."""

from __future__ import annotations

import json
import os
import re
import selectors
import subprocess
import time
import uuid
from typing import Any

import pytest
from conftest import Engine, Mount, interrupt_blocked_reader
from ninep_support import Client
from support.private_dockerd import IMAGE
from support.waiting import wait_until

from dockerfs_fuse.ninep import codec

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

# A bound on waiting for a line Docker sends at once: it ends a test that
# would hang, it does not time anything.
LINE_BOUND = 30.0


def cat_events(m: Mount) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["cat", str(m.path / "events")], stdout=subprocess.PIPE)


def streams_opened(m: Mount) -> int:
    return int(m.stats()["requests"].get("events/stream", 0))


def read_until_event(
    proc: subprocess.Popen[bytes], wanted: dict[str, str], actor: str
) -> list[dict[str, Any]]:
    """Lines from the reader until an event with these fields about `actor`
    (a container's or image's ID or name); all of them, parsed."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen: list[dict[str, Any]] = []
    buffered = b""
    deadline = time.monotonic() + LINE_BOUND
    while time.monotonic() < deadline:
        if not sel.select(timeout=deadline - time.monotonic()):
            break
        chunk = os.read(proc.stdout.fileno(), 65536)
        if not chunk:
            break
        buffered += chunk
        *complete, buffered = buffered.split(b"\n")
        for line in complete:
            event = json.loads(line)  # every line is one JSON object
            seen.append(event)
            attrs = event.get("Actor", {}).get("Attributes", {})
            if all(event.get(k) == v for k, v in wanted.items()) and actor in (
                event.get("Actor", {}).get("ID"),
                attrs.get("name"),
            ):
                return seen
    raise AssertionError(f"no {wanted} event of {actor} in {len(seen)} lines: {seen[-5:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_events_is_a_link_into_the_unlisted_live_directory(view: Mount) -> None:
    assert "events" in os.listdir(view.path)
    assert ".live" not in os.listdir(view.path)
    assert os.readlink(view.path / "events") == ".live/events"
    assert os.listdir(view.path / ".live") == []
    assert (view.path / ".live" / "events").is_file()


def test_an_open_streams_what_happens_after_it(engine: Engine, view: Mount) -> None:
    name = f"ev-{uuid.uuid4().hex[:8]}"
    proc = cat_events(view)
    try:
        # The open returns once Docker has subscribed the stream: what comes
        # next is in it, with no wait here for the stream to "settle".
        wait_until(lambda: streams_opened(view) == 1, "the stream requested")
        wait_until(lambda: view.stats()["logs"]["waiting_reads"] == 1, "cat's read parked")
        cid = engine.run(f"--name={name}", IMAGE, "sleep", "1d")
        seen = read_until_event(proc, {"Type": "container", "Action": "start"}, cid)
        actions = [e["Action"] for e in seen if e.get("Actor", {}).get("ID") == cid]
        assert actions[:2] == ["create", "start"], actions
        # Nothing from before the open: this container did not exist then.
        engine.docker("rm", "-f", cid)
        read_until_event(proc, {"Type": "container", "Action": "destroy"}, cid)
    finally:
        stop(proc)


def test_a_blocked_reader_is_interrupted(view: Mount) -> None:
    proc = cat_events(view)
    try:
        wait_until(lambda: view.stats()["logs"]["waiting_reads"] == 1, "cat's read parked")
        interrupt_blocked_reader(proc)
    finally:
        stop(proc)
    # Its stream ended with it: the spool is freed.
    wait_until(lambda: view.stats()["logs"]["followers"] == 0, "the follower slot given back")


def test_each_open_is_a_stream_of_its_own(engine: Engine, view: Mount) -> None:
    first, second = cat_events(view), cat_events(view)
    try:
        wait_until(lambda: view.stats()["logs"]["waiting_reads"] == 2, "both reads parked")
        assert streams_opened(view) == 2
        engine.docker("volume", "create", name := f"evvol-{uuid.uuid4().hex[:8]}")
        try:
            for proc in (first, second):
                read_until_event(proc, {"Type": "volume", "Action": "create"}, name)
        finally:
            engine.docker("volume", "rm", name)
    finally:
        stop(first)
        stop(second)


def test_a_walk_never_opens_events(view: Mount) -> None:
    before = streams_opened(view)
    walk = subprocess.run(
        ["grep", "-r", "-c", "never-there", str(view.path)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert walk.returncode in (0, 1), walk.stderr
    assert streams_opened(view) == before == 0


LISTENING = re.compile(r"listening on tcp!127\.0\.0\.1!(\d+)")


def test_events_over_the_9p_shim(engine: Engine, mount_factory: Any) -> None:
    m: Mount = mount_factory(engine.host, "--view=engine", "--9p", "tcp!127.0.0.1!0")
    wait_until(lambda: LISTENING.search(m.log_text()) is not None, "the 9P shim's port")
    found = LISTENING.search(m.log_text())
    assert found is not None
    with Client.session("127.0.0.1", int(found.group(1))) as client:
        client.sock.settimeout(LINE_BOUND)
        # 9P2000 has no links: the walk goes through .live, as a user's would.
        assert isinstance(client.walk(".live/events", 10), codec.Rwalk)
        opened = client.rpc(codec.Topen(tag=4, fid=10, mode=codec.OREAD))
        assert isinstance(opened, codec.Ropen), opened
        # The read blocks in the shim until Docker has something to say.
        client.send(codec.Tread(tag=7, fid=10, offset=0, count=8192))
        wait_until(lambda: m.stats()["logs"]["waiting_reads"] == 1, "the shim's read parked")
        name = f"ev9p-{uuid.uuid4().hex[:8]}"
        engine.docker("volume", "create", name)
        try:
            reply = client.recv()
            assert isinstance(reply, codec.Rread), reply
            events = [json.loads(line) for line in reply.data.splitlines()]
            assert any(
                e["Type"] == "volume" and e["Action"] == "create" and e["Actor"]["ID"] == name
                for e in events
            ), events
        finally:
            engine.docker("volume", "rm", name)
        client.rpc(codec.Tclunk(tag=5, fid=10))
    wait_until(lambda: m.stats()["logs"]["followers"] == 0, "the stream closed with the fid")
