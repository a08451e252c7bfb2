"""Alembic, driven from code: ``mediasvc migrate`` and the start-up check."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from alembic import command
from mediasvc.db.session import Database

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = PROJECT_ROOT / "alembic"


class DatabaseNotMigrated(RuntimeError):
    pass


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (blocking; alembic's env.py runs its own event loop)."""
    if database_url.startswith("sqlite"):
        _ensure_sqlite_directory(database_url)
    command.upgrade(alembic_config(database_url), revision)


async def check_current(db: Database, database_url: str) -> None:
    """Refuse to serve on a schema that is not at head, with the command that fixes it."""
    head = ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()

    def current(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with db.engine.connect() as connection:
        revision = await connection.run_sync(current)
    if revision != head:
        raise DatabaseNotMigrated(
            f"the database is at revision {revision or 'none'}, the code needs {head}: "
            "run `mediasvc migrate` (or `make migrate`) first"
        )


def _ensure_sqlite_directory(database_url: str) -> None:
    path = database_url.split(":///", 1)[-1]
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
