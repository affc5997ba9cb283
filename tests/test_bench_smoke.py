"""A tiny run of bench/bench.py, so the benchmark cannot rot between `make bench` runs.

It is the real script end to end (private dockerd, mounts, tmpfs, report) at
its smallest size, checked for the shape of its JSON rather than for speed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from conftest import require, require_fuse

BENCH = Path(__file__).resolve().parent.parent / "bench" / "bench.py"


def _bench_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


_BENCH = _bench_module()
OPS: tuple[str, ...] = _BENCH.OPS
INSIDE_OPS: tuple[str, ...] = _BENCH.INSIDE_OPS
WARM_WALK_OPS: tuple[str, ...] = _BENCH.WARM_WALK_OPS
BENCH_BOUND = 240  # seconds; 45 s on an idle machine, 60-90 s under load
COUNTED = ("ls_cold", "ls_warm", "ls_8_concurrent", "find_first", "find_warm", "grep_first")


def test_bench_quick_run_writes_complete_figures(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "the benchmark needs root (private dockerd, tmpfs)")
    require_fuse()
    for tool in ("dockerd", "docker", "busybox", "curl"):
        require(shutil.which(tool) is not None, f"{tool} missing")
    out = tmp_path / "results"
    res = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--sizes", "10", "--runs", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        # A bound on a hang, not a timing claim: the bench waits for a settled
        # machine (bench/README.md), which a busy test run can take a while to be.
        timeout=BENCH_BOUND,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "## Targets (issue 5)" in res.stdout
    assert (out / "latest.md").read_text() in res.stdout

    report: dict[str, Any] = json.loads((out / "latest.json").read_text())
    assert report["sizes"] == [10]
    assert report["runs"] == 1
    assert {"nproc", "cpu", "kernel", "seconds_total"} <= report["machine"].keys()
    (r,) = report["results"]
    assert r["n"] == 10
    assert r["peak_rss_kb"] > 0
    assert r["files_in_tree"] > 10
    assert set(r["root_opens"]) == {"ls", "find", "grep"}
    assert set(WARM_WALK_OPS) <= set(OPS)
    for op in OPS:
        fig = r["ops"][op]
        assert len(fig["seconds"]) == (_BENCH.warm_runs(1) if op in WARM_WALK_OPS else 1), op
        assert 0 < fig["min"] <= fig["median"] <= fig["max"], op
    for op in COUNTED:
        # Every root listing asks Docker at least once (none may be served stale).
        assert r["ops"][op]["list_requests"][0] >= 1, op
    assert report["targets"], "no targets evaluated"
    assert all(isinstance(t["pass"], bool) for t in report["targets"])
    # Issue 10: inside one container, at --quick's small size.
    inside = report["inside"]
    assert "## Inside one container (issue 10)" in res.stdout
    assert inside["peak_rss_kb"] > 0 and inside["entries_listed"] > inside["files"]
    for op in INSIDE_OPS:
        fig = inside["ops"][op]
        assert len(fig["seconds"]) == 1 and fig["median"] > 0, op
    assert inside["archive_requests"]["find_root"][0] >= 1  # a walk asks at least once
    assert all(isinstance(t["pass"], bool) for t in inside["targets"])
