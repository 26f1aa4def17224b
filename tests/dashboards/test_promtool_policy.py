"""The promtool lookup fails in CI and skips locally when promtool is missing."""

from __future__ import annotations

import pytest

from tests.dashboards.promtool import require_promtool


def test_missing_promtool_fails_in_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """CI=true and no promtool: the rule tests must FAIL, not skip."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_promtool()


def test_missing_promtool_skips_locally(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """Outside CI a missing promtool skips, and says why."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Debian package `prometheus`"):
        require_promtool()
