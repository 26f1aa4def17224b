"""partkey-migrate forget: delete a finished migration's record, when the team no longer wants it kept."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg

from migrations.errors import Outcome, RefusedError
from migrations.options import STATE_TABLE, Options
from migrations.retry import with_lock_retries
from migrations.runlock import run_lock
from migrations.state import StateStore


def forget(conn: psycopg.Connection[Any], options: Options, *, out: Callable[[str], None] = print) -> Outcome:
    """Delete the table's record (refused while a run is half done: a re-run needs it to resume)."""
    label = options.spec.label
    with run_lock(conn, label):
        store = StateStore(conn, options)
        state = store.read()
        if state is None:
            out(f"nothing to forget: no migration record of {label}")
            return Outcome(0, "not started", "no record")
        if state.running:
            raise RefusedError(
                f"the {state.direction} of {label} is half done (state {state.status}): run it again to finish it "
                "before forgetting its record, which the re-run needs to resume. Nothing was changed"
            )
        dropped = with_lock_retries(conn, options, "forget", store.forget)
    out(f"forgot the migration record of {label} (state was {state.status})")
    if dropped:
        out(f"dropped {options.spec.schema}.{STATE_TABLE}: it held no other record")
    # Downgrade after forget still works on a CHECK or generated key, only without the captured definitions.
    return Outcome(0, "forgotten", f"record of {label} deleted")
