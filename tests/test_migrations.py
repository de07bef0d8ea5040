"""Alembic migrations: head revision in code, up/down/up, backups, batch migrations that keep
rows, the `alembic` command line, and SQL that PostgreSQL accepts."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from perfusion_hub.concepts.synthetic import synthetic_base, synthetic_concept
from perfusion_hub.registry import Registry, database
from perfusion_hub.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TABLES = {"bases", "concepts", "renders"}


def fresh(tmp_path: Path) -> Settings:
    home = tmp_path / "home"
    home.mkdir()
    return Settings.resolve(home)


def tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names()) - {"alembic_version"}


def populate(registry: Registry) -> None:
    registry.add(synthetic_concept("my-cat", seed=1))
    registry.add(synthetic_concept("my-dog", seed=2, superclass="dog"))
    registry.set_metrics("my-dog", {"clip_i": 0.5})
    registry.add_base("other", "o", synthetic_base(weights_hash="7" * 64))
    registry.log_render("a <my-cat>", [{"name": "my-cat"}], 3, {"steps": 2}, None)


def snapshot(registry: Registry) -> tuple:
    return ([registry.get(r.name, r.base_name).to_json() for r in registry.list()],
            [b.to_json() for b in registry.list_bases()],
            [r.to_json() for r in registry.list_renders(limit=None)])


def test_head_revision_in_code_matches_the_scripts():
    config = database.alembic_config("sqlite://")
    assert ScriptDirectory.from_config(config).get_current_head() == database.HEAD_REVISION


def test_models_match_the_migrations(tmp_path):
    """Autogenerate finds nothing to add: the ORM models and the revisions agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from perfusion_hub.registry.models import Base

    with Registry(fresh(tmp_path)) as registry, registry.engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert compare_metadata(context, Base.metadata) == []


def test_upgrade_downgrade_upgrade_then_rows_survive_upgrades(tmp_path):
    settings = fresh(tmp_path)
    url = settings.database_url
    with Registry(settings, auto_upgrade=False) as registry:
        engine = registry.engine
        assert registry.revision() is None
        database.run_migrations(engine, url, "upgrade", "head")
        assert tables(engine) == TABLES
        database.run_migrations(engine, url, "downgrade", "base")
        assert tables(engine) == set() and registry.revision() is None
        database.run_migrations(engine, url, "upgrade", "head")
        assert registry.revision() == database.HEAD_REVISION
        populate(registry)
        before = snapshot(registry)
        assert registry.upgrade() == (database.HEAD_REVISION, database.HEAD_REVISION, None)
        assert snapshot(registry) == before
    with Registry(settings) as reopened:  # the fast path: no migration, nothing lost
        assert snapshot(reopened) == before
        assert not settings.backups_dir.exists()


def test_a_non_empty_database_is_backed_up_before_an_upgrade(tmp_path):
    settings = fresh(tmp_path)
    db_file = settings.home / "registry.db"
    with sqlite3.connect(db_file) as connection:  # a database with data but no schema yet
        connection.execute("CREATE TABLE notes (body TEXT)")
        connection.execute("INSERT INTO notes VALUES ('keep me')")
    connection.close()
    with Registry(settings) as registry:
        assert registry.revision() == database.HEAD_REVISION
    (backup,) = settings.backups_dir.iterdir()
    assert backup.name.startswith("registry-") and backup.name.endswith("-unversioned.db")
    with sqlite3.connect(backup) as copy:
        assert copy.execute("SELECT body FROM notes").fetchall() == [("keep me",)]
        assert copy.execute("SELECT name FROM sqlite_master WHERE name = 'concepts'").fetchall() \
            == []
    copy.close()


def test_an_empty_database_is_not_backed_up(tmp_path):
    settings = fresh(tmp_path)
    Registry(settings).close()
    assert not settings.backups_dir.exists()


def scripts_with(tmp_path: Path, upgrade: str, downgrade: str) -> str:
    """A copy of the migrations with one more revision, `0002_test`, on top."""
    scripts = tmp_path / "migrations"
    shutil.copytree(REPO / "migrations", scripts, ignore=shutil.ignore_patterns("__pycache__"))
    body = textwrap.dedent("""
        import sqlalchemy as sa
        from alembic import op

        revision = "0002_test"
        down_revision = "0001_initial"
        branch_labels = None
        depends_on = None


        def upgrade():
        {upgrade}


        def downgrade():
        {downgrade}
    """).format(upgrade=textwrap.indent(textwrap.dedent(upgrade), "    "),
                downgrade=textwrap.indent(textwrap.dedent(downgrade), "    "))
    (scripts / "versions" / "0002_test.py").write_text(body)
    return str(scripts)


def test_a_later_batch_migration_keeps_rows_and_foreign_keys(tmp_path):
    """A second revision that recreates tables (batch mode, as SQLite needs) on a database
    holding rows: upgrade and downgrade lose nothing."""
    scripts = scripts_with(tmp_path, upgrade="""
        with op.batch_alter_table("bases", recreate="always") as batch:
            batch.add_column(sa.Column("note", sa.String(32), nullable=True))
        with op.batch_alter_table("concepts", recreate="always") as batch:
            batch.add_column(sa.Column("favourite", sa.Boolean(), nullable=True))
    """, downgrade="""
        with op.batch_alter_table("concepts") as batch:
            batch.drop_column("favourite")
        with op.batch_alter_table("bases") as batch:
            batch.drop_column("note")
    """)
    settings = fresh(tmp_path)
    with Registry(settings) as registry:
        populate(registry)
        before = snapshot(registry)
        engine, url = registry.engine, settings.database_url
        database.run_migrations(engine, url, "upgrade", "head", scripts)
        assert registry.revision() == "0002_test"
        assert "note" in {c["name"] for c in inspect(engine).get_columns("bases")}
        assert snapshot(registry) == before
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        database.run_migrations(engine, url, "downgrade", "0001_initial", scripts)
        assert registry.revision() == "0001_initial"
        assert snapshot(registry) == before


def test_a_migration_that_breaks_foreign_keys_changes_nothing(tmp_path):
    from perfusion_hub.errors import RegistryError

    scripts = scripts_with(tmp_path, upgrade="""
        op.add_column("renders", sa.Column("note", sa.String(32), nullable=True))
        op.execute("DELETE FROM bases")
    """, downgrade="""
        pass
    """)
    settings = fresh(tmp_path)
    with Registry(settings) as registry:
        populate(registry)
        before = snapshot(registry)
        with pytest.raises(RegistryError, match="foreign keys.*nothing was changed"):
            database.run_migrations(registry.engine, settings.database_url, "upgrade", "head",
                                    scripts)
        assert registry.revision() == database.HEAD_REVISION
        assert "note" not in {c["name"] for c in inspect(registry.engine).get_columns("renders")}
        assert snapshot(registry) == before


def test_a_database_from_a_newer_version_is_refused_clearly(tmp_path):
    from perfusion_hub.errors import RegistryError

    settings = fresh(tmp_path)
    with Registry(settings) as registry, registry.engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999_future'"))
    with pytest.raises(RegistryError, match="newer perfusion-hub"):
        Registry(settings)


def test_two_first_uses_migrate_once(tmp_path):
    """Processes opening a new home at the same moment serialise on the upgrade lock."""
    home = tmp_path / "home"
    script = textwrap.dedent(f"""
        import time
        from perfusion_hub.registry import Registry
        from perfusion_hub.settings import Settings
        time.sleep(max(0.0, {{start}} - time.time()))
        Registry(Settings.resolve({str(home)!r})).close()
    """)
    import time

    start = time.time() + 3
    runs = [subprocess.Popen([sys.executable, "-c", script.format(start=start)],
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for run in runs:
        assert run.wait(timeout=120) == 0, run.stderr.read()
    with Registry(Settings.resolve(home)) as registry:
        assert registry.revision() == database.HEAD_REVISION


def test_alembic_command_line_uses_the_settings(tmp_path):
    home = tmp_path / "cli-home"
    alembic = Path(sys.executable).parent / "alembic"
    command = [str(alembic)] if alembic.exists() else [sys.executable, "-m", "alembic"]
    done = subprocess.run([*command, "-x", f"home={home}", "upgrade", "head"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    with Registry(Settings.resolve(home), auto_upgrade=False) as registry:
        assert registry.revision() == database.HEAD_REVISION
    current = subprocess.run([*command, "-x", f"home={home}", "current"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert database.HEAD_REVISION in current.stdout


def test_migrations_emit_postgresql_sql(tmp_path):
    """Offline mode renders the schema for PostgreSQL: no SQLite-only DDL in the revisions."""
    from alembic import command

    config = database.alembic_config("postgresql://user@localhost/phub")
    output = tmp_path / "schema.sql"
    with output.open("w") as stream:
        config.output_buffer = stream
        command.upgrade(config, "head", sql=True)
        command.downgrade(config, f"{database.HEAD_REVISION}:base", sql=True)
    sql = output.read_text()
    assert "CREATE TABLE concepts" in sql and "JSON" in sql
    assert "TIMESTAMP WITH TIME ZONE" in sql and "DROP TABLE bases" in sql


def test_registry_queries_compile_for_postgresql():
    """The ORM statements the registry issues render on the PostgreSQL dialect."""
    from sqlalchemy import select
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable

    from perfusion_hub.registry.models import Base, BaseRow, ConceptRow

    dialect = postgresql.dialect()
    for table in Base.metadata.sorted_tables:
        str(CreateTable(table).compile(dialect=dialect))
    statement = (select(ConceptRow, BaseRow.name).join(BaseRow, ConceptRow.base_id == BaseRow.id)
                 .where(ConceptRow.name == "x").order_by(ConceptRow.name))
    assert "JOIN bases" in str(statement.compile(dialect=dialect))
