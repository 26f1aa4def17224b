"""Config files: every good one loads, every bad one gives exactly its expected messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from exporter.cli import main
from exporter.config import ConfigError, load_config, parse_config, parse_duration

CONFIGS = Path(__file__).parent / "configs"
GOOD = sorted((CONFIGS / "good").glob("*.yaml"))
BAD = sorted((CONFIGS / "bad").glob("*.yaml"))


def _expected(path: Path) -> list[str]:
    """The '# expect:' lines at the top of a bad config."""
    return [line.removeprefix("# expect: ") for line in path.read_text().splitlines() if line.startswith("# expect: ")]


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_good_configs_load(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTKEY_GOOD_PASSWORD", "pw")
    config = load_config(path)
    assert config.targets


def test_full_config_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARTKEY_GOOD_PASSWORD", "p@ss")
    config = load_config(CONFIGS / "good" / "full.yaml")
    table = config.targets[0].tables[0]
    assert config.targets[0].dsn is not None and ":p@ss@" in config.targets[0].dsn
    assert config.targets[0].lock_timeout == 0.5
    assert table.checks.verification_full.interval == 86400
    assert table.checks.verification_sample.percent == 2.5
    assert table.checks.distribution_exact.enabled is False
    assert table.spec.expression().as_string(None) == '(abs(hashtext("collection_id"::text)) % 100)'
    odd = config.targets[1].tables[1]
    assert odd.spec.table_ident.as_string(None) == '"archive"."Chunks; DROP TABLE x"'


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.name)
def test_bad_configs_give_their_exact_messages(path: Path) -> None:
    os.environ.pop("PARTKEY_UNSET_PASSWORD_VAR", None)
    expected = _expected(path)
    assert expected, f"{path.name} has no '# expect:' line"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = [p.replace(str(CONFIGS) + "/", "") for p in caught.value.problems]
    assert sorted(problems) == sorted(expected)
    assert "hunter2" not in str(caught.value)


def test_the_yaml_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One YAML loader reads the text: line numbers come from the same node tree the data is built from."""
    loaders: list[object] = []
    made = yaml.SafeLoader.__init__

    def counted(self: yaml.SafeLoader, stream: str) -> None:
        loaders.append(self)
        made(self, stream)

    monkeypatch.setattr(yaml.SafeLoader, "__init__", counted)
    with pytest.raises(ConfigError) as caught:
        load_config(CONFIGS / "bad" / "several_problems.yaml")
    assert len(caught.value.problems) == 4
    assert len(loaders) == 1


def test_check_config_command_lists_problems(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(CONFIGS / "bad" / "several_problems.yaml")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and all("several_problems.yaml:" in line for line in err)
    assert main(["check-config", str(CONFIGS / "good" / "minimal.yaml")]) == 0
    assert "OK (1 targets, 1 tables)" in capsys.readouterr().out
    assert main(["check-config", "/nonexistent/partkey.yaml"]) == 2
    missing = "/nonexistent/partkey.yaml: cannot read the file: No such file or directory"
    assert capsys.readouterr().err.strip() == missing


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("5m", 300), ("6h", 21600), ("1d", 86400), (7, 7)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("yaml", "problem"),
    [
        ("tables: automatic", "targets[0].tables: Value error, should be auto or a list of tables, got 'automatic'"),
        ("tables: [chunks]", "targets[0].tables[0]: Value error, 'chunks' is not a table: write `- table: chunks`"),
        ("tables: [auto, auto]", "targets[0]: Value error, auto listed twice in tables"),
        ("tables: [{table: x}]\n    schemas: [app]", "schemas only apply to discovered tables: add `auto` to tables"),
        ("tables: auto\n    schemas: ['a[b']", "targets[0].schemas[0]: Value error, glob 'a[b' has a [ without its"),
        ("tables: auto\n    schemas: [app.x]", "schemas: 'app.x' has a dot; a schema glob matches schema names"),
        ("tables: auto\n    exclude: [a.b.c]", "exclude: 'a.b.c' should be schema.table or table (one dot at most)"),
        ("tables: auto\n    exclude: [' x']", "targets[0].exclude[0]: Value error, glob ' x' is empty or has spaces"),
        ("tables: auto\n    checks: {implementaton: {}}", "targets[0].checks.implementaton: Extra inputs are not"),
    ],
)
def test_bad_tables_auto_config_is_named(yaml: str, problem: str) -> None:
    """Every bad shape or glob is refused with where and what."""
    with pytest.raises(ConfigError) as caught:
        parse_config(f"targets:\n  - name: t1\n    dsn: host=x\n    {yaml}\n", "<test>")
    assert any(problem in line for line in caught.value.problems), caught.value.problems
