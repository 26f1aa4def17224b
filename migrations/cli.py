"""partkey-migrate: status, plan, upgrade, downgrade, verify, repair and forget for one table's partition key."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NoReturn

import psycopg

from exporter.cliargs import hoist_options
from exporter.formula_catalog import compare, read_places
from exporter.keyspec import KeySpec
from exporter.pg.policy import STRATEGIES
from migrations import progress, render, runner
from migrations.connect import POOL_REFUSAL, UsageError, connect, database_error, error_lines, pooled, redact
from migrations.errors import ExitCode, FormulaReadError, RefusedError
from migrations.forget import forget
from migrations.options import Options, milliseconds, parse_key_expression, parse_table
from migrations.repair import repair
from migrations.retry import LockRetriesExhausted
from migrations.runlock import RunInProgressError, run_lock
from migrations.status import lines as status_lines
from migrations.status import status
from migrations.verification import describe, verify_full

log = logging.getLogger("partkey-migrate")

# The commands that lock and change the table: refused through a transaction pool (status, plan, verify only read).
CHANGING_COMMANDS = frozenset({"upgrade", "downgrade", "repair"})


def _positive_float(text: str) -> float:
    """argparse type: a number of seconds > 0."""
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of exiting, so --json can report the mistake as JSON too."""

    def error(self, message: str) -> NoReturn:
        """Raise instead of printing and exiting."""
        raise UsageError(message)


def parser() -> argparse.ArgumentParser:
    """The command line; the connection, table and timeout options are accepted by every command."""
    common = _Parser(add_help=False)
    group = common.add_argument_group("table and connection")
    group.add_argument(
        "--dsn", default=os.environ.get("PARTKEY_DSN", ""), help="libpq DSN or URI (default: $PARTKEY_DSN)"
    )
    group.add_argument("--table", default="public.chunks", help="[schema.]table (default: public.chunks)")
    group.add_argument("--key-column", default="partition_key")
    group.add_argument("--source-column", default="collection_id")
    group.add_argument("--modulus", type=_positive_int, default=100)
    group.add_argument(
        "--key-expression",
        metavar="SQL",
        help="the key formula, e.g. \"abs(hashtext(collection_id || ':' || document_id) %% 100)\", "
        "when the table's cannot be read or should be overridden (default: read from the table)",
    )
    limits = common.add_argument_group("time limits")
    limits.add_argument("--lock-timeout", type=_positive_float, default=1.0, help="seconds per lock wait (1)")
    limits.add_argument("--max-attempts", type=_positive_int, default=10, help="tries per step on lock timeout")
    limits.add_argument(
        "--statement-timeout", type=_positive_float, default=300.0, help="seconds per DDL statement (300)"
    )
    limits.add_argument(
        "--scan-timeout",
        type=_positive_float,
        default=3600.0,
        help="seconds for VALIDATE and verification scans (3600)",
    )
    common.add_argument("-q", "--quiet", action="store_true", help="log only warnings and errors")
    common.add_argument("--json", action="store_true", help="one JSON document on stdout, on success and on failure")

    top = _Parser(prog="partkey-migrate", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("status", parents=[common], help="version, shape, implementation, state, strategy")
    plan = commands.add_parser("plan", parents=[common], help="every statement upgrade (or downgrade) would run")
    plan.add_argument("--sql", action="store_true", help="print a runnable psql script (offline mode)")
    plan.add_argument("--downgrade", action="store_true", help="plan the downgrade instead")
    plan.add_argument("--strategy", choices=STRATEGIES, default="auto")
    up = commands.add_parser("upgrade", parents=[common], help="replace the trigger (resumable)")
    up.add_argument("--strategy", choices=STRATEGIES, default="auto")
    up.add_argument("--measure", action="store_true", help="INSERT cost before/after on scratch copies")
    up.add_argument("--measure-seconds", type=_positive_float, default=60.0, help="time budget of --measure (60)")
    up.add_argument("--dry-run", action="store_true", help="verify and print the plan; change nothing")
    down = commands.add_parser("downgrade", parents=[common], help="back to the trigger (safe formula)")
    down.add_argument("--dry-run", action="store_true", help="print the plan; change nothing")
    down.add_argument(
        "--keep-safe-formula",
        action="store_true",
        help="keep the safe formula in the trigger function (default: restore it exactly as captured)",
    )
    down.add_argument("--batch-size", type=_positive_int, default=1000, help="rows per backfill transaction")
    commands.add_parser("verify", parents=[common], help="count wrong keys; exit 1 when any")
    rep = commands.add_parser("repair", parents=[common], help="fix wrong keys in batches")
    rep.add_argument("--batch-size", type=_positive_int, default=1000)
    commands.add_parser(
        "forget", parents=[common], help="delete the table's migration record (and the state table once empty)"
    )
    return top


def options_from(args: argparse.Namespace) -> Options:
    """Options from parsed arguments."""
    schema, table = parse_table(args.table)
    spec = KeySpec(
        table=table,
        schema=schema,
        key_column=args.key_column,
        source_column=args.source_column,
        modulus=args.modulus,
        auto=True,  # the table's own formula, read from the catalog once connected (run())
    )
    return Options(
        spec=spec,
        lock_timeout=args.lock_timeout,
        statement_timeout=args.statement_timeout,
        scan_timeout=args.scan_timeout,
        max_attempts=args.max_attempts,
        batch_size=getattr(args, "batch_size", 1000),
        measure_seconds=getattr(args, "measure_seconds", 60.0),
        keep_safe_formula=getattr(args, "keep_safe_formula", False),
        key_expression=parse_key_expression(args.key_expression) if args.key_expression else None,
    )


# The commands that act on the formula: they refuse to guess it when the table's cannot be read.
FORMULA_COMMANDS = frozenset({"plan", "upgrade", "downgrade", "verify", "repair"})


def _table_formula(conn: psycopg.Connection[Any], options: Options, command: str) -> KeySpec:
    """The spec keyed by the table's own formula, or by --key-expression (checked against the table's columns).

    A catalog read that times out (it queues behind another session's ACCESS EXCLUSIVE) is refused with exit 3
    unless --key-expression was given: falling back to --source-column would judge a composite key wrongly.
    """
    spec, given = options.spec, options.key_expression
    # Autocommit reads, one statement each (no transaction held open); the session's lock_timeout put back after.
    before = str(conn.execute("SELECT current_setting('lock_timeout')").fetchone()[0])  # type: ignore[index]
    try:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (milliseconds(options.lock_timeout),))
        read = read_places(conn, spec)
    except (psycopg.errors.LockNotAvailable, psycopg.errors.QueryCanceled) as error:
        why = str(error).strip()
        if given is None:
            # Another partkey-migrate run holding the table is the likely reason: refuse naming it (exit 1).
            with run_lock(conn, spec.label):
                pass
            raise FormulaReadError(
                f"could not read the key formula of {spec.label}: {why}; retry or pass --key-expression"
            ) from None
        log.warning("could not read the key formula of %s (%s): using --key-expression unchecked", spec.label, why)
        return replace(spec.with_formula(given), auto=False)
    finally:
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (before,))
    if read is None:
        return spec if given is None else replace(spec.with_formula(given), auto=False)  # no table: said later
    places, columns = read
    found = compare(spec.label, places)
    if given is not None:
        missing = [c for c in given.columns if c not in columns]
        if missing:
            raise UsageError(f"--key-expression: {spec.label} has no column {', '.join(missing)}")
        if found.table_formula is not None and not given.same_key(found.table_formula):
            log.warning(
                "--key-expression %s is not the table's formula %s (from %s): using the given one",
                given.normalised,
                found.table_formula.normalised,
                found.maintained_by,
            )
        # Not auto: status and the report list the given formula beside the table's when they differ.
        return replace(spec.with_formula(given), auto=False)
    if found.table_formula is not None:
        return spec.with_formula(found.table_formula)
    unreadable = [p for p in found.places if p.error and p.kind in ("trigger", "generated", "check", "partition")]
    if unreadable and command in FORMULA_COMMANDS:
        place = unreadable[0]
        raise FormulaReadError(
            f"could not read the key formula of {spec.label}: {place.name}: {place.error}; pass --key-expression"
        )
    return spec


def run(args: argparse.Namespace, conn: psycopg.Connection[Any], options: Options) -> int:
    """Dispatch one command; returns the exit code. With --json, stdout gets exactly one JSON document."""
    # The formula partkey-migrate verifies and writes is the table's own (composite included), in its safe form.
    options = replace(options, spec=_table_formula(conn, options, args.command))
    if args.command == "status":
        report = status(conn, options)
        print(json.dumps(report, indent=2) if args.json else "\n".join(status_lines(report)))
        return ExitCode.OK
    if args.command == "plan":
        if args.downgrade:
            _, plan = runner.build_downgrade(conn, options)
        else:
            _, plan = runner.build_upgrade(conn, options, args.strategy)
        if args.sql:
            sys.stdout.write(render.plan_script(conn, plan, options))
        elif args.json:
            print(json.dumps(plan.to_dict(conn), indent=2))
        else:
            print("\n".join(render.plan_lines(conn, plan)))
        return ExitCode.OK
    if args.command == "verify":
        impl = runner.inspect(conn, options)
        result = verify_full(conn, options, impl)
        if args.json:
            print(json.dumps(result.to_dict(), indent=2, default=str))
        else:
            print("\n".join(describe(result)))
            if not result.clean:
                print("wrong keys found: run partkey-migrate repair")
        return ExitCode.OK if result.clean else ExitCode.REFUSED
    lines: list[str] = []
    out: Callable[[str], None] = lines.append if args.json else print
    measurements: list[dict[str, Any]] = []
    if args.command == "upgrade":
        options = replace(options, on_measure=measurements.append)
        outcome = runner.upgrade(conn, options, args.strategy, dry_run=args.dry_run, measure=args.measure, out=out)
    elif args.command == "downgrade":
        outcome = runner.downgrade(conn, options, dry_run=args.dry_run, out=out)
    elif args.command == "repair":
        outcome = repair(conn, options, out=out)
    elif args.command == "forget":
        outcome = forget(conn, options, out=out)
    else:  # pragma: no cover
        raise UsageError(f"unknown command {args.command}")
    if args.json:
        document = {
            "command": args.command,
            "ok": outcome.code == ExitCode.OK,
            "exit_code": outcome.code,
            "state": outcome.state,
            "message": outcome.message,
            "output": lines,
        }
        if measurements:
            document["measure"] = measurements[0]
        print(json.dumps(document, indent=2))
    return outcome.code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; the exit codes are ExitCode (docs/migrate.md has the table)."""
    given = list(sys.argv[1:] if argv is None else argv)
    # Common options work before the subcommand too: `partkey-migrate --dsn URI status`.
    top = parser()
    want_json = "--json" in given
    try:
        args = top.parse_args(hoist_options(top, given))
    except UsageError as error:
        if want_json:
            _print_error(ExitCode.USAGE, "usage", str(error), None)
        else:
            top.print_usage(sys.stderr)
            print(f"partkey-migrate: error: {error}", file=sys.stderr)
        return ExitCode.USAGE
    # Our own handler on sys.stderr as it is now (not basicConfig): callers and tests may redirect it.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("partkey-migrate: %(message)s"))
    handler.setLevel(logging.WARNING if args.quiet else logging.INFO)
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        return _main(args)
    finally:
        log.removeHandler(handler)


def _print_error(code: ExitCode, kind: str, message: str, database: dict[str, str | None] | None) -> None:
    """The one JSON document of a failed command."""
    error: dict[str, Any] = {"kind": kind, "message": message}
    if database is not None:
        error.update(database)
    print(json.dumps({"ok": False, "exit_code": int(code), "error": error}, indent=2))


def _fail(args: argparse.Namespace, code: ExitCode, kind: str, message: str) -> int:
    """Report a failure: one line on stderr, and with --json one JSON document on stdout."""
    progress.stop_all()  # a progress display still shown would overwrite the message
    print(f"partkey-migrate: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        _print_error(code, kind, message, None)
    return code


def _main(args: argparse.Namespace) -> int:
    """main() once logging is set up: map every failure to its exit code and what the user reads."""
    try:
        options = options_from(args)
        with connect(args.dsn) as conn:
            if pooled(conn):
                if args.command in CHANGING_COMMANDS:
                    # Before anything is read or locked: a run's lock and DDL need one server session throughout.
                    raise UsageError(POOL_REFUSAL)
                # Reads only; session defaults would stay behind on a server connection other clients get next.
                return run(args, conn, options)
            # Session defaults, so that even catalog reads never queue for long behind someone's lock.
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (milliseconds(options.lock_timeout),))
            conn.execute(
                "SELECT set_config('statement_timeout', %s, false)", (milliseconds(options.statement_timeout),)
            )
            return run(args, conn, options)
    except UsageError as error:
        return _fail(args, ExitCode.USAGE, "usage", f"error: {error}")
    except (RefusedError, RunInProgressError) as error:
        return _fail(args, ExitCode.REFUSED, "refused", str(error))
    except LockRetriesExhausted as error:
        return _fail(args, ExitCode.LOCK_BUSY, "lock-timeout", str(error))
    except FormulaReadError as error:
        return _fail(args, ExitCode.DATABASE, "formula", str(error))
    except psycopg.Error as error:
        # Connecting failed earlier (UsageError); this failed mid-run: the state table lets a re-run resume.
        progress.stop_all()
        described = database_error(error, args.dsn)
        for line in error_lines(described):
            print(f"partkey-migrate: {line}", file=sys.stderr)
        if args.json:
            _print_error(ExitCode.DATABASE, "database", str(described["message"]), described)
        return ExitCode.DATABASE
    except ValueError as error:
        return _fail(args, ExitCode.USAGE, "usage", f"error: {redact(str(error), args.dsn)}")


if __name__ == "__main__":
    sys.exit(main())
