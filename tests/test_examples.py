"""Examples are tests: each example in examples/ runs through its ``main()`` against a fresh database.

(``examples/netns_demo.py`` needs root and network namespaces; it has its own test.)
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def last_json(out: str) -> Any:
    """The JSON document an example printed with ``--json`` (the test session's log lines may precede it)."""
    lines = out.splitlines()
    start = max(i for i, line in enumerate(lines) if line == "{")
    return json.loads("\n".join(lines[start:]))


def test_async_service(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Many concurrent attaches and VM events on one loop end with every invariant holding."""
    example = load("async_service")
    rc = example.main(["--db", f"sqlite:///{tmp_path / 'svc.db'}", "--eips", "25", "--json"])
    summary = last_json(capsys.readouterr().out)
    assert summary["violations"] == []
    assert rc == 0
    outcomes = summary["outcomes"]
    # A detach racing with an attach may win (the attach then reports it was superseded): a legal outcome.
    assert outcomes["attach_ok"] + outcomes.get("attach_failed", 0) + outcomes.get("attach_superseded", 0) == 25
    assert outcomes.get("attach_failed", 0) >= 1  # every fifth apply is made to fail
    assert sum(summary["states"].values()) == 25
    assert summary["rules"] == summary["states"].get("attached", 0)


def test_taskflow_boot_vm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DNS fails: TaskFlow reverts the flow and eipflow detaches, then deletes, the EIP; no rule is left."""
    example = load("taskflow_boot_vm")
    assert example.main(["--db", f"sqlite:///{tmp_path / 'tf.db'}"]) == 0
    out = capsys.readouterr().out
    assert "attach-eip: REVERTED" in out and "flow REVERTED" in out
    assert "attached --detach--> detaching   [op req-7/attach-eip/revert.1]" in out
    assert "EIP now: deleted; dataplane: no rules" in out


def test_taskflow_boot_vm_happy_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With DNS working nothing is reverted: the EIP stays attached with one rule."""
    example = load("taskflow_boot_vm")
    assert example.main(["--db", f"sqlite:///{tmp_path / 'tf.db'}", "--dns-ok"]) == 0
    assert "EIP now: attached; dataplane: ['compute-1: 203.0.113.10 -> 10.0.0.5']" in capsys.readouterr().out


def test_dbos_boot_vm(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """DNS fails once and DBOS retries it; the workflow's steps and the EIP's history show one attach."""
    pytest.importorskip("dbos", reason="the DBOS example needs DBOS Transact: pip install 'eipflow[dbos]'")
    from tests.integrations.test_dbos import forget_dbos_console_handler

    example = load("dbos_boot_vm")
    forget_dbos_console_handler()
    try:
        assert example.main(["--db", f"sqlite:///{tmp_path / 'dbos.db'}", "--workflow-id", "boot-7"]) == 0
    finally:
        forget_dbos_console_handler()  # DBOS bound it to this test's captured stderr
    out = capsys.readouterr().out
    assert "workflow boot-7: SUCCESS" in out
    assert "step 4 eipflow.attach: EIP attached" in out
    assert '"attempts": 2' in out  # the DNS step failed once and was retried by DBOS
    assert "detached --attach--> binding   [op dbos:boot-7/4]" in out
    assert "EIP now: attached; dataplane: ['compute-1: 203.0.113.10 -> 10.0.0.5']" in out
    assert "invariants: ok" in out


@pytest.mark.slow
def test_celery_app(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's Celery recipe: start a worker on examples/celery_app.py, submit an attach with main()."""
    from tests.integrations.test_celery import Worker, worker_env

    env = worker_env(tmp_path)
    for key in ("EIPFLOW_CELERY_BROKER", "EIPFLOW_CELERY_QUEUE"):
        monkeypatch.setenv(key, env[key])
    worker = Worker(env, tmp_path / "worker.log", "--pool=prefork", "--concurrency=2")
    try:
        example = load("celery_app")
        assert example.main(["--request-id", "example-1", "--timeout", "60"]) == 0
    finally:
        worker.stop()
    out = last_json(capsys.readouterr().out)
    assert out["created"]["state"] == "detached"
    attached = out["attached"]
    assert (attached["state"], attached["applied_host"], attached["guest_ip"]) == ("attached", "h1", "10.0.0.5")
