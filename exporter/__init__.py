"""partkey-exporter: watch PostgreSQL partition keys and export their health to Prometheus."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# The one place the version is written: pyproject.toml, `--version` and partkey_build_info read it.
__version__ = "0.1.0"

if TYPE_CHECKING:
    from exporter.detector import (
        AsyncPartitionImplementationDetector,
        BusyError,
        CheckFailedError,
        PartitionImplementationDetector,
    )

# The embedding API, imported on first use (PEP 562): `import exporter.hashtext` or reading __version__ must not
# pull in psycopg, pydantic and APScheduler.
_LAZY = {
    "AsyncPartitionImplementationDetector": "exporter.detector",
    "BusyError": "exporter.detector",
    "CheckFailedError": "exporter.detector",
    "PartitionImplementationDetector": "exporter.detector",
}

__all__ = [
    "AsyncPartitionImplementationDetector",
    "BusyError",
    "CheckFailedError",
    "PartitionImplementationDetector",
    "__version__",
]


def __getattr__(name: str) -> Any:
    """Import an embedding-API name from its module on first use."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'exporter' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names, the lazy ones included."""
    return sorted({*globals(), *_LAZY})
