"""A volume's helper (engine/volume_data.py), pure: the image it is made from
(the smallest, then the lowest ID; none on an empty engine), its create
request (the volume mounted as it is, no network, nothing to run), and where
data/'s paths are in it; its links kept within data/."""

from __future__ import annotations

import stat
from typing import Any

from dockerfs_fuse.engine.helper_roots import NEVER_RUN
from dockerfs_fuse.engine.image_roots import ImageRoots
from dockerfs_fuse.engine.volume_data import MOUNT_AT, VolumeData, helper_body, helper_image
from dockerfs_fuse.model.files import Entry, contained_target


def test_the_smallest_image_then_the_lowest_id() -> None:
    images: list[dict[str, Any]] = [
        {"Id": "sha256:bb", "Size": 5},
        {"Id": "sha256:cc", "Size": 2},
        {"Id": "sha256:aa", "Size": 2},
        {"Size": 1},  # no ID: names nothing
    ]
    assert helper_image(images) == "sha256:aa"
    assert helper_image(list(reversed(images))) == "sha256:aa"


def test_no_image_names_none() -> None:
    assert helper_image([]) is None
    assert helper_image([{"Size": 1}]) is None


def test_the_volume_is_mounted_as_it_is_and_nothing_runs() -> None:
    body = helper_body("sha256:aa", "pgdata")
    assert body["Image"] == "sha256:aa"
    assert body["Cmd"] == NEVER_RUN
    assert body["NetworkDisabled"] is True
    host = body["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["Mounts"] == [
        {
            "Type": "volume",
            "Source": "pgdata",
            "Target": MOUNT_AT,
            "VolumeOptions": {"NoCopy": True},
        }
    ]


def test_data_paths_are_under_the_mount_point_an_image_roots_are_its_own() -> None:
    data = VolumeData.__new__(VolumeData)
    assert data.path_in_helper("/") == MOUNT_AT
    assert data.path_in_helper("/a/b") == MOUNT_AT + "/a/b"
    assert data.writable
    image = ImageRoots.__new__(ImageRoots)
    assert image.path_in_helper("/a") == "/a"
    assert not image.writable


def test_links_are_kept_within_the_volume_not_only_within_the_helper() -> None:
    data = VolumeData.__new__(VolumeData)

    def shown(path: str, target: bytes) -> bytes:
        link = contained_target(MOUNT_AT + path, target)  # as the helper's snapshot has it
        entry = Entry(path=MOUNT_AT + path, mode=stat.S_IFLNK | 0o777, uid=0, gid=0,
                      size=len(link), mtime=0, link=link)  # fmt: skip
        out = data.shown(entry)
        assert out.size == len(out.link) and out.path == entry.path
        return out.link

    assert shown("/a", b"b/c") == b"b/c"
    assert shown("/sub/x", b"../y") == b"../y"
    assert shown("/a", b"../ctl") == b"ctl"
    assert shown("/sub/x", b"/etc/app.conf") == b"../etc/app.conf"
    assert shown("/sub/x", b"../../../../tmp") == b"../tmp"
    plain = Entry(path=MOUNT_AT + "/f", mode=stat.S_IFREG | 0o644, uid=0, gid=0, size=3, mtime=0)
    assert data.shown(plain) is plain
