"""The Alembic migrations: they build exactly the models' schema, on every database, from any entry point."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from eipflow.cli import main
from eipflow.errors import DatabaseError
from eipflow.store import create_db_engine, ensure_schema, migrations
from eipflow.store.database import schema_revision, upgrade_schema
from eipflow.store.schema import metadata


def _diffs(engine: sa.Engine) -> list[object]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        return list(compare_metadata(ctx, metadata))


def _indexes(engine: sa.Engine) -> dict[str, set[tuple[str, ...]]]:
    insp = sa.inspect(engine)
    out: dict[str, set[tuple[str, ...]]] = {}
    for table in metadata.tables:
        cols = {tuple(ix["column_names"]) for ix in insp.get_indexes(table)}  # type: ignore[misc]
        cols |= {tuple(uq["column_names"]) for uq in insp.get_unique_constraints(table)}
        out[table] = cols
    return out


def test_head_constant_matches_the_scripts() -> None:
    """``HEAD`` (read without importing Alembic) is the scripts' real head; bump it with each revision."""
    assert migrations.HEAD == migrations.head_revision()


def test_migrated_schema_equals_the_models(db_url: str) -> None:
    """``alembic upgrade head`` on an empty database yields the models' schema: compare_metadata finds nothing."""
    engine = create_db_engine(db_url)
    try:
        with engine.begin() as conn:
            migrations.upgrade(conn)
        assert schema_revision(engine) == migrations.HEAD
        assert _diffs(engine) == []
        idx = _indexes(engine)
        # The lookups the flows make, and the uniqueness the contract relies on, exist on every database.
        for cols in [("vm_uuid",), ("host_uuid",), ("applied_host",), ("state",), ("vip",), ("guest_ip",)]:
            assert cols in idx["eip"], cols
        assert ("status", "due_at") in idx["eip_work"]
        assert ("eip_uuid",) in idx["eip_work"]
        assert ("eip_uuid", "version") in idx["eip_transition"]
    finally:
        engine.dispose()


def test_ensure_schema_goes_through_alembic_and_is_idempotent(db_url: str) -> None:
    """First use creates the schema at head (stamped), a second call changes nothing."""
    engine = create_db_engine(db_url)
    try:
        assert schema_revision(engine) is None
        ensure_schema(engine)
        assert schema_revision(engine) == migrations.HEAD
        ensure_schema(engine)
        assert schema_revision(engine) == migrations.HEAD
        assert _diffs(engine) == []
    finally:
        engine.dispose()


def test_concurrent_first_use_creates_the_schema_once(db_url: str) -> None:
    """Four openers of one empty database at once: the schema lock lets one migrate, the rest find it done."""
    engines = [create_db_engine(db_url) for _ in range(4)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def open_it(engine: sa.Engine) -> None:
        barrier.wait()
        try:
            ensure_schema(engine)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=open_it, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        assert schema_revision(engines[0]) == migrations.HEAD
        with engines[0].connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        for e in engines:
            e.dispose()


def test_a_database_from_before_migrations_is_adopted(db_url: str) -> None:
    """Tables made by ``create_all`` without a revision are stamped as the initial revision, not re-created."""
    engine = create_db_engine(db_url)
    try:
        metadata.create_all(engine)
        ensure_schema(engine)
        assert schema_revision(engine) == migrations.HEAD
    finally:
        engine.dispose()


def test_a_revision_from_a_newer_eipflow_is_a_clear_error(sqlite_url: str) -> None:
    """A database stamped by a newer eipflow is refused with a message naming both revisions."""
    engine = create_db_engine(sqlite_url)
    try:
        ensure_schema(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
        with pytest.raises(DatabaseError) as info:
            ensure_schema(engine)
        assert "9999" in str(info.value) and migrations.HEAD in str(info.value)
    finally:
        engine.dispose()


def test_upgrade_to_the_current_revision_is_a_no_op(sqlite_url: str) -> None:
    engine = create_db_engine(sqlite_url)
    try:
        assert upgrade_schema(engine) == (None, migrations.HEAD)
        assert upgrade_schema(engine) == (migrations.HEAD, migrations.HEAD)
    finally:
        engine.dispose()


def test_cli_db_upgrade_and_current(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``eipflow db current`` shows no schema, ``db upgrade`` migrates, then ``current`` says head."""
    assert main(["--db", db_url, "--json", "db", "current"]) == 0
    out = capsys.readouterr().out
    assert '"current": null' in out and '"up_to_date": false' in out
    assert main(["--db", db_url, "db", "upgrade"]) == 0
    assert f"None -> {migrations.HEAD}" in capsys.readouterr().out
    assert main(["--db", db_url, "db", "current"]) == 0
    assert f"{migrations.HEAD} (head)" in capsys.readouterr().out


def test_cli_db_upgrade_sql_prints_ddl(capsys: pytest.CaptureFixture[str]) -> None:
    """``--sql`` renders the DDL for the URL's dialect without connecting (port 1 has no server)."""
    assert main(["--db", "postgresql+psycopg://u:pw@127.0.0.1:1/x", "db", "upgrade", "--sql"]) == 0
    out = capsys.readouterr().out
    assert "CREATE TABLE eip " in out and "CONSTRAINT uq_eip_guest_ip UNIQUE (guest_ip)" in out


def test_migration_files_ship_in_the_package() -> None:
    """env.py, the script template and every revision live inside the package (the wheel includes them)."""
    root = Path(migrations.__file__).parent
    assert (root / "env.py").is_file()
    assert (root / "script.py.mako").is_file()
    assert any(p.name.startswith(migrations.HEAD) for p in (root / "versions").glob("*.py"))


def test_0002_upgrades_a_0001_database_with_rows_in_place(db_url: str) -> None:
    """Rows written before fencing keep working: old rules get generation 0 (older than anything new, so the
    first fenced call wins), old work items carry no generation (sent as 0), and the lease clock starts at 0."""
    from eipflow.backends.simulated import SimulatedDataplane
    from eipflow.values import EipSpec

    engine = create_db_engine(db_url)
    try:
        assert upgrade_schema(engine, "0001") == (None, "0001")
        with engine.begin() as conn:
            conn.execute(sa.text(
                "INSERT INTO sim_rule (host_uuid, eip_uuid, vip, vm_nic_uuid, guest_ip, applied_at) "
                "VALUES ('h1', '00000000-0000-4000-8000-000000000009', '203.0.113.9', 'nic-1', '10.0.0.9', "
                "'2026-11-01 00:00:00')"))
        assert upgrade_schema(engine) == ("0001", migrations.HEAD)
        plane = SimulatedDataplane(engine)
        [old] = plane.rules()
        assert (old.generation, old.guest_ip) == (0, "10.0.0.9")
        plane.apply(EipSpec(old.eip_uuid, old.vip, "nic-2", "10.0.0.8", "h1", 4))  # the first fenced call wins
        assert [(r.guest_ip, r.generation) for r in plane.rules()] == [("10.0.0.8", 4)]
        from eipflow.store import Store

        assert Store(engine).lease_clock.skew() == 0
    finally:
        engine.dispose()
