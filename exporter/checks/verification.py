"""Check 2: count rows whose key differs from the expression, incrementally, by sample, or in full."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import psycopg

from exporter.checks.base import Outcome
from exporter.config import TableConfig
from exporter.spec_cache import SpecCache
from exporter.verify import Mode, VerificationResult, Verifier, current_watermark
from exporter.verify_cache import PlanCache

log = logging.getLogger(__name__)


class VerificationBusyError(Exception):
    """Another verification of the same table is running."""


@dataclass
class TableVerificationState:
    """What the verification modes of one table share: one run at a time, and the incremental tally."""

    lock: threading.RLock = field(default_factory=threading.RLock)
    watermark: Any = None
    # Rows checked, mismatched, NULL and expression errors since the start or the last clean full pass.
    incremental_tally: tuple[int, int, int, int] = (0, 0, 0, 0)
    # Full verification's catalog reads and statements, kept until the table's catalog fingerprint changes.
    plan_cache: PlanCache = field(default_factory=PlanCache)
    # The spec resolved against the catalog, the key column's presence and the primary key, until the catalog changes.
    spec_cache: SpecCache = field(default_factory=SpecCache)


class VerificationCheck:
    """One verification mode of one table."""

    read_write = False
    # A pass takes several statements (an aggregate, then the groups of values it had not seen, then examples):
    # under READ COMMITTED a row committed in between is counted by one and not the other.
    one_snapshot = True

    def __init__(self, table: TableConfig, mode: Mode, state: TableVerificationState) -> None:
        self.table = table
        self.mode = mode
        self.name = f"verification_{mode}"
        self.state = state

    def run(self, conn: psycopg.Connection[Any]) -> Outcome:
        """Verify; only one verification per table at a time (a second one is refused, not queued)."""
        if not self.state.lock.acquire(blocking=False):
            raise VerificationBusyError(f"a verification of {self.table.label} is already running")
        try:
            outcome = self._run(conn)
        finally:
            self.state.lock.release()
        if self.mode == "full" and outcome.payload.clean:
            # A clean full pass proves the old bad rows are gone (repaired): the incremental tally starts over.
            self.state.incremental_tally = (0, 0, 0, 0)
        return outcome

    def _run(self, conn: psycopg.Connection[Any]) -> Outcome:
        """The verification itself, on the connection's open transaction."""
        # key_expression: auto reads the table's own formula; kept between runs until the table's catalog changes.
        resolved = self.state.spec_cache.resolve(conn, self.table.spec)
        spec, primary_key = resolved.spec, resolved.primary_key
        if not resolved.key_column_exists:
            result = VerificationResult(
                mode=self.mode,
                rows_checked=0,
                mismatched=0,
                null_keys=0,
                expression_errors=0,
                note=f"no column {spec.key_column}: the server routes rows itself, nothing to verify",
            )
            return Outcome(payload=result, rows_verified=(self.mode, 0))
        verifier = Verifier(
            conn,
            spec,
            primary_key=primary_key,
            examples_limit=self.table.examples_limit,
            plan_cache=self.state.plan_cache,
        )
        if self.mode == "sample":
            result = verifier.run("sample", sample_percent=self.table.checks.verification_sample.percent)
        elif self.mode == "full":
            result = verifier.run("full")
        else:
            fresh, tally = self._incremental(conn, verifier)
            return Outcome(payload=tally, rows_verified=(self.mode, fresh))
        return Outcome(payload=result, rows_verified=(self.mode, result.rows_checked))

    def _incremental(self, conn: psycopg.Connection[Any], verifier: Verifier) -> tuple[int, VerificationResult]:
        """Check rows above the watermark: (rows this run checked, the tally since the start or last clean full pass).

        The first run only sets the watermark.
        """
        column = self.table.monotonic_column
        assert column is not None
        upto = current_watermark(conn, self.table.spec, column)
        state = self.state
        if state.watermark is None:
            log.info("incremental verification of %s starts after %s=%s", self.table.label, column, upto)
            state.watermark = upto
            return 0, VerificationResult(
                mode="incremental",
                rows_checked=0,
                mismatched=0,
                null_keys=0,
                expression_errors=0,
                watermark=upto,
                note="watermark initialised; rows inserted from now on are checked",
            )
        if upto is None or upto == state.watermark:
            new = VerificationResult(
                mode="incremental",
                rows_checked=0,
                mismatched=0,
                null_keys=0,
                expression_errors=0,
                watermark=state.watermark,
            )
        else:
            new = verifier.run("incremental", watermark_column=column, after=state.watermark, upto=upto)
            state.watermark = upto
        # The gauges show every row checked, and every bad one found, since the start or the last clean full pass:
        # a bad row stays counted (and alerting) after the run that found it, and `correct` never goes negative.
        checked, mismatched, nulls, errors = state.incremental_tally
        checked += new.rows_checked
        mismatched += new.mismatched
        nulls += new.null_keys
        errors += new.expression_errors
        state.incremental_tally = (checked, mismatched, nulls, errors)
        return new.rows_checked, VerificationResult(
            mode="incremental",
            rows_checked=checked,
            mismatched=mismatched,
            null_keys=nulls,
            expression_errors=errors,
            examples=new.examples,
            watermark=state.watermark,
            duration_seconds=new.duration_seconds,
            note="counts are cumulative since the exporter started or the last clean full verification",
        )
