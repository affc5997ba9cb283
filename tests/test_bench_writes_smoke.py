"""A tiny run of bench/bench_writes.py, so the write benchmark cannot rot
between `make bench` runs: the real script end to end (which checks each
side's result inside the container), checked for the shape of its figures
rather than for speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_bench

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

BENCH_BOUND = 240  # seconds; about 20 s on an idle machine
FIGURES = [
    "cp_docker",
    "cp_mount",
    "rss_before_mb",
    "rss_peak_mb",
    "sed_docker",
    "sed_mount",
    "tar_docker",
    "tar_mount",
]


def test_bench_writes_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "results"
    tools = ("dockerd", "docker", "busybox", "tar", "sed", "cp")
    args = ["--runs", "2", "--mb", "2", "--files", "20"]
    run_bench("bench_writes.py", args, out, tools, BENCH_BOUND)
    results = json.loads((out / "writes.json").read_text())
    figures = results["figures"]
    assert sorted(figures) == FIGURES
    for name, values in figures.items():
        assert len(values) == 2, (name, values)
        assert all(v > 0 for v in values), (name, values)
    for kind in ("cp", "tar", "sed"):
        last = results["requests"][kind][-1]["requests"]
        # Every write through the mount reaches the engine by an upload, or
        # (a small file) by a line to the container's shell.
        sent = last.get("containers/archive PUT", 0) + last.get("shell command", 0)
        assert sent >= 1, (kind, last)
    assert "vs `docker cp FILE C:/tmp/`" in (out / "writes.md").read_text()
