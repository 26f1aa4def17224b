"""Run the version-sensitive tests on PostgreSQL 11-18, one server at a time; tabulate version x feature.

Usage: python -m tests.matrix.run_matrix [--versions 11,12,18] [--output FILE.md] [-- pytest args]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Literal

import psycopg

from tests.pgversions import MAJORS, NPM_PACKAGE, NPM_VERSIONS, PgVersionsError, install, versioned_server

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "last-matrix.md"
PYTEST_TIMEOUT_SECONDS = 900  # per version; one version normally takes well under a minute
SERVER_FEATURE = "server start and test run"

Outcome = Literal["passed", "failed", "error", "skipped"]


@dataclass(frozen=True)
class Case:
    """One test's result on one version."""

    feature: str
    test: str
    outcome: Outcome
    message: str = ""
    does: tuple[tuple[str, str], ...] = ()


@dataclass
class VersionRun:
    """Everything one version's run produced."""

    major: int
    server_version: str | None = None
    cases: list[Case] = field(default_factory=list)
    problem: str | None = None
    seconds: float = 0.0

    @property
    def label(self) -> str:
        """The column header: the server's version, or the major when it never answered."""
        return self.server_version or str(self.major)

    @property
    def ok(self) -> bool:
        """True when the server ran and no test failed."""
        return self.problem is None and all(c.outcome in ("passed", "skipped") for c in self.cases)


def parse_junit(path: Path) -> list[Case]:
    """The test cases of a pytest junit-xml report, with the feature the matrix plugin recorded."""
    cases = []
    # Our own pytest's report, written a moment ago: not untrusted input.
    for testcase in ET.parse(path).getroot().iter("testcase"):  # noqa: S314
        pairs = [(p.get("name"), p.get("value", "")) for p in testcase.iter("property")]
        properties = dict(pairs)
        # What a command did, recorded by the test through the `does` fixture as "command<TAB>outcome".
        does = tuple(
            (command, outcome_text)
            for name, value in pairs
            if name == "does" and value
            for command, _, outcome_text in [value.partition("\t")]
        )
        module = (testcase.get("classname") or "").replace(".", "/")
        name = testcase.get("name") or ""
        test = f"{module}.py::{name}" if module and name else module or name or "(collection)"
        # Only a collection error has no feature: the plugin never saw a test item there.
        feature = properties.get("feature") or f"collecting {module or name or 'tests'}"
        outcome: Outcome = "passed"
        message = ""
        for kind in ("failure", "error", "skipped"):
            element = testcase.find(kind)
            if element is not None:
                outcome = "failed" if kind == "failure" else "error" if kind == "error" else "skipped"
                message = element.get("message") or ""
                if message.strip() in ("", "collection failure") and element.text and element.text.strip():
                    # pytest's message says only "collection failure"; the cause is the report's last line.
                    message = element.text.strip().splitlines()[-1].removeprefix("E").strip()
                break
        cases.append(Case(feature=feature, test=test, outcome=outcome, message=message.strip(), does=does))
    return cases


def _server_version(dsn: str) -> str:
    """The server's version string, e.g. '11.22'."""
    with psycopg.connect(dsn, autocommit=True, connect_timeout=30) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]).split()[0] if row else "?"


def _tail(path: Path, lines: int = 25) -> str:
    """The end of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def pytest_command(junit: Path, *args: str) -> list[str]:
    """The pytest run of the versioned tests that writes the junit report parse_junit reads (args: paths, options)."""
    return [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "versioned",
        "-p",
        "tests.matrix.plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "-o",
        "junit_family=xunit1",
        f"--junitxml={junit}",
        *args,
    ]


def run_version(major: int, workdir: Path, pytest_args: Sequence[str]) -> VersionRun:
    """Start PostgreSQL <major>, run the versioned tests on it, stop it; test failures never raise."""
    run = VersionRun(major=major)
    junit = workdir / f"pg{major}.xml"
    log = workdir / f"pg{major}.log"
    started = time.monotonic()
    try:
        with versioned_server(major) as dsn:
            run.server_version = _server_version(dsn)
            print(f"PostgreSQL {run.server_version}: running the versioned tests ...", flush=True)
            # A module that fails to import shows up as its own failed row instead of hiding every other.
            command = pytest_command(junit, "--continue-on-collection-errors", *pytest_args)
            env = dict(os.environ, PARTKEY_TEST_DSN=dsn)
            with log.open("w") as output:
                result = subprocess.run(
                    command,
                    cwd=REPO,
                    env=env,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    timeout=PYTEST_TIMEOUT_SECONDS,
                    check=False,
                )
            if junit.exists():
                run.cases = parse_junit(junit)
            # pytest exit codes: 0 all passed, 1 some failed; anything else means the run itself broke.
            if result.returncode not in (0, 1) or not run.cases:
                run.problem = f"pytest exited with code {result.returncode}:\n{_tail(log)}"
            elif result.returncode == 1 and run.ok:
                run.problem = f"pytest exited with code 1 but no test failed:\n{_tail(log)}"
    except PgVersionsError as error:
        run.problem = str(error)
    except subprocess.TimeoutExpired:
        run.problem = f"pytest did not finish within {PYTEST_TIMEOUT_SECONDS} s:\n{_tail(log)}"
    except psycopg.Error as error:
        run.problem = f"the server did not answer: {error}"
    run.seconds = time.monotonic() - started
    return run


# The product's own features lead the table; server facts and anything new follow in collection order.
LEADING_FEATURES = ("implementation detection", "verification", "hashtext agreement")


def _features(runs: Sequence[VersionRun]) -> list[str]:
    """Feature names: the leading ones first, then the rest in the order they first appear."""
    seen: dict[str, None] = {}
    for run in runs:
        for case in run.cases:
            seen.setdefault(case.feature, None)
    return [f for f in LEADING_FEATURES if f in seen] + [f for f in seen if f not in LEADING_FEATURES]


def _cell(cases: Sequence[Case]) -> str:
    """One table cell: pass count, skips, or failures out of the total."""
    if not cases:
        return "-"
    bad = sum(c.outcome in ("failed", "error") for c in cases)
    skipped = sum(c.outcome == "skipped" for c in cases)
    ran = len(cases) - skipped
    if bad:
        return f"✗ {bad} of {len(cases)} failed"
    if skipped:
        return f"✓ {ran} ({skipped} skipped)"
    return f"✓ {ran}"


def _markdown_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Rows (the first one the header) as markdown table lines."""
    header = list(rows[0])
    lines = [header, ["---"] * len(header), *rows[1:]]
    return ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in lines]


def _version_span(runs: Sequence[VersionRun], first: int, last: int) -> str:
    """'11', '13-18', or 'all' for the runs first..last (indexes)."""
    if first == 0 and last == len(runs) - 1 and len(runs) > 1:
        return "all"
    low, high = str(runs[first].major), str(runs[last].major)
    return low if first == last else f"{low}-{high}"


def render_does(runs: Sequence[VersionRun]) -> str:
    """What each command did, by version, as the tests recorded it; neighbouring versions that agree share a cell.

    A record from a test that failed is marked ✗; a version with no record shows '-'.
    """
    commands: set[str] = set()
    cells: dict[tuple[str, int], str] = {}
    for index, run in enumerate(runs):
        for case in run.cases:
            for command, outcome in case.does:
                commands.add(command)
                mark = "" if case.outcome in ("passed", "skipped") else "✗ "
                cells[(command, index)] = mark + outcome
    if not commands:
        return ""
    rows = [["command", "what it does, by PostgreSQL major"]]
    # Sorted, so each tool's commands sit together whatever order the tests ran in.
    for command in sorted(commands):
        outcomes = [cells.get((command, i), "-") for i in range(len(runs))]
        spans, start = [], 0
        for i in range(1, len(runs) + 1):
            if i == len(runs) or outcomes[i] != outcomes[start]:
                spans.append(f"**{_version_span(runs, start, i - 1)}**: {outcomes[start]}")
                start = i
        rows.append([command, "<br>".join(spans)])
    return "\n".join(_markdown_table(rows)) + "\n"


def render(runs: Sequence[VersionRun]) -> str:
    """The version x feature table, what each command did, and every failure, as markdown (terminal-readable)."""
    rows = [["feature", *[run.label for run in runs]]]
    rows.append([SERVER_FEATURE, *["✗" if run.problem else "✓" for run in runs]])
    for feature in _features(runs):
        rows.append([feature, *[_cell([c for c in run.cases if c.feature == feature]) for run in runs]])
    lines = _markdown_table(rows)
    does = render_does(runs)
    if does:
        lines += ["", "What each command does on each version (recorded by the tests that passed above):", "", does]
    failures = []
    for run in runs:
        if run.problem:
            problem = run.problem.strip()
            failures.append(f"- **PostgreSQL {run.label}**, {SERVER_FEATURE}:\n\n```\n{problem}\n```")
        for case in run.cases:
            if case.outcome in ("failed", "error"):
                message = case.message.strip() or "(no message)"
                failures.append(
                    f"- **PostgreSQL {run.label}**, {case.feature}, `{case.test}` ({case.outcome}):\n\n"
                    f"```\n{message}\n```"
                )
    text = "\n".join(lines) + "\n"
    if failures:
        text += "\nFailures:\n\n" + "\n".join(failures) + "\n"
    return text


def write_markdown(runs: Sequence[VersionRun], path: Path) -> None:
    """Write the table with its provenance, so the README can be generated from it."""
    packages = ", ".join(NPM_VERSIONS[run.major] for run in runs)
    total = sum(run.seconds for run in runs)
    verdict = "all passed" if all(run.ok for run in runs) else "FAILURES"
    durations = ", ".join(f"{run.label} {run.seconds:.0f} s" for run in runs)
    path.write_text(
        "# PostgreSQL version matrix\n\n"
        f"Generated by `make test-matrix` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC ({verdict}, "
        f"{total:.0f} s on {os.cpu_count()} cores: {durations}). Servers: npm `{NPM_PACKAGE}` {packages}. "
        "Each cell counts the `versioned` tests of one feature that passed on that version; "
        "a test that proves a feature is absent on a version asserts the server's exact error.\n\n" + render(runs)
    )


def parse_versions(text: str) -> list[int]:
    """'11,12,18' or '11-14,18' -> [11, 12, 18]; every major must have a known npm package."""
    majors: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        for major in range(int(low), int(high or low) + 1):
            if major not in NPM_VERSIONS:
                known = f"{MAJORS[0]}-{MAJORS[-1]}"
                raise argparse.ArgumentTypeError(f"PostgreSQL {major} is not in the matrix ({known})")
            if major not in majors:
                majors.append(major)
    if not majors:
        raise argparse.ArgumentTypeError("no versions given")
    return majors


def _terminate(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so the running server is stopped by its context manager."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the matrix; exit 0 only when every feature passed on every requested version."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", type=parse_versions, default=list(MAJORS), help="e.g. 11,12,18 or 11-14")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="markdown file for the table")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)

    runs: list[VersionRun] = []
    started = time.monotonic()
    try:
        for major in args.versions:
            # Fetch first, so a download problem is reported as such and not as a failed start.
            try:
                install(major)
            except PgVersionsError as error:
                runs.append(VersionRun(major=major, problem=f"could not fetch PostgreSQL {major}: {error}"))
                print(f"PostgreSQL {major}: {runs[-1].problem}", flush=True)
                continue
            with tempfile.TemporaryDirectory(prefix=f"partkey-matrix-{major}-") as workdir:
                run = run_version(major, Path(workdir), args.pytest_args)
            runs.append(run)
            failed = sum(c.outcome in ("failed", "error") for c in run.cases)
            state = "ok" if run.ok else f"{failed} failed" + (", run problem" if run.problem else "")
            print(f"PostgreSQL {run.label}: {len(run.cases)} tests, {state}, {run.seconds:.0f} s", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: every server started has been stopped; partial results:", flush=True)
        print(render(runs) if runs else "(no version finished)")
        return 130
    print()
    print(render(runs))
    write_markdown(runs, args.output)
    elapsed = time.monotonic() - started
    print(f"matrix: {len(runs)} versions in {elapsed:.0f} s; table written to {args.output}")
    return 0 if all(run.ok for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
