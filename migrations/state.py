"""The state table: one row per migrated table, each finished step recorded in that step's own transaction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from migrations.options import STATE_TABLE, Options


@dataclass(frozen=True)
class State:
    """One table's migration record."""

    target: str
    direction: str
    strategy: str
    status: str
    steps: list[str] = field(default_factory=list)
    captured: dict[str, Any] = field(default_factory=dict)
    updated_at: str = ""

    @property
    def running(self) -> bool:
        """True while a run started and did not finish (crashed, killed or refused half-way)."""
        return self.status in ("upgrading", "downgrading")


class StateStore:
    """Reads and writes partkey_migration_state in the table's schema."""

    def __init__(self, conn: psycopg.Connection[Any], options: Options) -> None:
        self.conn = conn
        self.options = options
        self.table = sql.Identifier(options.spec.schema, STATE_TABLE)

    def exists(self) -> bool:
        """True once the state table has been created."""
        row = self.conn.execute("SELECT to_regclass(%s)", (self.table.as_string(self.conn),)).fetchone()
        return row is not None and row[0] is not None

    def ensure(self) -> None:
        """CREATE TABLE IF NOT EXISTS (call inside a lock-retried transaction)."""
        self.conn.execute(
            sql.SQL(
                """CREATE TABLE IF NOT EXISTS {} (
                   target text PRIMARY KEY,
                   direction text NOT NULL,
                   strategy text NOT NULL,
                   status text NOT NULL,
                   steps jsonb NOT NULL DEFAULT '[]',
                   captured jsonb NOT NULL DEFAULT '{{}}',
                   server_version integer,
                   started_at timestamptz NOT NULL DEFAULT now(),
                   updated_at timestamptz NOT NULL DEFAULT now())"""
            ).format(self.table)
        )

    def read(self) -> State | None:
        """The table's record, or None when it was never migrated."""
        if not self.exists():
            return None
        row = self.conn.execute(
            sql.SQL(
                "SELECT direction, strategy, status, steps, captured, updated_at::text FROM {} WHERE target = %s"
            ).format(self.table),
            (self.options.spec.label,),
        ).fetchone()
        if row is None:
            return None
        return State(
            target=self.options.spec.label,
            direction=row[0],
            strategy=row[1],
            status=row[2],
            steps=[s["step"] for s in row[3]],
            captured=dict(row[4]),
            updated_at=row[5],
        )

    def begin(self, direction: str, strategy: str, captured: dict[str, Any] | None) -> None:
        """Start (steps emptied) or keep a running record; captured replaces the old one only when given."""
        status = "upgrading" if direction == "upgrade" else "downgrading"
        self.conn.execute(
            sql.SQL(
                """INSERT INTO {t} AS s (target, direction, strategy, status, captured, server_version)
                   VALUES (%(target)s, %(direction)s, %(strategy)s, %(status)s, %(captured)s,
                           current_setting('server_version_num')::int)
                   ON CONFLICT (target) DO UPDATE SET direction = excluded.direction,
                       strategy = excluded.strategy, status = excluded.status, steps = '[]',
                       captured = CASE WHEN %(replace)s THEN excluded.captured ELSE s.captured END,
                       started_at = now(), updated_at = now()"""
            ).format(t=self.table),
            {
                "target": self.options.spec.label,
                "direction": direction,
                "strategy": strategy,
                "status": status,
                "captured": Jsonb(captured or {}),
                "replace": captured is not None,
            },
        )

    def record(self, step: str) -> None:
        """Note a finished step once (inside that step's transaction, so both commit or neither)."""
        self.conn.execute(
            sql.SQL(
                "UPDATE {} SET steps = steps || jsonb_build_array(jsonb_build_object('step', %(step)s::text, "
                "'done_at', now())), updated_at = now() WHERE target = %(target)s "
                "AND NOT steps @> jsonb_build_array(jsonb_build_object('step', %(step)s::text))"
            ).format(self.table),
            {"step": step, "target": self.options.spec.label},
        )

    def finish(self, status: str) -> None:
        """Mark the run finished with its end state."""
        self.conn.execute(
            sql.SQL("UPDATE {} SET status = %s, updated_at = now() WHERE target = %s").format(self.table),
            (status, self.options.spec.label),
        )

    def forget(self) -> bool:
        """Delete the table's record, and the state table once it holds no other; True when it was dropped."""
        self.conn.execute(sql.SQL("DELETE FROM {} WHERE target = %s").format(self.table), (self.options.spec.label,))
        row = self.conn.execute(sql.SQL("SELECT count(*) FROM {}").format(self.table)).fetchone()
        if row is not None and row[0] == 0:
            self.conn.execute(sql.SQL("DROP TABLE {}").format(self.table))
            return True
        return False
