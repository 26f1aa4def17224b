"""The matrix report: a failure names the version, the feature and the message; `does` records become a table."""

from __future__ import annotations

import subprocess

import pytest

from tests.matrix.run_matrix import REPO, VersionRun, parse_junit, pytest_command, render

SAMPLE_TESTS = """
import pytest

pytestmark = pytest.mark.versioned("sample feature")


def test_records_what_it_did(does):
    does("`partkey-migrate upgrade`, sample table", "check: CHECK validated")


def test_fails_with_the_servers_message():
    raise RuntimeError('relation "chunks" does not exist')


@pytest.mark.versioned("other feature")
def test_other_feature_passes():
    pass
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> VersionRun:
    """Run the sample tests once, the way run_matrix runs the real ones; parse the junit report it wrote."""
    tmp_path = tmp_path_factory.mktemp("matrix-sample")
    sample = tmp_path / "test_sample.py"
    sample.write_text(SAMPLE_TESTS)
    junit = tmp_path / "report.xml"
    result = subprocess.run(
        pytest_command(junit, "-p", "tests.conftest", str(sample)),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr  # one test fails on purpose
    return VersionRun(major=18, server_version="18.4", cases=parse_junit(junit))


def test_a_failure_names_version_feature_test_and_message(run: VersionRun) -> None:
    assert {(c.feature, c.outcome) for c in run.cases} == {
        ("sample feature", "passed"),
        ("sample feature", "failed"),
        ("other feature", "passed"),
    }
    text = render([run])
    assert "| sample feature | ✗ 1 of 2 failed |" in text
    assert "| other feature | ✓ 1 |" in text
    assert "- **PostgreSQL 18.4**, sample feature, `" in text
    assert "test_sample.py::test_fails_with_the_servers_message` (failed)" in text
    assert 'relation "chunks" does not exist' in text


def test_does_records_become_a_command_by_version_table(run: VersionRun) -> None:
    broken = VersionRun(major=11, server_version=None, problem="could not fetch PostgreSQL 11: npm: 404")
    text = render([run, broken])
    assert "| command | what it does, by PostgreSQL major |" in text
    assert "| `partkey-migrate upgrade`, sample table | **18**: check: CHECK validated<br>**11**: - |" in text
    assert "| server start and test run | ✓ | ✗ |" in text
    assert "- **PostgreSQL 11**, server start and test run:" in text and "npm: 404" in text
    # Neighbouring versions that did the same share one cell.
    text = render([run, VersionRun(major=12, server_version="12.22", cases=run.cases)])
    assert "| `partkey-migrate upgrade`, sample table | **all**: check: CHECK validated |" in text
