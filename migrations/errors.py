"""The outcomes a run can end with, and the exit codes the CLI maps them to."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class RefusedError(Exception):
    """The run stopped on purpose and changed nothing more (exit code 1)."""


class FormulaReadError(Exception):
    """The table's key formula could not be read from the catalog (exit code 3): nothing was changed."""


class ExitCode(IntEnum):
    """partkey-migrate's exit codes; docs/migrate.md's table is generated from MEANINGS below."""

    OK = 0
    REFUSED = 1
    USAGE = 2
    DATABASE = 3
    LOCK_BUSY = 4


MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "done (or nothing to do); `verify`: every key is right",
    ExitCode.REFUSED: (
        "wrong keys found (`verify`, or `upgrade` and its `--dry-run` before any change), or refused on purpose "
        "with nothing changed: a strategy that cannot work here, another run in progress, a half-done downgrade, "
        "a downgrade of a table never upgraded"
    ),
    ExitCode.USAGE: "bad command line, cannot connect, or no such table or key column: fix the command",
    ExitCode.DATABASE: (
        "the server reported an error mid-run (shown with its DETAIL, HINT and CONTEXT); "
        "steps already done are recorded, a re-run resumes"
    ),
    ExitCode.LOCK_BUSY: (
        "no lock within `--lock-timeout` after `--max-attempts` tries; nothing of that step was applied, re-run later"
    ),
}


def exit_code_table() -> str:
    """The exit codes as the Markdown table docs/migrate.md shows."""
    rows = ["| code | name | meaning |", "|---|---|---|"]
    rows += [f"| {code.value} | `{code.name.lower()}` | {MEANINGS[code]} |" for code in ExitCode]
    return "\n".join(rows) + "\n"


@dataclass(frozen=True)
class Outcome:
    """How a command ended: exit code, resulting state, one-line summary."""

    code: int
    state: str
    message: str
