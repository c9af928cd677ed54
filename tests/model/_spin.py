"""Run the SPIN model in ``model/``: its configurations, the run itself, and the readable counterexample.

``python -m tests.model._spin [NAME ...]`` runs configurations and prints the figures table that
docs/model.md quotes (states, depth, seconds).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "model"
MODEL = "eipflow.pml"

ACTORS = {"1": "caller", "2": "worker-1", "3": "worker-2", "4": "worker-3", "8": "reconciler", "9": "platform"}


@dataclass(frozen=True)
class Config:
    """One model configuration.

    Attributes:
        name: the configuration's name (also the pytest id).
        defines: preprocessor definitions passed to ``spin -a``.
        what: one line for the docs: what this size covers.
        violation: ``None`` when the search must find no error; else a piece of the failed assertion's
            text the counterexample must end in.
        slow: runs longer than the default budget (marked ``slow``; CI runs it too).
        liveness: search for non-progress cycles (``-DNP``, ``pan -l``) instead of safety: with no
            progress labels every cycle counts, so none found means every run terminates (where P1 holds).
    """

    name: str
    defines: tuple[str, ...]
    what: str
    violation: str | None = None
    slow: bool = False
    liveness: bool = False

    def flags(self) -> list[str]:
        return [f"-D{d}" for d in self.defines]


#: the generation rule, the tombstone, the binding ordering: each bug variant must fail on one of these
GENERATION_ORDER = "qg>=hi[qh]"
REVOKED_GENERATION = "hirev[qh]"
NO_STRAY = "(st==3)||"
LATEST_FACT = "vm==applied"

CONFIGS: tuple[Config, ...] = (
    Config("fenced", ("WORKERS=2", "INTENTS=1", "FAULTS=1", "TMAX=1"),
           "caller + 2 workers, 1 intent, 1 failed/unknown call, 1 lease expiry"),
    Config("fenced_intents", ("WORKERS=1", "INTENTS=2", "FAULTS=1", "TMAX=1"),
           "caller + 1 worker, 2 intents (VM stop/start/migrate, detach), 1 fault, 1 lease expiry"),
    Config("fenced_faults", ("WORKERS=1", "INTENTS=1", "FAULTS=2", "TMAX=1"),
           "caller + 1 worker, 1 intent, 2 failed/unknown calls, 1 lease expiry"),
    Config("fenced_reattach", ("WORKERS=1", "INTENTS=2", "FAULTS=0", "TMAX=1", "REATTACH=1", "DELETES=1"),
           "caller + 1 worker, 2 intents incl. delete and a second attach (another NIC)"),
    Config("fenced_reconcile", ("WORKERS=2", "INTENTS=0", "FAULTS=1", "TMAX=1", "RECONCILE=1"),
           "caller + 2 workers, a leaked rule on the VM's host, one reconciler pass racing the attach"),
    Config("fenced_terminates", ("WORKERS=2", "INTENTS=1", "FAULTS=1", "TMAX=1"),
           "as `fenced`, searched for cycles: every run ends (in quiescence, where P1 holds)", liveness=True),
    Config("fenced_wide", ("WORKERS=2", "INTENTS=2", "FAULTS=1", "TMAX=1"),
           "caller + 2 workers, 2 intents, 1 fault, 1 lease expiry", slow=True),
    Config("bug_no_generation", ("BUG_NO_GENERATION", "WORKERS=1", "INTENTS=1", "FAULTS=1", "TMAX=1"),
           "hosts ignore generations", violation=NO_STRAY),
    Config("bug_unfenced_cleanup", ("BUG_UNFENCED_CLEANUP", "WORKERS=1", "INTENTS=0", "FAULTS=1", "TMAX=1",
                                    "RECONCILE=1"),
           "cleanup revokes carry no generation", violation=REVOKED_GENERATION),
    Config("bug_binding_after_apply", ("BUG_BINDING_AFTER_APPLY", "WORKERS=1", "INTENTS=1", "FAULTS=0", "TMAX=0"),
           "the binding is written after the apply (before ZSTAC-83309)", violation=LATEST_FACT),
)
BY_NAME = {c.name: c for c in CONFIGS}


@dataclass(frozen=True)
class Result:
    """What one run found."""

    config: Config
    errors: int
    states: int
    depth: int
    seconds: float
    output: str
    trail: tuple[str, ...] = ()
    failed_assertion: str = ""

    def figures(self) -> str:
        return f"{self.states:,} states, depth {self.depth}, {self.seconds:.1f} s"


def missing_tools() -> str | None:
    """Why the model cannot run here, or ``None``."""
    for tool, how in (("spin", "apt-get install spin"), ("gcc", "apt-get install gcc")):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed ({how})"
    return None


def _number(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    return int(found.group(1)) if found else -1


def readable(replay: str) -> tuple[tuple[str, ...], str]:
    """The ``MSG:`` lines of a ``spin -T -t`` replay with actor names, and the failed assertion's text."""
    lines: list[str] = []
    for raw in replay.splitlines():
        line = raw.strip()
        if line.startswith("spin: text of failed assertion:"):
            return tuple(lines), line.split(":", 2)[2].strip()
        if not line.startswith("MSG:"):
            continue
        line = line[4:].strip()
        if "spin:" in line:  # the assertion fired mid-line
            line = line[: line.index("spin:")]
        line = re.sub(r"^(\d) ", lambda m: ACTORS.get(m.group(1), m.group(1)) + " ", line)
        line = re.sub(r"^(\d): ", lambda m: ACTORS.get(m.group(1), m.group(1)) + ": ", line)
        line = re.sub(r"runs (\d)'s", lambda m: f"runs {ACTORS.get(m.group(1), m.group(1))}'s", line)
        lines.append(line)
    return tuple(lines), ""


def run(config: Config, workdir: Path, *, model_dir: Path = MODEL_DIR, timeout: float = 600.0) -> Result:
    """Build and run ``pan`` for one configuration in ``workdir``; replay the trail if it found an error."""
    workdir.mkdir(parents=True, exist_ok=True)
    for pml in model_dir.glob("*.pml"):
        shutil.copy(pml, workdir / pml.name)
    flags = config.flags()
    subprocess.run(["spin", "-a", *flags, MODEL], cwd=workdir, check=True, capture_output=True, text=True)
    # -O0: pan.c for this model takes minutes to optimise and the search gains less than that.
    mode, search = (["-DNP"], ["-l"]) if config.liveness else (["-DSAFETY"], [])
    subprocess.run(["gcc", "-O0", *mode, "-DCOLLAPSE", "-DMEMLIM=1024", "-o", "pan", "pan.c"],
                   cwd=workdir, check=True, capture_output=True, text=True)
    started = time.perf_counter()
    pan = subprocess.run(["./pan", *search, "-m1000000"], cwd=workdir, capture_output=True, text=True,
                         timeout=timeout)
    seconds = time.perf_counter() - started
    out = pan.stdout
    errors = _number(r"errors: (\d+)", out)
    states = _number(r"(\d+) states, stored", out)
    depth = _number(r"depth reached (\d+)", out)
    if "reached -DMEMLIM bound" in out or errors < 0:
        raise RuntimeError(f"{config.name}: the search did not complete:\n{out[-2000:]}")
    trail: tuple[str, ...] = ()
    failed = ""
    if errors:
        replay = subprocess.run(["spin", "-T", "-t", *flags, MODEL], cwd=workdir, capture_output=True, text=True)
        trail, failed = readable(replay.stdout + replay.stderr)
    return Result(config, errors, states, depth, seconds, out, trail, failed)


def main(argv: list[str]) -> int:
    reason = missing_tools()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    import tempfile

    chosen = [BY_NAME[n] for n in argv] if argv else list(CONFIGS)
    print("| configuration | covers | expected | states | depth | seconds |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for config in chosen:
            result = run(config, Path(tmp) / config.name)
            expected = "counterexample" if config.violation else "no error"
            got = f"{result.errors} error(s)"
            print(f"| `{config.name}` | {config.what} | {expected} ({got}) | {result.states:,} | {result.depth} "
                  f"| {result.seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
