"""Start-up cost of a read command, as whole processes, against the libraries it cannot do without.

``eipflow eip list`` on an up-to-date SQLite database versus ``python -c "import sqlalchemy, sqlite3"``
(the floor: any program that reads eipflow's rows with SQLAlchemy pays it). Rounds alternate the two,
the median of each is reported with their same-run ratio; ``-X importtime`` of one ``eip list`` shows
where the rest goes.

    python benchmarks/bench_startup.py [--runs 15] [--command "eip list"] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = [sys.executable, "-c", "import sqlalchemy, sqlite3"]


def _timed(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _heaviest_imports(argv: list[str], env: dict[str, str], top: int) -> list[tuple[str, float]]:
    """Top-level packages by cumulative import time (ms), from ``python -X importtime``."""
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True,
                          check=True)
    totals: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(2)) == 1:  # top level: one space of indentation
            name = m.group(3).split(".")[0]
            totals[name] = totals.get(name, 0.0) + int(m.group(1)) / 1000
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="processes per variant (alternating)")
    parser.add_argument("--command", default="eip list", help="the eipflow command to time")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="eipflow-bench-startup-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'eipflow.db'}"
        env = {**os.environ, "EIPFLOW_DB": url}
        cli = [sys.executable, "-m", "eipflow", *shlex.split(args.command)]
        # Create the schema once (the first command on a new file migrates it), then time only reads.
        subprocess.run([sys.executable, "-m", "eipflow", "eip", "create", "--vip", "203.0.113.10"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        _timed(cli, env), _timed(FLOOR, env)  # warm the page cache and .pyc files
        floor, ours = [], []
        for _ in range(args.runs):
            floor.append(_timed(FLOOR, env))
            ours.append(_timed(cli, env))
        heavy = _heaviest_imports(cli, env, 8)

    f, o = statistics.median(floor), statistics.median(ours)
    result = {"command": f"eipflow {args.command}", "runs": args.runs, "floor_ms": round(f * 1000, 1),
              "eipflow_ms": round(o * 1000, 1), "ratio": round(o / f, 2),
              "imports_ms": {k: round(v, 1) for k, v in heavy}}
    print(f"python -c 'import sqlalchemy, sqlite3': median {f * 1000:.0f} ms over {args.runs} runs")
    print(f"eipflow {args.command}: median {o * 1000:.0f} ms  ->  {o / f:.2f}x the floor")
    print("heaviest top-level imports of one run (cumulative ms): "
          + ", ".join(f"{k} {v:.0f}" for k, v in heavy))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
