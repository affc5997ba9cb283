"""images/clone on a real mount: `pull REF` from a registry on loopback (its
progress read back on the same descriptor, then the image's ID) and `tag SRC
DST`, each image shown in images/ at once; a pull or tag of what does not
exist is ENOENT with the engine's reason. Never the internet: the registry is
Debian's docker-registry, started here (support/private_registry.py)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
from conftest import Engine, Mount, require
from support.private_dockerd import IMAGE, DockerdError
from support.private_registry import PrivateRegistry

pytestmark = [pytest.mark.docker, pytest.mark.fuse]


@pytest.fixture(scope="module")
def registry() -> Iterator[PrivateRegistry]:
    require(shutil.which("docker-registry") is not None, "docker-registry missing (Debian)")
    r = PrivateRegistry()
    try:
        r.start()
    except DockerdError as exc:
        r.cleanup()
        pytest.fail(f"private registry: {exc}", pytrace=False)
    try:
        yield r
    finally:
        r.cleanup()


def escaped(tag: str) -> str:
    return tag.replace("%", "%25").replace("/", "%2F")


def write_and_read_all(m: Mount, line: str) -> tuple[str, int]:
    """Write LINE on a read-write descriptor, then read it to the end: (text, errno)."""
    fd = os.open(m.path / "images" / "clone", os.O_RDWR)
    code = 0
    try:
        try:
            os.write(fd, line.encode() + b"\n")
        except OSError as exc:
            code = exc.errno or 0
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
        return b"".join(chunks).decode(), code
    finally:
        os.close(fd)


def image_id(engine: Engine, ref: str) -> str:
    return str(engine.api(f"/images/{ref}/json")["Id"]).removeprefix("sha256:")


def test_pull_from_a_registry(engine: Engine, view: Mount, registry: PrivateRegistry) -> None:
    ref = f"{registry.address}/dfs/bb{uuid.uuid4().hex[:6]}:1"
    engine.docker("tag", IMAGE, ref)
    engine.docker("push", ref)
    engine.docker("rmi", ref)
    os.listdir(view.path / "images")  # listed once before: the pull must show it anyway
    try:
        text, code = write_and_read_all(view, f"pull {ref}")
        assert code == 0, text
        lines = text.splitlines()
        assert any("Pulling from dfs/" in line for line in lines), lines
        assert any(f"Downloaded newer image for {ref}" in line for line in lines), lines
        pulled = image_id(engine, ref)
        assert lines[-1] == pulled
        # Shown at once: the tag is a link to the image's directory.
        assert os.readlink(view.path / "images" / escaped(ref)) == pulled
        tags = {p.read_text() for p in (view.path / "images" / pulled / "RepoTags").iterdir()}
        assert ref + "\n" in tags
        # Again, read line by line by bash, whose `read` reads ahead and seeks back.
        script = 'exec 3<>clone; echo "pull $1" >&3; while IFS= read -r l <&3; do echo "[$l]"; done'
        done = subprocess.run(
            ["bash", "-c", script, "bash", ref],
            cwd=view.path / "images",
            capture_output=True,
            timeout=120,
            check=True,
        )
        again = done.stdout.decode().splitlines()
        assert again[-1] == f"[{pulled}]", again
        assert any(f"Image is up to date for {ref}" in line for line in again), again
        assert len(again) == len(set(again))  # nothing read twice
    finally:
        engine.docker("rmi", ref, check=False)


def test_a_pull_of_nothing_is_enoent(
    engine: Engine, view: Mount, registry: PrivateRegistry
) -> None:
    before = engine.api("/images/json")
    text, code = write_and_read_all(view, f"pull {registry.address}/dfs/none:1")
    assert code == errno.ENOENT
    assert "not found" in text or "manifest unknown" in text, text
    assert engine.api("/images/json") == before


def test_tag(engine: Engine, view: Mount, registry: PrivateRegistry) -> None:
    dst = f"{registry.address}/dfs/tagged{uuid.uuid4().hex[:6]}:2"
    try:
        text, code = write_and_read_all(view, f"tag {IMAGE} {dst}")
        assert code == 0, text
        assert text == image_id(engine, IMAGE) + "\n"
        assert dst in engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}").split()
        assert os.readlink(view.path / "images" / escaped(dst)) == image_id(engine, IMAGE)
        # Pushed with the docker CLI, to show the tag is a real one.
        engine.docker("push", dst)
    finally:
        engine.docker("rmi", dst, check=False)
    text, code = write_and_read_all(view, "tag no-such-image:1 x:1")
    assert code == errno.ENOENT and "No such image" in text
