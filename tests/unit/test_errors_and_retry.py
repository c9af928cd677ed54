"""Errors carry context and say what to do; retry policy is data."""

from __future__ import annotations

import random

import pytest

from eipflow import (
    AttachFailed,
    BackendError,
    BackendTimeout,
    ConflictError,
    DatabaseError,
    EipflowError,
    EipNotFound,
    GuestIpInUse,
    IllegalTransition,
    NotFound,
    RetryPolicy,
    VersionConflict,
)
from eipflow.store import redacted


def test_hierarchy() -> None:
    assert issubclass(EipNotFound, NotFound) and issubclass(EipNotFound, LookupError)
    for cls in (IllegalTransition, VersionConflict, GuestIpInUse):
        assert issubclass(cls, ConflictError) and issubclass(cls, EipflowError)
    assert issubclass(BackendTimeout, BackendError)


def test_messages_say_what_to_do() -> None:
    err = IllegalTransition(eip_uuid="e1", state="applying", event="attach", allowed=["detach", "delete"])
    assert str(err) == "cannot attach EIP e1: it is applying; allowed now: detach, delete"
    assert "detach it first" in str(GuestIpInUse("10.0.0.5", "e2"))
    assert VersionConflict("e1", 3).retryable and "reload and retry" in str(VersionConflict("e1", 3))
    assert not BackendError("x", retryable=False).retryable and BackendTimeout("t").retryable
    assert "rolled back" in str(AttachFailed("e1", "boom", "detached"))


def test_database_errors_hide_the_password() -> None:
    url = "postgresql+psycopg://admin:s3cret@db.example:5432/eip"
    assert "s3cret" not in redacted(url) and "admin" in redacted(url)
    assert "s3cret" not in str(DatabaseError(redacted(url), "connection refused"))


def test_backoff_grows_exponentially_within_jitter_and_caps() -> None:
    policy = RetryPolicy(base_delay_s=1, factor=2, max_delay_s=60, jitter=0.2)
    rng = random.Random(7)
    for attempt, nominal in [(1, 1), (2, 2), (3, 4), (4, 8), (7, 60), (20, 60)]:
        delay = policy.delay(attempt, rng)
        assert nominal * 0.8 <= delay <= nominal * 1.2


@pytest.mark.parametrize("attempt", [1, 5])
def test_no_jitter_is_exact(attempt: int) -> None:
    assert RetryPolicy(base_delay_s=2, factor=3, max_delay_s=10_000, jitter=0).delay(attempt) == 2 * 3 ** (attempt - 1)
