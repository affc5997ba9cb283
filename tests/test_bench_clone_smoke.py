"""A tiny run of bench/bench_clone.py, so the clone benchmark cannot rot
between `make bench` runs: the real script end to end, checked for the shape
of its figures rather than for speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_bench

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

BENCH_BOUND = 180  # seconds; about 10 s on an idle machine


def test_bench_clone_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "results"
    tools = ("dockerd", "docker", "busybox", "bash")
    run_bench("bench_clone.py", ["--runs", "2", "--warmup", "0"], out, tools, BENCH_BOUND)
    figures = json.loads((out / "clone.json").read_text())["figures"]
    assert sorted(figures) == ["docker_run", "echo", "read_id"]
    assert all(len(times) == 2 and all(t > 0 for t in times) for times in figures.values())
    assert "vs docker run -d" in (out / "clone.md").read_text()
