"""A run of bench/scale.py at 100 containers, so the scale bench cannot rot
between runs of its 10,000 (which `make test` never makes).

The real script end to end (private dockerd, `docker create` through the
API, `-a` mounts, tmpfs, drop_caches, the plots), checked for the shape of
what it writes rather than for speed.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from conftest import require, require_fuse

SCALE = Path(__file__).resolve().parent.parent / "bench" / "scale.py"
SCALE_BOUND = 300  # seconds, a bound on a hang: 15 s on an idle machine
N = 100
OPS = ("ls_cold", "curl_api", "docker_ps_aq", "find_warm", "tmpfs_find", "grep_warm")
PLOTS = ("ls", "walk", "rss", "rm")


def test_scale_bench_at_100_containers_writes_its_table_figures_and_plots(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "the scale bench needs root (private dockerd, tmpfs, drop_caches)")
    require_fuse()
    for tool in ("dockerd", "docker", "busybox", "curl"):
        require(shutil.which(tool) is not None, f"{tool} missing")
    out = tmp_path / "results"
    # Short: containerd puts unix sockets under the engine's directory.
    keep = Path(tempfile.mkdtemp(prefix="dfs-"))
    argv = [sys.executable, str(SCALE), "--sizes", str(N), "--runs", "1", "--out", str(out)]

    def run() -> dict[str, Any]:
        res = subprocess.run(
            [*argv, "--keep", str(keep)], capture_output=True, text=True, timeout=SCALE_BOUND
        )
        assert res.returncode == 0, res.stderr[-2000:]
        assert "## Scale (issue 24)" in res.stdout
        assert (out / "scale.md").read_text() in res.stdout
        report: dict[str, Any] = json.loads((out / "scale.json").read_text())
        return report

    try:
        first = run()
        second = run()
    finally:
        shutil.rmtree(keep, ignore_errors=True)
    (r,) = first["results"]
    assert r["n"] == N and r["made"] == N
    for op in OPS:
        assert r["ops"][op]["median"] > 0, op
    # Each cold `ls` asked Docker for the list once.
    assert r["ops"]["ls_cold"]["list_requests"] == [1]
    assert r["rss_forgot_mb"] > 0 and 0 < r["rss_walk_mb"] <= r["peak_rss_mb"]
    assert r["files_in_tree"] > N
    assert {t["target"] for t in first["targets"]} and all(
        isinstance(t["pass"], bool) for t in first["targets"]
    )
    with (out / "scale.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(row["n"]) for row in rows] == [N]
    for name in PLOTS:
        assert (out / f"scale-{name}.png").read_bytes().startswith(b"\x89PNG"), name

    # Kept by their label: the second run made none, and had none to remove.
    assert second["results"][0]["made"] == 0
    assert second["results"][0]["removed"] == 0
