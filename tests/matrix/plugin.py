"""pytest plugin for the matrix: writes each versioned test's feature name into the junit-xml report."""

from __future__ import annotations

from pathlib import Path

import pytest


def feature_of(item: pytest.Item) -> str:
    """The feature a test proves: versioned("name") or versioned(feature="name"), else its module's name."""
    marker = item.get_closest_marker("versioned")
    if marker is not None:
        name = marker.kwargs.get("feature") or (marker.args[0] if marker.args else None)
        if name:
            return str(name)
    return Path(item.nodeid.split("::", 1)[0]).stem.removeprefix("test_").replace("_", " ")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Attach the feature as a junit-xml property of every test case."""
    for item in items:
        item.user_properties.append(("feature", feature_of(item)))
