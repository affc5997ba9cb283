"""What a container's `top`, `stats` and `wait` files say: pure renderers.

Each takes the engine's answer (a decoded JSON object, or an exit code) and
returns the file's bytes, so the formats are unit-tested without an engine.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# `docker top` prints through Go's text/tabwriter with these settings
# (minwidth 20, tabwidth 1, padding 3, padded with spaces).
_TOP_MINWIDTH = 20
_TOP_PADDING = 3


def tabwriter(rows: Sequence[Sequence[str]], minwidth: int, padding: int) -> str:
    """Rows of cells laid out as Go's tabwriter lays out tab-separated lines.

    Every cell but a line's last is padded with spaces to its column's
    width: the widest cell of the column's block (the run of adjacent lines
    that have that column) plus `padding`, at least `minwidth`.
    """
    lines = [list(row) for row in rows]
    out: list[str] = []
    widths: list[int] = []

    def write_lines(first: int, end: int) -> None:
        for line in lines[first:end]:
            text = []
            for j, cell in enumerate(line):
                text.append(cell)
                if j < len(widths):
                    text.append(" " * (widths[j] - len(cell)))
            out.append("".join(text))

    def layout(first: int, end: int) -> int:
        column = len(widths)
        this = first
        while this < end:
            if column >= len(lines[this]) - 1:
                this += 1
                continue
            write_lines(first, this)
            first = this
            width = minwidth
            while this < end and column < len(lines[this]) - 1:
                width = max(width, len(lines[this][column]) + padding)
                this += 1
            widths.append(width)
            layout(first, this)
            widths.pop()
            first = this
        write_lines(first, end)
        return end

    layout(0, len(lines))
    return "".join(line + "\n" for line in out)


def render_top(answer: Mapping[str, Any]) -> bytes:
    """`GET /containers/{id}/top` as `docker top` prints it: titles, then a line per process."""
    titles = [str(t) for t in answer.get("Titles") or []]
    processes = [[str(cell) for cell in p] for p in answer.get("Processes") or []]
    if not titles:
        return b""
    text = tabwriter([titles, *processes], _TOP_MINWIDTH, _TOP_PADDING)
    return text.encode("utf-8", "surrogateescape")


def _number(obj: Any, *keys: str) -> int:
    for key in keys:
        if not isinstance(obj, Mapping):
            return 0
        obj = obj.get(key)
    return int(obj) if isinstance(obj, int | float) and not isinstance(obj, bool) else 0


def _blkio(answer: Mapping[str, Any], op: str) -> int:
    entries = (answer.get("blkio_stats") or {}).get("io_service_bytes_recursive") or []
    return sum(
        _number(e, "value")
        for e in entries
        if isinstance(e, Mapping) and str(e.get("op", "")).lower() == op
    )


def _network(answer: Mapping[str, Any], field: str) -> int:
    networks = answer.get("networks") or {}
    if not isinstance(networks, Mapping):
        return 0
    return sum(_number(n, field) for n in networks.values())


def stats_running(answer: Mapping[str, Any]) -> bool:
    """Docker answers a container that is not running with a zero sample
    (read time 0001-01-01, no pids): that is no sample at all."""
    read = str(answer.get("read") or "")
    return bool(read) and not read.startswith("0001-01-01")


def render_stats(answer: Mapping[str, Any]) -> bytes:
    """One `name value` line per figure: numbers only, units in the names.

    Empty for a container that is not running. A figure the engine leaves
    out (no network, no block I/O accounted) is 0.
    """
    if not stats_running(answer):
        return b""
    figures = [
        ("cpu_usage_ns", _number(answer, "cpu_stats", "cpu_usage", "total_usage")),
        ("memory_usage_bytes", _number(answer, "memory_stats", "usage")),
        ("memory_limit_bytes", _number(answer, "memory_stats", "limit")),
        ("pids", _number(answer, "pids_stats", "current")),
        ("network_rx_bytes", _network(answer, "rx_bytes")),
        ("network_tx_bytes", _network(answer, "tx_bytes")),
        ("block_read_bytes", _blkio(answer, "read")),
        ("block_write_bytes", _blkio(answer, "write")),
    ]
    return "".join(f"{name} {value}\n" for name, value in figures).encode()


def render_wait(status_code: int) -> bytes:
    """The container's exit code and a newline."""
    return f"{status_code}\n".encode()
