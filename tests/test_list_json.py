"""The container list's parser (docker_source.list_json) on answers no engine here sends."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiodocker
import pytest

from dockerfs_fuse.docker.source import list_json


class _Response:
    def __init__(self, body: bytes) -> None:
        self.body = body

    async def read(self) -> bytes:
        return self.body


class _Docker:
    """The one aiodocker call list_json makes."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.asked: list[tuple[str, dict[str, str]]] = []

    @contextlib.asynccontextmanager
    async def _query(
        self, path: str, method: str = "GET", params: dict[str, str] | None = None
    ) -> AsyncIterator[_Response]:
        self.asked.append((path, dict(params or {})))
        yield _Response(self.body)


def listed(body: bytes, params: dict[str, str] | None = None) -> list[Any]:
    d: Any = _Docker(body)
    return asyncio.run(list_json(d, "containers/json", params or {}))


def test_a_list_is_parsed_and_the_params_passed() -> None:
    d: Any = _Docker(b'[{"Id": "ab", "Labels": {"k": "v"}, "Created": 1700000000}]')
    got = asyncio.run(list_json(d, "containers/json", {"all": "1"}))
    assert got == [{"Id": "ab", "Labels": {"k": "v"}, "Created": 1700000000}]
    assert d.asked == [("containers/json", {"all": "1"})]


def test_an_escaped_lone_surrogate_still_lists() -> None:
    # orjson refuses it; json takes it, and the tree escapes it as %uD800.
    got = listed(b'[{"Id": "ab", "Labels": {"a\\ud800b": "x"}}]')
    assert got == [{"Id": "ab", "Labels": {"a\ud800b": "x"}}]


@pytest.mark.parametrize("body", [b'{"message": "not a list"}', b"null", b"[1, 2"])
def test_what_is_not_a_list_is_an_error(body: bytes) -> None:
    with pytest.raises((aiodocker.DockerError, ValueError)):
        listed(body)
