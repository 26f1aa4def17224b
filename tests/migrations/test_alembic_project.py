"""The example revision dropped into an application's own Alembic history (psycopg2, autogenerate, env.py checks)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.migrations.helpers import ROOT, catalog, cli, keys, state
from tests.migrations.test_alembic import sqlalchemy_url
from tests.schema import create_list_table, insert_rows

pytest.importorskip("alembic")
pytest.importorskip("psycopg2")

PLACEHOLDER = "down_revision = None  # PLACEHOLDER"

INI = """[alembic]
script_location = %(here)s
prepend_sys_path = {root}

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = INFO
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""

# The application's env.py: its models are every table it has (reflected here), the state table is not one of them.
ENV = """
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import MetaData, create_engine, pool

from migrations.alembic import include_object

fileConfig(context.config.config_file_name, disable_existing_loggers=False)
engine = create_engine(os.environ["PARTKEY_SQLALCHEMY_URL"], poolclass=pool.NullPool)
metadata = MetaData()
with engine.connect() as reflecting:  # its own connection: Alembic's must not be in a transaction yet
    metadata.reflect(bind=reflecting)
for table in list(metadata.tables.values()):
    if table.name in ("partkey_migration_state", "alembic_version"):
        metadata.remove(table)
with engine.connect() as connection:
    extra = {} if os.environ.get("APP_NO_FILTER") else {"include_object": include_object}
    context.configure(
        connection=connection,
        target_metadata=metadata,
        transaction_per_migration=not os.environ.get("APP_ONE_TRANSACTION"),
        **extra,
    )
    with context.begin_transaction():
        context.run_migrations()
"""

APP_REVISIONS = {
    "0001_app.py": '''"""The application's first revision."""
from alembic import op

revision = "0001_app"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE documents (id bigint PRIMARY KEY, title text NOT NULL)")


def downgrade() -> None:
    op.execute("DROP TABLE documents")
''',
    "0002_app.py": '''"""The application's second revision."""
from alembic import op

revision = "0002_app"
down_revision = "0001_app"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE documents ADD COLUMN created_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE documents DROP COLUMN created_at")
''',
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A temporary Alembic project with two revisions of its own and the example DB-003 revision on top."""
    (tmp_path / "versions").mkdir()
    (tmp_path / "alembic.ini").write_text(INI.format(root=ROOT))
    (tmp_path / "env.py").write_text(ENV)
    (tmp_path / "script.py.mako").write_text(Path(ROOT, "examples/alembic/script.py.mako").read_text())
    for name, text in APP_REVISIONS.items():
        (tmp_path / "versions" / name).write_text(text)
    example = Path(ROOT, "examples/alembic/versions/0001_db003.py").read_text()
    assert example.count(PLACEHOLDER) == 1  # the note telling users what to set
    lines = ['down_revision = "0002_app"' if line.startswith(PLACEHOLDER) else line for line in example.splitlines()]
    # The user's table has 10 partitions: "change these for yours", as the example says.
    text = "\n".join(lines).replace("modulus=100)", "modulus=10)")
    (tmp_path / "versions" / "0003_db003.py").write_text(text + "\n")
    return tmp_path


def app_alembic(project: Path, dsn: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run alembic on the temporary project, on psycopg2 as the application does."""
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "alembic"), "-c", str(project / "alembic.ini"), *args],
        cwd=project,
        env={**os.environ, "PARTKEY_SQLALCHEMY_URL": sqlalchemy_url(dsn, "psycopg2"), **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def version(conn: psycopg.Connection[Any]) -> list[tuple[str]]:
    """The revision alembic_version records."""
    return conn.execute("SELECT version_num FROM alembic_version").fetchall()


def test_example_revision_in_an_existing_history_upgrade_check_downgrade(
    conn: psycopg.Connection[Any], dsn: str, project: Path
) -> None:
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 1000, modulus=10)
    rows, before = keys(conn), catalog(conn)

    up = app_alembic(project, dsn, "upgrade", "head")
    assert up.returncode == 0, up.stderr
    assert "Running upgrade 0002_app -> 0001_db003" in up.stderr
    assert version(conn) == [("0001_db003",)]
    assert catalog(conn)["triggers"] == []
    assert state(conn) == ("upgraded", ["add-check", "validate-check", "drop-trigger"])

    check = app_alembic(project, dsn, "check")
    assert check.returncode == 0, check.stderr
    assert "No new upgrade operations detected" in check.stdout + check.stderr
    unfiltered = app_alembic(project, dsn, "check", APP_NO_FILTER="1")
    assert unfiltered.returncode != 0  # without the filter autogenerate wants the state table dropped
    assert "partkey_migration_state" in unfiltered.stdout + unfiltered.stderr

    down = app_alembic(project, dsn, "downgrade", "-1")
    assert down.returncode == 0, down.stderr
    assert version(conn) == [("0002_app",)]
    after = catalog(conn)
    assert after["triggers"] == before["triggers"] and after["constraints"] == before["constraints"]
    assert keys(conn) == rows


def test_one_transaction_for_all_revisions_is_warned_about_before_anything_runs(
    conn: psycopg.Connection[Any], dsn: str, project: Path
) -> None:
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 200, modulus=10)
    run = app_alembic(project, dsn, "upgrade", "head", APP_ONE_TRANSACTION="1")
    lines = run.stderr.splitlines()
    warned = [i for i, line in enumerate(lines) if "transaction_per_migration=False" in line]
    assert warned, run.stderr
    assert lines[warned[0]].startswith("WARNI [partkey-migrate] Alembic runs every revision in one transaction")
    started = [i for i, line in enumerate(lines) if "pre-verification" in line or "upgrade public.chunks" in line]
    assert started and warned[0] < started[0]


def test_forget_removes_the_state_after_success_and_refuses_mid_run(conn: psycopg.Connection[Any], dsn: str) -> None:
    create_list_table(conn, modulus=10, trigger="parent")
    insert_rows(conn, 100, modulus=10)
    assert cli(dsn, "upgrade").code == 0
    conn.execute("UPDATE partkey_migration_state SET status = 'upgrading'")
    refused = cli(dsn, "forget")
    assert refused.code == 1 and "half done" in refused.err
    assert state(conn) is not None
    conn.execute("UPDATE partkey_migration_state SET status = 'upgraded'")
    done = cli(dsn, "forget")
    assert done.code == 0, done.err
    assert "forgot the migration record of public.chunks (state was upgraded)" in done.out
    assert "dropped public.partkey_migration_state" in done.out
    assert conn.execute("SELECT to_regclass('public.partkey_migration_state')").fetchone() == (None,)
    assert cli(dsn, "forget").out.startswith("nothing to forget")
    assert cli(dsn, "status").code == 0
