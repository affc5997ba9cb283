"""Waiting for a state: the one way a test waits, never a bare sleep.

Two contracts, named for what the check returns:
- `wait_until(check, what)`: until check() returns something truthy; that is returned.
- `wait_until_none(problem)`: until problem() returns None; failing, it says the last
  problem (a difference between two trees, say), which is what one wants to read.

The timeouts are generous on purpose: they end a test that would wait forever,
they do not measure speed on a loaded machine (a test that does says so itself).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal, TypeVar

T = TypeVar("T")

# Between two looks: the first soon (most states come within milliseconds),
# then less often, so that a slow state (a swarm converging, a tree compared
# with the API) does not cost a look (a read, an API call) every few ms.
FIRST_INTERVAL = 0.01
MAX_INTERVAL = 0.25


def _backed_off(interval: float) -> float:
    return min(interval * 1.5, MAX_INTERVAL)


def wait_until(
    check: Callable[[], T | Literal[False] | None],
    what: str,
    timeout: float = 30.0,
    *,
    retry_on: tuple[type[Exception], ...] = (),
) -> T:
    """Poll check() until it returns something truthy; return it. Fail naming
    `what` after `timeout` s. An exception of `retry_on` counts as not yet (a
    file read while what it shows changes); any other ends the wait."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    interval = FIRST_INTERVAL
    while True:
        try:
            value = check()
        except retry_on as exc:
            last = exc
        else:
            if value:
                return value
        if time.monotonic() > deadline:
            also = f" (last: {last!r})" if last is not None else ""
            raise AssertionError(f"waited {timeout:g}s for: {what}{also}")
        time.sleep(interval)
        interval = _backed_off(interval)


def wait_until_none(problem: Callable[[], str | None], timeout: float = 30.0) -> None:
    """Poll problem() until it returns None (nothing left to differ); fail with
    the last problem it described after `timeout` s."""
    deadline = time.monotonic() + timeout
    interval = FIRST_INTERVAL
    while True:
        found = problem()
        if found is None:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout:g}s: {found}")
        time.sleep(interval)
        interval = _backed_off(interval)
