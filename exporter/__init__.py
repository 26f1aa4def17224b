"""partkey-exporter: watch PostgreSQL partition keys and export their health to Prometheus."""

__version__ = "0.1.0"

# The embedding API (defined after __version__: the modules it imports read it).
from exporter.detector import (
    AsyncPartitionImplementationDetector,
    BusyError,
    CheckFailedError,
    PartitionImplementationDetector,
)

__all__ = [
    "AsyncPartitionImplementationDetector",
    "BusyError",
    "CheckFailedError",
    "PartitionImplementationDetector",
    "__version__",
]
