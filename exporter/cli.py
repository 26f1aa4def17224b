"""Command line: partkey-exporter run | report | verify | check-config | demo | key."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from exporter import __version__
from exporter.app import Exporter
from exporter.chart import render_chart
from exporter.cliargs import hoist_options
from exporter.config import Config, ConfigError, TableConfig, TargetConfig, command_line_table, load_config
from exporter.discovery import configured_lines
from exporter.discovery import render_text as render_discovery
from exporter.logs import setup_logging
from exporter.report import overall_status, render_json, render_text

EXIT_OK, EXIT_BAD_KEYS, EXIT_ERROR, EXIT_DATABASE = 0, 1, 2, 3


def _add_source(parser: argparse.ArgumentParser) -> None:
    """--config, or --dsn with the table options, for the one-shot commands."""
    parser.add_argument("--config", type=Path, help="YAML config file (all targets and tables)")
    parser.add_argument(
        "--dsn",
        default=os.environ.get("PARTKEY_DSN"),
        help="connection string instead of --config (default: $PARTKEY_DSN)",
    )
    parser.add_argument("--table", default="chunks", help="table name (default: chunks)")
    parser.add_argument("--schema", default="public", help="schema (default: public)")
    parser.add_argument("--key-column", default="partition_key")
    parser.add_argument("--source-column", default="collection_id")
    parser.add_argument("--modulus", type=int, default=None, help="partitions (default: 100, or the expression's)")
    parser.add_argument(
        "--key-expression",
        default="auto",
        help="auto (the table's own formula, default), safe, legacy, or an SQL expression of the hashtext family",
    )


def _config_from(args: argparse.Namespace) -> Config:
    """The config from --config, or one built from --dsn and the table options."""
    if args.config is not None:
        return load_config(args.config)
    if not args.dsn:
        raise ConfigError(["give --config FILE, or --dsn (or set PARTKEY_DSN)"])
    try:
        table = command_line_table(args)
        return Config(targets=[TargetConfig(name="default", dsn=args.dsn, tables=[table])])
    except ValueError as error:
        raise ConfigError([f"command line: {line}" for line in str(error).splitlines()[1:2]]) from None


def _one_shot(config: Config, checks: set[str] | None) -> Exporter:
    """An Exporter whose checks ran once, right here."""
    exporter = Exporter(config)
    exporter.discover_now()
    for key, runner in sorted(exporter.runners.items(), key=lambda item: item[1].check.name != "implementation"):
        if checks is None or key[2] in checks:
            runner.run()
    return exporter


def cmd_report(args: argparse.Namespace) -> int:
    """Print the health report once."""
    from exporter.checks.registry import REGISTRY

    config = _config_from(args)
    if args.discover:
        return _discover_only(config, args.format)
    wanted = {kind.name for kind in REGISTRY if kind.in_report}
    exporter = _one_shot(config, None if args.all_checks else wanted)
    try:
        healths = exporter.health()
        discoveries = [exporter.store.current.discoveries[name] for name in sorted(exporter.discovery)]
        if args.format == "json":
            print(
                json.dumps(
                    {
                        "status": overall_status(healths),
                        "tables": [render_json(h) for h in healths],
                        "discovery": [d.to_dict() for d in discoveries],
                    },
                    indent=2,
                    default=str,
                )
            )
        else:
            for found in discoveries:
                print(render_discovery(found, _configured(config, found.target)), end="")
            # The histogram on request, or by default when a person reads the report in a terminal.
            chart = sys.stdout.isatty() if args.chart is None else args.chart
            width = shutil.get_terminal_size().columns  # $COLUMNS first, so a fixed width can be asked for
            texts = []
            for health in healths:
                text = render_text(health)
                spread = health.distribution
                if chart and spread is not None and spread.partitioned:
                    text += "\n" + render_chart(spread, width, args.chart_order)
                texts.append(text)
            print("\n".join(texts), end="")
        # A target whose discovery failed has no tables to report: that is an error, not an empty success.
        healthy = all(h.target_up for h in healths) and all(d.success for d in discoveries)
        return EXIT_OK if healthy else EXIT_ERROR
    finally:
        exporter.stop()


def _configured(config: Config, target: str) -> list[TableConfig]:
    """The tables a target's config names."""
    return next(t.configured_tables for t in config.targets if t.name == target)


def _discover_only(config: Config, output: str) -> int:
    """report --discover: what every target would watch and why; runs discovery only, starts nothing."""
    exporter = Exporter(config)
    try:
        exporter.discover_now()
        results = exporter.store.current.discoveries
        entries = [(name, _configured(config, name), results.get(name)) for name in sorted(exporter.targets)]
        if output == "json":
            document = [
                {
                    "target": name,
                    "configured": [table.label for table in configured],
                    "discovery": result.to_dict() if result is not None else None,
                }
                for name, configured, result in entries
            ]
            print(json.dumps({"targets": document}, indent=2, default=str))
        for name, configured, result in entries if output == "text" else []:
            if result is not None:
                print(render_discovery(result, configured), end="")
                continue
            print(f"{name}: no discovery (tables: auto not set)")
            for table in configured:
                print("\n".join(configured_lines(table)))
        failed = any(result is not None and not result.success for _, _, result in entries)
        return EXIT_DATABASE if failed else EXIT_OK
    finally:
        exporter.stop()


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify once: 0 clean, 1 bad keys, 2 errors."""
    config = _config_from(args)
    exporter = Exporter(config)
    status = EXIT_OK
    try:
        for target, table in exporter.tables:
            result = exporter.verify_now(target, table, args.mode)
            if not result.success or result.payload is None:
                print(f"{target}/{table}: ERROR: {result.error}", file=sys.stderr)
                status = EXIT_ERROR
                continue
            found = result.payload
            bad = found.mismatched + found.null_keys + found.expression_errors
            print(
                f"{target}/{table}: {found.rows_checked} rows checked ({args.mode}), {found.mismatched} wrong keys, "
                f"{found.null_keys} NULL keys, {found.expression_errors} expression errors"
                + (f"; {found.note}" if found.note else "")
            )
            for example in found.examples:
                key = ", ".join(f"{k}={v}" for k, v in example.primary_key.items())
                print(
                    f"  {example.kind}: {example.relation} ({key}) stored={example.stored_key} "
                    f"expected={example.expected_key}" + (f" error={example.error}" if example.error else "")
                )
            if bad and status == EXIT_OK:
                status = EXIT_BAD_KEYS
        return status
    finally:
        exporter.stop()


def cmd_check_config(args: argparse.Namespace) -> int:
    """Validate a config file and list every problem."""
    config = load_config(args.file)
    tables = sum(len(t.configured_tables) for t in config.targets)
    auto = sum(t.auto for t in config.targets)
    discovered = f", {auto} with tables: auto" if auto else ""
    print(f"{args.file}: OK ({len(config.targets)} targets, {tables} tables{discovered})")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """Run the daemon until SIGTERM."""
    from exporter.daemon import Service

    Service(args.config).run_forever()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """Start an embedded PostgreSQL with a semantik-like table and run the exporter on it."""
    from exporter.demo import run_demo

    return run_demo(port=args.port, rows=args.rows, duration=args.duration)


def cmd_key(args: argparse.Namespace) -> int:
    """Print the partition key of one row, computed like the server does (composite keys: --value col=...)."""
    from exporter.key_command import KeyInputError, compute_key

    try:
        print(compute_key(args))
    except KeyInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="partkey-exporter", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the exporter daemon")
    run.add_argument("--config", type=Path, required=True, help="YAML config file")
    run.set_defaults(func=cmd_run)

    report = commands.add_parser("report", help="print the health report once")
    _add_source(report)
    report.add_argument("--format", choices=["text", "json"], default="text")
    report.add_argument("--all-checks", action="store_true", help="also run sample verification and the probe")
    report.add_argument(
        "--chart",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add a histogram of rows per partition (default: when stdout is a terminal)",
    )
    report.add_argument(
        "--chart-order",
        choices=["partition", "rows"],
        default="partition",
        help="histogram columns in partition order or fullest first (default: partition)",
    )
    report.add_argument(
        "--discover",
        action="store_true",
        help="dry run: print what every target would watch and why (tables: auto), run no check; "
        "exit 0, 2 on a bad config, 3 when a target cannot be reached or discovery fails",
    )
    report.set_defaults(func=cmd_report)

    verify = commands.add_parser("verify", help="verify keys once; exit 0 clean, 1 bad keys, 2 errors")
    _add_source(verify)
    verify.add_argument("--mode", choices=["full", "sample"], default="full")
    verify.set_defaults(func=cmd_verify)

    check = commands.add_parser("check-config", help="validate a config file, listing every problem")
    check.add_argument("file", type=Path)
    check.set_defaults(func=cmd_check_config)

    demo = commands.add_parser("demo", help="run on an embedded PostgreSQL with demo data")
    demo.add_argument("--port", type=int, default=19187)
    demo.add_argument("--rows", type=int, default=300_000)
    demo.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    demo.set_defaults(func=cmd_demo)

    key = commands.add_parser("key", help="print the partition key of a value (or of a row: --value col=...)")
    key.add_argument("collection_id", nargs="?", help="the source column's value (hashed as stored unless uuid)")
    key.add_argument("--value", action="append", default=[], metavar="COLUMN=VALUE", help="one per source column")
    key.add_argument("--null", action="append", default=[], metavar="COLUMN", help="a source column that is NULL")
    key.add_argument(
        "--type", action="append", default=[], metavar="[COLUMN=]TYPE", help="a column's type when no --dsn"
    )
    key.add_argument("--dsn", help="read the table's formula and column types from the catalog")
    key.add_argument("--table", default="chunks")
    key.add_argument("--schema", default="public")
    key.add_argument("--key-column", default="partition_key")
    key.add_argument("--source-column", default="collection_id")
    key.add_argument("--modulus", type=int, default=None, help="partitions (default: 100, or the table's)")
    key.add_argument("--key-expression", default="auto", help="auto (default), safe, legacy or an SQL expression")
    key.set_defaults(func=cmd_key)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the partkey-exporter command."""
    parser = build_parser()
    # A subcommand's options work before its name too: `partkey-exporter --dsn URI verify`.
    args = parser.parse_args(hoist_options(parser, sys.argv[1:] if argv is None else argv))
    setup_logging(args.log_level)
    try:
        code: int = args.func(args)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
