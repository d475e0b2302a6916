#!/usr/bin/env python3
"""bench/breakdown.py of this tree against a git revision (the baseline), run alternately in
one session so that both see the same machine: medians over the runs of each stage, in
microseconds per token, and their ratio (this tree / baseline; below 1 is faster).

    python bench/compare_breakdown.py [--baseline main] [--runs 3] [-- breakdown.py options]

The baseline is exported with `git archive` into a temporary directory and run with this tree's
interpreter; a stage it does not have is reported as "-".
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STAGE = re.compile(r"^  (.+?)\s+(\d+\.\d+)$")


def run(tree: Path, options: list[str]) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, str(tree / "bench" / "breakdown.py"), *options],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    ).stdout
    return {m[1]: float(m[2]) for line in out.splitlines() if (m := STAGE.match(line))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="main", help="git revision to compare against")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("options", nargs="*", help="passed to breakdown.py (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch)
        archive = subprocess.run(["git", "archive", args.baseline], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        results: dict[str, list[dict[str, float]]] = {"baseline": [], "this": []}
        for _ in range(args.runs):  # alternate, so that a noisy minute hurts both sides
            results["baseline"].append(run(base, args.options))
            results["this"].append(run(ROOT, args.options))
    stages = list(dict.fromkeys(name for r in results["this"] + results["baseline"] for name in r))
    print(f"medians of {args.runs} alternating runs, microseconds per token; baseline {args.baseline}")
    print(f"  {'stage':48} {'baseline':>9} {'this':>9} {'ratio':>6}")
    for name in stages:
        med = {
            side: statistics.median(values) if (values := [r[name] for r in runs if name in r]) else None
            for side, runs in results.items()
        }
        before, after = med["baseline"], med["this"]
        ratio = f"{after / before:6.2f}" if before and after else "     -"
        cells = [f"{v:9.1f}" if v is not None else f"{'-':>9}" for v in (before, after)]
        print(f"  {name:48} {cells[0]} {cells[1]} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
