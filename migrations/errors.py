"""The outcomes a run can end with, mapped to exit codes by the CLI."""

from __future__ import annotations

from dataclasses import dataclass


class RefusedError(Exception):
    """The run stopped on purpose and changed nothing more (exit code 1)."""


@dataclass(frozen=True)
class Outcome:
    """How a command ended: exit code, resulting state, one-line summary."""

    code: int
    state: str
    message: str
