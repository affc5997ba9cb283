"""What each of bench/'s benchmarks does with its figures: print the table,
and keep it with the figures behind it in the results directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def publish(out: Path, stem: str, results: dict[str, Any], table: str) -> int:
    """Print `table`; write OUT/STEM.md and OUT/STEM.json; the exit status."""
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{stem}.md").write_text(table)
    return 0
