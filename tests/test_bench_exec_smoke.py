"""A tiny run of bench/bench_exec.py, so the exec benchmark cannot rot
between `make bench` runs: the real script end to end, checked for the shape
of its figures rather than for speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_bench

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

BENCH_BOUND = 180  # seconds; about 15 s on an idle machine
FIGURES = [
    "api_true",
    "cat_data",
    "daemon_cpu_cat",
    "docker_exec_cat",
    "docker_exec_true",
    "session_true",
]


def test_bench_exec_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "results"
    tools = ("dockerd", "docker", "busybox", "bash")
    run_bench("bench_exec.py", ["--runs", "2", "--mb", "2"], out, tools, BENCH_BOUND)
    figures = json.loads((out / "exec.json").read_text())["figures"]
    assert sorted(figures) == FIGURES
    for name, values in figures.items():
        assert len(values) == 2, (name, values)
        # CPU time comes in clock ticks: a 2 MB copy may take none.
        assert all(v > 0 or (v == 0 and name == "daemon_cpu_cat") for v in values), (name, values)
    assert "vs `docker exec C true`" in (out / "exec.md").read_text()
