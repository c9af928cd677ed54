"""The SPIN model of the fenced protocol: generated from the machine, fresh, and checked at every configuration.

Each passing configuration must search its whole (bounded) state space without an error; each bug
variant must end in a counterexample, printed as a readable sequence of steps.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from eipflow.diagrams import InvalidSpec, MachineSpec, current_spec, load_spec
from eipflow.diagrams.renderers.promela import guard_names, main, to_promela
from tests.model._spin import BY_NAME, CONFIGS, MODEL, MODEL_DIR, ROOT, Config, missing_tools, readable, run

SPEC = ROOT / "diagrams" / "spec.json"
MACHINE_PML = MODEL_DIR / "machine.pml"

needs_spin = pytest.mark.skipif(missing_tools() is not None, reason=missing_tools() or "")

pytestmark = pytest.mark.model


def _protocol() -> str:
    return (MODEL_DIR / MODEL).read_text(encoding="utf-8")


# -- the generated transition relation ----------------------------------------------------------------
def test_committed_machine_pml_is_generated_from_the_committed_spec() -> None:
    """model/machine.pml is exactly what the generator writes from diagrams/spec.json."""
    assert MACHINE_PML.read_text(encoding="utf-8") == to_promela(load_spec(SPEC)), (
        "model/machine.pml is stale: python -m eipflow.diagrams.renderers.promela diagrams/spec.json "
        "model/machine.pml"
    )


def test_committed_machine_pml_matches_the_machine_itself() -> None:
    """Regenerated from eipflow.machine right now (not only from the exported JSON), nothing changes."""
    assert to_promela(current_spec()) == MACHINE_PML.read_text(encoding="utf-8"), (
        "the machine changed: eipflow diagram, then regenerate model/machine.pml"
    )


def test_generator_check_mode_reports_a_stale_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--check`` exits 1 naming the stale file; writing makes it fresh and a second check exits 0."""
    out = tmp_path / "machine.pml"
    out.write_text("/* old */\n", encoding="utf-8")
    assert main(["--check", str(SPEC), str(out)]) == 1
    assert f"{out} is stale" in capsys.readouterr().err
    assert main([str(SPEC), str(out)]) == 0
    assert out.read_text(encoding="utf-8") == MACHINE_PML.read_text(encoding="utf-8")
    assert main(["--check", str(SPEC), str(out)]) == 0


def test_every_transition_of_the_machine_is_in_the_relation() -> None:
    """Each (state, event) pair of the spec is one branch of resolve(), each option with its target and work."""
    spec = current_spec()
    text = to_promela(spec)
    for t in spec.transitions:
        assert f"(st == S_{t.source} && ev == E_{t.event})" in text, t.describe()
    pairs = {(t.source, t.event) for t in spec.transitions}
    assert text.count(":: (st == S_") == len(pairs)
    assert len(re.findall(r"tgt = S_[a-z_]+; work = W_", text)) == len(spec.transitions)


def test_the_protocol_defines_every_guard_and_acts_on_every_event() -> None:
    """A guard or event the machine gains must be modelled: the protocol defines G_<guard> and uses E_<event>."""
    spec = current_spec()
    protocol = _protocol()
    for name in guard_names(spec):
        assert re.search(rf"#define G_{name}\b", protocol), f"model/eipflow.pml does not define G_{name}"
    for event in spec.events:
        assert re.search(rf"\bE_{event.id}\b", protocol), f"model/eipflow.pml never fires {event.id}"


def test_generator_refuses_work_the_protocol_does_not_know() -> None:
    """A transition enqueueing a new kind of work is an error naming it, not a silently dropped effect."""
    spec = current_spec()
    first = dataclasses.replace(spec.transitions[0], work="enqueue reboot")
    broken = MachineSpec(spec.name, spec.initial, spec.states, spec.events, (first, *spec.transitions[1:]))
    with pytest.raises(InvalidSpec, match="enqueue reboot"):
        to_promela(broken)


def test_readable_trail_names_the_actors() -> None:
    """Replay lines lose their indentation and prefix, actor ids become names, the failed assertion is kept."""
    replay = "\n".join([
        "      MSG: 2 claims #2 (apply gen 2) at t=0",
        "  MSG: H1 runs 3's late apply gen 3 on H1 (binding 1)spin: eipflow.pml:118, Error: assertion violated",
        "spin: text of failed assertion: assert((qg>=hi[qh]))",
    ])
    lines, failed = readable(replay)
    assert lines == ("worker-1 claims #2 (apply gen 2) at t=0",
                     "H1 runs worker-2's late apply gen 3 on H1 (binding 1)")
    assert failed == "assert((qg>=hi[qh]))"


# -- the search ------------------------------------------------------------------------------------------
def _param(config: Config) -> object:
    marks = [pytest.mark.slow] if config.slow else []
    return pytest.param(config, id=config.name, marks=marks)


@needs_spin
@pytest.mark.parametrize("config", [_param(c) for c in CONFIGS if c.violation is None])
def test_fenced_protocol_holds(config: Config, tmp_path: Path) -> None:
    """The exhaustive search at this size finds no violation of P1-P4 and no invalid end state (or, for the
    liveness configuration, no cycle: every run ends, in quiescence)."""
    result = run(config, tmp_path)
    assert result.errors == 0, "\n".join((f"{config.name}: {result.failed_assertion}", *result.trail))
    assert result.states > 1000 and result.depth > 100
    assert ("non-progress cycles" in result.output) is config.liveness
    print(f"{config.name}: {result.figures()}")


@needs_spin
@pytest.mark.parametrize("config", [_param(c) for c in CONFIGS if c.violation is not None])
def test_bug_variant_has_a_counterexample(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each fixed class of bug, put back, is found; the counterexample is printed step by step."""
    result = run(config, tmp_path)
    assert result.errors == 1, result.output[-2000:]
    assert config.violation is not None and config.violation in result.failed_assertion.replace(" ", ""), (
        result.failed_assertion, result.trail,
    )
    assert len(result.trail) >= 5
    with capsys.disabled():
        print(f"\n{config.name} ({config.what}): counterexample in {len(result.trail)} steps")
        for number, line in enumerate(result.trail, 1):
            print(f"  {number:2}. {line}")
        print(f"  violated: {result.failed_assertion}")


@needs_spin
def test_a_machine_change_that_breaks_the_protocol_fails_the_check(tmp_path: Path) -> None:
    """Make ``attached --vm_stopped-->`` keep the rule (a recorded self-loop): the model finds the stale rule."""
    spec = current_spec()
    broken = tuple(
        dataclasses.replace(t, target="attached", work="")
        if (t.source, t.event) == ("attached", "vm_stopped") else t
        for t in spec.transitions
    )
    model = tmp_path / "model"
    model.mkdir()
    (model / MODEL).write_text(_protocol(), encoding="utf-8")
    (model / "machine.pml").write_text(
        to_promela(MachineSpec(spec.name, spec.initial, spec.states, spec.events, broken)), encoding="utf-8"
    )
    config = dataclasses.replace(BY_NAME["fenced_intents"], defines=("WORKERS=1", "INTENTS=1", "FAULTS=0", "TMAX=0"))
    result = run(config, tmp_path / "run", model_dir=model)
    assert result.errors == 1
    assert "vm==applied" in result.failed_assertion.replace(" ", ""), result.failed_assertion
    assert any("vm_stopped: => attached" in line for line in result.trail), result.trail


#: (configuration, probe, a piece of the probe's assertion, a piece of the step before it fired)
PROBES = (
    ("fenced", "PROBE_REFUSED", "hres!=2", "runs"),
    ("fenced", "PROBE_LEASE_TAKEN", "owner==0", "clock"),
    ("fenced_reconcile", "PROBE_CLEANUP_REFUSED", "ql&&", "revoke gen"),
)


@needs_spin
@pytest.mark.parametrize(("name", "probe", "assertion", "step"), PROBES, ids=[p[1].lower() for p in PROBES])
def test_passing_configuration_reaches_the_race(
    name: str, probe: str, assertion: str, step: str, tmp_path: Path
) -> None:
    """Not vacuous: the passing configuration reaches a refused stale call, a lease taken over from a live
    holder, a cleanup revoke refused by a newer generation (each probe turns the scenario into an assertion)."""
    base = BY_NAME[name]
    result = run(dataclasses.replace(base, name=f"{name}+{probe}", defines=(*base.defines, probe)), tmp_path)
    assert result.errors == 1, result.output[-2000:]
    assert assertion in result.failed_assertion.replace(" ", ""), result.failed_assertion
    assert result.trail and step in result.trail[-1], result.trail
    print("\n".join(result.trail))
