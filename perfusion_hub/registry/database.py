"""The registry database: engine set-up, schema revision check, backup and upgrade.

SQLite runs with WAL (synchronous=NORMAL: a power cut may lose the last commits, never
consistency), foreign keys and a busy timeout; write transactions start with
`BEGIN IMMEDIATE` so that concurrent writers queue on the busy timeout instead of failing
with "database is locked". Other databases (PostgreSQL) get a plain engine.

Opening is cheap when the schema is current: one query compares the `alembic_version` row
with `HEAD_REVISION`; Alembic is imported only when they differ.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import OperationalError, ProgrammingError

from perfusion_hub.errors import RegistryError

#: Revision id of the newest migration in `migrations/versions/` (a test keeps them equal).
HEAD_REVISION = "0001_initial"
#: Execution option that marks a connection as a writer (`BEGIN IMMEDIATE` on SQLite).
WRITE_OPTION = "phub_write"
BUSY_TIMEOUT_MS = 30_000


def open_engine(url: str) -> Engine:
    """An engine for `url`; SQLite connections get WAL, foreign keys and a busy timeout."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        memory = make_url(url).database in (None, "", ":memory:")

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # transactions are begun below
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if not memory:
                _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection: Any) -> None:
            writer = connection.get_execution_options().get(WRITE_OPTION, False)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def writer(engine: Engine) -> Engine:
    """The same engine, with transactions that take the write lock up front."""
    return engine.execution_options(**{WRITE_OPTION: True})


def current_revision(engine: Engine) -> str | None:
    """The schema revision stored in the database, or None for an empty database."""
    with engine.connect() as connection:
        try:
            return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
        except (OperationalError, ProgrammingError):
            return None


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other databases and in-memory SQLite)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def backup_sqlite(database: Path, backups_dir: Path, revision: str | None) -> Path | None:
    """Copy a non-empty SQLite database (consistently, via SQLite's backup API) into
    `backups_dir`; returns the copy, or None when there is nothing to keep."""
    if not database.is_file() or database.stat().st_size == 0:
        return None
    source = sqlite3.connect(database)
    try:
        tables = source.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'")
        if tables.fetchone()[0] == 0:
            return None
        backups_dir.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        target = backups_dir / f"{database.stem}-{stamp}-{revision or 'unversioned'}.db"
        copy = sqlite3.connect(target)
        try:
            source.backup(copy)
        finally:
            copy.close()
        return target
    finally:
        source.close()


def alembic_config(url: str, script_location: str | None = None):
    """Alembic configuration for `url`, finding `migrations/` through its package path
    (or in `script_location`)."""
    from alembic.config import Config

    if script_location is None:
        import migrations

        script_location = next(iter(migrations.__path__))
    config = Config()
    config.set_main_option("script_location", script_location)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(engine: Engine, url: str, backups_dir: Path, lock_path: Path | None,
            target: str = "head") -> tuple[str | None, str | None, Path | None]:
    """Upgrade the schema to `target`, backing up a non-empty SQLite database first.

    Processes serialise on `lock_path` and re-check the revision once they hold it, so two
    first uses of one home migrate once. Returns (revision before, after, backup or None).
    """
    with _interprocess_lock(lock_path):
        before = current_revision(engine)
        if before == HEAD_REVISION and target == "head":
            return before, before, None
        database = sqlite_path(url)
        backup = backup_sqlite(database, backups_dir, before) if database else None
        run_migrations(engine, url, "upgrade", target)
        return before, current_revision(engine), backup


def run_migrations(engine: Engine, url: str, direction: str, target: str,
                   script_location: str | None = None) -> None:
    """Run Alembic `upgrade`/`downgrade` to `target` in one transaction on `engine`.

    On SQLite, foreign keys are switched off during the migration (batch mode recreates
    tables) and checked before the commit: a migration that breaks them changes nothing."""
    from alembic import command

    config = alembic_config(url, script_location)
    sqlite = engine.dialect.name == "sqlite"
    with writer(engine).connect() as connection:
        raw = connection.connection.dbapi_connection
        if sqlite:
            raw.execute("PRAGMA foreign_keys = OFF")  # only possible outside a transaction
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                getattr(command, direction)(config, target)
                broken = (connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                          if sqlite else [])
                if broken:
                    raise RegistryError(
                        f"Migrating the registry to {target!r} would break foreign keys "
                        f"({broken[:3]}); nothing was changed. Please report this."
                    )
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys = ON")


def _enable_wal(cursor: Any, attempts: int = 50) -> None:
    """Switch a SQLite file to WAL (persistent, so only its first opener does the work).

    Changing the journal mode ignores the busy timeout: when two processes open a new
    database at once, one of them is told "locked" at once, so it retries briefly."""
    import sqlite3
    import time

    for attempt in range(attempts):
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


@contextlib.contextmanager
def _interprocess_lock(path: Path | None) -> Iterator[None]:
    """Exclusive advisory lock on `path` across processes (no-op when `path` is None)."""
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        if os.name == "nt":
            import msvcrt

            handle.seek(0)
            while True:
                try:
                    msvcrt.locking(handle.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
            try:
                yield
            finally:
                handle.seek(0)
                msvcrt.locking(handle.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
