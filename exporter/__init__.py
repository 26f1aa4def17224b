"""partkey-exporter: watch PostgreSQL partition keys and export their health to Prometheus."""

__version__ = "0.1.0"
