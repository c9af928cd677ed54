"""Benchmark smoke test: ``benchmarks/bench_flows.py --quick`` runs every flow and prints its ratio lines.

It runs the script as a real process on SQLite (FULL), as one would from the shell. The figures themselves are
not judged (the machine is shared): the script raises if any flow did not end where it must (every EIP
attached or released, every item drained), and each ratio must be a positive number.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_flows.py"
STORE = "SQLite WAL FULL"


@pytest.mark.slow
def test_bench_flows_quick_prints_every_ratio(tmp_path: Path) -> None:
    """Attach (1 and 16 callers), VM stop, host evacuation, drain and the DBOS peer each print a ratio line."""
    out = tmp_path / "flows.json"
    env = {**os.environ, "TMPDIR": str(tmp_path)}  # the script's SQLite files go to a directory pytest removes
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--db", "sqlite-full", "--json", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()

    def ratio(prefix: str) -> float:
        found = [line for line in lines if line.startswith(prefix)]
        assert found, f"no line starting {prefix!r} in:\n{proc.stdout}"
        match = re.search(r": (\d+\.\d+)", found[0])
        assert match, found[0]
        return float(match.group(1))

    assert ratio(f"ratio attach 1 caller(s) {STORE}") > 0
    assert ratio(f"ratio attach 16 caller(s) {STORE}") > 0
    assert ratio(f"ratio VM stop K=300 {STORE}") > 0
    assert ratio(f"ratio drain N=1000 {STORE}") > 0
    evacuation = [line for line in lines if line.startswith(f"ratio host evacuation {STORE}")]
    assert len(evacuation) == 1  # a ratio once Eipflow.host_down exists, "skipped (…)" until then
    if importlib.util.find_spec("dbos") is not None:
        assert ratio(f"ratio attach / DBOS 3-step workflow 1 caller(s) {STORE}") > 0
    else:
        assert any("DBOS Transact is not installed" in line for line in lines)
    figures = json.loads(out.read_text())["results"][STORE]
    counts = figures["stop_counts"]
    assert set(counts) == {"30", "300"}  # eipflow's VM stop counted at K/10 and K
    assert all(c["total"] > 0 and c["commits"] > 0 for c in counts.values())
