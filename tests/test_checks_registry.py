"""The check registry: one list the config, the daemon, the detector and the report agree with."""

from __future__ import annotations

from exporter.checks.registry import BY_NAME, REGISTRY, checks_for
from exporter.checks.verification import TableVerificationState
from exporter.config import ChecksConfig, TableConfig
from exporter.detector import REPORT_CHECKS


def _table(**fields: object) -> TableConfig:
    """A table config from keyword fields (checks as a mapping)."""
    return TableConfig.model_validate(fields)


def test_every_check_has_its_settings_and_no_setting_lacks_a_check() -> None:
    """The registry and ChecksConfig name the same checks, in the same order."""
    assert [kind.name for kind in REGISTRY] == list(ChecksConfig.model_fields)
    assert set(BY_NAME) == set(ChecksConfig.model_fields)


def test_a_table_gets_the_enabled_checks_that_apply_to_it() -> None:
    """Incremental needs monotonic_column; the probe is off by default; a disabled check is left out."""
    plain = [check.name for check, _ in checks_for(_table(), TableVerificationState())]
    assert plain == ["implementation", "verification_sample", "verification_full", "distribution", "distribution_exact"]
    table = _table(
        monotonic_column="id",
        checks={"insert_probe": {"enabled": True}, "distribution_exact": {"enabled": False}},
    )
    built = checks_for(table, TableVerificationState())
    assert [check.name for check, _ in built] == [
        "implementation",
        "verification_incremental",
        "verification_sample",
        "verification_full",
        "distribution",
        "insert_probe",
    ]
    assert dict((check.name, settings.interval) for check, settings in built)["verification_full"] == 21600


def test_the_detector_never_gets_a_check_that_writes() -> None:
    """read_only leaves out the insert probe even when it is enabled; the report runs four checks."""
    table = _table(checks={"insert_probe": {"enabled": True}})
    names = [check.name for check, _ in checks_for(table, TableVerificationState(), read_only=True)]
    assert "insert_probe" not in names and "implementation" in names
    assert REPORT_CHECKS == ("implementation", "verification_full", "distribution", "distribution_exact")
