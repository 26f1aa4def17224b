"""The long-running daemon: HTTP server plus scheduler, with SIGTERM shutdown and SIGHUP reload."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from exporter.config import ConfigError, load_config
from exporter.daemon import Exporter
from exporter.http import ExporterHTTPServer, serve_in_thread
from exporter.logs import setup_logging

log = logging.getLogger(__name__)


class Service:
    """Owns the current Exporter and swaps it on a valid reload."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        setup_logging(self.config.log_level)
        self.exporter = Exporter(self.config)
        self.server: ExporterHTTPServer | None = None
        self._stop = threading.Event()
        self._reload = threading.Event()

    def start(self) -> str:
        """Start serving and checking; return the base URL."""
        self.server, _ = serve_in_thread(self.exporter, self.config.listen)
        self.exporter.start()
        log.info("partkey-exporter listening on %s", self.server.url)
        return self.server.url

    def reload(self) -> bool:
        """Load the config again; keep the old one running when the new one is invalid."""
        try:
            config = load_config(self.config_path)
            replacement = Exporter(config)
        except ConfigError as error:
            log.error("reload refused, the running config stays: %s", "; ".join(error.problems))
            return False
        if config.listen != self.config.listen:
            log.warning("listen settings changed: they take effect only after a restart")
        old = self.exporter
        replacement.start()
        assert self.server is not None
        self.server.exporter = replacement
        self.exporter, self.config = replacement, config
        old.stop()
        log.info("configuration reloaded from %s", self.config_path)
        return True

    def stop(self) -> None:
        """Stop the HTTP server, the scheduler and every connection."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.exporter.stop()
        log.info("partkey-exporter stopped")

    def run_forever(self) -> None:
        """Serve until SIGTERM or SIGINT; SIGHUP reloads."""

        def on_stop(signum: int, frame: FrameType | None) -> None:
            self._stop.set()

        def on_reload(signum: int, frame: FrameType | None) -> None:
            self._reload.set()
            self._stop.set()

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_reload)
        self.start()
        while True:
            self._stop.wait()
            if self._reload.is_set():
                self._reload.clear()
                self._stop.clear()
                self.reload()
                continue
            break
        self.stop()
