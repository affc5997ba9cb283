"""A run of bench/bench_objects.py at 20 images and 20 volumes, so the engine
view's listing bench cannot rot between `make bench` runs: the real script
end to end (private dockerd, images made through the API, `--view=engine`
mounts), checked for the shape of what it writes and for one list request
per listing, not for speed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import run_bench

BENCH_BOUND = 300  # seconds, a bound on a hang: 20 s on an idle machine
N = 20
LISTINGS = ("ls_images_cold", "ls_images_warm", "ls_volumes_cold", "ls_volumes_warm")


def test_objects_bench_at_20_writes_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "results"
    args = ["--images", str(N), "--volumes", str(N), "--runs", "1"]
    res = run_bench("bench_objects.py", args, out, ("dockerd", "docker"), BENCH_BOUND)
    assert (out / "objects.md").read_text() in res.stdout
    report: dict[str, Any] = json.loads((out / "objects.json").read_text())
    assert report["images"] == report["volumes"] == N
    for key in (*LISTINGS, "cli_images", "cli_volumes"):
        assert report["figures"][key] and min(report["figures"][key]) > 0, key
    # Each listing asked for its own kind's list once, and for nothing else.
    for key in LISTINGS:
        kind = key.split("_")[1]
        assert report["requests"][key] == [{kind: 1}], (key, report["requests"][key])
    assert len(report["targets"]) == 4
    assert all(isinstance(t["pass"], bool) for t in report["targets"])
