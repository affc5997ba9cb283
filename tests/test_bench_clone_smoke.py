"""A tiny run of bench/bench_clone.py, so the clone benchmark cannot rot
between `make bench` runs: the real script end to end, checked for the shape
of its figures rather than for speed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require, require_fuse

pytestmark = [pytest.mark.docker, pytest.mark.fuse]

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench_clone.py"
BENCH_BOUND = 180  # seconds; about 10 s on an idle machine


def test_bench_clone_writes_its_figures(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "the benchmark needs root (private dockerd)")
    require_fuse()
    for tool in ("dockerd", "docker", "busybox", "bash"):
        require(shutil.which(tool) is not None, f"{tool} missing")
    out = tmp_path / "results"
    res = subprocess.run(
        [sys.executable, str(BENCH), "--runs", "2", "--warmup", "0", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=BENCH_BOUND,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    figures = json.loads((out / "clone.json").read_text())["figures"]
    assert sorted(figures) == ["docker_run", "echo", "read_id"]
    assert all(len(times) == 2 and all(t > 0 for t in times) for times in figures.values())
    assert "vs docker run -d" in (out / "clone.md").read_text()
