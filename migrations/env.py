"""Alembic environment of the registry.

Works two ways: programmatically (`perfusion_hub.registry.database` passes an open connection
in `config.attributes["connection"]`), and from the `alembic` command line at the repository
root, where the database URL comes from the settings (`-x home=PATH`, else $PHUB_HOME /
$PHUB_DATABASE_URL / the user data dir) unless `sqlalchemy.url` is set.
"""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from perfusion_hub.registry.database import open_engine
from perfusion_hub.registry.models import Base
from perfusion_hub.settings import Settings

config = context.config
target_metadata = Base.metadata


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    home = context.get_x_argument(as_dictionary=True).get("home")
    settings = Settings.resolve(home)
    settings.home.mkdir(parents=True, exist_ok=True)
    return settings.database_url


def run_offline() -> None:
    """Emit SQL to stdout instead of running it (`alembic upgrade head --sql`)."""
    context.configure(url=database_url(), target_metadata=target_metadata, literal_binds=True,
                      render_as_batch=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_online(connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

if context.is_offline_mode():
    run_offline()
elif (given := config.attributes.get("connection")) is not None:
    run_online(given)
else:
    engine = open_engine(database_url())
    try:
        with engine.connect() as connection:
            run_online(connection)
            connection.commit()
    finally:
        engine.dispose()
