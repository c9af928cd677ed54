"""Start-up cost of a read command, as whole processes, against the libraries it cannot do without.

``eipflow eip list`` on an up-to-date SQLite database versus ``python -c "import sqlalchemy, sqlite3"``
(the floor: any program that reads eipflow's rows with SQLAlchemy pays it). Rounds alternate the
variants; the medians of wall time and of CPU time (user + system of the child, much less sensitive to
other load on a shared machine) are reported with their same-run ratios; ``-X importtime`` of one
``eip list`` shows where the rest goes.

    python benchmarks/bench_startup.py [--runs 15] [--command "eip list"] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = [sys.executable, "-c", "import sqlalchemy, sqlite3"]
#: the floor plus sqlmodel (and the ORM and pydantic it brings): what the store's sqlmodel-declared schema costs
WITH_SQLMODEL = [sys.executable, "-c", "import sqlalchemy, sqlite3, sqlmodel"]


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system of the child) of one whole process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _heaviest_imports(argv: list[str], env: dict[str, str], top: int) -> list[tuple[str, float]]:
    """Distributions by the import time of their own modules (ms, self time summed), from ``-X importtime``."""
    proc = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True,
                          check=True)
    totals: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            name = m.group(2).split(".")[0]
            totals[name] = totals.get(name, 0.0) + int(m.group(1)) / 1000
    return sorted(totals.items(), key=lambda kv: -kv[1])[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="processes per variant (alternating)")
    parser.add_argument("--command", default="eip list", help="the eipflow command to time")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the figures here")
    parser.add_argument("--compare", metavar="DIR", default=None,
                        help="also time the same command with PYTHONPATH=DIR (an older eipflow checkout), interleaved")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="eipflow-bench-startup-") as tmp:
        # Run from the temporary directory: ``python -m`` puts the working directory first on sys.path, so a
        # run from a checkout would import that checkout's eipflow whatever PYTHONPATH (--compare) says.
        os.chdir(tmp)
        url = f"sqlite:///{Path(tmp) / 'eipflow.db'}"
        env = {**os.environ, "EIPFLOW_DB": url}
        cli = [sys.executable, "-m", "eipflow", *shlex.split(args.command)]
        # Create the schema once (the first command on a new file migrates it), then time only reads.
        subprocess.run([sys.executable, "-m", "eipflow", "eip", "create", "--vip", "203.0.113.10"], env=env,
                       check=True, stdout=subprocess.DEVNULL)
        old_env = {**env, "PYTHONPATH": args.compare} if args.compare else None
        _timed(cli, env), _timed(FLOOR, env)  # warm the page cache and .pyc files
        if old_env is not None:
            _timed(cli, old_env)
        floor, sqlmodel, ours, old = [], [], [], []
        for _ in range(args.runs):
            floor.append(_timed(FLOOR, env))
            sqlmodel.append(_timed(WITH_SQLMODEL, env))
            ours.append(_timed(cli, env))
            if old_env is not None:
                old.append(_timed(cli, old_env))
        heavy = _heaviest_imports(cli, env, 10)

    result: dict[str, object] = {"command": f"eipflow {args.command}", "runs": args.runs,
                                 "imports_self_ms": {k: round(v, 1) for k, v in heavy}}
    variants = [("floor", "python -c 'import sqlalchemy, sqlite3'", floor),
                ("sqlmodel", "python -c 'import sqlalchemy, sqlite3, sqlmodel'", sqlmodel),
                ("eipflow", f"eipflow {args.command}", ours)]
    if old:
        variants.append(("compare", f"eipflow {args.command} from {args.compare}", old))
    for i, kind in enumerate(("wall", "cpu")):
        base = statistics.median(t[i] for t in floor)
        print(f"{kind} time, medians of {args.runs} runs:")
        for key, label, times in variants:
            m = statistics.median(t[i] for t in times)
            result[f"{key}_{kind}_ms"] = round(m * 1000, 1)
            result[f"{key}_{kind}_ratio"] = round(m / base, 2)
            print(f"  {label}: {m * 1000:.0f} ms  ({m / base:.2f}x the floor)")
    print("import self time by distribution, one run (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in heavy))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
