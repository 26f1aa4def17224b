"""The long-running daemon: HTTP server plus scheduler, with SIGTERM shutdown and SIGHUP reload."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path
from types import FrameType

from exporter import targets_dir
from exporter.app import Exporter
from exporter.config import ConfigError, load_config
from exporter.gc_freeze import Freezer
from exporter.http import ExporterHTTPServer, serve_in_thread
from exporter.logs import setup_logging

log = logging.getLogger(__name__)

SIGNAL_POLL_SECONDS = 0.2  # how late, at most, a signal that landed on another thread is acted on
TARGETS_DIR_POLL_SECONDS = 2.0  # how often targets_dir is looked at (a stat per file: no inotify needed)


class Service:
    """Owns the current Exporter and swaps it on a valid reload."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config = load_config(config_path)
        setup_logging(self.config.log_level)
        self.exporter = Exporter(self.config)
        self.server: ExporterHTTPServer | None = None
        self._dir_state = targets_dir.state(self.config, config_path.parent)
        self._dir_checked = time.monotonic()
        self.freezer = Freezer()

    def start(self) -> str:
        """Start serving and checking; return the base URL."""
        self.server, _ = serve_in_thread(self.exporter, self.config.listen)
        self.exporter.start()
        self.freezer.started()
        log.info("partkey-exporter listening on %s", self.server.url)
        return self.server.url

    def targets_dir_changed(self) -> bool:
        """Has a file in targets_dir been added, changed or removed since the last load?"""
        current = targets_dir.state(self.config, self.config_path.parent)
        if current == self._dir_state:
            return False
        self._dir_state = current  # an invalid change is reported once, not every poll: the next change retries
        return True

    def reload(self) -> bool:
        """Load the config again; keep the old one running when the new one is invalid."""
        # When only targets changed (a file in targets_dir, the targets: list), the running exporter applies them in
        # place: unchanged targets keep their connections, results and schedule. Any other change starts a new one.
        try:
            config = load_config(self.config_path)
            if self.exporter.reconfigure(config):
                self.config = config
                self._dir_state = targets_dir.state(config, self.config_path.parent)
                self.freezer.thaw()  # what the removed targets held is collected before the next freeze
                return True
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
        self.freezer.thaw()
        self._dir_state = targets_dir.state(config, self.config_path.parent)
        log.info("configuration reloaded from %s: %d targets", self.config_path, len(replacement.targets))
        return True

    def stop(self) -> None:
        """Stop the HTTP server, the scheduler and every connection."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.exporter.stop()
        self.freezer.thaw()
        log.info("partkey-exporter stopped")

    def run_forever(self) -> None:
        """Serve until SIGTERM or SIGINT; SIGHUP reloads."""
        # The handlers only set flags. Python runs them in the main thread between bytecodes, so the main thread
        # must wake up by itself: a process-directed signal may land on another thread, and then a main thread
        # blocked in Event.wait() without a timeout never ran the handler (SIGHUP and SIGTERM were lost at random).
        # Setting an Event from the handler could also deadlock on the Event's own lock.
        requested: dict[str, bool] = {"stop": False, "reload": False}

        def on_stop(signum: int, frame: FrameType | None) -> None:
            requested["stop"] = True

        def on_reload(signum: int, frame: FrameType | None) -> None:
            requested["reload"] = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGHUP, on_reload)
        self.start()
        while not requested["stop"]:
            self.freezer.poll(self.exporter.runners, self.exporter.store.current.results)
            if requested["reload"]:
                requested["reload"] = False
                self.reload()
                continue
            if time.monotonic() - self._dir_checked >= TARGETS_DIR_POLL_SECONDS:
                self._dir_checked = time.monotonic()
                if self.targets_dir_changed():
                    log.info("targets_dir changed: reloading")
                    self.reload()
                    continue
            time.sleep(SIGNAL_POLL_SECONDS)
        self.stop()
